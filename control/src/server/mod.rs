//! `warden control serve`: the HTTPS API (join, renew, watch, admin) and a
//! plaintext health and metrics port.
//!
//! Sidecars join with a single-use token and renew with their current SVID
//! over mTLS; the server presents its own SVID
//! (`spiffe://<trust domain>/warden/control`), signed by the same CA and
//! renewed in-process. Admin calls carry the bearer token from
//! `<data-dir>/admin.token` (0600), created on first start.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use warden_proxy::authz::{PolicyFiles, PolicySnapshot};

use crate::reason::Reason;
use warden_proxy::control::api;
use warden_proxy::control::{ControlClient, digest_hex};
use warden_proxy::identity::{
    ExpectedIdentity, RotationPolicy, SpiffeId, Svid, SvidLeaf, SvidSource, SvidStore, SvidUpdate,
    Timestamp, TrustBundleSet, TrustDomain, new_key_and_csr, run_rotation_with_clock,
};
use warden_proxy::tls::{ClientAuth, TlsVersions, server_config};
use x509_parser::prelude::FromDer;

use crate::ca::rotation::{self, Authorities, RotationPlan};
use crate::ca::{CertificateAuthority, CsrError, InitOptions, SignRequest};
use crate::clock::{self, Clock};
use crate::files::{self, PRIVATE_MODE, PUBLIC_MODE};
use crate::store::{
    AuditEvent, AuditSink, Database, EndpointOwner, EndpointRecord, IdentityRecord, IdentityStatus,
    Signed, Store, StoreError, SvidKind, SvidRecord, UnknownWord,
};

mod admin;
mod credentials;
mod federation;
mod input;
mod limiter;
mod maintain;
mod metrics;
mod response;
mod router;
mod state;
mod usage;
mod workload;

pub use admin::{DEFAULT_ROTATION_GRACE, MAX_ROTATION_GRACE, MIN_ROTATION_GRACE};
use admin::{admin, admin_auth};
use credentials::{LocalSource, admin_token_hash, new_secret};
pub use federation::{DEFAULT_REFRESH, Federation};
use input::{percent_decode, query_params, read_json};
use maintain::{maintain_authorities, poll_changes};
use metrics::serve_metrics;
use response::{Body, Fail, blocking, csr_refusal, fail_response, json_response, refused};
use router::{Caller, serve_api};
use state::{Changes, Counters, State, write_bundle_file};
pub use usage::DEFAULT_WINDOW_SECS;
use workload::{
    attest_k8s, endpoint_list, issue_jwt, join, register_endpoints, renew, watch_changes,
};

/// Largest request body, except policy pushes.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest policy push (the policy loader's own limit, plus JSON overhead).
pub const MAX_POLICY_BODY: usize = 40 * 1024 * 1024;
/// Default and longest join-token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest a watch waits before answering "nothing changed".
/// The default `--usage-retention`.
pub const DEFAULT_USAGE_RETENTION: Duration = Duration::from_secs(30 * 86_400);
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(60);
/// Trust domain of a CA created on first start without `--trust-domain`.
pub const DEFAULT_TRUST_DOMAIN: &str = "warden.local";

/// Files in the data directory.
pub const DB_FILE: &str = "control.db";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const ENDPOINT_FILE: &str = "control.json";
pub const BUNDLE_FILE: &str = "bundle.pem";

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    /// The HTTPS API.
    pub listen: SocketAddr,
    /// Plaintext `/live`, `/ready`, `/metrics`.
    pub metrics_listen: SocketAddr,
    /// CA directory; default `<data-dir>/ca`, created on first start.
    pub ca_dir: Option<PathBuf>,
    /// Trust domain of a CA created on first start.
    pub trust_domain: Option<TrustDomain>,
    /// Default SVID lifetime of a CA created on first start.
    pub svid_ttl: Option<Duration>,
    /// The database: SQLite `<data-dir>/control.db` when `None`.
    pub database: Option<Database>,
    /// Print every audit record as a JSON line on stdout (besides the
    /// database row).
    pub audit_stdout: bool,
    /// Which addresses a sidecar may register for discovery.
    pub endpoint_addresses: EndpointAddresses,
    /// Attestation from Kubernetes service-account tokens, when configured.
    pub k8s: Option<crate::attest::K8sOptions>,
    /// Trust domains to federate with through their bundle endpoints.
    pub federate_with: Vec<Federation>,
    /// The `spiffe_refresh_hint` of the bundle we serve.
    pub bundle_refresh_hint: Duration,
    /// How long usage is kept (`--usage-retention`): older days and edges
    /// not seen since are deleted.
    pub usage_retention: Duration,
    /// At most this many PostgreSQL connections (`--database-connections`).
    pub database_connections: usize,
}

/// Which addresses a sidecar may register for discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointAddresses {
    /// Only the address its registration comes from: a workload cannot
    /// claim an address that is not its own (the default).
    #[default]
    Caller,
    /// Any address no other live identity holds: for sidecars that reach
    /// the control plane through NAT or a proxy.
    Any,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn setup(e: impl std::fmt::Display) -> ServeError {
    ServeError::Setup(e.to_string())
}

/// Where a running control plane listens and who it is; written to
/// `<data-dir>/control.json` for the CLI and for sidecars set up by scripts.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub server_id: String,
    pub trust_domain: String,
}

/// A running control plane; stops when dropped.
pub struct ControlPlane {
    pub endpoint: Endpoint,
    _shutdown: watch::Sender<bool>,
}

/// What a control plane takes from the program that embeds it, besides its
/// options: where the time comes from, and where audit lines go when
/// `audit_stdout` is set. `warden control serve` uses the defaults (the
/// system clock, stdout); tests run it in-process on a clock they set.
#[derive(Clone)]
pub struct Surroundings {
    pub clock: Arc<dyn Clock>,
    pub audit_sink: Option<AuditSink>,
}

impl Default for Surroundings {
    fn default() -> Self {
        Surroundings {
            clock: clock::system(),
            audit_sink: None,
        }
    }
}

/// Creates or loads everything in the data directory, binds both ports and
/// starts serving. Must run inside a tokio runtime.
pub async fn start(options: ServeOptions) -> Result<ControlPlane, ServeError> {
    start_with(options, Surroundings::default()).await
}

/// [`start`] in `surroundings`.
pub async fn start_with(
    options: ServeOptions,
    surroundings: Surroundings,
) -> Result<ControlPlane, ServeError> {
    let Surroundings { clock, audit_sink } = surroundings;
    let data = &options.data_dir;
    std::fs::create_dir_all(data)
        .map_err(|e| setup(format!("cannot create {}: {e}", data.display())))?;
    // The database holds the inventory and token hashes: owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| setup(format!("cannot restrict {}: {e}", data.display())))?;
    }
    let ca_dir = options.ca_dir.clone().unwrap_or_else(|| data.join("ca"));
    let ca = if ca_dir.join("ca.json").exists() {
        CertificateAuthority::load(&ca_dir).map_err(setup)?
    } else {
        let td = match &options.trust_domain {
            Some(td) => td.clone(),
            None => TrustDomain::new(DEFAULT_TRUST_DOMAIN).map_err(setup)?,
        };
        let mut init = InitOptions::new(td);
        if let Some(ttl) = options.svid_ttl {
            init.default_svid_ttl = ttl;
        }
        let ca = CertificateAuthority::init_at(&ca_dir, &init, clock.now()).map_err(setup)?;
        tracing::info!(dir = %ca_dir.display(), trust_domain = %ca.trust_domain(), "created a new CA");
        ca
    };
    if let Some(td) = &options.trust_domain
        && td != ca.trust_domain()
    {
        return Err(setup(format!(
            "the CA in {} is for trust domain {}, not {td}",
            ca_dir.display(),
            ca.trust_domain()
        )));
    }
    let ca = Arc::new(ca);
    let database = options
        .database
        .clone()
        .unwrap_or_else(|| Database::Sqlite(data.join(DB_FILE)));
    let mut linked = std::collections::BTreeSet::new();
    for link in &options.federate_with {
        if link.trust_domain == *ca.trust_domain() {
            return Err(setup(format!(
                "--federate-with {}: that is this control plane's own trust domain",
                link.url
            )));
        }
        if !linked.insert(link.trust_domain.name().to_owned()) {
            return Err(setup(format!(
                "--federate-with names trust domain {} twice",
                link.trust_domain.name()
            )));
        }
    }
    // Blocking work (PostgreSQL migrations use a blocking client, which runs
    // its own runtime): off this one.
    let audit_stdout = options.audit_stdout;
    let connections = options.database_connections;
    let opened = {
        let database = database.clone();
        let now = clock.unix_now();
        tokio::task::spawn_blocking(move || {
            let mut db = Store::open(&database, audit_stdout)?.with_connections(connections);
            if let Some(sink) = audit_sink {
                db = db.with_audit_sink(sink);
            }
            let marks = db.change_marks(now)?;
            Ok::<_, StoreError>((db, marks))
        })
        .await
        .map_err(setup)?
    };
    let (db, initial) = opened.map_err(|e| setup(format!("{}: {e}", database.describe())))?;
    let db = Arc::new(db);
    tracing::info!(database = %database.describe(), "state store open");
    let admin_hash = admin_token_hash(data)?;
    let server_id = ca
        .trust_domain()
        .workload_id("/warden/control")
        .map_err(setup)?;
    let cas = Arc::new(ArcSwap::from_pointee(
        Authorities::load(&ca_dir, clock.unix_now(), None).map_err(setup)?,
    ));

    // The server's own SVID, from its own CA, renewed in-process.
    let svid_store = Arc::new(SvidStore::new());
    let local = LocalSource {
        cas: cas.clone(),
        id: server_id.clone(),
        clock: clock.clone(),
    };
    let first = local.fetch().await.map_err(setup)?;
    svid_store
        .install(first.svid, first.bundles)
        .map_err(setup)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    {
        let mut stop = shutdown_rx.clone();
        let clock = clock.clone();
        tokio::spawn(run_rotation_with_clock(
            svid_store.clone(),
            local,
            RotationPolicy::default(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
            move || clock.now(),
        ));
    }
    let tls = server_config(
        svid_store.clone(),
        ClientAuth::Optional,
        ExpectedIdentity::AnyTrusted,
        TlsVersions::Tls13Only,
        &[b"http/1.1"],
    )
    .map_err(setup)?;

    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.listen,
            source,
        })?;
    let metrics_listener = TcpListener::bind(options.metrics_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.metrics_listen,
            source,
        })?;
    let endpoint = Endpoint {
        address: listener.local_addr().map_err(setup)?,
        metrics_address: metrics_listener.local_addr().map_err(setup)?,
        server_id: server_id.to_string(),
        trust_domain: ca.trust_domain().to_string(),
    };
    write_bundle_file(data, &cas.load())?;
    files::write_replace(
        &data.join(ENDPOINT_FILE),
        serde_json::to_string_pretty(&endpoint)
            .unwrap_or_default()
            .as_bytes(),
        PUBLIC_MODE,
    )
    .map_err(setup)?;

    let k8s = match options.k8s.clone() {
        Some(k8s) => {
            let attestor =
                crate::attest::K8sAttestor::new(k8s, ca.trust_domain().clone()).map_err(setup)?;
            tracing::info!(allow = ?attestor.allow_list(), "Kubernetes service-account attestation on");
            Some(attestor)
        }
        None => None,
    };
    let (changes, _) = watch::channel(Changes {
        revocation_seq: initial.revocation_seq,
        policy_head: initial.policy_head,
        bundle_digest: cas.load().bundle_digest.clone(),
        endpoints_mark: initial.endpoints,
        federation_mark: initial.federation,
    });
    let state = Arc::new(State {
        cas,
        ca_dir,
        data_dir: data.clone(),
        db,
        admin_hash,
        server_id,
        svid_store,
        changes,
        counters: Mutex::new(Counters::default()),
        audit_limiter: Mutex::new(limiter::AuditLimiter::new(std::time::Instant::now())),
        clock,
        endpoint_addresses: options.endpoint_addresses,
        k8s,
        bundle_refresh_hint: options.bundle_refresh_hint,
        usage_retention: options.usage_retention,
        federation: options.federate_with.clone(),
        federation_status: Mutex::default(),
    });
    tokio::spawn(poll_changes(state.clone(), shutdown_rx.clone()));
    for link in options.federate_with {
        tracing::info!(trust_domain = %link.trust_domain.name(), endpoint = %link.url, "federating");
        tokio::spawn(federation::follow(state.clone(), link, shutdown_rx.clone()));
    }
    tokio::spawn(serve_api(
        listener,
        TlsAcceptor::from(tls),
        state.clone(),
        shutdown_rx.clone(),
    ));
    tokio::spawn(serve_metrics(metrics_listener, state, shutdown_rx));
    Ok(ControlPlane {
        endpoint,
        _shutdown: shutdown,
    })
}

/// An admin client for the control plane whose data directory is `data`:
/// its address and ID from `control.json`, the bundle from `bundle.pem`,
/// the bearer token from `admin.token`.
pub fn admin_client(data: &Path) -> Result<ControlClient, ServeError> {
    let read = |name: &str| {
        std::fs::read(data.join(name))
            .map_err(|e| setup(format!("cannot read {}: {e}", data.join(name).display())))
    };
    let endpoint: Endpoint = serde_json::from_slice(&read(ENDPOINT_FILE)?)
        .map_err(|e| setup(format!("{}: {e}", data.join(ENDPOINT_FILE).display())))?;
    let server_id = SpiffeId::parse(&endpoint.server_id).map_err(setup)?;
    let token = String::from_utf8_lossy(&read(ADMIN_TOKEN_FILE)?)
        .trim()
        .to_owned();
    Ok(
        ControlClient::trusting(endpoint.address, server_id, &read(BUNDLE_FILE)?)
            .map_err(setup)?
            .with_bearer(token),
    )
}
