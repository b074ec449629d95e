//! The explicit HTTP proxy (`http_proxy=`): absolute-form requests go to
//! the declared service's route; CONNECT opens a tunnel to a declared
//! `tcp` service.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::Route;
use super::forward::peer_refusal;
use crate::sidecar::admission::{Slot, accept_loop};
use crate::sidecar::config::{RouteProtocol, normalize_authority};
use crate::sidecar::connections::serve_http;
use crate::sidecar::http::{Body, Refusal, RefusalKind, boxed, is_grpc, request_id};
use crate::sidecar::metrics::Direction;
use crate::sidecar::peer::Carrying;
use crate::sidecar::shared::Shared;
use crate::sidecar::splice::splice;

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
                let validity = route.channel.validity(&tls);
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
