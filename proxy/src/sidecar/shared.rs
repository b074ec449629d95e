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
    /// What the sidecar was started with.
    pub config: SidecarConfig,
    /// Its identity: SVID, trust bundles, revocations.
    pub store: Arc<SvidStore>,
    /// The policy engine, once the sidecar knows its own identity.
    pub(super) policy: PolicyState,
    /// Taking and serving connections and requests.
    pub(super) traffic: Traffic,
    /// The sidecar's life: the drain signal and what a drain waits for.
    pub(super) lifecycle: Lifecycle,
    pub metrics: Arc<Metrics>,
    /// What each caller used, for `/usage`.
    pub usage: Arc<super::usage::Usage>,
    /// Trace export, when `OTEL_EXPORTER_OTLP_ENDPOINT` asks for it.
    pub traces: Option<telemetry::Tracing>,
    /// The log filter, changeable through the admin API.
    pub log_control: Option<LogControl>,
    /// The credential of mutating admin requests (`admin.token_file`).
    pub(super) admin_token: Option<admin::AdminToken>,
    /// With a control plane: what its watch has applied.
    pub control_watch: Option<watch::Receiver<crate::control::WatchState>>,
}

/// The policy side: the engine (made once the first SVID names the
/// service), its reload status, and the control plane's policy bundles
/// when it is their source.
#[derive(Default)]
pub(crate) struct PolicyState {
    pub engine: OnceLock<Arc<PolicyEngine>>,
    pub status: OnceLock<watch::Receiver<ReloadStatus>>,
    pub control_updates: Option<watch::Receiver<Option<crate::control::api::PolicyUpdate>>>,
}

/// Taking and serving traffic.
pub(crate) struct Traffic {
    /// Requests in flight across the sidecar (load shedding past it).
    pub inflight: Arc<Semaphore>,
    /// hyper's server builder, bounded by `[limits]`.
    pub builder: auto::Builder<TokioExecutor>,
    /// Sources failing TLS handshakes, refused at accept for a while.
    pub handshake_failures: admission::HandshakeFailures,
    /// The mesh's destinations, for the transparent listener: the
    /// configuration's, and the control plane's registry as it changes.
    pub endpoints: Arc<arc_swap::ArcSwap<super::discovery::Endpoints>>,
    /// Threads serving traffic (`--workers`); each has its own peer
    /// channels, so per-peer caps are split between them.
    pub workers: usize,
}

/// The sidecar's life.
pub(crate) struct Lifecycle {
    /// Flips to true when the drain starts.
    pub shutdown: watch::Receiver<bool>,
    /// Every connection and tunnel: a drain waits for them.
    pub tracker: TaskTracker,
    /// Every listener bound and handed to its side.
    pub listeners_up: AtomicBool,
}

impl Shared {
    /// The policy engine, once the sidecar knows its own identity.
    pub fn engine(&self) -> Option<&Arc<PolicyEngine>> {
        self.policy.engine.get()
    }

    pub fn policy_status(&self) -> Option<ReloadStatus> {
        self.policy.status.get().map(|rx| rx.borrow().clone())
    }

    /// Whether this sidecar watches the control plane's discovery registry
    /// and has not received it yet.
    pub fn registry_pending(&self) -> bool {
        self.config.outbound.transparent.is_some()
            && self
                .control_watch
                .as_ref()
                .is_some_and(|w| w.borrow().endpoints_mark.is_none())
    }

    pub fn draining(&self) -> bool {
        *self.lifecycle.shutdown.borrow()
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
        if self.registry_pending() {
            reasons.push("the control plane's discovery registry has not arrived yet".to_owned());
        }
        if !self.lifecycle.listeners_up.load(Ordering::Acquire) {
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
