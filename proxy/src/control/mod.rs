//! The sidecar's side of the control plane: a small HTTPS client, the SVID
//! source that joins with a token and renews over mTLS, and the watch that
//! brings revocations, trust-bundle changes and policy bundles.

pub mod api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use crate::identity::{
    ExpectedIdentity, Revoked, SpiffeId, Svid, SvidSource, SvidStore, SvidUpdate, TrustBundle,
    TrustBundleSet, pem_encode,
};
use crate::tls::{TlsVersions, client_config};

/// Largest response body read from the control plane (policy bundles are
/// the big ones).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Why a call to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the control plane at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("TLS with the control plane at {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("the control plane at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP with the control plane failed: {0}")]
    Http(String),
    #[error("the control plane refused ({status}, {code}): {message}")]
    Refused {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("the control plane sent a response Warden cannot read: {0}")]
    Decode(String),
    #[error("{0}")]
    Local(String),
}

/// Calls the control plane's API over TLS 1.3, checking that the server is
/// the control plane's SPIFFE ID. Presents the store's SVID when it has one.
#[derive(Clone)]
pub struct ControlClient {
    addr: SocketAddr,
    tls: TlsConnector,
    timeout: Duration,
    bearer: Option<String>,
    /// The control plane's `Warden-Version`, from its last response.
    server_version: Arc<std::sync::Mutex<Option<String>>>,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A store holding only `bundle` (PEM or SPIFFE JSON) for `server_id`'s
/// trust domain: what authenticates the control plane before a client has
/// an SVID of its own (install one to present it).
pub fn trust_store(server_id: &SpiffeId, bundle: &[u8]) -> Result<SvidStore, ControlError> {
    let bundle = TrustBundle::from_bytes(server_id.trust_domain(), bundle)
        .map_err(|e| ControlError::Local(format!("trust bundle: {e}")))?;
    let store = SvidStore::new();
    store.set_bundles(TrustBundleSet::new().with(bundle));
    Ok(store)
}

impl ControlClient {
    /// A client that authenticates the control plane with `bundle` and
    /// presents no certificate (joins, and admin calls with a bearer token).
    pub fn trusting(
        addr: SocketAddr,
        server_id: SpiffeId,
        bundle: &[u8],
    ) -> Result<Self, ControlError> {
        let store = trust_store(&server_id, bundle)?;
        Self::new(addr, server_id, Arc::new(store))
    }

    /// `store` supplies the bundles the server is checked against and the
    /// client certificate, if any.
    pub fn new(
        addr: SocketAddr,
        server_id: SpiffeId,
        store: Arc<SvidStore>,
    ) -> Result<Self, ControlError> {
        let tls: Arc<ClientConfig> = client_config(
            store,
            ExpectedIdentity::exactly(server_id),
            TlsVersions::Tls13Only,
            &[b"http/1.1"],
        )
        .map_err(|e| ControlError::Local(e.to_string()))?;
        Ok(ControlClient {
            addr,
            tls: TlsConnector::from(tls),
            timeout: Duration::from_secs(10),
            bearer: None,
            server_version: Arc::default(),
        })
    }

    /// Authenticates admin calls with this token.
    pub fn with_bearer(mut self, token: String) -> Self {
        self.bearer = Some(token);
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The control plane's Warden version, as its last response said
    /// (`None` before any call, or from a control plane older than 0.2.0,
    /// which did not say). A new request field is sent only to a control
    /// plane whose version is known to accept it: see [`api::VERSION_HEADER`].
    pub fn server_version(&self) -> Option<String> {
        self.server_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn note_server_version(&self, value: Option<&http::HeaderValue>) {
        let Some(theirs) = value
            .and_then(|v| v.to_str().ok())
            .filter(|v| api::check_version(v).is_ok())
        else {
            return;
        };
        let mut known = self
            .server_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.as_deref() == Some(theirs) {
            return;
        }
        if !api::skew_supported(api::VERSION, theirs) {
            tracing::warn!(
                control_plane = theirs,
                sidecar = api::VERSION,
                "the control plane's version is more than one minor version from this \
                 sidecar's; only adjacent versions are supported together"
            );
        }
        *known = Some(theirs.to_owned());
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ControlError> {
        self.call(Method::GET, path, None, self.timeout).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ControlError> {
        let body = serde_json::to_vec(body).map_err(|e| ControlError::Local(e.to_string()))?;
        self.call(Method::POST, path, Some(body), self.timeout)
            .await
    }

    /// One request on a fresh connection (calls are rare: a renewal every
    /// half SVID lifetime, a watch every few tens of seconds).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, ControlError> {
        let addr = self.addr;
        let exchange = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| ControlError::Connect {
                    addr,
                    reason: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from("warden-control")
                .map_err(|e| ControlError::Local(e.to_string()))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| ControlError::Tls {
                    addr,
                    reason: crate::identity::describe_io_error(&e),
                })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| ControlError::Http(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, "warden-control")
                .header(header::ACCEPT, "application/json")
                .header(api::VERSION_HEADER, api::VERSION);
            if let Some(token) = &self.bearer {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            if body.is_some() {
                request = request.header(header::CONTENT_TYPE, "application/json");
            }
            let request = request
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| ControlError::Local(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| ControlError::Http(e.to_string()))?;
            let status = response.status();
            self.note_server_version(response.headers().get(api::VERSION_HEADER));
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| ControlError::Http(e.to_string()))?
                .to_bytes();
            Ok::<_, ControlError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ControlError::Timeout { addr, timeout })??;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<api::ApiError>(&bytes) {
                Ok(e) => (e.error, e.message),
                Err(_) => (
                    "http".to_owned(),
                    String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                ),
            };
            return Err(ControlError::Refused {
                status,
                code,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ControlError::Decode(e.to_string()))
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn digest_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where the sidecar keeps its SVID between restarts, so a restart does not
/// need a new join token.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// The SVID saved by an earlier run, if it is still valid.
    pub fn load(&self) -> Option<Svid> {
        let chain = std::fs::read(self.0.join("svid.pem")).ok()?;
        let key = std::fs::read(self.0.join("svid.key")).ok()?;
        let svid = Svid::from_pem(&chain, &key).ok()?;
        svid.is_valid_at(SystemTime::now()).then_some(svid)
    }

    /// The revocation list saved by an earlier run: a restarted sidecar
    /// keeps refusing what was revoked, even before its watch reconnects.
    pub fn load_revoked(&self) -> Option<api::RevocationList> {
        serde_json::from_slice(&std::fs::read(self.0.join("revoked.json")).ok()?).ok()
    }

    fn save_revoked(&self, list: &api::RevocationList) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.0)?;
        let bytes = serde_json::to_vec(list).unwrap_or_default();
        write_private(&self.0.join("revoked.json"), &bytes)
    }

    fn save(&self, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.0)?;
        write_private(&self.0.join("svid.key"), key_pem.as_bytes())?;
        write_private(&self.0.join("svid.pem"), chain_pem.as_bytes())
    }
}

/// Writes `path` through a temporary file and a rename, mode 0600.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// SVIDs from the control plane: the first by join token, then renewals
/// over mTLS with the current SVID, each with a key made here.
pub struct ControlSource {
    client: ControlClient,
    store: Arc<SvidStore>,
    trust_domain: crate::identity::TrustDomain,
    token: Mutex<Option<String>>,
    instance: String,
    ttl: Option<Duration>,
    state: Option<StateDir>,
}

impl ControlSource {
    pub fn new(
        client: ControlClient,
        store: Arc<SvidStore>,
        trust_domain: crate::identity::TrustDomain,
        token: Option<String>,
        instance: String,
        ttl: Option<Duration>,
        state: Option<StateDir>,
    ) -> Self {
        ControlSource {
            client,
            store,
            trust_domain,
            token: Mutex::new(token),
            instance,
            ttl,
            state,
        }
    }

    fn bundles(&self, pem: &str) -> Result<TrustBundleSet, ControlError> {
        let bundle = TrustBundle::from_pem(self.trust_domain.clone(), pem.as_bytes())
            .map_err(|e| ControlError::Decode(format!("trust bundle: {e}")))?;
        Ok(TrustBundleSet::new().with(bundle))
    }
}

impl SvidSource for ControlSource {
    type Error = ControlError;

    async fn fetch(&self) -> Result<SvidUpdate, ControlError> {
        let ttl_secs = self.ttl.map(|t| t.as_secs());
        let current = self
            .store
            .current()
            .filter(|s| s.is_valid_at(SystemTime::now()));
        let (key_pem, response) = match current {
            Some(svid) => {
                let kc = crate::identity::new_key_and_csr(svid.spiffe_id())
                    .map_err(|e| ControlError::Local(e.to_string()))?;
                let body = api::RenewRequest {
                    csr: pem_encode("CERTIFICATE REQUEST", &kc.csr_der),
                    instance: self.instance.clone(),
                    ttl_secs,
                };
                let response: api::SvidResponse = self.client.post(api::RENEW, &body).await?;
                (kc.key_pem, response)
            }
            None => {
                let token = self
                    .token
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                    .ok_or_else(|| {
                        ControlError::Local(
                            "no valid SVID and no unused join token: give this sidecar a new token (`warden control token create`)".into(),
                        )
                    })?;
                let kc = crate::identity::keygen::new_key_and_bare_csr()
                    .map_err(|e| ControlError::Local(e.to_string()))?;
                let body = api::JoinRequest {
                    token,
                    csr: pem_encode("CERTIFICATE REQUEST", &kc.csr_der),
                    instance: self.instance.clone(),
                    ttl_secs,
                };
                let result: Result<api::SvidResponse, _> = self.client.post(api::JOIN, &body).await;
                if let Err(ControlError::Refused { code, .. }) = &result
                    && matches!(
                        code.as_str(),
                        "token_reused" | "token_expired" | "unknown_token"
                    )
                {
                    // A token is good for one join; never send it again.
                    *self
                        .token
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                }
                let response = result?;
                *self
                    .token
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                (kc.key_pem, response)
            }
        };
        let svid = Svid::from_pem(response.chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| ControlError::Decode(format!("SVID: {e}")))?;
        let bundles = self.bundles(&response.bundle_pem)?;
        if let Some(state) = &self.state
            && let Err(e) = state.save(&response.chain_pem, &key_pem)
        {
            tracing::warn!(dir = %state.0.display(), error = %e, "cannot save the SVID; a restart will need a new join token");
        }
        Ok(SvidUpdate {
            svid,
            bundles: Some(bundles),
        })
    }
}

/// What the watch has applied, for `/identity` and metrics.
#[derive(Debug, Clone, Default)]
pub struct WatchState {
    pub revocation_seq: i64,
    pub revoked: usize,
    pub policy_version: Option<i64>,
    pub connected: bool,
    pub last_error: Option<String>,
}

/// Turns a revocation list into what the store refuses.
pub fn revoked_set(list: &api::RevocationList) -> Revoked {
    Revoked {
        spiffe_ids: list.spiffe_ids.iter().cloned().collect(),
        serials: list.serials.iter().cloned().collect(),
    }
}

/// Where the watch connects and what it feeds.
pub struct WatchTargets {
    pub client: ControlClient,
    pub store: Arc<SvidStore>,
    pub trust_domain: crate::identity::TrustDomain,
    /// Policy bundles go here when the sidecar takes them from the control plane.
    pub policies: Option<watch::Sender<Option<api::PolicyUpdate>>>,
    pub state: watch::Sender<WatchState>,
    /// Keeps the revocation list across restarts.
    pub state_dir: Option<StateDir>,
}

/// Shortest pause between two watch calls, so that a control plane that
/// answers at once (or a sidecar that cannot apply an answer) never turns
/// the watch into a busy loop.
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Long-polls the control plane for revocations, bundle changes and (when
/// `policies` is given) policy bundles, and applies them. Runs until
/// `shutdown` flips; backs off (capped at 30 s) while the control plane is
/// unreachable, keeping everything it last applied.
pub async fn run_watch(targets: WatchTargets, mut shutdown: watch::Receiver<bool>) {
    let WatchTargets {
        client,
        store,
        trust_domain,
        policies,
        state,
        state_dir,
    } = targets;
    let mut failures: u32 = 0;
    let mut generation = store.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        // mTLS needs an SVID: wait for the first one.
        if store.current().is_none() {
            tokio::select! {
                _ = generation.changed() => continue,
                _ = shutdown.changed() => return,
            }
        }
        let current = state.borrow().clone();
        let bundle_digest = store
            .bundles()
            .get(trust_domain.name())
            .map(|b| digest_hex(b.to_pem().as_bytes()))
            .unwrap_or_default();
        let policy = match (&policies, current.policy_version) {
            (Some(_), Some(v)) => v.to_string(),
            (Some(_), None) => "none".to_owned(),
            // Not watching policies: say we have whatever is current.
            (None, _) => "any".to_owned(),
        };
        // The first call after (re)connecting answers at once, so the
        // sidecar catches up before it starts waiting.
        let wait_ms = if current.connected { 20_000 } else { 0 };
        let path = format!(
            "{}?revocations={}&bundle={}&policy={}&wait_ms={wait_ms}",
            api::WATCH,
            current.revocation_seq,
            bundle_digest,
            policy
        );
        let result: Result<api::WatchResponse, _> = tokio::select! {
            r = client.call(Method::GET, &path, None, Duration::from_secs(30)) => r,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(update) => {
                failures = 0;
                apply(&store, &trust_domain, &update, &bundle_digest);
                if update.revocations.seq != current.revocation_seq
                    && let Some(dir) = &state_dir
                    && let Err(e) = dir.save_revoked(&update.revocations)
                {
                    tracing::warn!(error = %e, "cannot save the revocation list");
                }
                let mut next = current;
                next.revocation_seq = update.revocations.seq;
                next.revoked =
                    update.revocations.spiffe_ids.len() + update.revocations.serials.len();
                next.connected = true;
                next.last_error = None;
                if let (Some(tx), Some(p)) = (&policies, update.policy) {
                    next.policy_version = Some(p.version);
                    let _ = tx.send(Some(p));
                }
                let _ = state.send(next);
                tokio::select! {
                    _ = tokio::time::sleep(MIN_WATCH_INTERVAL) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "control plane watch failed; keeping the last revocations, bundle and policies");
                }
                state.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(e.to_string());
                });
                let delay = Duration::from_millis(500u64.saturating_mul(1 << failures.min(6)))
                    .min(Duration::from_secs(30));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

fn apply(
    store: &SvidStore,
    trust_domain: &crate::identity::TrustDomain,
    update: &api::WatchResponse,
    bundle_digest: &str,
) {
    store.set_revoked(revoked_set(&update.revocations));
    match TrustBundle::from_pem(trust_domain.clone(), update.bundle.bundle_pem.as_bytes()) {
        Ok(bundle) => {
            if digest_hex(bundle.to_pem().as_bytes()) != bundle_digest {
                tracing::info!(
                    roots = bundle.roots().len(),
                    "trust bundle changed; installing it"
                );
                store.set_bundles(TrustBundleSet::new().with(bundle));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "the control plane sent an unusable trust bundle; keeping the current one")
        }
    }
}
