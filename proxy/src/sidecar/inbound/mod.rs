//! The inbound side: terminates mTLS from peer sidecars (or, in permissive
//! mode, plaintext and certificate-less TLS), authorizes every request
//! against the caller's verified identity, tells the app who called, and
//! forwards to the app over pooled keep-alive connections.
//!
//! A connection is [`accept`]ed (the handshake, and the peer's identity
//! read once), then served as HTTP, or for an opaque listener decided once
//! and spliced ([`opaque`]). A request goes through the stages of
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

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};

use self::accept::{ConnInfo, accept};
use self::observe::Observed;
use super::admission::{Slot, accept_loop};
use super::app::{AppAddr, AppClients};
use super::config::InboundMode;
use super::connections::serve_http;
use super::http::{Body, Refusal};
use super::metrics::Direction;
use super::shared::Shared;
use crate::authz::Decision;

pub(crate) use self::opaque::Opaque;

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
            accepted = accept(&self.shared, &self.tls, stream, source, permissive) => accepted,
            () = slot.activity().evicted() => None,
        };
        let Some((io, conn)) = accepted else {
            return;
        };
        let conn = Arc::new(conn);
        let shared = self.shared.clone();
        let validity = conn.validity.clone();
        serve_http(io, &shared, slot, validity, move |req| {
            let this = self.clone();
            let conn = conn.clone();
            async move { this.request(req, &conn).await }
        })
        .await;
    }

    async fn request(&self, mut req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        let observed = Observed::start(&self.shared, &mut req, conn);
        let mut decision = None;
        let outcome = self.handle(req, conn, &observed, &mut decision).await;
        observed.finish(&self.shared, conn, outcome, decision.as_ref())
    }

    /// The app's response, or the refusal of the first stage that refused.
    async fn handle(
        &self,
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
                self.upgrade(req, target, protocol, validity, reauthorize)
                    .await
            }
            _ => self.forward(req, target, observed.grpc).await,
        };
        forwarded.inspect_err(|refusal| {
            tracing::warn!(request_id = %observed.id, reason = %refusal.reason, "inbound request failed");
        })
    }
}
