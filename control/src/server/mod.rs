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

use crate::reason::{CsrReason, Reason};
use warden_proxy::control::api;
use warden_proxy::control::{ControlClient, digest_hex};
use warden_proxy::identity::{
    ExpectedIdentity, RotationPolicy, SpiffeId, Svid, SvidLeaf, SvidSource, SvidStore, SvidUpdate,
    Timestamp, TrustBundleSet, TrustDomain, new_key_and_csr, run_rotation,
};
use warden_proxy::tls::{ClientAuth, TlsVersions, server_config};
use x509_parser::prelude::FromDer;

use crate::ca::rotation::{self, Authorities, RotationPlan};
use crate::ca::{CertificateAuthority, CsrError, InitOptions, SignRequest};
use crate::files::{self, PRIVATE_MODE, PUBLIC_MODE};
use crate::store::{
    AuditEvent, Database, IdentityRecord, Signed, Store, StoreError, SvidRecord, unix_now,
};

mod admin;
mod input;
mod limiter;
mod maintain;
mod metrics;
mod workload;

pub use admin::{DEFAULT_ROTATION_GRACE, MAX_ROTATION_GRACE, MIN_ROTATION_GRACE};
use admin::{admin, admin_auth};
use input::{percent_decode, query_params, read_json};
use maintain::{maintain_authorities, poll_changes};
use metrics::serve_metrics;
use workload::{join, renew, watch_changes};

/// Largest request body, except policy pushes.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest policy push (the policy loader's own limit, plus JSON overhead).
pub const MAX_POLICY_BODY: usize = 40 * 1024 * 1024;
/// Default and longest join-token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest a watch waits before answering "nothing changed".
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

/// Counters for `/metrics`.
#[derive(Default)]
struct Counters {
    issued: BTreeMap<&'static str, u64>,
    refused: BTreeMap<(&'static str, String), u64>,
    revocations: u64,
    policy_pushes: u64,
    handshake_failures: u64,
}

struct State {
    /// The signing CA and the bundle now (changing during a CA rotation).
    cas: Arc<ArcSwap<Authorities>>,
    ca_dir: PathBuf,
    data_dir: PathBuf,
    db: Arc<Store>,
    admin_hash: [u8; 32],
    server_id: SpiffeId,
    /// The control plane's own SVID, re-issued when the signing CA changes.
    svid_store: Arc<SvidStore>,
    /// (revocation seq, policy head, bundle digest), refreshed from the
    /// database and the CA directory, so that replicas sharing them see
    /// each other's changes.
    changes: watch::Receiver<Changes>,
    counters: Mutex<Counters>,
    audit_limiter: Mutex<limiter::AuditLimiter>,
}

type Changes = (i64, Option<i64>, String);

impl State {
    fn bundle(&self) -> api::BundleResponse {
        let cas = self.cas.load();
        api::BundleResponse {
            trust_domain: cas.bundle.trust_domain().to_string(),
            bundle_pem: cas.bundle_pem.clone(),
            digest: cas.bundle_digest.clone(),
            version: api::VERSION.to_owned(),
        }
    }

    /// Whether a refusal from `source` gets its own audit row (see
    /// [`limiter`]).
    fn audit_admitted(&self, source: std::net::IpAddr) -> bool {
        self.audit_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(source, std::time::Instant::now())
    }

    /// Writes the summary rows of refusals that were not audited one by one.
    async fn flush_suppressed_audits(&self) {
        let due = self
            .audit_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take_due(std::time::Instant::now());
        for (source, count) in due {
            let event = AuditEvent::refused(
                "refusals_suppressed",
                "rate_limited",
                format!(
                    "{count} more refusals from {source} within {}s were counted in the metrics, not audited one by one",
                    limiter::WINDOW.as_secs()
                ),
                &source.to_string(),
            );
            let db = self.db.clone();
            let _ = tokio::task::spawn_blocking(move || db.audit(&event)).await;
        }
    }
}

/// `<data-dir>/bundle.pem`: the bundle now, for sidecars to bootstrap with.
fn write_bundle_file(data_dir: &Path, cas: &Authorities) -> Result<(), ServeError> {
    files::write_replace(
        &data_dir.join(BUNDLE_FILE),
        cas.bundle_pem.as_bytes(),
        PUBLIC_MODE,
    )
    .map_err(setup)
}

impl State {
    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

/// A running control plane; stops when dropped.
pub struct ControlPlane {
    pub endpoint: Endpoint,
    _shutdown: watch::Sender<bool>,
}

/// A refusal on its way to the caller: its reason decides the status.
struct Fail {
    reason: Reason,
    message: String,
    /// The audit record to write before answering, for refusals that are audited.
    audit: Option<Box<AuditEvent>>,
}

impl Fail {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Fail {
            reason,
            message: message.into(),
            audit: None,
        }
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        let reason = e.reason();
        if reason.status().is_server_error() {
            tracing::error!(reason = reason.code(), error = %e, "request failed");
        }
        Fail::new(reason, e.to_string())
    }
}

fn csr_refusal(e: CsrError) -> StoreError {
    // One namespace of reasons for the API: `csr_identity_mismatch`, ...;
    // the CA's own failures are not the caller's (500, 503).
    let reason = match &e {
        CsrError::Malformed(_) => Reason::Csr(CsrReason::Malformed),
        CsrError::BadSignature => Reason::Csr(CsrReason::BadSignature),
        CsrError::WeakKey(_) => Reason::Csr(CsrReason::WeakKey),
        CsrError::UnsupportedKey(_) => Reason::Csr(CsrReason::UnsupportedKey),
        CsrError::RequestsCa(_) => Reason::Csr(CsrReason::RequestsCa),
        CsrError::MultipleUriSans(_) => Reason::Csr(CsrReason::MultipleUriSans),
        CsrError::UnsupportedSan(_) => Reason::Csr(CsrReason::UnsupportedSan),
        CsrError::InvalidSpiffeId { .. } => Reason::Csr(CsrReason::InvalidSpiffeId),
        CsrError::IdentityMismatch { .. } => Reason::Csr(CsrReason::IdentityMismatch),
        CsrError::MissingSpiffeId => Reason::Csr(CsrReason::MissingSpiffeId),
        CsrError::ForeignTrustDomain { .. } => Reason::Csr(CsrReason::ForeignTrustDomain),
        CsrError::RootPathId(_) => Reason::Csr(CsrReason::RootPathId),
        CsrError::TtlTooLong { .. } => Reason::Csr(CsrReason::TtlTooLong),
        CsrError::TtlTooShort(_) => Reason::Csr(CsrReason::TtlTooShort),
        CsrError::CaExpired => Reason::CaExpired,
        CsrError::Internal(_) => Reason::Internal,
    };
    StoreError::refused(reason, e.to_string())
}

type Body = Full<Bytes>;

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn fail_response(fail: &Fail) -> Response<Body> {
    json_response(
        fail.reason.status(),
        &api::ApiError {
            error: fail.reason.code().to_owned(),
            message: fail.message.clone(),
        },
    )
}

/// Creates or loads everything in the data directory, binds both ports and
/// starts serving. Must run inside a tokio runtime.
pub async fn start(options: ServeOptions) -> Result<ControlPlane, ServeError> {
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
        let ca = CertificateAuthority::init(&ca_dir, &init).map_err(setup)?;
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
    // Blocking work (PostgreSQL's client runs its own runtime): off this one.
    let audit_stdout = options.audit_stdout;
    let opened = {
        let database = database.clone();
        tokio::task::spawn_blocking(move || {
            let db = Store::open(&database, audit_stdout)?;
            let marks = db.change_marks()?;
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
        Authorities::load(&ca_dir, unix_now(), None).map_err(setup)?,
    ));

    // The server's own SVID, from its own CA, renewed in-process.
    let svid_store = Arc::new(SvidStore::new());
    let local = LocalSource {
        cas: cas.clone(),
        id: server_id.clone(),
    };
    let first = local.fetch().await.map_err(setup)?;
    svid_store
        .install(first.svid, first.bundles)
        .map_err(setup)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    {
        let mut stop = shutdown_rx.clone();
        tokio::spawn(run_rotation(
            svid_store.clone(),
            local,
            RotationPolicy::default(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
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

    let (changes_tx, changes) =
        watch::channel((initial.0, initial.1, cas.load().bundle_digest.clone()));
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
    });
    tokio::spawn(poll_changes(state.clone(), changes_tx, shutdown_rx.clone()));
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

/// Reads `<data>/admin.token`, creating it (0600) on first start.
fn admin_token_hash(data: &Path) -> Result<[u8; 32], ServeError> {
    let path = data.join(ADMIN_TOKEN_FILE);
    if !path.exists() {
        let token = new_secret("wda_");
        files::write_new(&path, format!("{token}\n").as_bytes(), PRIVATE_MODE).map_err(setup)?;
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| setup(format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(setup(format!(
            "{} holds no usable admin token",
            path.display()
        )));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// A random secret: `prefix` and 32 bytes, base64url.
fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Issues the control plane's own SVID straight from its CA.
struct LocalSource {
    cas: Arc<ArcSwap<Authorities>>,
    id: SpiffeId,
}

impl SvidSource for LocalSource {
    type Error = ServeError;

    async fn fetch(&self) -> Result<SvidUpdate, ServeError> {
        let kc = new_key_and_csr(&self.id).map_err(setup)?;
        let cas = self.cas.load_full();
        // Signed by the oldest CA still published: every sidecar trusts
        // it, including one that has not yet learned a newer root.
        let issued = cas
            .oldest_published()
            .sign_csr(
                &kc.csr_der,
                &SignRequest {
                    bound_id: Some(self.id.clone()),
                    ttl: None,
                },
            )
            .map_err(setup)?;
        let svid =
            Svid::from_pem(issued.chain_pem().as_bytes(), kc.key_pem.as_bytes()).map_err(setup)?;
        Ok(SvidUpdate {
            svid,
            bundles: Some(TrustBundleSet::new().with(cas.bundle.clone())),
        })
    }
}

/// The facts of an mTLS caller.
#[derive(Debug, Clone)]
struct Caller {
    id: SpiffeId,
    serial: String,
}

async fn serve_api(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    handshake_refused(&state, remote, &e);
                    return;
                }
                Err(_) => return,
            };
            let caller = tls.get_ref().1.peer_certificates().and_then(|certs| {
                let leaf = SvidLeaf::parse(certs.first()?, Timestamp::now()).ok()?;
                Some(Caller {
                    id: leaf.spiffe_id,
                    serial: leaf.serial,
                })
            });
            let service = service_fn(move |req| {
                let state = state.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(route(&state, caller.as_ref(), remote, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(64 * 1024)
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "API connection ended with an error");
            }
        });
    }
}

/// A client that presented a certificate we refuse (expired, revoked,
/// foreign) is audited: it is a workload failing to renew or an intruder.
fn handshake_refused(state: &State, remote: SocketAddr, e: &std::io::Error) {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return;
    };
    if !matches!(tls, rustls::Error::InvalidCertificate(_)) {
        return;
    }
    let reason = warden_proxy::identity::describe_tls_error(tls);
    state.count(|c| c.handshake_failures += 1);
    if !state.audit_admitted(remote.ip()) {
        return;
    }
    let event = AuditEvent::refused(
        "handshake",
        "bad_client_certificate",
        reason,
        &remote.to_string(),
    );
    let db = state.db.clone();
    tokio::task::spawn_blocking(move || db.audit(&event));
}

async fn route(
    state: &Arc<State>,
    caller: Option<&Caller>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = match (&method, path.as_str()) {
        (&Method::GET, api::BUNDLE) => Ok(json_response(StatusCode::OK, &state.bundle())),
        (&Method::POST, api::JOIN) => join(state, remote, req).await,
        (&Method::POST, api::RENEW) => renew(state, caller, req).await,
        (&Method::GET, api::WATCH) => watch_changes(state, caller, req).await,
        (_, p) if p.starts_with("/v1/admin/") => match admin_auth(state, &req, remote) {
            Ok(()) => admin(state, req).await,
            Err(fail) => Err(fail),
        },
        (_, api::BUNDLE | api::JOIN | api::RENEW | api::WATCH) => Err(Fail::new(
            Reason::MethodNotAllowed,
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(Fail::new(Reason::NotFound, format!("no endpoint {path}"))),
    };
    let mut response = match result {
        Ok(response) => response,
        Err(mut fail) => {
            // The audit row is written before the caller hears the refusal.
            if let Some(event) = fail.audit.take()
                && state.audit_admitted(remote.ip())
            {
                let db = state.db.clone();
                let _ = tokio::task::spawn_blocking(move || db.audit(&event)).await;
            }
            fail_response(&fail)
        }
    };
    response.headers_mut().insert(
        api::VERSION_HEADER,
        header::HeaderValue::from_static(api::VERSION),
    );
    response
}

/// Runs a blocking store call off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::refused(Reason::Internal, e.to_string())))
}

/// Audits and counts a refusal, then hands it on.
fn refused(
    state: &State,
    event: &'static str,
    actor: &str,
    id: Option<&str>,
    mut fail: Fail,
) -> Fail {
    let code = fail.reason.code();
    state.count(|c| *c.refused.entry((event, code.to_owned())).or_default() += 1);
    fail.audit = Some(Box::new(
        AuditEvent::refused(event, code, fail.message.clone(), actor).with_id(id),
    ));
    fail
}
