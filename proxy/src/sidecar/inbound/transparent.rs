//! The inbound listener in transparent mode (`inbound.transparent`): a
//! connection `warden init` redirected goes to the app at the address the
//! caller dialled (the pod's own address, so an app that listens on
//! loopback only is never exposed, as Istio does since 1.10); one that was
//! not redirected goes to `inbound.app`, if any. What it carries follows
//! from the caller: HTTP by ALPN (or, plaintext in permissive mode, by its
//! first bytes), opaque TCP only on `inbound.opaque_ports` and only over
//! TLS; anything else is refused, so leaving out ALPN never turns a port's
//! per-request decisions into one `connect` decision. A redirected
//! connection to one of the sidecar's own ports is a loop, closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::Inbound;
use super::accept::{ConnInfo, PeerIo};
use crate::intercept::{Redirected, redirected};
use crate::sidecar::app::{App, AppAddr};
use crate::sidecar::config::Limits;
use crate::sidecar::metrics::{Direction, Transparent};

/// Apps kept for reuse (each holds its connection pool); past this many
/// destinations, the others get a pool for their connection only.
const MAX_APPS: usize = 256;

/// Where redirected connections go: the sidecar's own ports (never), the
/// ports that may carry opaque TCP, and the apps made so far.
pub(crate) struct TransparentApps {
    /// Every port the sidecar listens on.
    pub own_ports: Vec<u16>,
    /// `inbound.opaque_ports`.
    pub opaque_ports: Vec<u16>,
    apps: Mutex<HashMap<SocketAddr, Arc<App>>>,
}

impl TransparentApps {
    pub fn new(own_ports: Vec<u16>, opaque_ports: Vec<u16>) -> Self {
        TransparentApps {
            own_ports,
            opaque_ports,
            apps: Mutex::new(HashMap::new()),
        }
    }

    fn app(&self, to: SocketAddr, limits: &Limits) -> Arc<App> {
        let mut apps = self
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(app) = apps.get(&to) {
            return app.clone();
        }
        let app = Arc::new(App::new(AppAddr::Tcp(to), limits));
        if apps.len() < MAX_APPS {
            apps.insert(to, app.clone());
        }
        app
    }
}

/// Where one connection goes.
pub(super) enum Destination {
    /// `inbound.app`: a listener that is not transparent, or a connection
    /// that was not redirected.
    Fixed(Arc<App>),
    /// The address the caller dialled.
    Redirected(SocketAddr),
}

/// What a redirected connection may carry.
pub(super) enum Carries {
    Http,
    Opaque,
    Refused(&'static str),
}

impl Inbound {
    /// Where the connection goes; None: closed (counted and logged).
    pub(super) fn target_of(&self, stream: &TcpStream) -> Option<Destination> {
        let Some(apps) = &self.transparent else {
            return self.app.clone().map(Destination::Fixed);
        };
        let metrics = &self.shared.metrics;
        let local = stream.local_addr().ok()?;
        match redirected(stream, local) {
            Ok(Redirected::To(to)) if apps.own_ports.contains(&to.port()) => {
                metrics.transparent(Direction::Inbound, Transparent::Loop);
                tracing::warn!(original = %to, "a redirected connection to one of the sidecar's own ports: closed");
                None
            }
            Ok(Redirected::To(to)) => {
                metrics.transparent(Direction::Inbound, Transparent::Redirected);
                Some(Destination::Redirected(to))
            }
            // Not redirected (or no record of it): a direct connection.
            Ok(Redirected::Loop) | Err(_) => match &self.app {
                Some(app) => {
                    metrics.transparent(Direction::Inbound, Transparent::Direct);
                    Some(Destination::Fixed(app.clone()))
                }
                None => {
                    metrics.transparent(Direction::Inbound, Transparent::Loop);
                    tracing::debug!(%local, "inbound connection was not redirected and there is no inbound.app: closed");
                    None
                }
            },
        }
    }

    /// What an accepted connection carries: HTTP by ALPN (plaintext: by
    /// its first bytes), opaque only over TLS and on an opaque port.
    pub(super) fn carries(&self, io: &PeerIo, plaintext_http: bool) -> Carries {
        match io {
            Either::Left(_) if plaintext_http => Carries::Http,
            Either::Left(_) => Carries::Refused("plaintext that is not HTTP"),
            Either::Right(tls) if tls.get_ref().1.alpn_protocol().is_some() => Carries::Http,
            Either::Right(_) => Carries::Opaque,
        }
    }

    /// The app of a redirected HTTP connection.
    pub(super) fn transparent_app(&self, to: SocketAddr) -> Arc<App> {
        match &self.transparent {
            Some(apps) => apps.app(to, &self.shared.config.limits),
            None => Arc::new(App::new(AppAddr::Tcp(to), &self.shared.config.limits)),
        }
    }

    /// Whether an opaque connection may go to `to`.
    pub(super) fn opaque_allowed(&self, to: SocketAddr) -> bool {
        self.transparent
            .as_ref()
            .is_some_and(|apps| apps.opaque_ports.contains(&to.port()))
    }

    pub(super) fn refuse_transparent(&self, to: SocketAddr, conn: &ConnInfo, why: &str) {
        self.shared
            .metrics
            .transparent(Direction::Inbound, Transparent::Refused);
        tracing::warn!(target: "warden::audit", source = %conn.source, destination = %to, "redirected connection refused: {why}");
    }
}
