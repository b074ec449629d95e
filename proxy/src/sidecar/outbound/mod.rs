//! The outbound side: the app sends plain HTTP to a per-destination
//! listener; the sidecar sends it over mTLS to the peer sidecar, which must
//! prove the identity expected for that destination: HTTP/1.1 on a
//! connection of the app connection's own, or HTTP/2 on one shared
//! connection.
//!
//! A request goes through [`Route::handle`]: admitted (load shedding),
//! stripped of Warden's own headers, then either rewritten for the peer and
//! sent on the app connection's own ([`dedicated`]) or the shared
//! connection ([`forward`]), or, for a WebSocket, given its own connection
//! ([`upgrade`]). [`observe`] records every request.
//! Opaque routes splice each connection to the peer ([`tcp`]); the explicit
//! HTTP proxy picks a route by the request's target ([`proxy`]); the
//! transparent listener by where the app was connecting ([`transparent`]).

mod dedicated;
mod forward;
mod observe;
mod proxy;
mod tcp;
mod transparent;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use self::dedicated::{Lane, Relayed};
use self::observe::Observed;
use super::admission::{Listening, Side, Slot, accept_loop};
use super::config::PeerHttp1;
use super::connections::serve_http;
use super::http::{Body, Refusal, overloaded, strip_reserved, upgrade_allowed, upgrade_protocol};
use super::metrics::Direction;
use super::peer::PeerChannel;
use super::shared::Shared;

pub(crate) use self::proxy::ProxyListener;
pub(crate) use self::transparent::{MakeRoute, TransparentListener};

/// One destination: a peer sidecar and the identity it must prove.
pub(crate) struct Route {
    pub shared: Arc<Shared>,
    pub upstream: SocketAddr,
    pub channel: PeerChannel,
    /// `server.address` for spans: the upstream's IP, formatted once.
    pub server_address: String,
}

impl Side for Route {
    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Route {
    pub async fn run(self: Arc<Self>, listener: Listening) {
        accept_loop(
            listener,
            Direction::Outbound,
            self,
            |this, stream, _source, slot| this.connection(stream, slot),
        )
        .await;
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, slot: Slot) {
        let shared = self.shared.clone();
        // Used by HTTP/1.1 requests only: an HTTP/2 connection's streams
        // share the multiplexed connection.
        let lane = (shared.config.outbound.peer_http1 == PeerHttp1::Dedicated)
            .then(|| Arc::new(Lane::new(self.clone())));
        serve_http(stream, &shared, slot, None, move |req| {
            let this = self.clone();
            let lane = lane.clone();
            async move { this.request(req, lane.as_deref()).await }
        })
        .await;
    }

    /// One request; `lane`: the app connection's own HTTP/1.1 connection
    /// to the peer, when it has one.
    pub async fn request(&self, mut req: Request<Incoming>, lane: Option<&Lane>) -> Response<Body> {
        let observed = Observed::start(self, &mut req);
        let outcome = self.handle(req, lane).await;
        observed.finish(self, outcome)
    }

    /// The peer's response, or the refusal of the first step that failed.
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        lane: Option<&Lane>,
    ) -> Result<Response<Body>, Refusal> {
        let shared = &*self.shared;
        let Ok(_permit) = shared.traffic.inflight.clone().try_acquire_owned() else {
            shared.metrics.shed();
            return Err(overloaded());
        };
        // Warden's own headers are set by sidecars, never by apps.
        strip_reserved(req.headers_mut());
        if let Some(protocol) = upgrade_protocol(&req) {
            upgrade_allowed(&protocol)?;
            // Boxed: an upgrade's future is large and rare; every other
            // request's future would otherwise carry (and copy) its size.
            return Box::pin(self.upgrade(req, protocol)).await;
        }
        if let Some(lane) = lane
            && req.version() < http::Version::HTTP_2
        {
            match self.forward_dedicated(lane, req).await {
                Relayed::Done(outcome) => return outcome,
                Relayed::Multiplex(unsent) => req = unsent,
            }
        }
        self.forward(req).await
    }
}
