//! The inbound side: terminates mTLS from peer sidecars (or, in permissive
//! mode, plaintext and certificate-less TLS), authorizes every request
//! against the caller's verified identity, tells the app who called, and
//! forwards to the app over pooled keep-alive connections.
//!
//! A connection is [`accept`]ed (the handshake, and the peer's identity
//! read once), then served as HTTP, or for an opaque listener decided once
//! and spliced ([`opaque`]). With `inbound.transparent`, a connection
//! `warden init` redirected goes to the app at the port it was sent to,
//! and is HTTP or opaque as the caller's ALPN says. A request goes through the stages of
//! [`Inbound::handle`], in this order, each passing it on or refusing it:
//! 1. [`admit`]: load shedding, the caller's certificate still vouched for,
//!    the sidecar ready;
//! 2. [`target`]: one spelling of path and host, the headers sanitized;
//! 3. [`authorize`]: the Cedar decision, and its one audit line;
//! 4. [`identity_headers`]: who called, for the app;
//! 5. [`forward`] to the app, or [`upgrade`] for a WebSocket.
//!
//! [`observe`] records every request, whichever stage answered it.

mod accept;
mod admit;
mod authorize;
mod forward;
mod identity_headers;
mod observe;
mod opaque;
mod target;
mod upgrade;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;

use self::accept::{ConnInfo, accept};
use self::observe::Observed;
use super::admission::{Side, Slot, accept_loop};
use super::app::{App, AppAddr};
use super::config::{InboundMode, Limits};
use super::connections::serve_http;
use super::detect::{Detected, detect};
use super::http::{Body, Refusal};
use super::metrics::{Direction, Transparent};
use super::shared::Shared;
use crate::authz::Decision;
use crate::intercept::{Redirected, redirected};

pub(crate) use self::opaque::Opaque;

pub(crate) struct Inbound {
    pub shared: Arc<Shared>,
    /// The app of every connection, or with `inbound.transparent` of those
    /// that were not redirected; None: such connections are closed.
    pub app: Option<Arc<App>>,
    /// With `inbound.transparent`: the app at each port connections were
    /// redirected from, made on first use.
    pub transparent: Option<TransparentApps>,
    /// mTLS required (strict), or a certificate optional (permissive).
    pub tls: Arc<ServerConfig>,
    /// Transparent connections that are not HTTP (no ALPN) go here.
    pub opaque: Arc<Opaque>,
}

/// The apps behind a transparent inbound listener, by the port connections
/// were sent to (on loopback: `warden init` never redirects it).
#[derive(Default)]
pub(crate) struct TransparentApps {
    by_port: std::sync::Mutex<HashMap<SocketAddr, Arc<App>>>,
}

impl TransparentApps {
    fn get(&self, original: SocketAddr, limits: &Limits) -> Arc<App> {
        let loopback = match original {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        let addr = SocketAddr::new(loopback, original.port());
        let mut apps = self
            .by_port
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        apps.entry(addr)
            .or_insert_with(|| Arc::new(App::new(AppAddr::Tcp(addr), limits)))
            .clone()
    }
}

impl Side for Inbound {
    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Inbound {
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        accept_loop(listener, Direction::Inbound, self, Self::connection).await;
    }

    /// The app a connection goes to: with `inbound.transparent`, the one at
    /// the port it was redirected from; None: closed.
    fn app_for(&self, stream: &TcpStream) -> Option<(Arc<App>, bool)> {
        let Some(apps) = &self.transparent else {
            return self.app.clone().map(|app| (app, false));
        };
        let metrics = &self.shared.metrics;
        let local = stream.local_addr().ok()?;
        match redirected(stream, local) {
            Ok(Redirected::To(original)) => {
                metrics.transparent(Direction::Inbound, Transparent::Redirected);
                Some((apps.get(original, &self.shared.config.limits), true))
            }
            // Not redirected (or no record of it): a direct connection.
            Ok(Redirected::Loop) | Err(_) => match &self.app {
                Some(app) => {
                    metrics.transparent(Direction::Inbound, Transparent::Direct);
                    Some((app.clone(), false))
                }
                None => {
                    metrics.transparent(Direction::Inbound, Transparent::Loop);
                    tracing::debug!(%local, "inbound connection was not redirected and there is no inbound.app: closed");
                    None
                }
            },
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, source: SocketAddr, slot: Slot) {
        let Some((app, redirected)) = self.app_for(&stream) else {
            return;
        };
        let permissive = self.shared.config.inbound.mode == InboundMode::Permissive;
        // A plaintext caller of a redirected port may speak anything: its
        // first bytes say whether it is HTTP.
        let plaintext_http = if permissive && redirected {
            match detect(&stream, self.shared.config.limits.tls_handshake_timeout).await {
                Detected::Closed => return,
                detected => detected == Detected::Http,
            }
        } else {
            true
        };
        // A connection still in its handshake can be asked to make room too.
        let accepted = tokio::select! {
            accepted = accept(&self.shared, &self.tls, stream, source, permissive) => accepted,
            () = slot.activity().evicted() => None,
        };
        let Some((io, conn)) = accepted else {
            return;
        };
        // Redirected, the caller's ALPN (or its plaintext bytes) says what
        // the connection carries: anything but HTTP is opaque TCP.
        let http = match &io {
            Either::Left(_) => plaintext_http,
            Either::Right(tls) => !redirected || tls.get_ref().1.alpn_protocol().is_some(),
        };
        if !http {
            self.opaque.serve(io, &conn, &app.addr, &slot).await;
            return;
        }
        let conn = Arc::new(conn);
        let shared = self.shared.clone();
        let validity = conn.validity.clone();
        serve_http(io, &shared, slot, validity, move |req| {
            let this = self.clone();
            let conn = conn.clone();
            let app = app.clone();
            async move { this.request(req, &conn, &app).await }
        })
        .await;
    }

    async fn request(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        app: &App,
    ) -> Response<Body> {
        let observed = Observed::start(&self.shared, &mut req, conn);
        let mut decision = None;
        let outcome = self.handle(app, req, conn, &observed, &mut decision).await;
        observed.finish(&self.shared, conn, outcome, decision.as_ref())
    }

    /// The app's response, or the refusal of the first stage that refused.
    async fn handle(
        &self,
        app: &App,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        observed: &Observed,
        decided: &mut Option<Decision>,
    ) -> Result<Response<Body>, Refusal> {
        let shared = &*self.shared;
        let admitted = admit::admit(shared, conn)?;
        let prepared = target::prepare(&mut req, shared.config.inbound.path_rules)?;
        let target = &prepared.target;
        let decision = decided.insert(authorize::decide(
            admitted.authorizer,
            &req,
            conn,
            target,
            observed,
            &shared.metrics,
        ));
        if !decision.allowed {
            return Err(authorize::denied(decision));
        }
        // Decided again later on the facts the policy saw: before the
        // identity headers are added.
        let reauthorize = prepared.upgrade.is_some().then(|| {
            authorize::reauthorize_upgrade(
                admitted.authorizer,
                decision,
                &req,
                conn,
                target,
                &observed.id,
                shared.metrics.clone(),
            )
        });
        identity_headers::insert(
            req.headers_mut(),
            conn.xfcc.as_ref(),
            conn.peer_id.as_ref(),
            &observed.id,
        );
        let forwarded = match (prepared.upgrade, reauthorize) {
            (Some(protocol), Some(reauthorize)) => {
                let validity = conn.validity.clone();
                self.upgrade(app, req, target, protocol, validity, reauthorize)
                    .await
            }
            _ => self.forward(app, req, target, observed.grpc).await,
        };
        forwarded.inspect_err(|refusal| {
            tracing::warn!(request_id = %observed.id, reason = %refusal.reason, "inbound request failed");
        })
    }
}
