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
use http_body_util::{BodyExt, Full, Limited};
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
use warden_proxy::control::api;
use warden_proxy::control::digest_hex;
use warden_proxy::identity::{
    ExpectedIdentity, RotationPolicy, SpiffeId, Svid, SvidLeaf, SvidSource, SvidStore, SvidUpdate,
    Timestamp, TrustBundle, TrustBundleSet, TrustDomain, new_key_and_csr, run_rotation,
};
use warden_proxy::tls::{ClientAuth, TlsVersions, server_config};
use x509_parser::prelude::FromDer;

use crate::ca::rotation::{self, Authorities, RotationPlan};
use crate::ca::{CertificateAuthority, CsrError, InitOptions, SignRequest};
use crate::files::{self, PRIVATE_MODE, PUBLIC_MODE};
use crate::store::{
    AuditEvent, Database, IdentityRecord, Signed, Store, StoreError, SvidRecord, unix_now,
};

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
}

type Changes = (i64, Option<i64>, String);

impl State {
    fn bundle(&self) -> api::BundleResponse {
        bundle_response(&self.cas.load().bundle)
    }
}

fn bundle_response(bundle: &TrustBundle) -> api::BundleResponse {
    let pem = bundle.to_pem();
    api::BundleResponse {
        trust_domain: bundle.trust_domain().to_string(),
        digest: digest_hex(pem.as_bytes()),
        bundle_pem: pem,
    }
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

/// A refusal on its way to the caller.
struct Fail {
    status: StatusCode,
    code: String,
    message: String,
    /// The audit record to write before answering, for refusals that are audited.
    audit: Option<Box<AuditEvent>>,
}

impl Fail {
    fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Fail {
            status,
            code: code.into(),
            message: message.into(),
            audit: None,
        }
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::Db { .. } => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Refused { code, .. } => match *code {
                c if c.starts_with("csr_") => StatusCode::BAD_REQUEST,
                "unknown_identity" | "unknown_serial" | "unknown_version" => StatusCode::NOT_FOUND,
                "already_revoked" => StatusCode::CONFLICT,
                _ => StatusCode::FORBIDDEN,
            },
        };
        if let StoreError::Db { message, .. } = &e {
            tracing::error!(error = %message, "database error");
        }
        Fail::new(status, e.code(), e.to_string())
    }
}

fn csr_refusal(e: CsrError) -> StoreError {
    // One namespace of reasons for the API: `csr_identity_mismatch`, ...
    let code: &'static str = match e.code() {
        "malformed_csr" => "csr_malformed",
        "bad_signature" => "csr_bad_signature",
        "weak_key" => "csr_weak_key",
        "unsupported_key" => "csr_unsupported_key",
        "requests_ca" => "csr_requests_ca",
        "multiple_uri_sans" => "csr_multiple_uri_sans",
        "unsupported_san" => "csr_unsupported_san",
        "invalid_spiffe_id" => "csr_invalid_spiffe_id",
        "identity_mismatch" => "csr_identity_mismatch",
        "missing_spiffe_id" => "csr_missing_spiffe_id",
        "foreign_trust_domain" => "csr_foreign_trust_domain",
        "root_path_id" => "csr_root_path_id",
        "ttl_too_long" => "csr_ttl_too_long",
        "ttl_too_short" => "csr_ttl_too_short",
        "ca_expired" => "ca_expired",
        _ => "csr_internal",
    };
    StoreError::refused(code, e.to_string())
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
        fail.status,
        &api::ApiError {
            error: fail.code.clone(),
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
    let bundle = bundle_response(&cas.load().bundle);
    files::write_replace(
        &data.join(BUNDLE_FILE),
        bundle.bundle_pem.as_bytes(),
        PUBLIC_MODE,
    )
    .map_err(setup)?;
    files::write_replace(
        &data.join(ENDPOINT_FILE),
        serde_json::to_string_pretty(&endpoint)
            .unwrap_or_default()
            .as_bytes(),
        PUBLIC_MODE,
    )
    .map_err(setup)?;

    let (changes_tx, changes) = watch::channel((initial.0, initial.1, bundle.digest));
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

async fn poll_changes(
    state: Arc<State>,
    tx: watch::Sender<Changes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
        tick += 1;
        if tick.is_multiple_of(4)
            && let Err(e) = maintain_authorities(&state).await
        {
            tracing::warn!(error = %e, "CA rotation step failed; retrying");
        }
        let db = state.db.clone();
        let read = tokio::task::spawn_blocking(move || db.change_marks()).await;
        match read {
            Ok(Ok((seq, head))) => {
                let now = (seq, head, state.bundle().digest);
                tx.send_if_modified(|old| {
                    let changed = *old != now;
                    *old = now;
                    changed
                });
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the change counters"),
            Err(e) => tracing::warn!(error = %e, "change poller task failed"),
        }
    }
}

/// Follows the CA rotation plan: switches the signing CA and the bundle
/// when their times come (re-issuing the server's own SVID from the new
/// CA), and retires an old root once every SVID it signed has expired.
async fn maintain_authorities(state: &Arc<State>) -> Result<(), ServeError> {
    let now = unix_now();
    let ca_dir = state.ca_dir.clone();
    let plan = {
        let dir = ca_dir.clone();
        tokio::task::spawn_blocking(move || RotationPlan::read(&dir))
            .await
            .map_err(setup)?
            .map_err(setup)?
    };
    // Retire: an old CA that no longer signs, once its SVIDs are all expired.
    let signing = plan.signing_at(now);
    for (i, authority) in plan.authorities.iter().enumerate().take(signing) {
        if authority.retired_at.is_some() {
            continue;
        }
        let Some(next) = plan.authorities.get(i + 1) else {
            continue;
        };
        // Margin for an issuance that was deciding when the switch came.
        let switched = next.sign_from.saturating_add(5);
        if now < switched {
            continue;
        }
        let db = state.db.clone();
        let last_expiry = tokio::task::spawn_blocking(move || db.last_expiry_issued_by(switched))
            .await
            .map_err(setup)?
            .map_err(setup)?;
        if last_expiry < now {
            let dir = ca_dir.clone();
            tokio::task::spawn_blocking(move || rotation::retire(&dir, i, now))
                .await
                .map_err(setup)?
                .map_err(setup)?;
            tracing::info!(authority = %authority.dir, "every SVID of the old CA has expired; its root leaves the trust bundle");
            let db = state.db.clone();
            let event = AuditEvent::ok("ca_retire", None, None, "control-plane")
                .with_detail(format!("CA {} retired", authority.dir));
            let _ = tokio::task::spawn_blocking(move || db.audit(&event)).await;
        }
    }
    let plan = {
        let dir = ca_dir.clone();
        tokio::task::spawn_blocking(move || RotationPlan::read(&dir))
            .await
            .map_err(setup)?
            .map_err(setup)?
    };
    let current = state.cas.load_full();
    if current.unchanged_at(now, &plan) {
        return Ok(());
    }
    let dir = ca_dir.clone();
    let previous = current.clone();
    let next = tokio::task::spawn_blocking(move || Authorities::load(&dir, now, Some(&previous)))
        .await
        .map_err(setup)?
        .map_err(setup)?;
    let signer_changed = !Arc::ptr_eq(&next.signing, &current.signing);
    let roots = next.bundle.roots().len();
    state.cas.store(Arc::new(next));
    let bundle = state.bundle();
    files::write_replace(
        &state.data_dir.join(BUNDLE_FILE),
        bundle.bundle_pem.as_bytes(),
        PUBLIC_MODE,
    )
    .map_err(setup)?;
    tracing::info!(roots, signer_changed, "trust bundle or signing CA changed");
    // The bundle changed either way: re-issue our own SVID so it chains to
    // the signing CA and our store trusts exactly the published roots.
    let local = LocalSource {
        cas: state.cas.clone(),
        id: state.server_id.clone(),
    };
    let fresh = local.fetch().await?;
    state
        .svid_store
        .install(fresh.svid, fresh.bundles)
        .map_err(setup)?;
    Ok(())
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
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(Fail::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint {path}"),
        )),
    };
    match result {
        Ok(response) => response,
        Err(mut fail) => {
            // The audit row is written before the caller hears the refusal.
            if let Some(event) = fail.audit.take() {
                let db = state.db.clone();
                let _ = tokio::task::spawn_blocking(move || db.audit(&event)).await;
            }
            fail_response(&fail)
        }
    }
}

async fn read_json<T: DeserializeOwned>(req: Request<Incoming>, limit: usize) -> Result<T, Fail> {
    let too_large = || {
        Fail::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    };
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(too_large());
    }
    let bytes = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                Fail::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string())
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| Fail::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))
}

/// Runs a blocking store call off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::refused("internal", e.to_string())))
}

/// Signs `csr` for `bound` and describes the result for the inventory.
fn sign(
    cas: &Authorities,
    csr: &str,
    bound: &str,
    ttl_secs: Option<u64>,
    kind: &str,
    instance: &str,
) -> Result<Signed<api::SvidResponse>, StoreError> {
    let bound_id = SpiffeId::parse(bound)
        .map_err(|e| StoreError::refused("internal", format!("stored ID {bound:?}: {e}")))?;
    let issued = cas
        .signing
        .sign_csr(
            csr.as_bytes(),
            &SignRequest {
                bound_id: Some(bound_id),
                ttl: ttl_secs.map(Duration::from_secs),
            },
        )
        .map_err(csr_refusal)?;
    let key_sha256 = issued
        .chain
        .first()
        .and_then(|leaf| x509_parser::certificate::X509Certificate::from_der(leaf).ok())
        .map(|(_, cert)| digest_hex(cert.tbs_certificate.subject_pki.raw))
        .unwrap_or_default();
    let record = SvidRecord {
        serial: issued.serial.clone(),
        spiffe_id: issued.spiffe_id.to_string(),
        key_sha256,
        issued_at: unix_now(),
        expires_at: issued.not_after.0,
        kind: kind.to_owned(),
        instance: instance.chars().take(200).collect(),
        revoked: false,
    };
    Ok(Signed {
        value: api::SvidResponse {
            spiffe_id: record.spiffe_id.clone(),
            serial: record.serial.clone(),
            expires_at: record.expires_at,
            chain_pem: issued.chain_pem(),
            bundle_pem: cas.bundle.to_pem(),
        },
        record,
    })
}

/// Audits and counts a refusal, then hands it on.
fn refused(
    state: &State,
    event: &'static str,
    actor: &str,
    id: Option<&str>,
    mut fail: Fail,
) -> Fail {
    state.count(|c| *c.refused.entry((event, fail.code.clone())).or_default() += 1);
    fail.audit = Some(Box::new(
        AuditEvent::refused(event, &fail.code, fail.message.clone(), actor).with_id(id),
    ));
    fail
}

async fn join(
    state: &Arc<State>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let actor = remote.to_string();
    let body: api::JoinRequest = read_json(req, MAX_BODY)
        .await
        .map_err(|f| refused(state, "join", &actor, None, f))?;
    let hash = digest_hex(body.token.as_bytes());
    let actor = format!("token:{}", &hash[..12]);
    // The signing CA is read inside the transaction (which may be retried):
    // an SVID is never signed by a CA that stopped signing meanwhile.
    let cas = state.cas.clone();
    let db = state.db.clone();
    let outcome = blocking(move || {
        db.redeem_token(&hash, unix_now(), |bound| {
            sign(
                &cas.load(),
                &body.csr,
                bound,
                body.ttl_secs,
                "join",
                &body.instance,
            )
        })
    })
    .await;
    match outcome {
        Ok(svid) => {
            state.count(|c| *c.issued.entry("join").or_default() += 1);
            Ok(json_response(StatusCode::OK, &svid))
        }
        Err(e) => Err(refused(state, "join", &actor, None, e.into())),
    }
}

async fn renew(
    state: &Arc<State>,
    caller: Option<&Caller>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let Some(caller) = caller.cloned() else {
        return Err(refused(
            state,
            "renew",
            "anonymous",
            None,
            Fail::new(
                StatusCode::UNAUTHORIZED,
                "mtls_required",
                "renewal needs the current SVID as the TLS client certificate",
            ),
        ));
    };
    let id = caller.id.to_string();
    let body: api::RenewRequest = read_json(req, MAX_BODY)
        .await
        .map_err(|f| refused(state, "renew", &id, Some(&id), f))?;
    let cas = state.cas.clone();
    let db = state.db.clone();
    let (bound, serial) = (id.clone(), caller.serial.clone());
    let outcome = blocking(move || {
        db.renew(&bound, &serial, |bound| {
            sign(
                &cas.load(),
                &body.csr,
                bound,
                body.ttl_secs,
                "renew",
                &body.instance,
            )
        })
    })
    .await;
    match outcome {
        Ok(svid) => {
            state.count(|c| *c.issued.entry("renew").or_default() += 1);
            Ok(json_response(StatusCode::OK, &svid))
        }
        Err(e) => Err(refused(state, "renew", &id, Some(&id), e.into())),
    }
}

fn query_params(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v)))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn watch_changes(
    state: &Arc<State>,
    caller: Option<&Caller>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let Some(caller) = caller else {
        return Err(Fail::new(
            StatusCode::UNAUTHORIZED,
            "mtls_required",
            "the watch needs an SVID as the TLS client certificate",
        ));
    };
    let q = query_params(&req);
    let known_seq: i64 = q
        .get("revocations")
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    let known_bundle = q.get("bundle").cloned().unwrap_or_default();
    let known_policy = q.get("policy").cloned().unwrap_or_default();
    let wait = q
        .get("wait_ms")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::ZERO)
        .min(MAX_WATCH_WAIT);
    let policy_differs = |head: Option<i64>| match known_policy.as_str() {
        "any" => false,
        "none" | "" => head.is_some(),
        v => head.map(|h| h.to_string()) != Some(v.to_owned()),
    };
    let mut changes = state.changes.clone();
    let deadline = tokio::time::Instant::now() + wait;
    let head = loop {
        let (seq, head, digest) = changes.borrow_and_update().clone();
        if seq != known_seq || known_bundle != digest || policy_differs(head) {
            break head;
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => break head,
        }
    };
    let db = state.db.clone();
    let with_policy = policy_differs(head);
    let (revocations, policy) = blocking(move || {
        let revocations = db.revocations(unix_now())?;
        let policy = if with_policy {
            db.current_policy()?
        } else {
            None
        };
        Ok((revocations, policy))
    })
    .await?;
    if revocations
        .spiffe_ids
        .iter()
        .any(|r| *r == caller.id.as_str())
        || revocations.serials.contains(&caller.serial)
    {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            "identity_revoked",
            format!("{} is revoked", caller.id),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &api::WatchResponse {
            revocations: api::RevocationList {
                seq: revocations.seq,
                spiffe_ids: revocations.spiffe_ids,
                serials: revocations.serials,
            },
            bundle: state.bundle(),
            policy_version: head,
            policy: policy.map(|p| api::PolicyUpdate {
                version: p.version,
                digest: p.digest,
                files: p.files,
            }),
        },
    ))
}

fn admin_auth(state: &State, req: &Request<Incoming>, remote: SocketAddr) -> Result<(), Fail> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let fail = match presented {
        None => Fail::new(
            StatusCode::UNAUTHORIZED,
            "admin_credentials_required",
            "admin calls need `Authorization: Bearer <token from admin.token>`",
        ),
        Some(token) => {
            let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            // Constant time: compare every byte whatever the first mismatch.
            let diff = hash
                .iter()
                .zip(state.admin_hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                return Ok(());
            }
            Fail::new(
                StatusCode::UNAUTHORIZED,
                "bad_admin_credentials",
                "the admin token is not valid",
            )
        }
    };
    Err(refused(state, "admin", &remote.to_string(), None, fail))
}

async fn admin(state: &Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Fail> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let db = state.db.clone();
    match (&method, path.as_str()) {
        (&Method::POST, api::ADMIN_TOKENS) => {
            let body: api::TokenRequest = read_json(req, MAX_BODY).await?;
            create_token(state, body).await
        }
        (&Method::GET, api::ADMIN_IDENTITIES) => {
            let q = query_params(&req);
            let now = unix_now();
            let mut list = blocking(move || db.identities(now)).await?;
            if let Some(status) = q.get("status") {
                list.retain(|i| i.status == *status);
            }
            if let Some(within) = q.get("expiring_within_secs") {
                let within: i64 = within.parse().map_err(|_| {
                    Fail::new(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        "expiring_within_secs must be a number of seconds",
                    )
                })?;
                list.retain(|i| {
                    i.status == "active"
                        && i.expires_at
                            .is_some_and(|e| e <= now.saturating_add(within))
                });
            }
            Ok(json_response(StatusCode::OK, &list))
        }
        (&Method::GET, p)
            if p.strip_prefix(api::ADMIN_IDENTITIES)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|key| !key.is_empty()) =>
        {
            let key = p
                .strip_prefix(api::ADMIN_IDENTITIES)
                .and_then(|rest| rest.strip_prefix('/'))
                .map(percent_decode)
                .unwrap_or_default();
            let now = unix_now();
            let found = blocking(move || {
                let id = if key.starts_with("spiffe://") {
                    key
                } else {
                    match db.owner_of_serial(&key.to_ascii_lowercase().replace(':', ""))? {
                        Some(id) => id,
                        None => return Ok(None),
                    }
                };
                db.identity(&id, now)
            })
            .await?;
            match found {
                Some((identity, svids)) => Ok(json_response(
                    StatusCode::OK,
                    &IdentityDetail { identity, svids },
                )),
                None => Err(Fail::new(
                    StatusCode::NOT_FOUND,
                    "unknown_identity",
                    "no such identity or serial in the inventory",
                )),
            }
        }
        (&Method::POST, api::ADMIN_REVOCATIONS) => {
            let body: api::RevokeRequest = read_json(req, MAX_BODY).await?;
            if body.reason.trim().is_empty() {
                return Err(Fail::new(
                    StatusCode::BAD_REQUEST,
                    "reason_required",
                    "a revocation needs a reason",
                ));
            }
            let (id, n) =
                blocking(move || db.revoke(body.target.trim(), body.reason.trim(), unix_now()))
                    .await?;
            state.count(|c| c.revocations += 1);
            let db = state.db.clone();
            let seq = blocking(move || db.revocation_seq()).await?;
            Ok(json_response(
                StatusCode::OK,
                &api::RevokeResponse {
                    spiffe_id: id,
                    svids_revoked: n,
                    seq,
                },
            ))
        }
        (&Method::GET, api::ADMIN_POLICIES) => {
            let (versions, current) =
                blocking(move || Ok((db.policy_versions()?, db.policy_head()?))).await?;
            let versions: Vec<_> = versions
                .into_iter()
                .map(|(version, created_at, digest)| serde_json::json!({"version": version, "created_at": created_at, "digest": digest}))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"current": current, "versions": versions}),
            ))
        }
        (&Method::POST, api::ADMIN_POLICIES) => {
            let body: api::PolicyPush = read_json(req, MAX_POLICY_BODY).await?;
            let (digest, count) = validate_policies(&body.files)?;
            let files = body.files;
            let d = digest.clone();
            let (version, changed) =
                blocking(move || db.push_policy(&d, &files, unix_now())).await?;
            state.count(|c| c.policy_pushes += 1);
            Ok(json_response(
                StatusCode::OK,
                &api::PolicyPushResponse {
                    version,
                    digest,
                    changed,
                    policies: count,
                },
            ))
        }
        (&Method::POST, api::ADMIN_POLICY_ROLLBACK) => {
            let body: api::PolicyRollback = read_json(req, MAX_BODY).await?;
            let bundle = blocking(move || db.rollback_policy(body.version)).await?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"version": bundle.version, "digest": bundle.digest}),
            ))
        }
        (&Method::GET, api::ADMIN_CA) => {
            let cas = state.cas.load_full();
            Ok(json_response(StatusCode::OK, &ca_status(&cas)))
        }
        (&Method::POST, api::ADMIN_CA_ROTATE) => {
            let body: api::CaRotateRequest = read_json(req, MAX_BODY).await?;
            let grace = body
                .grace_secs
                .map_or(DEFAULT_ROTATION_GRACE, Duration::from_secs);
            if grace < MIN_ROTATION_GRACE || grace > MAX_ROTATION_GRACE {
                return Err(Fail::new(
                    StatusCode::BAD_REQUEST,
                    "bad_grace",
                    format!(
                        "the grace period must be between {}s and {}s: sidecars need it to learn the new root",
                        MIN_ROTATION_GRACE.as_secs(),
                        MAX_ROTATION_GRACE.as_secs()
                    ),
                ));
            }
            let dir = state.ca_dir.clone();
            let now = unix_now();
            let plan = tokio::task::spawn_blocking(move || rotation::rotate(&dir, grace, now))
                .await
                .map_err(|e| {
                    Fail::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?
                .map_err(|e| Fail::new(StatusCode::CONFLICT, "rotation_refused", e.to_string()))?;
            let event = AuditEvent::ok("ca_rotate", None, None, "admin").with_detail(format!(
                "new CA {} signs from {}",
                plan.authorities.last().map_or("", |a| a.dir.as_str()),
                plan.authorities.last().map_or(0, |a| a.sign_from)
            ));
            let _ = blocking(move || db.audit(&event)).await;
            maintain_authorities(state).await.map_err(|e| {
                Fail::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            Ok(json_response(
                StatusCode::OK,
                &ca_status(&state.cas.load_full()),
            ))
        }
        (&Method::GET, api::ADMIN_AUDIT) => {
            let limit = query_params(&req)
                .get("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100u32)
                .min(10_000);
            let events = blocking(move || db.audit_tail(limit)).await?;
            Ok(json_response(StatusCode::OK, &events))
        }
        _ => Err(Fail::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin endpoint {method} {path}"),
        )),
    }
}

/// Default time a new root is published before it signs.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(600);
/// Bounds of the grace period: long enough for connected sidecars' watches
/// to bring the new root, short enough that a rotation finishes.
pub const MIN_ROTATION_GRACE: Duration = Duration::from_secs(2);
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

fn ca_status(cas: &Authorities) -> serde_json::Value {
    serde_json::json!({
        "trust_domain": cas.signing.trust_domain().to_string(),
        "signing": cas.plan.authorities.get(cas.signing_index).map(|a| a.dir.clone()),
        "signing_ca_expires_at": Timestamp::from_system_time(cas.signing.not_after()).0,
        "bundle_roots": cas.bundle.roots().len(),
        "bundle_digest": bundle_response(&cas.bundle).digest,
        "authorities": cas.plan.authorities,
    })
}

#[derive(Serialize)]
struct IdentityDetail {
    #[serde(flatten)]
    identity: IdentityRecord,
    svids: Vec<SvidRecord>,
}

async fn create_token(state: &Arc<State>, body: api::TokenRequest) -> Result<Response<Body>, Fail> {
    let bad = |code: &str, m: String| Fail::new(StatusCode::BAD_REQUEST, code, m);
    let id = SpiffeId::parse(&body.spiffe_id)
        .map_err(|e| bad("invalid_spiffe_id", format!("{:?}: {e}", body.spiffe_id)))?;
    let trust_domain = state.cas.load().signing.trust_domain().clone();
    if !id.is_member_of(&trust_domain) {
        return Err(bad(
            "foreign_trust_domain",
            format!("{id} is outside this CA's trust domain {}", trust_domain),
        ));
    }
    if id.is_root() || id == state.server_id {
        return Err(bad(
            "reserved_id",
            format!("{id} cannot be given to a workload"),
        ));
    }
    let ttl = body
        .ttl_secs
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_TTL);
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(bad(
            "bad_ttl",
            format!(
                "token TTL must be between 1s and {}s",
                MAX_TOKEN_TTL.as_secs()
            ),
        ));
    }
    let mut labels = serde_json::Map::new();
    for (k, v) in body.labels {
        if k.is_empty() || k.len() > 63 || v.len() > 255 {
            return Err(bad(
                "bad_label",
                format!("label {k:?}: keys are 1-63 bytes, values at most 255"),
            ));
        }
        labels.insert(k, serde_json::Value::String(v));
    }
    let token = new_secret("wdt_");
    let hash = digest_hex(token.as_bytes());
    let token_id = hash[..12].to_owned();
    let now = unix_now();
    let expires_at = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let db = state.db.clone();
    let (sid, tid) = (id.to_string(), token_id.clone());
    blocking(move || db.create_token(&hash, &tid, &sid, &labels, now, expires_at)).await?;
    Ok(json_response(
        StatusCode::OK,
        &api::TokenResponse {
            token,
            token_id,
            spiffe_id: id.to_string(),
            expires_at,
        },
    ))
}

/// Checks a pushed bundle the way a sidecar will load it; returns its digest
/// and policy count.
fn validate_policies(files: &BTreeMap<String, String>) -> Result<(String, usize), Fail> {
    let bad = |m: String| Fail::new(StatusCode::BAD_REQUEST, "invalid_policy", m);
    let policy_files = PolicyFiles::from_named(files).map_err(bad)?;
    let snapshot = PolicySnapshot::from_files(policy_files).map_err(|e| bad(e.to_string()))?;
    Ok((snapshot.version().to_owned(), snapshot.len()))
}

async fn serve_metrics(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let response = match req.uri().path() {
                        "/live" | "/ready" => text(StatusCode::OK, "ok\n".into()),
                        "/metrics" => match metrics_text(&state).await {
                            Ok(body) => text(StatusCode::OK, body),
                            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                        },
                        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Time-to-expiry buckets of `warden_control_identities_expiring`.
const EXPIRY_BUCKETS: [(&str, i64); 5] = [
    ("1m", 60),
    ("5m", 300),
    ("15m", 900),
    ("1h", 3600),
    ("24h", 86400),
];

async fn metrics_text(state: &Arc<State>) -> Result<String, StoreError> {
    use std::fmt::Write;
    let db = state.db.clone();
    let now = unix_now();
    let identities = blocking(move || db.identities(now)).await?;
    let mut out = String::new();
    let c = state
        .counters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = writeln!(
        out,
        "# HELP warden_control_svids_issued_total SVIDs signed, by kind (join or renew).\n# TYPE warden_control_svids_issued_total counter"
    );
    for kind in ["join", "renew"] {
        let _ = writeln!(
            out,
            "warden_control_svids_issued_total{{kind=\"{kind}\"}} {}",
            c.issued.get(kind).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(
        out,
        "# HELP warden_control_refusals_total Refused requests, by endpoint and reason.\n# TYPE warden_control_refusals_total counter"
    );
    for ((event, reason), n) in &c.refused {
        let _ = writeln!(
            out,
            "warden_control_refusals_total{{event=\"{event}\",reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP warden_control_revocations_total Revocations made through this replica.\n# TYPE warden_control_revocations_total counter\nwarden_control_revocations_total {}",
        c.revocations
    );
    let _ = writeln!(
        out,
        "# HELP warden_control_policy_pushes_total Policy bundles pushed through this replica.\n# TYPE warden_control_policy_pushes_total counter\nwarden_control_policy_pushes_total {}",
        c.policy_pushes
    );
    let _ = writeln!(
        out,
        "# HELP warden_control_client_certificate_refusals_total TLS handshakes refused for a bad client certificate.\n# TYPE warden_control_client_certificate_refusals_total counter\nwarden_control_client_certificate_refusals_total {}",
        c.handshake_failures
    );
    drop(c);
    let _ = writeln!(
        out,
        "# HELP warden_control_identities Identities in the inventory, by status.\n# TYPE warden_control_identities gauge"
    );
    for status in ["pending", "active", "expired", "stale", "revoked"] {
        let n = identities.iter().filter(|i| i.status == status).count();
        let _ = writeln!(out, "warden_control_identities{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP warden_control_identities_expiring Active identities whose SVID expires within the window.\n# TYPE warden_control_identities_expiring gauge"
    );
    for (label, secs) in EXPIRY_BUCKETS {
        let n = identities
            .iter()
            .filter(|i| i.status == "active" && i.expires_at.is_some_and(|e| e - now <= secs))
            .count();
        let _ = writeln!(
            out,
            "warden_control_identities_expiring{{within=\"{label}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP warden_control_ca_expiry_timestamp_seconds When the signing CA certificate expires (Unix time).\n# TYPE warden_control_ca_expiry_timestamp_seconds gauge\nwarden_control_ca_expiry_timestamp_seconds {}",
        Timestamp::from_system_time(state.cas.load().signing.not_after()).0
    );
    Ok(out)
}
