//! A small HTTPS client for the control plane's API: TLS 1.3, the server
//! checked against the control plane's SPIFFE ID, HTTP/1.1 connections kept
//! for a few seconds between calls (the watch's next long poll goes on the
//! connection the last one used) instead of a TLS handshake per call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_rustls::TlsConnector;

use crate::identity::{ExpectedIdentity, SpiffeId, SvidStore, TrustBundle, TrustBundleSet};
use crate::tls::{TlsVersions, client_config};

use super::{ControlAddr, ControlError, api};

/// Largest response body read from the control plane (policy bundles are
/// the big ones).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// How long an idle connection is kept for the next call: long enough for
/// the watch's next poll and calls made together, well under the control
/// plane's own idle limit (its 10 s header read timeout), so that it is
/// never the server that closes a connection the client is about to use.
pub const KEEP_IDLE: Duration = Duration::from_secs(5);

/// Idle connections kept at most, per client and its clones (a watch and a
/// renewal, say, at the same time).
const MAX_KEPT: usize = 2;

/// The longest a connection is used, however busy: then the next call makes
/// a new one, whose handshake checks the server's certificate again.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// How long a kept connection may take to be ready for the next request
/// (its task finishing the last answer); beyond it a new one is made.
const READY_WITHIN: Duration = Duration::from_millis(250);

/// An idle connection kept after a call, and what it was made with: it is
/// used again only while the client would make the same one now.
struct Kept {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The serial of the client certificate presented, if any.
    svid: Option<String>,
    /// The trust bundles the server was checked against.
    bundles: Arc<TrustBundleSet>,
    /// The server's certificate, as its handshake checked it.
    server: ServerLeaf,
    made_at: Instant,
    idle_since: Instant,
}

impl Kept {
    /// Whether the client would make this connection now: the same SVID and
    /// bundles, the server's certificate neither expired nor revoked since,
    /// not too old, and not idle too long.
    fn good_for(&self, (svid, bundles): &Credentials, store: &SvidStore) -> bool {
        self.idle_since.elapsed() < KEEP_IDLE
            && self.made_at.elapsed() < MAX_CONNECTION_AGE
            && self.svid == *svid
            && Arc::ptr_eq(&self.bundles, bundles)
            && self.server.valid_now(store)
            && !self.sender.is_closed()
    }
}

/// What a connection's handshake saw of the server's certificate.
#[derive(Clone)]
struct ServerLeaf {
    spiffe_id: String,
    serial: String,
    not_after: std::time::SystemTime,
}

impl ServerLeaf {
    fn of(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Option<Self> {
        let leaf = tls.get_ref().1.peer_certificates()?.first()?;
        let leaf = crate::identity::SvidLeaf::parse(
            leaf,
            crate::identity::Timestamp::from_system_time(std::time::SystemTime::now()),
        )
        .ok()?;
        Some(ServerLeaf {
            spiffe_id: leaf.spiffe_id.to_string(),
            serial: leaf.serial,
            not_after: std::time::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(leaf.not_after.0).unwrap_or(0)),
        })
    }

    fn valid_now(&self, store: &SvidStore) -> bool {
        std::time::SystemTime::now() < self.not_after
            && !store.is_revoked(&self.spiffe_id, &self.serial)
    }
}

/// A new connection: its sender and what its handshake saw of the server.
struct Connected {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    server: Option<ServerLeaf>,
    made_at: Instant,
}

/// The SVID serial and bundles a connection is made with.
type Credentials = (Option<String>, Arc<TrustBundleSet>);

/// The connections a client and its clones share.
#[derive(Default)]
struct Connections {
    kept: Mutex<Vec<Kept>>,
    /// Connections made (each a TLS handshake).
    made: AtomicU64,
}

/// An answer's JSON body.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(bytes).map_err(|e| ControlError::Decode(e.to_string()))
}

/// One request to the control plane.
struct Call<'a> {
    method: Method,
    path: &'a str,
    body: Option<Bytes>,
    /// One more header, for facts an older control plane may ignore.
    header: Option<(&'static str, String)>,
}

/// How an exchange on a connection failed.
enum Failed {
    /// The connection would not take the request: nothing of it was sent.
    NotSent(ControlError),
    /// Anything else: the request may have been acted on.
    Other(ControlError),
}

impl Failed {
    fn into_inner(self) -> ControlError {
        match self {
            Failed::NotSent(e) | Failed::Other(e) => e,
        }
    }
}

/// What a new connection would be made with now.
fn credentials(store: &SvidStore) -> Credentials {
    (
        store.current().map(|svid| svid.serial().to_owned()),
        store.bundles(),
    )
}

/// Calls the control plane's API over TLS 1.3, checking that the server is
/// the control plane's SPIFFE ID. Presents the store's SVID when it has one.
#[derive(Clone)]
pub struct ControlClient {
    addr: ControlAddr,
    tls: TlsConnector,
    timeout: Duration,
    bearer: Option<String>,
    /// The control plane's `Warden-Version`, from its last response.
    server_version: Arc<std::sync::Mutex<Option<String>>>,
    /// The largest response body read.
    max_response: usize,
    /// Whose SVID and bundles the connections use.
    store: Arc<SvidStore>,
    connections: Arc<Connections>,
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
        addr: impl Into<ControlAddr>,
        server_id: SpiffeId,
        bundle: &[u8],
    ) -> Result<Self, ControlError> {
        let store = trust_store(&server_id, bundle)?;
        Self::new(addr, server_id, Arc::new(store))
    }

    /// `store` supplies the bundles the server is checked against and the
    /// client certificate, if any.
    pub fn new(
        addr: impl Into<ControlAddr>,
        server_id: SpiffeId,
        store: Arc<SvidStore>,
    ) -> Result<Self, ControlError> {
        let tls: Arc<ClientConfig> = client_config(
            store.clone(),
            ExpectedIdentity::exactly(server_id),
            TlsVersions::Tls13Only,
            &[b"http/1.1"],
        )
        .map_err(|e| ControlError::Local(e.to_string()))?;
        Ok(ControlClient {
            addr: addr.into(),
            tls: TlsConnector::from(tls),
            timeout: Duration::from_secs(10),
            bearer: None,
            server_version: Arc::default(),
            max_response: MAX_RESPONSE,
            store,
            connections: Arc::default(),
        })
    }

    /// Connections this client and its clones have made (TLS handshakes),
    /// for metrics and tests: calls beyond it went on kept connections.
    pub fn connections_made(&self) -> u64 {
        self.connections.made.load(Ordering::Relaxed)
    }

    /// Reads response bodies of at most `bytes` (a larger one fails the
    /// call): for servers that are not a control plane, such as a foreign
    /// trust domain's bundle endpoint.
    pub fn with_max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    /// Authenticates admin calls with this token.
    pub fn with_bearer(mut self, token: String) -> Self {
        self.bearer = Some(token);
        self
    }

    pub fn addr(&self) -> &ControlAddr {
        &self.addr
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
        self.post_json(path, body, None).await
    }

    /// As [`ControlClient::post`], with one more header (`name` is one of
    /// the API's, lowercase).
    pub async fn post_with_header<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        name: &'static str,
        value: String,
    ) -> Result<T, ControlError> {
        self.post_json(path, body, Some((name, value))).await
    }

    async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        header: Option<(&'static str, String)>,
    ) -> Result<T, ControlError> {
        let body = serde_json::to_vec(body).map_err(|e| ControlError::Local(e.to_string()))?;
        let call = Call {
            method: Method::POST,
            path,
            body: Some(Bytes::from(body)),
            header,
        };
        decode(&self.send(call, self.timeout).await?)
    }

    /// One request, on a kept connection when one is good for it (see
    /// [`KEEP_IDLE`]), else on a new one.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, ControlError> {
        decode(&self.call_raw(method, path, body, timeout).await?)
    }

    /// As [`ControlClient::call`], the answer's body as it came (a page
    /// rather than JSON).
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ControlError> {
        let call = Call {
            method,
            path,
            body: body.map(Bytes::from),
            header: None,
        };
        self.send(call, timeout).await
    }

    async fn send(&self, call: Call<'_>, timeout: Duration) -> Result<Bytes, ControlError> {
        let addr = &self.addr;
        // Read before connecting: should the SVID change during the
        // handshake, the connection is tagged with the older one, and so not
        // used again.
        let made_with = credentials(&self.store);
        let exchange = async {
            // A kept connection that would not take the request (the server
            // closed it meanwhile) sent nothing of it: the call goes on a new
            // connection. Once any of it was sent, the outcome is the call's,
            // so a join or renewal is never made twice by this client.
            if let Some(kept) = self.take_kept(&made_with).await {
                match self.exchange(kept, &made_with, &call).await {
                    Err(Failed::NotSent(e)) => {
                        tracing::debug!(error = %e, "a kept control-plane connection was closed; connecting again");
                    }
                    answer => return answer.map_err(Failed::into_inner),
                }
            }
            let connected = self.connect().await?;
            self.exchange(connected, &made_with, &call)
                .await
                .map_err(Failed::into_inner)
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ControlError::Timeout {
                addr: addr.clone(),
                timeout,
            })??;
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
        Ok(bytes)
    }

    /// The kept connections, locked, the ones no longer good for a call
    /// made with `made_with` (see [`Kept::good_for`]) dropped.
    fn kept_for(&self, made_with: &Credentials) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        let mut kept = self
            .connections
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        kept.retain(|k| k.good_for(made_with, &self.store));
        kept
    }

    /// A kept connection good for a call now and ready for it.
    async fn take_kept(&self, made_with: &Credentials) -> Option<Connected> {
        loop {
            let mut conn = self.kept_for(made_with).pop()?;
            // The task driving the connection may not have seen the end of
            // the last answer yet: a kept connection is ready at once, or
            // closed.
            if let Ok(Ok(())) = tokio::time::timeout(READY_WITHIN, conn.sender.ready()).await {
                return Some(Connected {
                    sender: conn.sender,
                    server: Some(conn.server),
                    made_at: conn.made_at,
                });
            }
        }
    }

    /// Keeps a connection whose answer was read whole, made with
    /// `made_with`, for the next call: in place of the oldest when
    /// [`MAX_KEPT`] are kept already.
    fn keep(&self, connected: Connected, made_with: &Credentials) {
        let Connected {
            sender,
            server: Some(server),
            made_at,
        } = connected
        else {
            return;
        };
        let kept = Kept {
            sender,
            svid: made_with.0.clone(),
            bundles: made_with.1.clone(),
            server,
            made_at,
            idle_since: Instant::now(),
        };
        if !kept.good_for(made_with, &self.store) {
            return;
        }
        let mut all = self.kept_for(made_with);
        if all.len() >= MAX_KEPT {
            all.remove(0);
        }
        all.push(kept);
    }

    /// A new TLS connection to the control plane, its HTTP/1.1 driven by a
    /// task of its own.
    async fn connect(&self) -> Result<Connected, ControlError> {
        let addr = &self.addr;
        let tcp = addr.connect().await.map_err(|e| ControlError::Connect {
            addr: addr.clone(),
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
                addr: addr.clone(),
                reason: crate::identity::describe_io_error(&e),
            })?;
        self.connections.made.fetch_add(1, Ordering::Relaxed);
        let server = ServerLeaf::of(&tls);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ControlError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connected {
            sender,
            server,
            made_at: Instant::now(),
        })
    }

    /// One request and its whole answer on `sender`, which is kept for the
    /// next call once the answer is read.
    async fn exchange(
        &self,
        mut connected: Connected,
        made_with: &Credentials,
        call: &Call<'_>,
    ) -> Result<(http::StatusCode, Bytes), Failed> {
        let mut request = Request::builder()
            .method(call.method.clone())
            .uri(call.path)
            .header(header::HOST, "warden-control")
            .header(header::ACCEPT, "application/json")
            .header(api::VERSION_HEADER, api::VERSION);
        if let Some(token) = &self.bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some((name, value)) = &call.header {
            request = request.header(*name, value.as_str());
        }
        if call.body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(call.body.clone().unwrap_or_default()))
            .map_err(|e| Failed::Other(ControlError::Local(e.to_string())))?;
        let response = connected
            .sender
            .try_send_request(request)
            .await
            .map_err(|mut e| {
                let sent = e.take_message().is_none();
                let error = ControlError::Http(e.into_error().to_string());
                if sent {
                    Failed::Other(error)
                } else {
                    Failed::NotSent(error)
                }
            })?;
        let status = response.status();
        self.note_server_version(response.headers().get(api::VERSION_HEADER));
        let bytes = Limited::new(response.into_body(), self.max_response)
            .collect()
            .await
            .map_err(|e| Failed::Other(ControlError::Http(e.to_string())))?
            .to_bytes();
        self.keep(connected, made_with);
        Ok((status, bytes))
    }
}
