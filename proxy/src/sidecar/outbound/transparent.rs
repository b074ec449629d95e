//! The transparent outbound listener: `warden init` redirects the app's
//! outbound TCP here. Each connection's original destination is looked up
//! in the mesh's endpoints: a mesh destination gets mTLS to that address,
//! the server's SPIFFE ID checked against the one its endpoint names, as
//! HTTP (pooled HTTP/2 between sidecars, as a route's) or, when the app's
//! first bytes are not HTTP, as opaque TCP; a destination outside the mesh
//! is connected in plaintext as the app asked, or closed
//! (`outbound.unknown`). A connection that was not redirected, or whose
//! destination is this sidecar's own listener, would loop: closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

use super::Route;
use crate::identity::SpiffeId;
use crate::intercept::{Redirected, redirected};
use crate::sidecar::SidecarError;
use crate::sidecar::admission::{Listening, Side, Slot, accept_loop};
use crate::sidecar::config::{TransparentOutbound, UnknownDestination};
use crate::sidecar::detect::{Detected, detect};
use crate::sidecar::discovery::{Endpoints, Found};
use crate::sidecar::metrics::{Direction, Transparent};
use crate::sidecar::shared::Shared;
use crate::sidecar::splice::splice;

/// Routes kept for reuse (each holds its pooled connection to the peer);
/// past this many destinations the cache starts over.
const MAX_ROUTES: usize = 1024;

/// Makes the route to one mesh destination, expecting one identity.
pub(crate) type MakeRoute =
    Box<dyn Fn(SocketAddr, &SpiffeId) -> Result<Arc<Route>, SidecarError> + Send + Sync>;

pub(crate) struct TransparentListener {
    pub shared: Arc<Shared>,
    pub config: TransparentOutbound,
    /// The mesh's destinations; replaced whole when discovery changes.
    pub endpoints: Arc<ArcSwap<Endpoints>>,
    /// This sidecar's own listeners: a destination among them is a loop.
    pub own: Vec<SocketAddr>,
    pub make_route: MakeRoute,
    routes: Mutex<HashMap<(SocketAddr, SpiffeId), Arc<Route>>>,
}

impl Side for TransparentListener {
    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl TransparentListener {
    pub fn new(
        shared: Arc<Shared>,
        config: TransparentOutbound,
        endpoints: Arc<ArcSwap<Endpoints>>,
        own: Vec<SocketAddr>,
        make_route: MakeRoute,
    ) -> Self {
        TransparentListener {
            shared,
            config,
            endpoints,
            own,
            make_route,
            routes: Mutex::new(HashMap::new()),
        }
    }

    pub async fn run(self: Arc<Self>, listener: Listening) {
        accept_loop(listener, Direction::Outbound, self, Self::connection).await;
    }

    async fn connection(self: Arc<Self>, mut stream: TcpStream, _app: SocketAddr, slot: Slot) {
        let metrics = self.shared.metrics.clone();
        let Some(destination) = self.destination(&stream) else {
            metrics.transparent(Direction::Outbound, Transparent::Loop);
            return;
        };
        let found = match self.endpoints.load().find(destination) {
            Found::Meshed(identity) => Ok(identity.clone()),
            Found::UnlistedPort => Err(true),
            Found::Outside => Err(false),
        };
        let identity = match found {
            Ok(identity) => identity,
            Err(mesh_address) => {
                return self
                    .outside_the_mesh(stream, destination, mesh_address, &slot)
                    .await;
            }
        };
        let route = match self.route(destination, &identity) {
            Ok(route) => route,
            Err(e) => {
                tracing::warn!(%destination, error = %e, "transparent outbound: no route; closing the app's connection");
                return;
            }
        };
        match detect(&stream, self.config.detect_timeout).await {
            Detected::Closed => {}
            Detected::Http => {
                metrics.transparent(Direction::Outbound, Transparent::MeshedHttp);
                route.connection(stream, slot).await;
            }
            Detected::Opaque => {
                metrics.transparent(Direction::Outbound, Transparent::MeshedTcp);
                // An app's opaque stream is in use from the start.
                let _busy = slot.busy();
                route.splice(&mut stream).await;
            }
        }
    }

    /// Where the app was connecting; None when that would loop into the
    /// sidecar (not redirected, or redirected to one of its own ports).
    fn destination(&self, stream: &TcpStream) -> Option<SocketAddr> {
        let local = stream.local_addr().ok()?;
        match redirected(stream, local) {
            Ok(Redirected::To(original)) if !self.is_own(original) => Some(original),
            Ok(Redirected::To(original)) => {
                tracing::warn!(%original, "transparent outbound: a connection to the sidecar's own listener; closed");
                None
            }
            Ok(Redirected::Loop) => {
                tracing::warn!(%local, "transparent outbound: a connection that was not redirected (it would loop); closed");
                None
            }
            Err(e) => {
                tracing::warn!(%local, error = %e, "transparent outbound: no original destination; closed");
                None
            }
        }
    }

    fn is_own(&self, destination: SocketAddr) -> bool {
        self.own.iter().any(|own| {
            own.port() == destination.port()
                && (own.ip() == destination.ip()
                    || (own.ip().is_unspecified() && destination.ip().is_loopback()))
        })
    }

    /// The route to `destination`, made once and kept: requests to one
    /// destination share its pooled connection.
    fn route(
        &self,
        destination: SocketAddr,
        identity: &SpiffeId,
    ) -> Result<Arc<Route>, SidecarError> {
        let key = (destination, identity.clone());
        let mut routes = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(route) = routes.get(&key) {
            return Ok(route.clone());
        }
        if routes.len() >= MAX_ROUTES {
            routes.clear();
        }
        let route = (self.make_route)(destination, identity)?;
        routes.insert(key, route.clone());
        Ok(route)
    }

    /// A destination no endpoint names: passed through in plaintext, or
    /// closed, as `outbound.unknown` says. Never in plaintext: another port
    /// of a mesh address (`mesh_address`), and anything while the control
    /// plane's registry has not arrived yet (its destinations are unknown).
    async fn outside_the_mesh(
        &self,
        mut stream: TcpStream,
        destination: SocketAddr,
        mesh_address: bool,
        slot: &Slot,
    ) {
        let metrics = &self.shared.metrics;
        let why = if mesh_address {
            Some("a port the endpoints of this mesh address do not list")
        } else if self.shared.registry_pending() {
            Some("the control plane's registry has not arrived yet")
        } else if self.config.unknown == UnknownDestination::Deny {
            Some("outside the mesh, outbound.unknown = \"deny\"")
        } else {
            None
        };
        if let Some(why) = why {
            metrics.transparent(Direction::Outbound, Transparent::Denied);
            tracing::info!(%destination, "transparent outbound: {why}; closed");
            return;
        }
        metrics.transparent(Direction::Outbound, Transparent::Passthrough);
        let _busy = slot.busy();
        let limits = &self.shared.config.limits;
        let connected =
            tokio::time::timeout(limits.peer_connect_timeout, TcpStream::connect(destination))
                .await;
        let mut upstream = match connected {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                tracing::debug!(%destination, error = %e, "passthrough: destination refused");
                return;
            }
            Err(_) => {
                tracing::debug!(%destination, "passthrough: destination did not answer in time");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        if let Err(e) = splice(&mut stream, &mut upstream, limits.idle_timeout, None, None).await {
            tracing::debug!(error = %e, "passthrough connection ended");
        }
    }
}
