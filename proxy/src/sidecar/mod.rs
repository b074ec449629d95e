//! The sidecar: `warden proxy`. An inbound listener terminating mTLS in
//! front of the local app, per-destination outbound listeners originating
//! mTLS to peer sidecars, a Cedar decision on every inbound request, and an
//! admin server with liveness, readiness, identity and metrics.
//!
//! Everything is bound in [`Sidecar::start`]; [`Sidecar::drain`] stops
//! accepting, lets in-flight requests finish up to the drain deadline and
//! returns.

pub mod admin;
mod admission;
pub mod app;
mod builders;
pub mod config;
mod connections;
mod control_link;
mod detect;
pub mod discovery;
pub mod http;
mod inbound;
mod listeners;
pub mod metrics;
pub mod normalize;
mod outbound;
mod pacing;
mod peer;
mod policy;
mod probes;
mod shared;
pub mod slots;
mod splice;
pub mod telemetry;
pub mod usage;
mod usage_report;
mod workers;
pub mod workload_api;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use self::config::IdentitySource;
use self::listeners::{Bound, bind};
use self::metrics::Metrics;
use self::shared::{Lifecycle, PolicyState, Shared, Traffic};
use crate::identity::{FileSource, FileWatcher, SvidStore};
pub(crate) use builders::tuned_h2_client;
pub use config::{ConfigError, SidecarConfig};
pub use listeners::Addresses;

/// Binds a listener as the sidecar does (`[::]` dual-stack whatever the
/// host's `bindv6only`); errors name `key`.
pub async fn bind_listener(
    key: &str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, SidecarError> {
    listeners::bind(key, addr).await
}
pub use shared::HANDSHAKE_FAILURE_WINDOW;

/// Reads (`None`) or replaces (`Some(filter)`) the process's log filter;
/// returns the filter in force. Given by whoever installed the logger.
pub type LogControl = Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

/// The built-in policy set used when `authz.policies` is not set.
pub const DEFAULT_POLICIES: &str = include_str!("../../../policies/default.cedar");

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot listen on {key} = {addr}: {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("built-in policy set: {0}")]
    Policy(String),
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error("{key}: {message}")]
    Control { key: &'static str, message: String },
    #[error("admin.token_file: {0}")]
    Admin(String),
    #[error("workload_api.socket: {0}")]
    WorkloadApi(String),
    #[error("cannot start worker {0}: {1}")]
    Worker(usize, std::io::Error),
}

/// A running sidecar.
pub struct Sidecar {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    addresses: Addresses,
    _svid_watcher: Option<FileWatcher>,
    /// Sends usage to the control plane; flushed once more at drain.
    reporter: Option<Arc<usage_report::Reporter>>,
}

impl Sidecar {
    /// Binds every listener and starts serving. Must run inside a tokio
    /// runtime. Until the SVID files and a policy set are loaded, `/ready`
    /// says why not and inbound requests get 503.
    pub async fn start(config: SidecarConfig) -> Result<Self, SidecarError> {
        Self::start_with_logging(config, None).await
    }

    /// As [`Sidecar::start`]; `log_control` lets the admin API read and
    /// change the log filter (`GET`/`PUT /logging`).
    pub async fn start_with_logging(
        config: SidecarConfig,
        log_control: Option<LogControl>,
    ) -> Result<Self, SidecarError> {
        Self::start_with_workers(config, log_control, NonZeroUsize::MIN).await
    }

    /// As [`Sidecar::start_with_logging`], with the traffic listeners
    /// served by `workers` threads (`warden proxy --workers`): this one
    /// (which must run a current-thread runtime to keep connections on it)
    /// and `workers - 1` more, each with its own single-threaded runtime
    /// and its own `SO_REUSEPORT` socket on every traffic address.
    pub async fn start_with_workers(
        config: SidecarConfig,
        log_control: Option<LogControl>,
        workers: NonZeroUsize,
    ) -> Result<Self, SidecarError> {
        // Parsing checked it; a caller may have changed it since.
        config.check()?;
        let store = Arc::new(SvidStore::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let endpoints = Arc::new(arc_swap::ArcSwap::from_pointee(
            config.outbound.endpoints.clone(),
        ));
        let (svid_watcher, control_policies, control_watch, control_client) = match &config.identity
        {
            IdentitySource::Files(files) => {
                let source = FileSource::new(&files.cert, &files.key, &files.bundle)
                    .with_rotation(config.rotation.clone());
                let watcher = source.watch(store.clone(), files.poll_interval);
                (Some(watcher), None, None, None)
            }
            IdentitySource::WorkloadApi(upstream) => {
                tokio::spawn(workload_api::follow_upstream(
                    upstream.endpoint.clone(),
                    store.clone(),
                    config.rotation.backoff(),
                    shutdown_rx.clone(),
                ));
                (None, None, None, None)
            }
            IdentitySource::Control(control) => {
                // The registry is watched only by a sidecar that uses it.
                let registry =
                    config
                        .outbound
                        .transparent
                        .is_some()
                        .then(|| control_link::Registry {
                            fixed: config.outbound.endpoints.clone(),
                            table: endpoints.clone(),
                        });
                let (policies, watch, client) =
                    control_link::start(control, &config.rotation, &store, registry, &shutdown_rx)?;
                (None, policies, Some(watch), Some(client))
            }
        };
        let builtin = match (&config.authz.policies, config.policies_from_control()) {
            (None, false) => Some(policy::builtin_policies()?),
            _ => None,
        };
        let admin_listener = bind("admin.listen", config.admin.listen).await?;
        let bound = Bound::bind_all(&config, workers.get() > 1)?;
        let mut more_workers = Vec::new();
        if workers.get() > 1 {
            let replicas = bound.replicas()?;
            for index in 1..workers.get() {
                more_workers.push(workers::Worker::bind(replicas.clone(), index).await?);
            }
        }
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| SidecarError::Bind {
                key: "admin.listen".into(),
                addr: config.admin.listen,
                source,
            })?;
        let addresses = bound.addresses(admin_addr);
        let control_client_for_usage = control_client.clone();
        let workload_api = match &config.workload_api.socket {
            Some(path) => Some(workload_api::bind(path, config.workload_api.mode)?),
            None => None,
        };
        let traces = telemetry::Tracing::from_env(&format!("warden-{}", config.service.name))
            .map_err(SidecarError::Telemetry)?;
        let admin_token = match &config.admin.token_file {
            Some(path) => Some(admin::AdminToken::create(path).map_err(|e| {
                SidecarError::Admin(format!("cannot write {}: {e}", path.display()))
            })?),
            None => None,
        };
        let shared = Arc::new(Shared {
            traces,
            log_control,
            admin_token,
            traffic: Traffic {
                builder: builders::http_builder(&config.limits),
                inflight: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
                handshake_failures: admission::HandshakeFailures::new(
                    config.limits.max_handshake_failures,
                    HANDSHAKE_FAILURE_WINDOW,
                ),
                endpoints,
                workers: workers.get(),
            },
            policy: PolicyState {
                control_updates: control_policies,
                ..PolicyState::default()
            },
            lifecycle: Lifecycle {
                shutdown: shutdown_rx,
                tracker: TaskTracker::new(),
                listeners_up: AtomicBool::new(false),
            },
            config,
            store: store.clone(),
            metrics: Arc::new(Metrics::default()),
            usage: Arc::new(usage::Usage::default()),
            control_watch,
        });
        tokio::spawn(policy::start_policy(shared.clone(), builtin));
        tokio::spawn(policy::count_rotations(shared.clone()));
        tokio::spawn(admin::serve(admin_listener, shared.clone()));
        bound.serve(&shared, addresses.admin)?;
        for worker in &more_workers {
            worker.serve(&shared, addresses.admin).await?;
        }
        if let Some(listener) = workload_api {
            let jwt_bundles = !matches!(shared.config.identity, IdentitySource::Files(_));
            let server = workload_api::WorkloadApi::new(
                store.clone(),
                control_client,
                shared.config.workload_api.allowed_uids.clone(),
                jwt_bundles,
                shared.lifecycle.shutdown.clone(),
            );
            shared.lifecycle.tracker.spawn(server.serve(listener));
        }
        let interval = shared.config.usage.report_interval;
        let reporter = match (&control_client_for_usage, interval.is_zero()) {
            (Some(client), false) => {
                let reporter = Arc::new(usage_report::Reporter::new(
                    client.clone(),
                    shared.usage.clone(),
                    store.clone(),
                    shared.config.service.name.clone(),
                ));
                tokio::spawn(
                    reporter
                        .clone()
                        .run(interval, shared.lifecycle.shutdown.clone()),
                );
                Some(reporter)
            }
            _ => None,
        };
        shared.lifecycle.listeners_up.store(true, Ordering::Release);
        Ok(Sidecar {
            shared,
            shutdown,
            addresses,
            _svid_watcher: svid_watcher,
            reporter,
        })
    }

    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// Why the sidecar is not ready; empty once it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        self.shared.not_ready_reasons()
    }

    /// Stops accepting, asks every connection to close after its in-flight
    /// requests (GOAWAY on HTTP/2, `connection: close` on HTTP/1), and waits
    /// for them up to `limits.drain_timeout`. Returns how many connections
    /// were still open at the deadline.
    pub async fn drain(self) -> usize {
        let _ = self.shutdown.send(true);
        self.shared.lifecycle.tracker.close();
        let deadline = self.shared.config.limits.drain_timeout;
        let left = if tokio::time::timeout(deadline, self.shared.lifecycle.tracker.wait())
            .await
            .is_ok()
        {
            0
        } else {
            let left = self.shared.lifecycle.tracker.len();
            tracing::warn!(
                connections = left,
                ?deadline,
                "drain deadline passed; closing the rest"
            );
            left
        };
        // What the drained connections were used for reaches the control
        // plane, within a bounded moment.
        if let Some(reporter) = &self.reporter {
            match tokio::time::timeout(std::time::Duration::from_secs(2), reporter.flush()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the last usage report failed"),
                Err(_) => tracing::warn!("the last usage report timed out"),
            }
        }
        // Spans still queued get a bounded moment to leave.
        if let Some(traces) = &self.shared.traces {
            traces.shutdown(std::time::Duration::from_secs(2)).await;
        }
        left
    }
}
