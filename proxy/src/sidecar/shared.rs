//! What every listener and connection of one sidecar shares, and the
//! readiness it adds up to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use super::metrics::Metrics;
use super::{LogControl, SidecarConfig, admin, admission, telemetry};
use crate::authz::{PolicyEngine, ReloadStatus};
use crate::identity::SvidStore;

/// State every listener and connection of one sidecar shares.
pub(crate) struct Shared {
    pub config: SidecarConfig,
    pub store: Arc<SvidStore>,
    pub metrics: Arc<Metrics>,
    /// Requests in flight across the sidecar (load shedding past it).
    pub inflight: Arc<Semaphore>,
    pub(super) engine: OnceLock<Arc<PolicyEngine>>,
    pub(super) policy_status: OnceLock<watch::Receiver<ReloadStatus>>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) tracker: TaskTracker,
    pub(super) builder: auto::Builder<TokioExecutor>,
    pub(super) listeners_up: AtomicBool,
    /// Sources failing TLS handshakes, refused at accept for a while.
    pub(super) handshake_failures: admission::HandshakeFailures,
    /// Trace export, when `OTEL_EXPORTER_OTLP_ENDPOINT` asks for it.
    pub traces: Option<telemetry::Tracing>,
    /// The log filter, changeable through the admin API.
    pub log_control: Option<LogControl>,
    /// The credential of mutating admin requests (`admin.token_file`).
    pub(super) admin_token: Option<admin::AdminToken>,
    /// With a control plane: policy bundles from its watch (when
    /// `control.policies`), and what the watch has applied.
    pub(super) control_policies: Option<watch::Receiver<Option<crate::control::api::PolicyUpdate>>>,
    pub control_watch: Option<watch::Receiver<crate::control::WatchState>>,
}

impl Shared {
    /// The policy engine, once the sidecar knows its own identity.
    pub fn engine(&self) -> Option<&Arc<PolicyEngine>> {
        self.engine.get()
    }

    pub fn policy_status(&self) -> Option<ReloadStatus> {
        self.policy_status.get().map(|rx| rx.borrow().clone())
    }

    pub fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Why the sidecar is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.draining() {
            reasons.push("draining".to_owned());
        }
        if !self.store.has_valid_svid() {
            reasons.push("no valid SVID yet".to_owned());
        }
        match self.engine() {
            Some(engine) if engine.snapshot().is_some() => {}
            _ => {
                let why = self
                    .policy_status()
                    .and_then(|s| s.last_error)
                    .unwrap_or_else(|| "not loaded yet".into());
                reasons.push(format!("no valid policy set: {why}"));
            }
        }
        if !self.listeners_up.load(Ordering::Acquire) {
            reasons.push("listeners not up".to_owned());
        }
        reasons
    }
}

/// The window over which a source's failed TLS handshakes are counted
/// (`limits.max_handshake_failures`).
pub const HANDSHAKE_FAILURE_WINDOW: Duration = Duration::from_secs(10);

pub(super) async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    // The sender lives as long as the sidecar; if it is gone, so are we.
    let _ = rx.wait_for(|draining| *draining).await;
}
