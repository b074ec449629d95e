//! An opaque TCP listener: after the handshake, one `connect` decision for
//! the connection; an allowed connection is spliced to its app (and decided
//! again whenever the policy set changes), a denied one closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::ServerConfig;
use tokio::net::TcpStream;

use super::accept::{ConnInfo, PeerIo, accept};
use crate::authz::{Decision, Outcome, PeerAuthorizer, TcpConnectionFacts};
use crate::sidecar::admission::{Listening, Side, Slot, accept_loop};
use crate::sidecar::app::AppAddr;
use crate::sidecar::metrics::Direction;
use crate::sidecar::shared::Shared;
use crate::sidecar::splice::{Reauthorize, splice};

/// The inbound side of the opaque ports: each `[[inbound.opaque]]`
/// listener runs with its own app.
pub(crate) struct Opaque {
    pub shared: Arc<Shared>,
    /// mTLS required (strict), or a certificate optional (permissive).
    pub tls: Arc<ServerConfig>,
}

impl Side for Opaque {
    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Opaque {
    pub async fn run(self: Arc<Self>, listener: Listening, app: AppAddr) {
        accept_loop(
            listener,
            Direction::Inbound,
            self,
            move |this, stream, source, slot| {
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
        // The listener's own port: what the caller addressed.
        let port = stream.local_addr().map_or(0, |a| a.port());
        // Opaque protocols may have the server speak first, so there is no
        // first byte to wait for: TLS always (certificate optional in
        // permissive mode).
        let accepted = tokio::select! {
            accepted = accept(&self.shared, &self.tls, stream, source, false) => accepted,
            () = slot.activity().evicted() => None,
        };
        if let Some((io, conn)) = accepted {
            self.serve(io, &conn, app, port, &slot).await;
        }
    }

    /// An accepted connection to `port`: decided once, then spliced to
    /// `app` (and decided again whenever the policy set changes), or closed.
    pub(super) async fn serve(
        &self,
        mut io: PeerIo,
        conn: &ConnInfo,
        app: &AppAddr,
        port: u16,
        slot: &Slot,
    ) {
        let metrics = &self.shared.metrics;
        let source = conn.source;
        // From here the stream is in use: never closed to make room.
        let _busy = slot.busy();
        let Some(authorizer) = conn.authorizer(&self.shared) else {
            metrics.tcp_connection(Direction::Inbound, "none");
            return;
        };
        let facts = TcpConnectionFacts {
            port,
            source_ip: source.ip(),
            tls_version: conn.tls_version,
            now: SystemTime::now(),
        };
        let decide = move |authorizer: &PeerAuthorizer| {
            authorizer.authorize_tcp(&TcpConnectionFacts {
                now: SystemTime::now(),
                ..facts
            })
        };
        let decision = decide(authorizer);
        metrics.tcp_connection(Direction::Inbound, decision.decision.as_str());
        self.shared.usage.record(
            &decision,
            &format!("/tcp/{port}"),
            source.ip(),
            i64::try_from(crate::sidecar::metrics::unix_seconds(SystemTime::now()))
                .unwrap_or(i64::MAX),
        );
        if decision.decision == Outcome::Deny {
            tracing::warn!(target: "warden::audit", %source, "{}", decision.audit_json());
        }
        if !decision.allowed {
            return;
        }
        let reauthorize = self.reauthorize_opaque(authorizer, &decision, decide, source);
        let limits = &self.shared.config.limits;
        let mut upstream = match app.connect(limits.app_connect_timeout).await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::warn!(%app, error = %e, "opaque app unavailable");
                return;
            }
        };
        let validity = conn.validity.as_ref();
        let idle = limits.idle_timeout;
        if let Err(e) = splice(&mut io, &mut upstream, idle, validity, Some(reauthorize)).await {
            tracing::debug!(error = %e, "opaque connection ended");
        }
    }

    /// Decided again with `decide` whenever the policy set changes; closed,
    /// counted and audited when the new set denies it.
    fn reauthorize_opaque(
        &self,
        authorizer: &PeerAuthorizer,
        admitted: &Decision,
        decide: impl Fn(&PeerAuthorizer) -> Decision + Send + Sync + 'static,
        source: SocketAddr,
    ) -> Reauthorize {
        let metrics = self.shared.metrics.clone();
        Reauthorize::new(authorizer, admitted, decide, move |decision| {
            metrics.reauthorization_close(false);
            tracing::warn!(target: "warden::audit", %source, event = "reauthorization", "closing an opaque connection the new policy set denies: {}", decision.audit_json());
        })
    }
}
