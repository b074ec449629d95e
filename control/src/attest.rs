//! Attestation from Kubernetes projected service-account tokens: a pod's
//! sidecar sends the token the kubelet mounted for it (audience `warden`)
//! instead of a join token. The token must verify against the cluster
//! issuer's keys (a JWKS file, re-read when it changes), name the issuer
//! and audience configured, be within its validity (30 s of skew), and
//! carry the `kubernetes.io` claims of a service account in a namespace
//! the allow-list names. The SPIFFE ID is
//! `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`; the pod's
//! name and uid go to the inventory. The JWT work is `jsonwebtoken`'s; only
//! asymmetric algorithms are accepted (never `none` or HMAC).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use warden_proxy::identity::{SpiffeId, TrustDomain};

use crate::reason::{AttestReason, Reason};

/// How far `exp` and `nbf` may be off (clock skew between the cluster and here).
pub const SKEW_SECS: i64 = 30;

/// The algorithms a Kubernetes issuer signs with; everything else (`none`,
/// HMAC) is refused.
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// `warden control serve --k8s-*`.
#[derive(Debug, Clone)]
pub struct K8sOptions {
    /// The `iss` the cluster's tokens carry (its service-account issuer).
    pub issuer: String,
    /// The `aud` the injected pods' projected tokens are minted for.
    pub audience: String,
    /// The issuer's public keys, as a JWKS file.
    pub jwks: PathBuf,
    /// Who may attest: `NAMESPACE`, `NAMESPACE/SERVICE_ACCOUNT`, or `*`.
    pub allow: Vec<String>,
    /// The longest a token may live (`exp - iat`): projected tokens for
    /// Warden are short; a long-lived one (`kubectl create token
    /// --duration`) is refused.
    pub max_token_ttl: i64,
    /// Accept only tokens bound to a pod (the kubelet's projected tokens).
    pub require_pod: bool,
}

impl K8sOptions {
    /// What cannot work, said at start: a bad allow entry, no audience.
    pub fn check(&self) -> Result<(), String> {
        if self.issuer.trim().is_empty() {
            return Err("--k8s-issuer is empty".into());
        }
        if self.audience.trim().is_empty() {
            return Err("--k8s-audience is empty".into());
        }
        if self.max_token_ttl < 60 {
            return Err("--k8s-max-token-ttl must be at least 1m".into());
        }
        if self.allow.is_empty() {
            return Err(
                "--k8s-allow names no namespace: give NAMESPACE, NAMESPACE/SERVICE_ACCOUNT or '*'"
                    .into(),
            );
        }
        for entry in &self.allow {
            let valid = match entry.split_once('/') {
                _ if entry == "*" => true,
                Some((ns, sa)) => is_namespace(ns) && is_account(sa),
                None => is_namespace(entry),
            };
            if !valid {
                return Err(format!(
                    "--k8s-allow {entry:?}: give NAMESPACE, NAMESPACE/SERVICE_ACCOUNT (Kubernetes names) or '*'"
                ));
            }
        }
        Ok(())
    }
}

/// A Kubernetes namespace name (an RFC 1123 label).
fn is_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A service-account name (an RFC 1123 subdomain).
fn is_account(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_namespace)
}

/// What a valid token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub spiffe_id: SpiffeId,
    pub namespace: String,
    pub service_account: String,
    /// When the token was minted (`iat`).
    pub issued_at: i64,
    /// The pod the token is bound to (name, uid), when it is bound to one.
    pub pod: Option<(String, String)>,
}

/// A token refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: AttestReason,
    pub message: String,
}

fn refused(reason: AttestReason, message: impl Into<String>) -> Refused {
    Refused {
        reason,
        message: message.into(),
    }
}

impl From<Refused> for (Reason, String) {
    fn from(r: Refused) -> Self {
        (Reason::Attest(r.reason), r.message)
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    // Options, so a missing one is a claims error, not a decoding one.
    exp: Option<i64>,
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: Named,
    #[serde(default)]
    pod: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
    #[serde(default)]
    uid: String,
}

/// The verifier, with the keys last read and when their file changed.
pub struct K8sAttestor {
    options: K8sOptions,
    trust_domain: TrustDomain,
    keys: Mutex<(Vec<u8>, JwkSet)>,
}

/// The JWKS file: its bytes (to tell a change) and its keys.
fn read_jwks(path: &PathBuf) -> Result<(Vec<u8>, JwkSet), String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?;
    Ok((text, set))
}

impl K8sAttestor {
    pub fn new(options: K8sOptions, trust_domain: TrustDomain) -> Result<Self, String> {
        options.check()?;
        let keys = read_jwks(&options.jwks)?;
        if keys.1.keys.is_empty() {
            return Err(format!("{}: the JWKS holds no key", options.jwks.display()));
        }
        Ok(K8sAttestor {
            options,
            trust_domain,
            keys: Mutex::new(keys),
        })
    }

    /// Re-reads the JWKS file if its content changed (the issuer rotated
    /// its keys, or an operator withdrew one: an empty set attests nobody);
    /// a file that does not parse keeps the keys in force, said each time.
    pub fn refresh(&self) {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match read_jwks(&self.options.jwks) {
            Ok(fresh) if fresh.0 == keys.0 => {}
            Ok(fresh) => {
                tracing::info!(
                    keys = fresh.1.keys.len(),
                    "service-account issuer keys reloaded"
                );
                *keys = fresh;
            }
            Err(e) => {
                tracing::warn!(error = %e, "service-account issuer keys unreadable; keeping the ones in force");
            }
        }
    }

    /// Verifies `token` at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Attested, Refused> {
        use AttestReason::{
            BadAlgorithm, BadClaims, BadSignature, Expired, Malformed, NotAllowed, NotYetValid,
            TooLong, UnknownKey,
        };
        let header = decode_header(token).map_err(|e| match declared_alg(token) {
            // `none` is no algorithm to the JWT library: say what it is.
            Some(alg) if alg.eq_ignore_ascii_case("none") => {
                refused(BadAlgorithm, "alg \"none\": an unsigned token")
            }
            _ => refused(Malformed, format!("not a JWT with a known algorithm: {e}")),
        })?;
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(refused(
                BadAlgorithm,
                format!(
                    "{:?} is not an algorithm a service-account issuer signs with",
                    header.alg
                ),
            ));
        }
        let keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .clone();
        // A key declared for encryption, or for another algorithm, never
        // verifies a signature.
        let candidates: Vec<_> = keys
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.common.key_id == header.kid)
            .filter(|k| k.common.public_key_use != Some(PublicKeyUse::Encryption))
            .filter(|k| {
                k.common
                    .key_algorithm
                    .is_none_or(|a| a.to_string() == format!("{:?}", header.alg))
            })
            .collect();
        if candidates.is_empty() {
            return Err(refused(
                UnknownKey,
                format!("no key {:?} in the issuer's JWKS", header.kid),
            ));
        }
        let mut validation = Validation::new(header.alg);
        // Times are checked below against this control plane's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = ["exp", "iat", "iss", "aud", "sub"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        validation.set_issuer(&[&self.options.issuer]);
        validation.set_audience(&[&self.options.audience]);
        let mut last = refused(BadSignature, "no key verifies the signature");
        let mut claims = None;
        for jwk in candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match decode::<Claims>(token, &key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => last = classify(&e),
            }
        }
        let claims = claims.ok_or(last)?;
        let (Some(exp), Some(iat)) = (claims.exp, claims.iat) else {
            return Err(refused(BadClaims, "the token has no exp or no iat"));
        };
        if exp.saturating_add(SKEW_SECS) <= now {
            return Err(refused(Expired, format!("the token expired at {exp}")));
        }
        let valid_from = claims.nbf.unwrap_or(iat).max(iat);
        if valid_from.saturating_sub(SKEW_SECS) > now {
            return Err(refused(
                NotYetValid,
                format!("the token is valid from {valid_from}"),
            ));
        }
        let lifetime = exp.saturating_sub(iat);
        if lifetime > self.options.max_token_ttl {
            return Err(refused(
                TooLong,
                format!(
                    "the token lives {lifetime}s, longer than --k8s-max-token-ttl ({}s)",
                    self.options.max_token_ttl
                ),
            ));
        }
        let k = &claims.kubernetes;
        let (namespace, account) = (&k.namespace, &k.serviceaccount.name);
        if !is_namespace(namespace) || !is_account(account) {
            return Err(refused(
                BadClaims,
                format!("{namespace:?}/{account:?} are not Kubernetes names"),
            ));
        }
        if self.options.require_pod && k.pod.is_none() {
            return Err(refused(
                BadClaims,
                "the token is bound to no pod (a projected token from the kubelet is)",
            ));
        }
        if claims.sub != format!("system:serviceaccount:{namespace}:{account}") {
            return Err(refused(
                BadClaims,
                format!("sub {:?} is not the token's service account", claims.sub),
            ));
        }
        if !self.allowed(namespace, account) {
            return Err(refused(
                NotAllowed,
                format!("{namespace}/{account} may not attest (--k8s-allow)"),
            ));
        }
        let spiffe_id =
            SpiffeId::from_namespace_service_account(&self.trust_domain, namespace, account)
                .map_err(|e| refused(BadClaims, format!("{namespace}/{account}: {e}")))?;
        Ok(Attested {
            spiffe_id,
            namespace: namespace.clone(),
            service_account: account.clone(),
            issued_at: iat,
            pod: k.pod.as_ref().map(|p| (p.name.clone(), p.uid.clone())),
        })
    }

    fn allowed(&self, namespace: &str, account: &str) -> bool {
        let exact = format!("{namespace}/{account}");
        self.options
            .allow
            .iter()
            .any(|a| a == "*" || a == namespace || *a == exact)
    }

    /// The namespaces and accounts allowed, for the start-up log.
    pub fn allow_list(&self) -> HashSet<&str> {
        self.options.allow.iter().map(String::as_str).collect()
    }
}

/// The `alg` a token's header declares, read without trusting anything.
fn declared_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(str::to_owned)
}

fn classify(e: &jsonwebtoken::errors::Error) -> Refused {
    use AttestReason::{
        BadAlgorithm, BadClaims, BadSignature, Malformed, WrongAudience, WrongIssuer,
    };
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
            refused(
                BadSignature,
                "the signature does not verify against the issuer's keys",
            )
        }
        K::InvalidIssuer => refused(
            WrongIssuer,
            "the token's issuer is not the one configured (--k8s-issuer)",
        ),
        K::InvalidAudience => refused(
            WrongAudience,
            "the token's audience is not the one configured (--k8s-audience)",
        ),
        K::MissingRequiredClaim(c) => refused(BadClaims, format!("the token has no {c:?} claim")),
        K::InvalidAlgorithm | K::MissingAlgorithm => {
            refused(BadAlgorithm, "the key does not match the token's algorithm")
        }
        other => refused(Malformed, format!("the token does not decode: {other:?}")),
    }
}
