//! The outbound side: the app sends plain HTTP to a per-destination
//! listener; the sidecar sends it over mTLS, as HTTP/2 on one shared
//! connection, to the peer sidecar, which must prove the identity expected
//! for that destination.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::Shared;
use super::admission::{Slot, accept_loop};
use super::config::{RouteProtocol, normalize_authority};
use super::connections::serve_http;
use super::http::{
    Body, CallerBody, ORIG_PROTO, ORIG_PROTO_HTTP1, Refusal, RefusalKind, boxed, error_chain,
    is_grpc, malformed_body, relay_upgrade, request_host, request_id, restore_upgrade,
    strip_hop_by_hop, strip_reserved, strip_response, upgrade_allowed, upgrade_protocol,
};
use super::metrics::Direction;
use super::peer::{Carrying, PeerChannel, PeerError, PeerFacts};
use super::splice::splice;
use super::telemetry::{self, ActiveSpan, Attributes, Kind};

/// One destination: a peer sidecar and the identity it must prove.
pub(crate) struct Route {
    pub shared: Arc<Shared>,
    pub upstream: SocketAddr,
    pub channel: PeerChannel,
    /// `server.address` for spans: the upstream's IP, formatted once.
    pub server_address: String,
}

impl Route {
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let shared = self.shared.clone();
        accept_loop(
            listener,
            shared,
            Direction::Outbound,
            move |stream, _source, slot| {
                let this = self.clone();
                async move { this.connection(stream, slot).await }
            },
        )
        .await;
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, slot: Slot) {
        let shared = self.shared.clone();
        serve_http(stream, &shared, slot, None, move |req| {
            let this = self.clone();
            async move { this.request(req).await }
        })
        .await;
    }

    pub async fn request(&self, mut req: Request<Incoming>) -> Response<Body> {
        let started = std::time::Instant::now();
        let access = self
            .shared
            .config
            .telemetry
            .access_log
            .then(|| (req.method().to_string(), req.uri().path().to_owned()));
        let span = self.shared.traces.as_ref().map(|traces| {
            let method = req.method().clone();
            // Owned (cheap: shared bytes), as `req` lends its headers to
            // `start` meanwhile; the attributes borrow them only when sampled.
            let uri = req.uri().clone();
            let attributes = |list: &mut Attributes<'_>| {
                telemetry::put_method(list, &method);
                list.str("url.path", uri.path());
                list.str("server.address", &self.server_address);
                list.int("server.port", i64::from(self.upstream.port()));
                list.str("warden.peer.id", self.channel.expected().as_str());
                if let Some(svid) = self.shared.store.current() {
                    list.str("warden.local.id", svid.spiffe_id().as_str());
                }
            };
            traces.start(Kind::Client, &method, req.headers_mut(), attributes)
        });
        let response = self.request_inner(req).await;
        let metrics = &self.shared.metrics;
        metrics.duration(
            Direction::Outbound,
            "none",
            response.status().as_u16(),
            started.elapsed(),
        );
        metrics.peer_request(Direction::Outbound, self.channel.expected().as_str());
        if let Some((method, path)) = &access {
            telemetry::access_log(&telemetry::Access {
                direction: "outbound",
                request_id: response
                    .headers()
                    .get(super::http::REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                trace_id: span.as_ref().map(ActiveSpan::trace_id),
                method,
                path,
                status: response.status().as_u16(),
                duration: started.elapsed(),
                peer: self.channel.expected().as_str(),
                decision: "none",
            });
        }
        if let Some(span) = span {
            span.finish(response.status().as_u16(), false, |_| {});
        }
        response
    }

    async fn request_inner(&self, req: Request<Incoming>) -> Response<Body> {
        let id = request_id();
        let grpc = is_grpc(&req);
        let metrics = &self.shared.metrics;
        let Ok(_permit) = self.shared.inflight.clone().try_acquire_owned() else {
            metrics.shed();
            let refusal = Refusal::new(
                RefusalKind::Overloaded,
                "overloaded: too many requests in flight, retry later",
            );
            metrics.request(Direction::Outbound, refusal.status().as_u16(), "none");
            return refusal.response(&id, grpc);
        };
        match self.forward(req).await {
            Ok(response) => {
                metrics.request(Direction::Outbound, response.status().as_u16(), "none");
                response
            }
            Err(refusal) => {
                tracing::warn!(request_id = %id, upstream = %self.upstream, reason = %refusal.reason, "outbound request failed");
                // Counted by what it means, also when gRPC carries it as 200.
                metrics.request(Direction::Outbound, refusal.status().as_u16(), "none");
                refusal.response(&id, grpc)
            }
        }
    }

    async fn forward(&self, mut req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
        // Warden's own headers are set by sidecars, never by apps.
        strip_reserved(req.headers_mut());
        if let Some(protocol) = upgrade_protocol(&req) {
            upgrade_allowed(&protocol)?;
            return self.upgrade(req, protocol).await;
        }
        let from_version = req.version();
        let host = request_host(&req);
        let authority = if host.is_empty() {
            self.upstream.to_string()
        } else {
            host
        };
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        *req.uri_mut() = format!("http://{authority}{path}")
            .parse::<Uri>()
            .map_err(|_| {
                Refusal::new(
                    RefusalKind::BadRequest,
                    format!("bad Host header {authority:?}"),
                )
            })?;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        headers.remove(header::HOST);
        headers.remove(ORIG_PROTO);
        if from_version != Version::HTTP_2 {
            headers.insert(ORIG_PROTO, HeaderValue::from_static(ORIG_PROTO_HTTP1));
        }
        *req.version_mut() = Version::HTTP_2;

        let timeout = self.shared.config.limits.app_response_timeout;
        let (req, fault) = CallerBody::wrap(req);
        let mut req = Some(req);
        // A request the shared connection refused before sending (it was
        // closing: GOAWAY, a peer restart) is retried once on a new one.
        let connect_timeout = self.shared.config.limits.peer_connect_timeout;
        for attempt in 0..2 {
            // Bounded as a whole: waiting behind another request's connect
            // attempt counts too.
            let (mut sender, connection) =
                tokio::time::timeout(connect_timeout, self.channel.sender())
                    .await
                    .map_err(|_| {
                        peer_refusal(PeerError::Timeout {
                            addr: self.upstream,
                            timeout: connect_timeout,
                        })
                    })?
                    .map_err(peer_refusal)?;
            let Some(request) = req.take() else { break };
            match tokio::time::timeout(timeout, sender.try_send_request(request)).await {
                Ok(Ok(mut response)) => {
                    strip_response(&mut response);
                    response.headers_mut().remove(ORIG_PROTO);
                    *response.version_mut() = from_version;
                    return Ok(response.map(boxed));
                }
                Ok(Err(_)) if fault.happened() => return Err(malformed_body()),
                Ok(Err(mut e)) => {
                    req = e.take_message();
                    if req.is_none() || attempt == 1 {
                        return Err(Refusal::new(
                            RefusalKind::PeerFailed,
                            format!(
                                "peer sidecar {} failed the request: {}",
                                self.upstream,
                                error_chain(e.error())
                            ),
                        ));
                    }
                    self.channel.reset(connection).await;
                }
                Err(_) => {
                    return Err(Refusal::new(
                        RefusalKind::PeerTimeout,
                        format!(
                            "peer sidecar {} did not respond within {timeout:?}",
                            self.upstream
                        ),
                    ));
                }
            }
        }
        Err(Refusal::new(
            RefusalKind::PeerFailed,
            format!("peer sidecar {} kept closing the connection", self.upstream),
        ))
    }
}

impl Route {
    /// An HTTP/1.1 upgrade: its own mTLS connection to the peer sidecar
    /// (ALPN http/1.1, as HTTP/2 cannot carry it), then spliced.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        protocol: HeaderValue,
    ) -> Result<Response<Body>, Refusal> {
        strip_hop_by_hop(req.headers_mut());
        restore_upgrade(req.headers_mut(), protocol);
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        if let Ok(uri) = path.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
        let tls = self
            .channel
            .connect_tls(Carrying::Http1)
            .await
            .map_err(peer_refusal)?;
        let validity = self.channel.validity(&PeerFacts::of(&tls));
        let timeout = self.shared.config.limits.app_response_timeout;
        match tokio::time::timeout(
            timeout,
            relay_upgrade(
                tls,
                req,
                &self.shared.tracker,
                self.shared.config.limits.idle_timeout,
                validity,
                None,
            ),
        )
        .await
        {
            Ok(Ok(mut response)) => {
                strip_response(&mut response);
                Ok(response.map(boxed))
            }
            Ok(Err(e)) => Err(Refusal::new(
                RefusalKind::PeerFailed,
                format!(
                    "peer sidecar {} failed the upgrade: {}",
                    self.upstream,
                    error_chain(&e)
                ),
            )),
            Err(_) => Err(Refusal::new(
                RefusalKind::PeerTimeout,
                format!(
                    "peer sidecar {} did not respond within {timeout:?}",
                    self.upstream
                ),
            )),
        }
    }

    /// An opaque TCP route: each connection from the app gets its own mTLS
    /// connection to the peer's opaque port, and bytes are spliced.
    pub async fn run_tcp(self: Arc<Self>, listener: TcpListener) {
        let shared = self.shared.clone();
        accept_loop(
            listener,
            shared,
            Direction::Outbound,
            move |mut stream, _source, slot| {
                let this = self.clone();
                async move {
                    // An app's opaque stream is in use from the start.
                    let _busy = slot.busy();
                    this.splice(&mut stream).await;
                }
            },
        )
        .await;
    }

    /// Splices `stream` with a new mTLS connection to the peer's opaque port.
    pub async fn splice<S>(&self, stream: &mut S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let metrics = &self.shared.metrics;
        match self.channel.connect_tls(Carrying::Tcp).await {
            Ok(mut tls) => {
                metrics.tcp_connection(Direction::Outbound, "none");
                let idle = self.shared.config.limits.idle_timeout;
                let validity = self.channel.validity(&PeerFacts::of(&tls));
                if let Err(e) = splice(stream, &mut tls, idle, validity.as_ref(), None).await {
                    tracing::debug!(error = %e, "opaque connection ended");
                }
            }
            Err(e) => {
                metrics.tcp_connection(Direction::Outbound, "none");
                tracing::warn!(upstream = %self.upstream, error = %e, "opaque route: no connection to the peer; closing the app's");
            }
        }
    }
}

fn peer_refusal(e: PeerError) -> Refusal {
    let kind = match e {
        PeerError::Unreachable { .. } => RefusalKind::PeerUnreachable,
        PeerError::Timeout { .. } => RefusalKind::PeerTimeout,
        PeerError::Handshake { .. } | PeerError::Protocol { .. } => RefusalKind::PeerFailed,
    };
    Refusal::new(kind, e.to_string())
}

/// The explicit HTTP proxy (`http_proxy=`): absolute-form requests go to the
/// declared service's peer sidecar like a route's; CONNECT opens a tunnel
/// to a declared `tcp` service. Anything undeclared is refused: the mesh
/// never sends an app's traffic anywhere in plaintext.
pub(crate) struct ProxyListener {
    pub shared: Arc<Shared>,
    /// By normalized `host:port`.
    pub services: HashMap<String, (Arc<Route>, RouteProtocol)>,
}

impl ProxyListener {
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let shared = self.shared.clone();
        accept_loop(
            listener,
            shared,
            Direction::Outbound,
            move |stream, _source, slot| {
                let this = self.clone();
                async move {
                    let shared = this.shared.clone();
                    serve_http(stream, &shared, slot, None, move |req| {
                        let this = this.clone();
                        async move { this.request(req).await }
                    })
                    .await;
                }
            },
        )
        .await;
    }

    async fn request(&self, mut req: Request<Incoming>) -> Response<Body> {
        let id = request_id();
        let grpc = is_grpc(&req);
        let connect = req.method() == Method::CONNECT;
        let target = req.uri().authority().map(|a| a.as_str().to_owned());
        let Some(target) = target else {
            return self.refuse(
                Refusal::new(
                    RefusalKind::BadRequest,
                    "this is an HTTP proxy: send absolute-form requests (http_proxy=) or CONNECT",
                ),
                &id,
                grpc,
            );
        };
        let original = target.clone();
        let default_port = if req.uri().scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let target = normalize_authority(&target, default_port).unwrap_or(target);
        let Some((route, protocol)) = self.services.get(&target) else {
            return self.refuse(
                Refusal::new(
                    RefusalKind::NoRoute,
                    format!("no route to {target}: not declared in [[outbound.services]]"),
                ),
                &id,
                grpc,
            );
        };
        match (connect, protocol) {
            (false, RouteProtocol::Http) => {
                // The request target names the destination (RFC 9112 3.2.2),
                // whatever Host says.
                if let Ok(host) = HeaderValue::from_str(&original) {
                    req.headers_mut().insert(header::HOST, host);
                }
                route.request(req).await
            }
            (true, RouteProtocol::Tcp) => {
                // Dial first: a peer that is down or not the expected
                // identity gets a 5xx, not a 200 and a close.
                let mut tls = match route.channel.connect_tls(Carrying::Tcp).await {
                    Ok(tls) => tls,
                    Err(e) => return self.refuse(peer_refusal(e), &id, grpc),
                };
                let tunnel = hyper::upgrade::on(&mut req);
                let idle = self.shared.config.limits.idle_timeout;
                let validity = route.channel.validity(&PeerFacts::of(&tls));
                // The tunnel keeps the connection's place in the table.
                let busy = req.extensions().get::<Slot>().map(Slot::busy);
                self.shared.tracker.spawn(async move {
                    let _busy = busy;
                    match tunnel.await {
                        Ok(upgraded) => {
                            if let Err(e) = splice(
                                &mut TokioIo::new(upgraded),
                                &mut tls,
                                idle,
                                validity.as_ref(),
                                None,
                            )
                            .await
                            {
                                tracing::debug!(error = %e, "CONNECT tunnel ended");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "CONNECT tunnel not established"),
                    }
                });
                self.shared
                    .metrics
                    .tcp_connection(Direction::Outbound, "none");
                self.shared
                    .metrics
                    .request(Direction::Outbound, 200, "none");
                Response::new(boxed(http_body_util::Empty::<bytes::Bytes>::new()))
            }
            (true, RouteProtocol::Http) => self.refuse(
                Refusal::new(
                    RefusalKind::WrongProtocol,
                    format!("{target} is an HTTP service: send it requests, not CONNECT"),
                ),
                &id,
                grpc,
            ),
            (false, RouteProtocol::Tcp) => self.refuse(
                Refusal::new(
                    RefusalKind::WrongProtocol,
                    format!("{target} is an opaque TCP service: use CONNECT"),
                ),
                &id,
                grpc,
            ),
        }
    }

    fn refuse(&self, refusal: Refusal, id: &str, grpc: bool) -> Response<Body> {
        tracing::warn!(request_id = %id, reason = %refusal.reason, "proxy request refused");
        self.shared
            .metrics
            .request(Direction::Outbound, refusal.status().as_u16(), "none");
        refusal.response(id, grpc)
    }
}
