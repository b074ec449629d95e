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
mod transparent;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use rustls::ServerConfig;
use tokio::net::TcpStream;

use self::accept::{ConnInfo, accept};
use self::observe::Observed;
use super::admission::{Listening, Side, Slot, accept_loop};
use super::app::{App, AppAddr};
use super::config::InboundMode;
use super::connections::serve_http;
use super::detect::{Detected, detect};
use super::http::{Body, Refusal};
use super::metrics::Direction;
use super::shared::Shared;
use crate::authz::Decision;

pub(crate) use self::opaque::Opaque;
pub(crate) use self::transparent::TransparentApps;
use self::transparent::{Carries, Destination};

pub(crate) struct Inbound {
    pub shared: Arc<Shared>,
    /// The app of every connection, or with `inbound.transparent` of those
    /// that were not redirected; None: such connections are closed.
    pub app: Option<Arc<App>>,
    /// With `inbound.transparent`: where redirected connections go.
    pub transparent: Option<TransparentApps>,
    /// mTLS required (strict), or a certificate optional (permissive).
    pub tls: Arc<ServerConfig>,
    /// Transparent connections that are not HTTP (no ALPN) go here.
    pub opaque: Arc<Opaque>,
}

impl Side for Inbound {
    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Inbound {
    pub async fn run(self: Arc<Self>, listener: Listening) {
        accept_loop(listener, Direction::Inbound, self, Self::connection).await;
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, source: SocketAddr, slot: Slot) {
        let Some(target) = self.target_of(&stream) else {
            return;
        };
        let permissive = self.shared.config.inbound.mode == InboundMode::Permissive;
        // A plaintext caller of a redirected port must speak HTTP (an
        // opaque port takes TLS only, as `[[inbound.opaque]]` does).
        let plaintext_http = match (&target, permissive) {
            (Destination::Redirected(_), true) => {
                match detect(&stream, self.shared.config.limits.tls_handshake_timeout).await {
                    Detected::Closed => return,
                    detected => detected == Detected::Http,
                }
            }
            _ => true,
        };
        // A connection still in its handshake can be asked to make room too.
        let accepted = tokio::select! {
            accepted = accept(&self.shared, &self.tls, stream, source, permissive) => accepted,
            () = slot.activity().evicted() => None,
        };
        let Some((io, conn)) = accepted else {
            return;
        };
        let app = match (target, self.carries(&io, plaintext_http)) {
            (Destination::Fixed(app), _) => app,
            (Destination::Redirected(to), Carries::Http) => self.transparent_app(to),
            (Destination::Redirected(to), Carries::Opaque) if self.opaque_allowed(to) => {
                self.opaque
                    .serve(io, &conn, &AppAddr::Tcp(to), to.port(), &slot)
                    .await;
                return;
            }
            (Destination::Redirected(to), Carries::Opaque) => {
                self.refuse_transparent(
                    to,
                    &conn,
                    "TLS without ALPN (opaque TCP) to a port not in inbound.opaque_ports",
                );
                return;
            }
            (Destination::Redirected(to), Carries::Refused(why)) => {
                self.refuse_transparent(to, &conn, why);
                return;
            }
        };
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
        shared.usage.record(
            decision,
            &target.path,
            conn.source.ip(),
            i64::try_from(crate::sidecar::metrics::unix_seconds(
                std::time::SystemTime::now(),
            ))
            .unwrap_or(i64::MAX),
        );
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
                // Boxed: large and rare (see the outbound's `handle`).
                Box::pin(self.upgrade(app, req, target, protocol, validity, reauthorize)).await
            }
            _ => self.forward(app, req, target, observed.grpc).await,
        };
        forwarded.inspect_err(|refusal| {
            tracing::warn!(request_id = %observed.id, reason = %refusal.reason, "inbound request failed");
        })
    }
}
