//! The outbound side: the app sends plain HTTP to a per-destination
//! listener; the sidecar sends it over mTLS, as HTTP/2 on one shared
//! connection, to the peer sidecar, which must prove the identity expected
//! for that destination.
//!
//! A request goes through [`Route::handle`]: admitted (load shedding),
//! stripped of Warden's own headers, then either rewritten for the peer and
//! sent on the shared connection ([`forward`]), or, for a WebSocket, given
//! its own connection ([`upgrade`]). [`observe`] records every request.
//! Opaque routes splice each connection to the peer ([`tcp`]); the explicit
//! HTTP proxy picks a route by the request's target ([`proxy`]); the
//! transparent listener by where the app was connecting ([`transparent`]).

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
use tokio::net::{TcpListener, TcpStream};

use self::observe::Observed;
use super::admission::{Side, Slot, accept_loop};
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
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
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
        serve_http(stream, &shared, slot, None, move |req| {
            let this = self.clone();
            async move { this.request(req).await }
        })
        .await;
    }

    pub async fn request(&self, mut req: Request<Incoming>) -> Response<Body> {
        let observed = Observed::start(self, &mut req);
        let outcome = self.handle(req).await;
        observed.finish(self, outcome)
    }

    /// The peer's response, or the refusal of the first step that failed.
    async fn handle(&self, mut req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
        let shared = &*self.shared;
        let Ok(_permit) = shared.traffic.inflight.clone().try_acquire_owned() else {
            shared.metrics.shed();
            return Err(overloaded());
        };
        // Warden's own headers are set by sidecars, never by apps.
        strip_reserved(req.headers_mut());
        if let Some(protocol) = upgrade_protocol(&req) {
            upgrade_allowed(&protocol)?;
            return self.upgrade(req, protocol).await;
        }
        self.forward(req).await
    }
}
