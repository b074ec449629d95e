//! The control plane's HTTPS API: paths and JSON bodies, shared by the
//! server (`warden-control`), the sidecar and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod usage;
pub use usage::*;

/// `POST`: first SVID, by join token ([`JoinRequest`] -> [`SvidResponse`]).
pub const JOIN: &str = "/v1/join";
/// `POST`: first SVID, by a Kubernetes projected service-account token
/// ([`AttestRequest`] -> [`SvidResponse`]); the SPIFFE ID is the token's
/// namespace and service account.
pub const ATTEST_K8S: &str = "/v1/attest/k8s";
/// `POST`, mTLS: a new SVID for the caller's own SPIFFE ID ([`RenewRequest`] -> [`SvidResponse`]).
pub const RENEW: &str = "/v1/renew";
/// `POST`, mTLS: a JWT-SVID for the caller's own SPIFFE ID ([`JwtRequest`] -> [`JwtResponse`]).
pub const JWT: &str = "/v1/jwt";
/// `GET`, anyone: the trust bundle in the SPIFFE bundle format (X.509 and
/// JWT authorities, `spiffe_sequence`, `spiffe_refresh_hint`): the SPIFFE
/// bundle endpoint, `https_spiffe` profile (the server's SVID is
/// `spiffe://<trust domain>/warden/control`).
pub const SPIFFE_BUNDLE: &str = "/v1/spiffe-bundle";
/// `GET`, admin: our bundle and every federated one ([`BundleListing`]).
pub const ADMIN_BUNDLES: &str = "/v1/admin/bundles";
/// `GET`: the trust bundle ([`BundleResponse`]).
pub const BUNDLE: &str = "/v1/bundle";
/// `GET`, mTLS, long poll: `?revocations=SEQ&bundle=DIGEST&policy=VERSION&wait_ms=N`
/// returns as soon as anything differs from what the caller has, or after
/// `wait_ms` ([`WatchResponse`]).
pub const WATCH: &str = "/v1/watch";
/// `PUT`, mTLS: the caller's workload addresses and serving ports, for
/// discovery ([`EndpointRegistration`] -> [`EndpointList`] of the caller's
/// entries). Each entry lives as long as the SVID that registered it.
pub const ENDPOINTS: &str = "/v1/endpoints";
/// `POST`, mTLS: a sidecar's usage aggregates since its last report
/// ([`UsageReport`] -> [`UsageAccepted`]); only for the service its SVID
/// names.
pub const USAGE: &str = "/v1/usage";
/// `GET`, admin: stored usage ([`UsageRows`]); `?since_secs=N`.
pub const ADMIN_USAGE: &str = "/v1/admin/usage";
/// `GET`, admin: per identity, what the policies allow against what it
/// used ([`AccessReport`]); `?since_secs=N&identity=ID`.
pub const ADMIN_ACCESS_REPORT: &str = "/v1/admin/access/report";
/// `GET`, admin: the least-privilege policy set for the observed allowed
/// traffic ([`PolicyProposal`]); `?since_secs=N`.
pub const ADMIN_ACCESS_PROPOSE: &str = "/v1/admin/access/propose";
/// `POST`, admin: what a candidate policy set would change on recorded
/// usage ([`ReplayRequest`] -> [`ReplayReport`]).
pub const ADMIN_ACCESS_REPLAY: &str = "/v1/admin/access/replay";
/// `GET`, admin: edges (a caller to a service, or a caller from a source
/// range) first seen after `?new_since_secs=N` ago ([`EdgeList`]).
pub const ADMIN_ACCESS_EDGES: &str = "/v1/admin/access/edges";
/// `GET`, admin: the access graph as a self-contained HTML page (inline
/// SVG); `?since_secs=N`.
pub const ADMIN_ACCESS_GRAPH: &str = "/v1/admin/access/graph";
/// `GET`, admin: the discovery registry ([`EndpointList`]).
pub const ADMIN_ENDPOINTS: &str = "/v1/admin/endpoints";
/// `POST`, admin: a join token ([`TokenRequest`] -> [`TokenResponse`]).
pub const ADMIN_TOKENS: &str = "/v1/admin/tokens";
/// `GET`, admin: the inventory; `?status=S&expiring_within_secs=N`.
/// `GET .../{SPIFFE ID or serial}`: one identity with its SVIDs.
pub const ADMIN_IDENTITIES: &str = "/v1/admin/identities";
/// `POST`, admin: revoke an identity or one SVID ([`RevokeRequest`]).
pub const ADMIN_REVOCATIONS: &str = "/v1/admin/revocations";
/// `GET`, admin: policy versions; `POST`: push a bundle ([`PolicyPush`]).
pub const ADMIN_POLICIES: &str = "/v1/admin/policies";
/// `POST`, admin: make an earlier version current ([`PolicyRollback`]).
pub const ADMIN_POLICY_ROLLBACK: &str = "/v1/admin/policies/rollback";
/// `GET`, admin: the CA rotation plan and the bundle now.
pub const ADMIN_CA: &str = "/v1/admin/ca";
/// `POST`, admin: start a CA rotation ([`CaRotateRequest`]).
pub const ADMIN_CA_ROTATE: &str = "/v1/admin/ca/rotate";
/// `GET`, admin: the newest audit records; `?limit=N`.
pub const ADMIN_AUDIT: &str = "/v1/admin/audit";

/// This build's Warden version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Sent by both sides on every request and response: the sender's Warden
/// version. How the API stays usable across one version of skew:
/// - the API stays under `/v1/`; responses only gain fields, and clients
///   ignore fields they do not know (no `deny_unknown_fields` on responses)
///   and default the ones an older server does not send (`#[serde(default)]`);
/// - the control plane keeps refusing unknown request fields, so a request
///   field is only ever added as optional with a safe default, and a
///   sidecar sends a new one only to a control plane whose `Warden-Version`
///   (on any earlier response, or `GET /v1/bundle`, which needs no
///   credential) is the version that introduced it or later; facts an older
///   control plane may ignore travel as headers instead, as this one does.
pub const VERSION_HEADER: &str = "warden-version";

/// The longest version string either side accepts.
pub const MAX_VERSION: usize = 64;

/// A version as sent in [`VERSION_HEADER`]: at most [`MAX_VERSION`] bytes
/// of ASCII letters, digits, `.`, `-` and `+` (semantic versioning).
pub fn check_version(version: &str) -> Result<(), String> {
    if version.is_empty() || version.len() > MAX_VERSION {
        return Err(format!(
            "a version is 1 to {MAX_VERSION} characters, not {}",
            version.len()
        ));
    }
    if !version
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
    {
        return Err("a version has only letters, digits, '.', '-' and '+'".into());
    }
    Ok(())
}

/// `major.minor` of a semantic version.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether a sidecar at `ours` and a control plane at `theirs` are within
/// the supported skew: the same major version and at most one minor apart.
/// An unparsable version is not judged (true).
pub fn skew_supported(ours: &str, theirs: &str) -> bool {
    match (major_minor(ours), major_minor(theirs)) {
        (Some((a, x)), Some((b, y))) => a == b && x.abs_diff(y) <= 1,
        _ => true,
    }
}

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
pub struct AttestRequest {
    /// The projected service-account token (a JWT, audience `warden`).
    pub token: String,
    /// PEM `CERTIFICATE REQUEST`; its key was made by the caller.
    pub csr: String,
    /// Requested lifetime; the CA's default when absent.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// What a sidecar registers for discovery: where its workload is reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointRegistration {
    /// The workload's addresses (a pod IP); at most [`MAX_ENDPOINT_ADDRESSES`].
    pub addresses: Vec<std::net::IpAddr>,
    /// The ports it serves; empty: every port.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// A service address an administrator sets (`PUT /v1/admin/endpoints`):
/// a Kubernetes Service's ClusterIP, and the identity its pods prove.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceEndpoint {
    pub address: std::net::IpAddr,
    pub spiffe_id: String,
    /// The Service's name (`shop/orders`), listed as `service:<name>`.
    pub name: String,
    /// The ports it serves; empty: every port.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// What `DELETE /v1/admin/endpoints?address=IP` did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceEndpointRemoved {
    pub removed: bool,
}

/// The most addresses one registration may hold.
pub const MAX_ENDPOINT_ADDRESSES: usize = 16;
/// The most ports one registration may list.
pub const MAX_ENDPOINT_PORTS: usize = 64;

/// One address in the discovery registry, and who holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub address: std::net::IpAddr,
    /// Empty: every port.
    #[serde(default)]
    pub ports: Vec<u16>,
    pub spiffe_id: String,
    #[serde(default)]
    pub instance: String,
    /// Unix seconds: when the SVID that registered it expires.
    pub expires_at: i64,
}

/// The registry, with a mark that changes whenever it does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct EndpointList {
    pub mark: String,
    pub endpoints: Vec<Endpoint>,
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
    /// The control plane's Warden version (empty from one before 0.2.0).
    #[serde(default)]
    pub version: String,
    /// The JWT bundle: a JWKS of the keys that sign JWT-SVIDs (absent from
    /// control planes before 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_bundle: Option<String>,
}

/// What `POST /v1/jwt` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JwtRequest {
    /// 1 to [`MAX_JWT_AUDIENCES`] audiences, each 1 to [`MAX_AUDIENCE`]
    /// printable characters.
    pub audiences: Vec<String>,
    /// Requested lifetime: [`DEFAULT_JWT_TTL_SECS`] when absent, at most
    /// [`MAX_JWT_TTL_SECS`], and never past the caller's X.509-SVID.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A JWT-SVID.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JwtResponse {
    pub spiffe_id: String,
    /// The token (JWS compact serialization, ES256).
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The most audiences one JWT-SVID may name.
pub const MAX_JWT_AUDIENCES: usize = 8;
/// The longest audience.
pub const MAX_AUDIENCE: usize = 256;
/// A JWT-SVID's lifetime when none is asked.
pub const DEFAULT_JWT_TTL_SECS: u64 = 300;
/// The longest lifetime a JWT-SVID gets.
pub const MAX_JWT_TTL_SECS: u64 = 3600;
/// The shortest lifetime asked for that is not refused.
pub const MIN_JWT_TTL_SECS: u64 = 10;

/// Why an audience list is refused.
pub fn check_audiences(audiences: &[String]) -> Result<(), String> {
    if audiences.is_empty() {
        return Err("at least one audience is required".into());
    }
    if audiences.len() > MAX_JWT_AUDIENCES {
        return Err(format!(
            "{} audiences, more than the {MAX_JWT_AUDIENCES} allowed",
            audiences.len()
        ));
    }
    for audience in audiences {
        if audience.is_empty() || audience.len() > MAX_AUDIENCE {
            return Err(format!(
                "an audience is 1 to {MAX_AUDIENCE} bytes, not {}",
                audience.len()
            ));
        }
        if audience.chars().any(|c| is_unsafe_char(c) || c == ' ') {
            return Err(format!(
                "audience {:?} holds a space or a control character",
                audience.escape_debug().to_string()
            ));
        }
    }
    Ok(())
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
    /// The discovery registry, only when the caller asked (`endpoints=MARK`)
    /// and its mark differs (absent from control planes before 0.3).
    #[serde(default)]
    pub endpoints: Option<EndpointList>,
    /// The federated trust domains' bundles, only when the caller asked
    /// (`federation=MARK`) and its mark differs (absent before 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationList>,
}

/// The bundles of the trust domains this one federates with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct FederationList {
    pub mark: String,
    pub bundles: Vec<FederatedBundle>,
}

/// A federated trust domain's bundle, as its bundle endpoint served it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FederatedBundle {
    pub trust_domain: String,
    /// The SPIFFE bundle document (X.509 and JWT authorities).
    pub bundle: String,
    pub sequence: i64,
    /// Unix seconds: fetched last.
    pub refreshed_at: i64,
}

/// `GET /v1/admin/bundles`: our bundle and the federated ones, with how
/// each federation link fares.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleListing {
    pub trust_domain: String,
    /// Ours, in the SPIFFE bundle format.
    pub bundle: String,
    pub sequence: i64,
    pub federated: Vec<FederationStatus>,
}

/// One federation link.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FederationStatus {
    pub trust_domain: String,
    pub endpoint_url: String,
    /// The endpoint's SPIFFE ID (`https_spiffe`).
    pub endpoint_spiffe_id: String,
    /// The last good bundle (none before the first fetch succeeds).
    pub bundle: Option<String>,
    pub sequence: Option<i64>,
    pub refreshed_at: Option<i64>,
    pub changed_at: Option<i64>,
    /// Why the last fetch failed, if it did.
    pub last_error: Option<String>,
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

/// Longest `instance` a sidecar may give (a host and pod name, a pid).
pub const MAX_INSTANCE: usize = 253;

/// Whether `instance` may name a sidecar in the inventory: at most
/// [`MAX_INSTANCE`] bytes of letters, digits and `.-_:/@+`.
pub fn is_valid_instance(instance: &str) -> bool {
    instance.len() <= MAX_INSTANCE
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:/@+".contains(&b))
}

/// `instance` made acceptable: characters outside the allowed set become
/// `_`, and it is cut to [`MAX_INSTANCE`] bytes. For names that come from
/// elsewhere (the host name) and for sidecars older than the check.
pub fn sanitize_instance(instance: &str) -> String {
    instance
        .bytes()
        .take(MAX_INSTANCE)
        .map(|b| {
            if b.is_ascii_alphanumeric() || b".-_:/@+".contains(&b) {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect()
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in
/// any case, RFC 9110 11.1).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(check_version("0.2.0").is_ok());
        assert!(check_version("1.10.3-rc.1+build.5").is_ok());
        for bad in [
            "",
            "0.2.0\n",
            "0.2 0",
            "\u{1b}[31m",
            &"9".repeat(MAX_VERSION + 1),
        ] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        assert!(skew_supported("0.2.0", "0.1.7"));
        assert!(skew_supported("0.2.0", "0.3.0-rc.1"));
        assert!(!skew_supported("0.2.0", "0.4.0"));
        assert!(!skew_supported("1.2.0", "2.2.0"));
        assert!(skew_supported("0.2.0", "dev"));
    }
}
