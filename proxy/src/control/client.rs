//! A small HTTPS client for the control plane's API: TLS 1.3, the server
//! checked against the control plane's SPIFFE ID, one request per connection.

use std::sync::Arc;
use std::time::Duration;

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
            store,
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
        })
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
        let bytes = self.call_raw(method, path, body, timeout).await?;
        serde_json::from_slice(&bytes).map_err(|e| ControlError::Decode(e.to_string()))
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
        let addr = &self.addr;
        let exchange = async {
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
            let bytes = Limited::new(response.into_body(), self.max_response)
                .collect()
                .await
                .map_err(|e| ControlError::Http(e.to_string()))?
                .to_bytes();
            Ok::<_, ControlError>((status, bytes))
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
}
