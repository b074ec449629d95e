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
pub mod config;
mod connections;
pub mod http;
mod inbound;
pub mod metrics;
pub mod normalize;
mod outbound;
mod pacing;
mod peer;
mod splice;
pub mod telemetry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use self::metrics::Metrics;
use crate::authz::{
    PolicyEngine, PolicySnapshot, PolicySource, PolicyWatcher, ReloadStatus, ServiceInfo,
};
use crate::identity::{ExpectedIdentity, FileSource, FileWatcher, SpiffeId, SvidStore};
use crate::tls::{ClientAuth, TlsVersions, client_config, server_config};
pub use config::{ConfigError, SidecarConfig};

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
}

/// State every listener and connection of one sidecar shares.
pub(crate) struct Shared {
    pub config: SidecarConfig,
    pub store: Arc<SvidStore>,
    pub metrics: Arc<Metrics>,
    /// Requests in flight across the sidecar (load shedding past it).
    pub inflight: Arc<Semaphore>,
    engine: OnceLock<Arc<PolicyEngine>>,
    policy_status: OnceLock<watch::Receiver<ReloadStatus>>,
    shutdown: watch::Receiver<bool>,
    tracker: TaskTracker,
    builder: auto::Builder<TokioExecutor>,
    listeners_up: AtomicBool,
    /// Sources failing TLS handshakes, refused at accept for a while.
    handshake_failures: admission::HandshakeFailures,
    /// Trace export, when `OTEL_EXPORTER_OTLP_ENDPOINT` asks for it.
    pub traces: Option<telemetry::Tracing>,
    /// The log filter, changeable through the admin API.
    pub log_control: Option<LogControl>,
    /// The credential of mutating admin requests (`admin.token_file`).
    admin_token: Option<admin::AdminToken>,
    /// With a control plane: policy bundles from its watch (when
    /// `control.policies`), and what the watch has applied.
    control_policies: Option<watch::Receiver<Option<crate::control::api::PolicyUpdate>>>,
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

async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    // The sender lives as long as the sidecar; if it is gone, so are we.
    let _ = rx.wait_for(|draining| *draining).await;
}

/// The HTTP/2 connection window for a stream window of `window`: room for
/// 16 streams at full speed. Memory per connection is bounded by it.
fn connection_window(window: u32) -> u32 {
    window.saturating_mul(16)
}

/// An HTTP/2 client (to peer sidecars and h2c apps) bounded by `limits`:
/// the peer may send `h2_stream_window` ahead per stream, and at most
/// `buffer_window` waits to be sent per stream.
pub(crate) fn tuned_h2_client(
    limits: &config::Limits,
) -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(limits.h2_stream_window)
        .initial_connection_window_size(connection_window(limits.h2_stream_window))
        .max_send_buf_size(limits.buffer_window as usize)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

fn http_builder(config: &SidecarConfig) -> auto::Builder<TokioExecutor> {
    let limits = &config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Our own watchdog times request heads (`connections::serve_http`):
        // hyper's timer also runs while a keep-alive connection is idle.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        // Copy body chunks into one bounded write buffer rather than queue
        // them: a queued chunk pins the whole read buffer it was cut from,
        // which is what a slow reader makes the sidecar hold.
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(limits.h2_stream_window)
        .initial_connection_window_size(connection_window(limits.h2_stream_window))
        .max_send_buf_size(limits.buffer_window as usize)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// The addresses a started sidecar listens on.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub admin: SocketAddr,
    pub inbound: Option<SocketAddr>,
    /// One per `[[inbound.opaque]]`, in order.
    pub opaque: Vec<SocketAddr>,
    /// One per `[[outbound.routes]]`, in order.
    pub outbound: Vec<SocketAddr>,
    /// The explicit HTTP proxy, if configured.
    pub proxy: Option<SocketAddr>,
}

/// A running sidecar.
pub struct Sidecar {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    addresses: Addresses,
    _svid_watcher: Option<FileWatcher>,
}

async fn bind(key: &str, addr: SocketAddr) -> Result<TcpListener, SidecarError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SidecarError::Bind {
            key: key.to_owned(),
            addr,
            source,
        })
}

fn builtin_policies() -> Result<PolicySnapshot, SidecarError> {
    PolicySnapshot::from_sources(
        "schema.cedarschema",
        crate::authz::policy_set::DEFAULT_SCHEMA,
        vec![PolicySource {
            name: "default.cedar".into(),
            text: DEFAULT_POLICIES.into(),
        }],
    )
    .map_err(|e| SidecarError::Policy(e.to_string()))
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
        config.validate()?;
        let store = Arc::new(SvidStore::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (svid_watcher, control) = match config.control.address {
            None => {
                let source = FileSource::new(
                    config.identity.cert_path()?,
                    config.identity.key_path()?,
                    config.identity.bundle_path()?,
                );
                (
                    Some(source.watch(store.clone(), config.identity.poll_interval)),
                    None,
                )
            }
            Some(addr) => (
                None,
                Some(start_control(&config.control, addr, &store, &shutdown_rx)?),
            ),
        };
        let (control_policies, control_watch) = match control {
            Some((policies, watch)) => (policies, Some(watch)),
            None => (None, None),
        };
        let builtin = match (&config.authz.policies, config.control.policies) {
            (None, false) => Some(builtin_policies()?),
            _ => None,
        };

        let admin_listener = bind("admin.listen", config.admin.listen).await?;
        let inbound_listener = match config.inbound.listen {
            Some(addr) => Some(bind("inbound.listen", addr).await?),
            None => None,
        };
        let mut opaque_listeners = Vec::new();
        for (i, opaque) in config.inbound.opaque.iter().enumerate() {
            opaque_listeners
                .push(bind(&format!("inbound.opaque[{i}].listen"), opaque.listen).await?);
        }
        let mut route_listeners = Vec::new();
        for (i, route) in config.outbound.routes.iter().enumerate() {
            route_listeners
                .push(bind(&format!("outbound.routes[{i}].listen"), route.listen).await?);
        }
        let proxy_listener = match config.outbound.proxy_listen {
            Some(addr) => Some(bind("outbound.proxy_listen", addr).await?),
            None => None,
        };
        let local = |l: &TcpListener| l.local_addr().expect("bound listener has an address");
        let addresses = Addresses {
            admin: local(&admin_listener),
            inbound: inbound_listener.as_ref().map(local),
            opaque: opaque_listeners.iter().map(local).collect(),
            outbound: route_listeners.iter().map(local).collect(),
            proxy: proxy_listener.as_ref().map(local),
        };

        let traces = telemetry::Tracing::from_env(&format!("warden-{}", config.service.name))
            .map_err(SidecarError::Telemetry)?;
        let admin_token = match &config.admin.token_file {
            Some(path) => Some(admin::AdminToken::create(path).map_err(|e| {
                SidecarError::Admin(format!("cannot write {}: {e}", path.display()))
            })?),
            None => None,
        };
        let shared_limits = config.limits.clone();
        let shared = Arc::new(Shared {
            traces,
            log_control,
            admin_token,
            builder: http_builder(&config),
            inflight: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
            config,
            store: store.clone(),
            metrics: Arc::new(Metrics::default()),
            engine: OnceLock::new(),
            policy_status: OnceLock::new(),
            shutdown: shutdown_rx,
            tracker: TaskTracker::new(),
            listeners_up: AtomicBool::new(false),
            handshake_failures: admission::HandshakeFailures::new(
                shared_limits.max_handshake_failures,
                HANDSHAKE_FAILURE_WINDOW,
            ),
            control_policies,
            control_watch,
        });
        let versions = if shared.config.inbound.tls12 {
            TlsVersions::Tls12And13
        } else {
            TlsVersions::Tls13Only
        };

        tokio::spawn(start_policy(shared.clone(), builtin));
        tokio::spawn(count_rotations(shared.clone()));
        tokio::spawn(admin::serve(admin_listener, shared.clone()));
        if inbound_listener.is_some() || !opaque_listeners.is_empty() {
            let client_auth = match shared.config.inbound.mode {
                config::InboundMode::Strict => ClientAuth::Required,
                config::InboundMode::Permissive => ClientAuth::Optional,
            };
            let tls = server_config(
                store.clone(),
                client_auth,
                ExpectedIdentity::AnyTrusted,
                versions,
                &[b"h2", b"http/1.1"],
            )?;
            // Validation pairs inbound.listen with inbound.app; a sidecar
            // with only opaque ports never makes an HTTP request to it.
            let app = shared
                .config
                .inbound
                .app
                .clone()
                .unwrap_or(app::AppAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))));
            let clients = app::AppClients::new(&app, &shared.config.limits);
            let app_authority = match &app {
                app::AppAddr::Tcp(addr) => addr.to_string(),
                app::AppAddr::Unix(_) => "localhost".to_owned(),
            };
            let inbound = Arc::new(inbound::Inbound {
                shared: shared.clone(),
                app_authority,
                app,
                tls,
                clients,
            });
            for (opaque, listener) in shared.config.inbound.opaque.iter().zip(opaque_listeners) {
                shared
                    .tracker
                    .spawn(inbound.clone().run_opaque(listener, opaque.app.clone()));
            }
            if let Some(listener) = inbound_listener {
                shared.tracker.spawn(inbound.run(listener));
            }
        }
        let make_route = |upstream: SocketAddr,
                          identity: &SpiffeId|
         -> Result<Arc<outbound::Route>, SidecarError> {
            let tls = client_config(
                store.clone(),
                ExpectedIdentity::exactly(identity.clone()),
                versions,
                &[b"h2"],
            )?;
            let channel = peer::PeerChannel::new(
                upstream,
                identity.clone(),
                tls,
                shared.config.limits.clone(),
                store.clone(),
                shared.metrics.clone(),
            );
            Ok(Arc::new(outbound::Route {
                server_address: upstream.ip().to_string(),
                shared: shared.clone(),
                upstream,
                channel,
            }))
        };
        for (config, listener) in shared.config.outbound.routes.iter().zip(route_listeners) {
            let route = make_route(config.upstream, &config.identity)?;
            match config.protocol {
                config::RouteProtocol::Http => shared.tracker.spawn(route.run(listener)),
                config::RouteProtocol::Tcp => shared.tracker.spawn(route.run_tcp(listener)),
            };
        }
        if let Some(listener) = proxy_listener {
            let mut services = HashMap::new();
            for service in &shared.config.outbound.services {
                if let Some(authority) = config::normalize_authority(&service.authority, 80) {
                    let route = make_route(service.upstream, &service.identity)?;
                    services.insert(authority, (route, service.protocol));
                }
            }
            let proxy = Arc::new(outbound::ProxyListener {
                shared: shared.clone(),
                services,
            });
            shared.tracker.spawn(proxy.run(listener));
        }
        shared.listeners_up.store(true, Ordering::Release);
        Ok(Sidecar {
            shared,
            shutdown,
            addresses,
            _svid_watcher: svid_watcher,
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
        self.shared.tracker.close();
        let deadline = self.shared.config.limits.drain_timeout;
        let left = if tokio::time::timeout(deadline, self.shared.tracker.wait())
            .await
            .is_ok()
        {
            0
        } else {
            let left = self.shared.tracker.len();
            tracing::warn!(
                connections = left,
                ?deadline,
                "drain deadline passed; closing the rest"
            );
            left
        };
        // Spans still queued get a bounded moment to leave.
        if let Some(traces) = &self.shared.traces {
            traces.shutdown(std::time::Duration::from_secs(2)).await;
        }
        left
    }
}

/// Counts every change of the SVID or bundles after the first load.
async fn count_rotations(shared: Arc<Shared>) {
    let mut generation = shared.store.subscribe();
    let mut loaded = shared.store.current().is_some();
    while generation.changed().await.is_ok() {
        if loaded {
            shared.metrics.rotation();
        }
        loaded = loaded || shared.store.current().is_some();
    }
}

/// Waits for the first SVID (the service's trust domain and namespace come
/// from it), then builds the policy engine and loads its policies.
async fn start_policy(shared: Arc<Shared>, builtin: Option<PolicySnapshot>) {
    let mut generation = shared.store.subscribe();
    let svid = loop {
        if let Some(svid) = shared.store.current() {
            break svid;
        }
        if generation.changed().await.is_err() {
            return;
        }
    };
    let service = ServiceInfo::from_identity(&shared.config.service.name, svid.spiffe_id());
    let engine = Arc::new(PolicyEngine::new(service, shared.config.authz.mode));
    let mut watcher: Option<PolicyWatcher> = None;
    match (builtin, &shared.config.authz.policies) {
        (Some(snapshot), _) => {
            let status = ReloadStatus {
                version: Some(snapshot.version().to_owned()),
                reloads: 1,
                ..ReloadStatus::default()
            };
            engine.install(snapshot);
            let _ = shared.policy_status.set(watch::channel(status).1);
        }
        (None, Some(dir)) => {
            let w = PolicyWatcher::start(
                dir.clone(),
                engine.clone(),
                shared.config.authz.reload_interval,
            );
            let _ = shared.policy_status.set(w.status());
            watcher = Some(w);
        }
        (None, None) => match shared.control_policies.clone() {
            Some(updates) => {
                let _ = shared.engine.set(engine.clone());
                return install_control_policies(&shared, &engine, updates).await;
            }
            None => return,
        },
    }
    let _ = shared.engine.set(engine);
    // The watcher runs until the sidecar drains.
    let mut shutdown = shared.shutdown.clone();
    shutting_down(&mut shutdown).await;
    drop(watcher);
}

/// Installs each policy bundle the control plane's watch delivers; a bundle
/// that does not load is refused and the last good one stays.
async fn install_control_policies(
    shared: &Arc<Shared>,
    engine: &Arc<PolicyEngine>,
    mut updates: watch::Receiver<Option<crate::control::api::PolicyUpdate>>,
) {
    let (status_tx, status_rx) = watch::channel(ReloadStatus::default());
    let _ = shared.policy_status.set(status_rx);
    let mut shutdown = shared.shutdown.clone();
    loop {
        let update = updates.borrow_and_update().clone();
        if let Some(update) = update {
            let loaded = crate::authz::PolicyFiles::from_named(&update.files)
                .and_then(|files| PolicySnapshot::from_files(files).map_err(|e| e.to_string()));
            match loaded {
                Ok(snapshot) => {
                    let version = snapshot.version().to_owned();
                    engine.install(snapshot);
                    tracing::info!(control_version = update.version, %version, "policy bundle from the control plane installed");
                    status_tx.send_modify(|s| {
                        s.version = Some(version);
                        s.reloads += 1;
                        s.last_error = None;
                    });
                }
                Err(e) => {
                    tracing::error!(control_version = update.version, error = %e, "policy bundle from the control plane refused; keeping the last good set");
                    status_tx.send_modify(|s| {
                        s.failures += 1;
                        s.last_error =
                            Some(format!("control plane version {}: {e}", update.version));
                    });
                }
            }
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            _ = shutting_down(&mut shutdown) => return,
        }
    }
}

type ControlChannels = (
    Option<watch::Receiver<Option<crate::control::api::PolicyUpdate>>>,
    watch::Receiver<crate::control::WatchState>,
);

/// Sets up the control plane as the SVID source: its bundle for the first
/// contact, an SVID saved by an earlier run if still valid, then the
/// rotation (join, renewals) and the watch.
fn start_control(
    config: &config::ControlConfig,
    addr: SocketAddr,
    store: &Arc<SvidStore>,
    shutdown: &watch::Receiver<bool>,
) -> Result<ControlChannels, SidecarError> {
    use crate::control::{
        ControlClient, ControlSource, StateDir, WatchState, WatchTargets, revoked_set, run_watch,
    };
    use crate::identity::{RotationPolicy, TrustBundle, TrustBundleSet, run_rotation};
    let err = |key: &'static str, message: String| SidecarError::Control { key, message };
    let (Some(server_id), Some(bundle_path)) = (&config.server_id, &config.bundle) else {
        return Err(err(
            "control.address",
            "needs control.server_id and control.bundle".into(),
        ));
    };
    let trust_domain = server_id.trust_domain();
    let pem = std::fs::read(bundle_path).map_err(|e| {
        err(
            "control.bundle",
            format!("cannot read {}: {e}", bundle_path.display()),
        )
    })?;
    let bundle = TrustBundle::from_bytes(trust_domain.clone(), &pem)
        .map_err(|e| err("control.bundle", format!("{}: {e}", bundle_path.display())))?;
    store.set_bundles(TrustBundleSet::new().with(bundle));
    let state = config.state_dir.clone().map(StateDir);
    if let Some(list) = state.as_ref().and_then(StateDir::load_revoked) {
        store.set_revoked(revoked_set(&list));
    }
    if let Some(saved) = state.as_ref().and_then(StateDir::load) {
        match store.install(saved, None) {
            Ok(()) => tracing::info!("using the SVID saved by an earlier run"),
            Err(e) => tracing::warn!(error = %e, "the saved SVID does not validate; joining anew"),
        }
    }
    let token = match (&config.token, &config.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    err(
                        "control.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let client = ControlClient::new(addr, server_id.clone(), store.clone())
        .map_err(|e| err("control.address", e.to_string()))?;
    let instance = config.instance.clone().unwrap_or_else(|| {
        // The kernel takes any bytes as a host name; the inventory does not.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        crate::control::api::sanitize_instance(&format!("{}/{}", host.trim(), std::process::id()))
    });
    let source = ControlSource::new(
        client.clone(),
        store.clone(),
        trust_domain.clone(),
        token,
        instance,
        config.svid_ttl,
        state.clone(),
    );
    let mut stop = shutdown.clone();
    tokio::spawn(run_rotation(
        store.clone(),
        source,
        RotationPolicy::default(),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ));
    let (policy_tx, policy_rx) = if config.policies {
        let (tx, rx) = watch::channel(None);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (state_tx, state_rx) = watch::channel(WatchState::default());
    tokio::spawn(run_watch(
        WatchTargets {
            client,
            store: store.clone(),
            trust_domain,
            policies: policy_tx,
            state: state_tx,
            state_dir: state,
        },
        shutdown.clone(),
    ));
    Ok((policy_rx, state_rx))
}
