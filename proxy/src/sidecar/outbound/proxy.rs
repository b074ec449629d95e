//! The explicit HTTP proxy (`http_proxy=`): absolute-form requests go to
//! the declared service's route; CONNECT opens a tunnel to a declared
//! `tcp` service.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::Route;
use super::forward::peer_refusal;
use crate::sidecar::admission::{Listening, Side, Slot, accept_loop};
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

impl Side for ProxyListener {
    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl ProxyListener {
    pub async fn run(self: Arc<Self>, listener: Listening) {
        accept_loop(
            listener,
            Direction::Outbound,
            self,
            |this, stream, _source, slot| async move {
                let shared = this.shared.clone();
                serve_http(stream, &shared, slot, None, move |req| {
                    let this = this.clone();
                    async move { this.request(req).await }
                })
                .await;
            },
        )
        .await;
    }

    async fn request(&self, req: Request<Incoming>) -> Response<Body> {
        let id = request_id();
        let grpc = is_grpc(&req);
        match self.handle(req).await {
            Ok(response) => response,
            Err(refusal) => self.refuse(refusal, &id, grpc),
        }
    }

    /// The declared service the request names, then its route's answer or
    /// a tunnel to it.
    async fn handle(&self, mut req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
        let connect = req.method() == Method::CONNECT;
        let (original, target) = target(&req)?;
        let Some((route, protocol)) = self.services.get(&target) else {
            return Err(Refusal::new(
                RefusalKind::NoRoute,
                format!("no route to {target}: not declared in [[outbound.services]]"),
            ));
        };
        match (connect, protocol) {
            (false, RouteProtocol::Http) => {
                // The request target names the destination (RFC 9112 3.2.2),
                // whatever Host says.
                if let Ok(host) = HeaderValue::from_str(&original) {
                    req.headers_mut().insert(header::HOST, host);
                }
                Ok(route.request(req, None).await)
            }
            (true, RouteProtocol::Tcp) => self.tunnel(route, req).await,
            (true, RouteProtocol::Http) => Err(Refusal::new(
                RefusalKind::WrongProtocol,
                format!("{target} is an HTTP service: send it requests, not CONNECT"),
            )),
            (false, RouteProtocol::Tcp) => Err(Refusal::new(
                RefusalKind::WrongProtocol,
                format!("{target} is an opaque TCP service: use CONNECT"),
            )),
        }
    }

    /// CONNECT to an opaque service: dialled first, so a peer that is down
    /// or not the expected identity gets a 5xx, not a 200 and a close; then
    /// the caller's upgraded connection is spliced to it.
    async fn tunnel(
        &self,
        route: &Route,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Refusal> {
        let mut tls = route
            .channel
            .connect_tls(Carrying::Tcp)
            .await
            .map_err(peer_refusal)?;
        let tunnel = hyper::upgrade::on(&mut req);
        let idle = self.shared.config.limits.idle_timeout;
        let validity = route.channel.validity(&tls);
        // The tunnel keeps the connection's place in the table.
        let busy = req.extensions().get::<Slot>().map(Slot::busy);
        self.shared.lifecycle.tracker.spawn(async move {
            let _busy = busy;
            match tunnel.await {
                Ok(upgraded) => {
                    let mut upgraded = TokioIo::new(upgraded);
                    let spliced =
                        splice(&mut upgraded, &mut tls, idle, validity.as_ref(), None).await;
                    if let Err(e) = spliced {
                        tracing::debug!(error = %e, "CONNECT tunnel ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT tunnel not established"),
            }
        });
        let metrics = &self.shared.metrics;
        metrics.tcp_connection(Direction::Outbound, "none");
        metrics.request(Direction::Outbound, 200, "none");
        Ok(Response::new(boxed(
            http_body_util::Empty::<bytes::Bytes>::new(),
        )))
    }

    fn refuse(&self, refusal: Refusal, id: &str, grpc: bool) -> Response<Body> {
        tracing::warn!(request_id = %id, reason = %refusal.reason, "proxy request refused");
        self.shared
            .metrics
            .request(Direction::Outbound, refusal.status().as_u16(), "none");
        refusal.response(id, grpc)
    }
}

/// The request's target as written (for `Host`) and as the services are
/// keyed (normalized `host:port`).
fn target<B>(req: &Request<B>) -> Result<(String, String), Refusal> {
    let Some(original) = req.uri().authority().map(|a| a.as_str().to_owned()) else {
        return Err(Refusal::new(
            RefusalKind::BadRequest,
            "this is an HTTP proxy: send absolute-form requests (http_proxy=) or CONNECT",
        ));
    };
    let default_port = if req.uri().scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let key = normalize_authority(&original, default_port).unwrap_or_else(|| original.clone());
    Ok((original, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("request")
    }

    #[test]
    fn the_target_is_keyed_by_normalized_host_and_port() {
        let (original, key) = target(&req(Method::GET, "http://Orders.SVC/x")).expect("target");
        assert_eq!(
            (original.as_str(), key.as_str()),
            ("Orders.SVC", "orders.svc:80")
        );
        let (_, key) = target(&req(Method::GET, "https://orders.svc/x")).expect("target");
        assert_eq!(key, "orders.svc:443");
        let (_, key) = target(&req(Method::CONNECT, "db.svc:5432")).expect("target");
        assert_eq!(key, "db.svc:5432");
    }

    #[test]
    fn an_origin_form_request_is_refused() {
        let refusal = target(&req(Method::GET, "/x")).expect_err("origin form");
        assert_eq!(refusal.kind, RefusalKind::BadRequest);
    }
}
