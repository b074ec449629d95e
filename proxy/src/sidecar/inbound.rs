//! The inbound side: terminates mTLS from peer sidecars (or, in permissive
//! mode, plaintext and certificate-less TLS), authorizes every request
//! against the caller's verified identity, tells the app who called, and
//! forwards to the app over pooled keep-alive connections.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

use super::Shared;
use super::admission::{Slot, accept_loop, source_key};
use super::app::{AppAddr, AppClients, AppError};
use super::config::{AppProtocol, InboundMode};
use super::connections::serve_http;
use super::http::{
    Body, PEER_ID, REQUEST_ID, Refusal, RefusalKind, XFCC, boxed, error_chain, is_grpc,
    malformed_body, relay_upgrade, request_id, restore_upgrade, strip_hop_by_hop, strip_reserved,
    strip_response, upgrade_allowed, upgrade_protocol,
};
use super::metrics::{Direction, Handshake, handshake_failure};
use super::normalize::{Host, NormalizeError, Target, normalize_request};
use super::splice::{Lapse, PeerValidity, Reauthorize, lapsed, splice};
use super::telemetry::{self, ActiveSpan, Attributes, Kind};
use crate::authz::{
    Decision, HttpRequestFacts, Peer, PeerAuthorizer, TcpConnectionFacts, UnauthenticatedKind,
};
use crate::identity::{SvidLeaf, Timestamp};

/// A peer's connection: plaintext (permissive mode) or TLS.
type PeerIo = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// The TLS record type of a handshake: the first byte a TLS client sends.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

pub(crate) struct Inbound {
    pub shared: Arc<Shared>,
    pub app: AppAddr,
    /// The URI authority of requests to the app (its address, or
    /// `localhost` for a unix socket).
    pub app_authority: String,
    /// mTLS required (strict), or a certificate optional (permissive).
    pub tls: Arc<ServerConfig>,
    pub clients: AppClients,
}

/// An allowed upgrade request: the protocol, and how its tunnel is decided
/// again when the policy set changes.
struct Upgrade {
    protocol: HeaderValue,
    reauthorize: Reauthorize,
}

/// What is known about one inbound connection, fixed at its handshake.
struct ConnInfo {
    source: SocketAddr,
    tls_version: &'static str,
    peer_id: Option<HeaderValue>,
    /// `client.address` for spans, when tracing is on.
    client_address: String,
    /// `x-forwarded-client-cert` for the app; None for unauthenticated peers.
    xfcc: Option<HeaderValue>,
    peer: Peer,
    /// The caller's certificate: the connection's identity is not vouched
    /// for past its expiry or revocation.
    validity: Option<PeerValidity>,
    /// Made on the first request once the policy engine exists, then kept.
    authorizer: OnceLock<PeerAuthorizer>,
}

impl ConnInfo {
    fn lapsed(&self) -> Option<Lapse> {
        lapsed(self.validity.as_ref())
    }

    fn authorizer(&self, shared: &Shared) -> Option<&PeerAuthorizer> {
        if let Some(a) = self.authorizer.get() {
            return Some(a);
        }
        let engine = shared.engine()?;
        Some(
            self.authorizer
                .get_or_init(|| engine.for_peer(self.peer.clone())),
        )
    }
}

impl Inbound {
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let shared = self.shared.clone();
        accept_loop(
            listener,
            shared,
            Direction::Inbound,
            move |stream, source, slot| {
                let this = self.clone();
                async move { this.connection(stream, source, slot).await }
            },
        )
        .await;
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, source: SocketAddr, slot: Slot) {
        let permissive = self.shared.config.inbound.mode == InboundMode::Permissive;
        // A connection still in its handshake can be asked to make room too.
        let accepted = tokio::select! {
            accepted = self.accept_peer(stream, source, permissive) => accepted,
            () = slot.activity().evicted() => None,
        };
        if let Some((io, info)) = accepted {
            self.serve(io, info, slot).await;
        }
    }

    /// The TLS handshake (or, when `plaintext_ok`, a plaintext connection
    /// recognized by its first byte) and what it says about the peer.
    async fn accept_peer(
        &self,
        stream: TcpStream,
        source: SocketAddr,
        plaintext_ok: bool,
    ) -> Option<(PeerIo, ConnInfo)> {
        let metrics = &self.shared.metrics;
        let limits = &self.shared.config.limits;
        if plaintext_ok {
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.tls_handshake_timeout, stream.peek(&mut first)).await
            {
                Ok(Ok(1)) if first[0] != TLS_HANDSHAKE_RECORD => {
                    metrics.handshake(Direction::Inbound, Handshake::Plaintext);
                    let info = self.conn_info(
                        source,
                        "none",
                        Peer::Unauthenticated(UnauthenticatedKind::Plaintext),
                        None,
                    );
                    return Some((Either::Left(stream), info));
                }
                Ok(Ok(1)) => {}
                // Nothing sent within the handshake timeout: counted as a
                // failed handshake, as a silent TLS client would be.
                Err(_) => {
                    self.shared
                        .handshake_failures
                        .failed(source_key(source.ip()));
                    metrics.handshake(Direction::Inbound, Handshake::Timeout);
                    return None;
                }
                _ => return None,
            }
        }
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let tls = match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream))
            .await
        {
            Ok(Ok(mut tls)) => {
                // What rustls buffers for a slow reader is bounded too: the
                // response pacing counts bytes handed to it, not sent.
                tls.get_mut()
                    .1
                    .set_buffer_limit(Some(limits.buffer_window as usize));
                tls
            }
            Ok(Err(e)) => {
                self.shared
                    .handshake_failures
                    .failed(source_key(source.ip()));
                metrics.handshake(Direction::Inbound, Handshake::Failed(handshake_failure(&e)));
                tracing::info!(%source, error = %e, "inbound TLS handshake failed");
                return None;
            }
            Err(_) => {
                self.shared
                    .handshake_failures
                    .failed(source_key(source.ip()));
                metrics.handshake(Direction::Inbound, Handshake::Timeout);
                tracing::info!(%source, "inbound TLS handshake timed out");
                return None;
            }
        };
        metrics.handshake(Direction::Inbound, Handshake::Ok);
        let conn = tls.get_ref().1;
        let tls_version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1_2",
            _ => "TLSv1_3",
        };
        let (peer, leaf) = match conn.peer_certificates() {
            Some([leaf, ..]) => match SvidLeaf::parse(leaf, Timestamp::now()) {
                Ok(svid) => (
                    Peer::Workload(svid.spiffe_id),
                    Some((
                        hex::encode(Sha256::digest(leaf)),
                        svid.not_after.to_system_time(),
                        svid.serial,
                    )),
                ),
                // The verifier already refused such chains; never serve one.
                Err(e) => {
                    tracing::warn!(%source, error = %e, "verified peer certificate is not a usable SVID");
                    return None;
                }
            },
            _ => (
                Peer::Unauthenticated(UnauthenticatedKind::TlsWithoutCertificate),
                None,
            ),
        };
        let info = self.conn_info(source, tls_version, peer, leaf);
        Some((Either::Right(Box::new(tls)), info))
    }

    /// An opaque TCP listener: after the handshake, one `connect`
    /// decision for the connection; allowed connections are spliced to
    /// `app`, denied ones closed.
    pub async fn run_opaque(self: Arc<Self>, listener: TcpListener, app: AppAddr) {
        let shared = self.shared.clone();
        accept_loop(
            listener,
            shared,
            Direction::Inbound,
            move |stream, source, slot| {
                let this = self.clone();
                let app = app.clone();
                async move { this.opaque_connection(stream, source, &app, slot).await }
            },
        )
        .await;
    }

    async fn opaque_connection(
        &self,
        stream: TcpStream,
        source: SocketAddr,
        app: &AppAddr,
        slot: Slot,
    ) {
        let metrics = &self.shared.metrics;
        // Opaque protocols may have the server speak first, so there is no
        // first byte to wait for: TLS always (certificate optional in
        // permissive mode).
        let accepted = tokio::select! {
            accepted = self.accept_peer(stream, source, false) => accepted,
            () = slot.activity().evicted() => None,
        };
        let Some((mut io, info)) = accepted else {
            return;
        };
        // From here the stream is in use: never closed to make room.
        let _busy = slot.busy();
        let tls_version = info.tls_version;
        let decide = move |authorizer: &PeerAuthorizer| {
            authorizer.authorize_tcp(&TcpConnectionFacts {
                source_ip: source.ip(),
                tls_version,
                now: SystemTime::now(),
            })
        };
        let Some(authorizer) = info.authorizer(&self.shared) else {
            metrics.tcp_connection(Direction::Inbound, "none");
            return;
        };
        let decision = decide(authorizer);
        metrics.tcp_connection(Direction::Inbound, decision.decision);
        if decision.decision == "deny" {
            tracing::warn!(target: "warden::audit", %source, "{}", decision.audit_json());
        }
        if !decision.allowed {
            return;
        }
        let closes = self.shared.metrics.clone();
        let reauthorize = Reauthorize::new(authorizer, &decision, decide, move |decision| {
            closes.reauthorization_close(false);
            tracing::warn!(target: "warden::audit", %source, event = "reauthorization", "closing an opaque connection the new policy set denies: {}", decision.audit_json());
        });
        let limits = &self.shared.config.limits;
        let mut upstream = match app.connect(limits.app_connect_timeout).await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::warn!(%app, error = %e, "opaque app unavailable");
                return;
            }
        };
        if let Err(e) = splice(
            &mut io,
            &mut upstream,
            limits.idle_timeout,
            info.validity.as_ref(),
            Some(reauthorize),
        )
        .await
        {
            tracing::debug!(error = %e, "opaque connection ended");
        }
    }

    fn conn_info(
        &self,
        source: SocketAddr,
        tls_version: &'static str,
        peer: Peer,
        leaf: Option<(String, SystemTime, String)>,
    ) -> ConnInfo {
        let validity = match (&peer, &leaf) {
            (Peer::Workload(id), Some((_, expires, serial))) => Some(PeerValidity {
                expires: *expires,
                spiffe_id: id.to_string(),
                serial: serial.clone(),
                store: self.shared.store.clone(),
            }),
            _ => None,
        };
        let (peer_id, xfcc) = match (&peer, leaf) {
            (Peer::Workload(id), Some((hash, _, _))) => {
                let by = self
                    .shared
                    .store
                    .current()
                    .map(|s| s.spiffe_id().to_string())
                    .unwrap_or_default();
                (
                    HeaderValue::from_str(id.as_str()).ok(),
                    HeaderValue::from_str(&format!("By={by};Hash={hash};URI={id}")).ok(),
                )
            }
            _ => (None, None),
        };
        // Only spans use it: nothing to format when tracing is off.
        let client_address = if self.shared.traces.is_some() {
            source.ip().to_string()
        } else {
            String::new()
        };
        ConnInfo {
            source,
            tls_version,
            peer_id,
            client_address,
            xfcc,
            peer,
            validity,
            authorizer: OnceLock::new(),
        }
    }

    async fn serve<I>(self: Arc<Self>, io: I, info: ConnInfo, slot: Slot)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let info = Arc::new(info);
        let shared = self.shared.clone();
        let validity = info.validity.clone();
        serve_http(io, &shared, slot, validity, move |req| {
            let this = self.clone();
            let info = info.clone();
            async move { this.request(req, &info).await }
        })
        .await;
    }

    async fn request(&self, mut req: Request<Incoming>, info: &ConnInfo) -> Response<Body> {
        let started = std::time::Instant::now();
        let id = request_id();
        let access = self
            .shared
            .config
            .telemetry
            .access_log
            .then(|| (req.method().to_string(), req.uri().path().to_owned()));
        let grpc = is_grpc(&req);
        let span = self.shared.traces.as_ref().map(|traces| {
            let method = req.method().clone();
            // Owned (cheap: shared bytes), as `req` lends its headers to
            // `start` meanwhile; the attributes borrow them only when sampled.
            let uri = req.uri().clone();
            let attributes = |list: &mut Attributes<'_>| {
                telemetry::put_method(list, &method);
                list.str("url.path", uri.path());
                list.str("client.address", &info.client_address);
                list.str("tls.protocol.version", info.tls_version);
                list.str("warden.request.id", &id);
                if let Some(svid) = self.shared.store.current() {
                    list.str("warden.local.id", svid.spiffe_id().as_str());
                }
                if let Peer::Workload(peer) = &info.peer {
                    list.str("warden.peer.id", peer.as_str());
                }
            };
            traces.start(Kind::Server, &method, req.headers_mut(), attributes)
        });
        let mut decision = None;
        let (response, status, label) = match self
            .decide_and_forward(req, info, &id, span.as_ref(), &mut decision)
            .await
        {
            Ok((response, label)) => {
                let status = response.status().as_u16();
                (response, status, label)
            }
            // Counted by what it means, also when gRPC carries it as 200.
            Err((refusal, label)) => (
                refusal.response(&id, grpc),
                refusal.status().as_u16(),
                label,
            ),
        };
        let metrics = &self.shared.metrics;
        metrics.request(Direction::Inbound, status, label);
        metrics.duration(Direction::Inbound, label, status, started.elapsed());
        let peer = match &info.peer {
            Peer::Workload(peer) => peer.as_str(),
            Peer::Unauthenticated(_) => "unauthenticated",
        };
        metrics.peer_request(Direction::Inbound, peer);
        if let Some((method, path)) = &access {
            telemetry::access_log(&telemetry::Access {
                direction: "inbound",
                request_id: &id,
                trace_id: span.as_ref().map(ActiveSpan::trace_id),
                method,
                path,
                status,
                duration: started.elapsed(),
                peer,
                decision: label,
            });
        }
        if let Some(span) = span {
            span.finish(status, true, |list| {
                list.str("warden.authz.decision", label);
                if let Some(d) = &decision {
                    list.strs("warden.authz.policies", &d.policies);
                    list.str("warden.authz.policy_version", &d.policy_version);
                }
            });
        }
        response
    }

    /// The app's response, or Warden's refusal; with the decision label.
    async fn decide_and_forward(
        &self,
        mut req: Request<Incoming>,
        info: &ConnInfo,
        id: &str,
        span: Option<&ActiveSpan>,
        decided: &mut Option<Decision>,
    ) -> Result<(Response<Body>, &'static str), (Refusal, &'static str)> {
        let metrics = &self.shared.metrics;
        let grpc = is_grpc(&req);
        let Ok(_permit) = self.shared.inflight.clone().try_acquire_owned() else {
            metrics.shed();
            return Err((
                Refusal::new(
                    RefusalKind::Overloaded,
                    "overloaded: too many requests in flight, retry later",
                ),
                "none",
            ));
        };
        match info.lapsed() {
            Some(Lapse::Expired) => {
                return Err((
                    Refusal::new(
                        RefusalKind::CertificateLapsed,
                        "the caller's certificate expired during this connection; reconnect",
                    ),
                    "none",
                ));
            }
            Some(Lapse::Revoked) => {
                return Err((
                    Refusal::new(RefusalKind::Revoked, "the caller's certificate is revoked"),
                    "deny",
                ));
            }
            None => {}
        }
        let Some(authorizer) = info.authorizer(&self.shared) else {
            return Err((
                Refusal::new(
                    RefusalKind::NotReady,
                    "sidecar not ready: no identity or policy yet",
                ),
                "none",
            ));
        };
        // One spelling of the path and host for the policy and the app.
        let target = normalize_request(&req, self.shared.config.inbound.path_rules())
            .map_err(|e| (normalize_refusal(&e), "none"))?;
        // The headers say what the target says: one canonical Host (a
        // policy reading `context.headers` sees it too), and no header an
        // app framework would take as a different URL or method.
        canonical_headers(req.headers_mut(), &target);
        // Sanitize first, so policy sees exactly the headers the app will.
        let upgrade = upgrade_protocol(&req);
        if let Some(protocol) = &upgrade {
            upgrade_allowed(protocol).map_err(|refusal| (refusal, "none"))?;
        }
        strip_hop_by_hop(req.headers_mut());
        // Whatever the caller claims about identity is dropped; only the
        // handshake's verified identity reaches the app.
        strip_reserved(req.headers_mut());

        let decision = authorize(authorizer, &req, info, &target);
        if !decision.errors.is_empty() {
            metrics.authz_error();
        }
        if decision.decision == "deny" {
            let trace_id = span.map(ActiveSpan::trace_id).unwrap_or_default();
            tracing::warn!(target: "warden::audit", request_id = %id, trace_id = %trace_id, method = %req.method(), path = %target.path, "{}", decision.audit_json());
        } else {
            tracing::debug!(target: "warden::audit", request_id = %id, "{}", decision.audit_json());
        }
        let label = decision.decision;
        if !decision.allowed {
            let reason = format!(
                "forbidden: {} may not {} this service",
                decision.principal, decision.action
            );
            *decided = Some(decision);
            return Err((Refusal::new(RefusalKind::Denied, reason), label));
        }
        let upgrade = upgrade.map(|protocol| Upgrade {
            reauthorize: self.reauthorize_upgrade(authorizer, &decision, &req, info, &target, id),
            protocol,
        });
        *decided = Some(decision);
        let response = self.forward(req, info, id, grpc, upgrade, &target).await;
        Ok((response, label))
    }

    /// For an upgraded tunnel: its request's facts, kept to be decided
    /// again when the policy set changes (see [`Reauthorize`]).
    fn reauthorize_upgrade(
        &self,
        authorizer: &PeerAuthorizer,
        admitted: &Decision,
        req: &Request<Incoming>,
        info: &ConnInfo,
        target: &Target,
        id: &str,
    ) -> Reauthorize {
        let method = req.method().as_str().to_owned();
        let path = target.path.clone();
        let host = target
            .host
            .as_ref()
            .map_or(String::new(), |h| h.name.clone());
        let port = target.port;
        let source_ip = info.source.ip();
        let tls_version = info.tls_version;
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let metrics = self.shared.metrics.clone();
        let request_id = id.to_owned();
        Reauthorize::new(
            authorizer,
            admitted,
            move |authorizer| {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                authorizer.authorize_http(&HttpRequestFacts {
                    method: &method,
                    path: &path,
                    host: &host,
                    port,
                    source_ip,
                    headers: &headers,
                    tls_version,
                    now: SystemTime::now(),
                })
            },
            move |decision| {
                metrics.reauthorization_close(true);
                tracing::warn!(target: "warden::audit", request_id = %request_id, event = "reauthorization", "closing an upgraded connection the new policy set denies: {}", decision.audit_json());
            },
        )
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        info: &ConnInfo,
        id: &str,
        grpc: bool,
        upgrade: Option<Upgrade>,
        target: &Target,
    ) -> Response<Body> {
        let limits = &self.shared.config.limits;
        let headers = req.headers_mut();
        if let Some(v) = &info.xfcc {
            headers.insert(XFCC, v.clone());
        }
        if let Some(v) = &info.peer_id {
            headers.insert(PEER_ID, v.clone());
        }
        if let Ok(v) = HeaderValue::from_str(id) {
            headers.insert(REQUEST_ID, v);
        }
        // gRPC needs HTTP/2 (trailers); everything else goes to the app in
        // the protocol it is declared to speak, whatever the caller spoke.
        let h2 = upgrade.is_none()
            && (grpc || self.shared.config.inbound.app_protocol == AppProtocol::H2);
        // The app gets the host the policy saw: `Host` holds it already
        // (`canonical_headers`); HTTP/2 carries it as `:authority` instead.
        if h2 {
            headers.remove(header::HOST);
        }
        let host = target.host.as_ref().map(Host::authority);
        // HTTP/1.1: a fixed authority, since the connection pool is keyed
        // by it and the caller must not be able to open a pool per Host
        // header. HTTP/2 has one connection, and names the host per request.
        let authority = match &host {
            Some(host) if h2 => host.as_str(),
            _ => self.app_authority.as_str(),
        };
        let uri = format!("http://{authority}{}", target.path_and_query());
        match uri.parse::<Uri>() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                return Refusal::new(
                    RefusalKind::BadRequest,
                    "request target cannot be forwarded",
                )
                .response(id, grpc);
            }
        }
        *req.version_mut() = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        if let Some(Upgrade {
            protocol,
            reauthorize,
        }) = upgrade
        {
            return self
                .upgrade(req, protocol, id, info.validity.clone(), reauthorize)
                .await;
        }
        let sent =
            tokio::time::timeout(limits.app_response_timeout, self.clients.send(req, h2)).await;
        let refusal = match sent {
            Ok(Ok(mut response)) => {
                strip_response(&mut response);
                return response.map(boxed);
            }
            Ok(Err(AppError::Connect(e))) => {
                app_unavailable(&self.app, &e, limits.app_connect_timeout)
            }
            Ok(Err(AppError::CallerBody)) => malformed_body(),
            Ok(Err(AppError::Exchange(e))) => Refusal::new(
                RefusalKind::AppFailed,
                format!("app at {} failed: {e}", self.app),
            ),
            Err(_) => Refusal::new(
                RefusalKind::AppTimeout,
                format!(
                    "app at {} did not respond within {:?}",
                    self.app, limits.app_response_timeout
                ),
            ),
        };
        tracing::warn!(request_id = id, reason = %refusal.reason, "inbound request failed");
        refusal.response(id, grpc)
    }
}

impl Inbound {
    /// An HTTP/1.1 upgrade (WebSocket and the like): its own connection to
    /// the app, then the two upgraded connections spliced together.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        protocol: HeaderValue,
        id: &str,
        validity: Option<PeerValidity>,
        reauthorize: Reauthorize,
    ) -> Response<Body> {
        let limits = &self.shared.config.limits;
        restore_upgrade(req.headers_mut(), protocol);
        // A fresh HTTP/1.1 connection sends the target in origin form.
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        if let Ok(uri) = path.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
        let app = match self.app.connect(limits.app_connect_timeout).await {
            Ok(app) => app,
            Err(e) => {
                return app_unavailable(&self.app, &e, limits.app_connect_timeout)
                    .response(id, false);
            }
        };
        match tokio::time::timeout(
            limits.app_response_timeout,
            relay_upgrade(
                app,
                req,
                &self.shared.tracker,
                limits.idle_timeout,
                validity,
                Some(reauthorize),
            ),
        )
        .await
        {
            Ok(Ok(mut response)) => {
                strip_response(&mut response);
                response.map(boxed)
            }
            Ok(Err(e)) => Refusal::new(
                RefusalKind::AppFailed,
                format!(
                    "app at {} failed the upgrade: {}",
                    self.app,
                    error_chain(&e)
                ),
            )
            .response(id, false),
            Err(_) => Refusal::new(
                RefusalKind::AppTimeout,
                format!(
                    "app at {} did not respond within {:?}",
                    self.app, limits.app_response_timeout
                ),
            )
            .response(id, false),
        }
    }
}

/// 504 when connecting to the app timed out, 503 when it refused.
fn app_unavailable(app: &AppAddr, e: &std::io::Error, timeout: std::time::Duration) -> Refusal {
    if e.kind() == std::io::ErrorKind::TimedOut {
        Refusal::new(
            RefusalKind::AppTimeout,
            format!("app at {app} did not accept a connection within {timeout:?}"),
        )
    } else {
        Refusal::new(
            RefusalKind::AppUnavailable,
            format!("app at {app} is unavailable: {e}"),
        )
    }
}

/// Headers some frameworks read as the real URL or method (Symfony and IIS
/// rewrites, Rails and Express method overrides): a request carrying them
/// would be routed to something the policy never decided on.
const OVERRIDE_HEADERS: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// `Host` set to the normalized host, and the override headers dropped.
fn canonical_headers(headers: &mut http::HeaderMap, target: &Target) {
    headers.remove(header::HOST);
    if let Some(host) = &target.host
        && let Ok(v) = HeaderValue::from_str(&host.authority())
    {
        headers.insert(header::HOST, v);
    }
    for name in OVERRIDE_HEADERS {
        headers.remove(name);
    }
}

/// 405 for CONNECT, 400 for every other target that does not normalize.
fn normalize_refusal(e: &NormalizeError) -> Refusal {
    let kind = match e {
        NormalizeError::Connect => RefusalKind::MethodNotAllowed,
        _ => RefusalKind::BadRequest,
    };
    Refusal::new(kind, e.to_string())
}

fn authorize(
    authorizer: &PeerAuthorizer,
    req: &Request<Incoming>,
    info: &ConnInfo,
    target: &Target,
) -> Decision {
    let headers: Vec<(&str, Cow<'_, str>)> = req
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes())))
        .collect();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    let facts = HttpRequestFacts {
        method: req.method().as_str(),
        path: &target.path,
        host: target.host.as_ref().map_or("", |h| h.name.as_str()),
        port: target.port,
        source_ip: info.source.ip(),
        headers: &headers,
        tls_version: info.tls_version,
        now: SystemTime::now(),
    };
    authorizer.authorize_http(&facts)
}
