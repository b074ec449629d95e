//! The sidecar side of Warden 0.1.0's control-plane API, frozen: the
//! request and response types exactly as 0.1.0 declared them (copied from
//! `proxy/src/control/api.rs` at 0.1.0, unchanged) and a client that speaks
//! as 0.1.0's did (one request per connection, no `Warden-Version` header).
//! The version-skew tests run it against today's control plane, and check
//! that today's request bodies still fit 0.1.0's strict request types.
//! Never update this file: the next release freezes its own.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use warden_proxy::identity::{ExpectedIdentity, SpiffeId, SvidStore};
use warden_proxy::tls::{TlsVersions, client_config};

pub const JOIN: &str = "/v1/join";
pub const RENEW: &str = "/v1/renew";
pub const BUNDLE: &str = "/v1/bundle";
pub const WATCH: &str = "/v1/watch";

/// The error body of every refusal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// Stable machine-readable reason, e.g. `token_reused`.
    pub error: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    /// PEM `CERTIFICATE REQUEST`; its key was made by the caller.
    pub csr: String,
    /// Names the sidecar instance in the inventory (host, pod).
    #[serde(default)]
    pub instance: String,
    /// Requested lifetime; the CA's default when absent.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
    #[serde(default)]
    pub instance: String,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SvidResponse {
    pub spiffe_id: String,
    pub serial: String,
    pub expires_at: i64,
    /// Leaf first, then intermediates.
    pub chain_pem: String,
    pub bundle_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleResponse {
    pub trust_domain: String,
    pub bundle_pem: String,
    /// SHA-256 of `bundle_pem`, hex.
    pub digest: String,
}

/// What sidecars must refuse.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevocationList {
    /// Changes with every revocation.
    pub seq: i64,
    pub spiffe_ids: Vec<String>,
    /// Lowercase hex serials of revoked SVIDs that have not expired.
    pub serials: Vec<String>,
}

/// A policy bundle as distributed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyUpdate {
    /// The control plane's version number.
    pub version: i64,
    /// The policy set's content digest: the version sidecars report.
    pub digest: String,
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchResponse {
    pub revocations: RevocationList,
    pub bundle: BundleResponse,
    /// The current policy version, if any was pushed.
    pub policy_version: Option<i64>,
    /// The current bundle's files, only when the caller's version differs.
    pub policy: Option<PolicyUpdate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub spiffe_id: String,
    /// Lifetime of the token (default 15 minutes, at most 7 days).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The secret: shown once, stored only as a hash.
    pub token: String,
    /// A public name for the token, in the audit trail.
    pub token_id: String,
    pub spiffe_id: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// A SPIFFE ID (every SVID it holds, and no more issuance) or an SVID serial.
    pub target: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeResponse {
    pub spiffe_id: String,
    pub svids_revoked: usize,
    pub seq: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPush {
    /// `*.cedar` files and optionally `schema.cedarschema`, by name.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyPushResponse {
    pub version: i64,
    pub digest: String,
    /// False when the files were the current version already.
    pub changed: bool,
    pub policies: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRollback {
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRotateRequest {
    /// How long the new root is published before it signs (default 10 minutes).
    #[serde(default)]
    pub grace_secs: Option<u64>,
}

/// Characters no free-text field of this API may hold, and that the CLI
/// never prints raw: controls (C0, DEL, C1) and the bidirectional
/// formatting characters that reorder what a terminal shows.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// 0.1.0's client: TLS 1.3 to the control plane's SPIFFE ID, presenting the
/// store's SVID when it has one; JSON in and out; no version header.
pub struct OldClient {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl OldClient {
    pub fn new(addr: SocketAddr, server_id: SpiffeId, store: Arc<SvidStore>) -> Self {
        let config = client_config(
            store,
            ExpectedIdentity::exactly(server_id),
            TlsVersions::Tls13Only,
            &[b"http/1.1"],
        )
        .expect("client config");
        OldClient {
            addr,
            tls: tokio_rustls::TlsConnector::from(config),
        }
    }

    /// One request; the status, the response's headers and its body decoded
    /// as 0.1.0 would (unknown fields ignored, as 0.1.0's types allowed).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(http::HeaderMap, T), (u16, String)> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| (0, e.to_string()))?;
        let name = rustls_pki_types::ServerName::try_from("warden-control").expect("name");
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| (0, e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| (0, e.to_string()))?;
        tokio::spawn(conn);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "warden-control")
            .header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request");
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| (0, e.to_string()))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| (0, e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err((
                status.as_u16(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(|v| (headers, v))
            .map_err(|e| (status.as_u16(), format!("0.1.0 cannot decode: {e}")))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, (u16, String)> {
        let body = serde_json::to_vec(body).expect("json");
        self.call(http::Method::POST, path, Some(body))
            .await
            .map(|(_, v)| v)
    }
}
