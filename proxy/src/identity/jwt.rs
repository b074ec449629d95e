//! JWT-SVIDs: the JWT bundles (a JWKS per trust domain) and the validation
//! of a token against them, per the SPIFFE JWT-SVID standard. Signatures
//! are checked by `jsonwebtoken`; this module decides which key may check
//! which token, and refuses what the standard refuses before any key is
//! tried: `alg: none`, symmetric algorithms, a missing `kid`, a subject
//! that is not a SPIFFE ID, and a key from another trust domain than the
//! subject's.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::spiffe_id::{SpiffeId, TrustDomain};

/// The longest token accepted (SPIRE's are under 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The most keys one trust domain's JWT bundle may hold.
pub const MAX_BUNDLE_KEYS: usize = 64;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// The `use` of a JWT-SVID signing key in a SPIFFE bundle.
pub const JWT_SVID_USE: &str = "jwt-svid";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("the token is {0} bytes, more than the {MAX_TOKEN_BYTES} accepted")]
    TooLong(usize),
    #[error("alg `none` is refused: a JWT-SVID must be signed")]
    AlgNone,
    #[error(
        "algorithm {0} is refused: a JWT-SVID is signed with an asymmetric key (ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512)"
    )]
    Algorithm(String),
    #[error("header typ {0:?} is refused (JWT or JOSE)")]
    Type(String),
    #[error("the token has no key id (kid)")]
    NoKid,
    #[error("the subject is not a SPIFFE ID: {0}")]
    Subject(String),
    #[error("no JWT bundle for trust domain {0}")]
    NoBundle(String),
    #[error("key {kid} is not in the JWT bundle of trust domain {trust_domain}")]
    UnknownKey { kid: String, trust_domain: String },
    #[error(
        "key {kid} belongs to trust domain {owner}, not to the subject's trust domain {trust_domain}"
    )]
    ForeignKey {
        kid: String,
        owner: String,
        trust_domain: String,
    },
    #[error("the token's algorithm {alg} is not its key's ({key_alg})")]
    KeyAlgorithm { alg: String, key_alg: String },
    #[error("the signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token is not for audience {0:?}")]
    Audience(String),
    #[error("an audience is required")]
    NoAudience,
    #[error("{0}")]
    Invalid(String),
    #[error("JWT bundle of {trust_domain}: {reason}")]
    Bundle {
        trust_domain: String,
        reason: String,
    },
}

/// The public keys that sign one trust domain's JWT-SVIDs, by key id.
#[derive(Debug, Clone)]
pub struct JwtBundle {
    trust_domain: TrustDomain,
    keys: BTreeMap<String, Jwk>,
    /// `{"keys":[...]}`, keys in key-id order: what the Workload API hands out.
    jwks: String,
}

impl PartialEq for JwtBundle {
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain && self.jwks == other.jwks
    }
}

impl Eq for JwtBundle {}

impl JwtBundle {
    /// A bundle of `keys`; each must carry a key id, unique in the bundle.
    pub fn new(trust_domain: TrustDomain, keys: Vec<Jwk>) -> Result<Self, JwtError> {
        let bad = |reason: String| JwtError::Bundle {
            trust_domain: trust_domain.name().to_owned(),
            reason,
        };
        if keys.len() > MAX_BUNDLE_KEYS {
            return Err(bad(format!(
                "{} keys, more than the {MAX_BUNDLE_KEYS} accepted",
                keys.len()
            )));
        }
        let mut by_kid = BTreeMap::new();
        for key in keys {
            let kid = match key.common.key_id.as_deref() {
                Some(kid) if !kid.is_empty() => kid.to_owned(),
                _ => return Err(bad("a key has no key id (kid)".into())),
            };
            DecodingKey::from_jwk(&key).map_err(|e| bad(format!("key {kid}: {e}")))?;
            if by_kid.insert(kid.clone(), key).is_some() {
                return Err(bad(format!("key id {kid} appears twice")));
            }
        }
        let list: Vec<&Jwk> = by_kid.values().collect();
        let jwks = serde_json::to_string(&serde_json::json!({ "keys": list }))
            .map_err(|e| bad(e.to_string()))?;
        Ok(JwtBundle {
            trust_domain,
            keys: by_kid,
            jwks,
        })
    }

    /// Reads a JWKS document (RFC 7517), as the Workload API and SPIFFE
    /// bundle endpoints carry it. Keys whose `use` is `x509-svid` (a
    /// SPIFFE bundle's CA certificates) are skipped; any other key must be
    /// a usable public key with a key id.
    pub fn from_jwks(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, JwtError> {
        let bad = |reason: String| JwtError::Bundle {
            trust_domain: trust_domain.name().to_owned(),
            reason,
        };
        let doc: Value = serde_json::from_slice(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Some(list) = doc.get("keys").and_then(Value::as_array) else {
            return Err(bad("no \"keys\" array".into()));
        };
        let mut keys = Vec::new();
        for entry in list {
            match entry.get("use").and_then(Value::as_str) {
                Some("x509-svid") => continue,
                // SPIRE writes no `use` on JWT bundle keys.
                None | Some(JWT_SVID_USE | "sig") => {}
                Some(other) => return Err(bad(format!("a key for use {other:?}"))),
            }
            if entry.get("kty").and_then(Value::as_str) == Some("oct") {
                return Err(bad(
                    "a symmetric key (kty oct): JWT-SVIDs are signed with private keys".into(),
                ));
            }
            let key: Jwk =
                serde_json::from_value(entry.clone()).map_err(|e| bad(format!("a key: {e}")))?;
            keys.push(key);
        }
        Self::new(trust_domain, keys)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The keys, by key id.
    pub fn keys(&self) -> &BTreeMap<String, Jwk> {
        &self.keys
    }

    /// The bundle as a JWKS document.
    pub fn to_jwks(&self) -> &str {
        &self.jwks
    }
}

/// JWT bundles by trust domain name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtBundleSet {
    by_domain: BTreeMap<String, Arc<JwtBundle>>,
}

impl JwtBundleSet {
    pub fn with(mut self, bundle: JwtBundle) -> Self {
        self.insert(bundle);
        self
    }

    pub fn insert(&mut self, bundle: JwtBundle) {
        self.by_domain
            .insert(bundle.trust_domain.name().to_owned(), Arc::new(bundle));
    }

    pub fn get(&self, trust_domain_name: &str) -> Option<&Arc<JwtBundle>> {
        self.by_domain.get(trust_domain_name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<JwtBundle>> {
        self.by_domain.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
}

/// A JWT-SVID that validated: its subject and every claim.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    pub spiffe_id: SpiffeId,
    pub claims: Map<String, Value>,
}

/// A JWK whose `use` is `jwt-svid`, as SPIFFE bundles mark JWT keys.
pub fn jwt_svid_use() -> PublicKeyUse {
    PublicKeyUse::Other(JWT_SVID_USE.into())
}

fn segment(part: &str, what: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(format!("the {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed(format!(
            "the {what} is not a JSON object"
        ))),
    }
}

/// Validates `token` as a JWT-SVID for `audience` against `bundles`: the
/// key is looked up by `kid` in the bundle of the subject's trust domain
/// only, and the token must be signed with the key's algorithm, unexpired
/// (with [`LEEWAY_SECS`]) and list `audience` in `aud`.
pub fn validate_jwt_svid(
    bundles: &JwtBundleSet,
    token: &str,
    audience: &str,
) -> Result<ValidatedJwt, JwtError> {
    if audience.is_empty() {
        return Err(JwtError::NoAudience);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLong(token.len()));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, _signature] = parts.as_slice() else {
        return Err(JwtError::Malformed(format!(
            "{} dot-separated parts, not 3",
            parts.len()
        )));
    };
    let header = segment(header, "header")?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg.eq_ignore_ascii_case("none") || alg.is_empty() {
        return Err(JwtError::AlgNone);
    }
    let algorithm: Algorithm = alg
        .parse()
        .map_err(|_| JwtError::Algorithm(alg.to_owned()))?;
    if matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 | Algorithm::EdDSA
    ) {
        return Err(JwtError::Algorithm(alg.to_owned()));
    }
    if let Some(typ) = header.get("typ") {
        match typ.as_str() {
            Some("JWT" | "JOSE") => {}
            _ => return Err(JwtError::Type(typ.to_string())),
        }
    }
    let kid = match header.get("kid").and_then(Value::as_str) {
        Some(kid) if !kid.is_empty() => kid,
        _ => return Err(JwtError::NoKid),
    };
    let claims = segment(claims, "claims")?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| JwtError::Subject("no sub claim".into()))?;
    let spiffe_id = SpiffeId::parse(sub).map_err(|e| JwtError::Subject(format!("{sub}: {e}")))?;
    let td = spiffe_id.trust_domain_name();
    let bundle = bundles
        .get(td)
        .ok_or_else(|| JwtError::NoBundle(td.to_owned()))?;
    let Some(jwk) = bundle.keys().get(kid) else {
        if let Some(owner) = bundles.iter().find(|b| b.keys().contains_key(kid)) {
            return Err(JwtError::ForeignKey {
                kid: kid.to_owned(),
                owner: owner.trust_domain().name().to_owned(),
                trust_domain: td.to_owned(),
            });
        }
        return Err(JwtError::UnknownKey {
            kid: kid.to_owned(),
            trust_domain: td.to_owned(),
        });
    };
    if let Some(key_alg) = jwk.common.key_algorithm {
        // Its JSON name (`ES256`) is the header's spelling.
        let key_alg = serde_json::to_value(key_alg)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if key_alg != alg {
            return Err(JwtError::KeyAlgorithm {
                alg: alg.to_owned(),
                key_alg,
            });
        }
    }
    let key =
        DecodingKey::from_jwk(jwk).map_err(|e| JwtError::Invalid(format!("key {kid}: {e}")))?;
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => JwtError::Signature,
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                ErrorKind::InvalidAudience => JwtError::Audience(audience.to_owned()),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    JwtError::KeyAlgorithm {
                        alg: alg.to_owned(),
                        key_alg: "the key's family".into(),
                    }
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    JwtError::Invalid(format!("the {claim} claim is missing"))
                }
                _ => JwtError::Invalid(e.to_string()),
            }
        })?;
    Ok(ValidatedJwt {
        spiffe_id,
        claims: data.claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    struct Signer {
        key: EncodingKey,
        jwk: Jwk,
    }

    fn signer(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk");
        jwk.common.key_id = Some(kid.to_owned());
        Signer { key, jwk }
    }

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).expect("td")
    }

    fn token(s: &Signer, kid: &str, sub: &str, aud: &str, exp_in: i64) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let now = crate::identity::Timestamp::now().0;
        let claims = serde_json::json!({"sub": sub, "aud": aud, "exp": now + exp_in});
        jsonwebtoken::encode(&header, &claims, &s.key).expect("sign")
    }

    #[test]
    fn a_key_is_only_trusted_for_its_own_trust_domain() {
        let ours = signer("ours");
        let theirs = signer("theirs");
        let bundles = JwtBundleSet::default()
            .with(JwtBundle::new(td("example.org"), vec![ours.jwk.clone()]).expect("bundle"))
            .with(JwtBundle::new(td("other.org"), vec![theirs.jwk.clone()]).expect("bundle"));
        let good = token(&ours, "ours", "spiffe://example.org/a", "x", 60);
        let valid = validate_jwt_svid(&bundles, &good, "x").expect("valid");
        assert_eq!(valid.spiffe_id.as_str(), "spiffe://example.org/a");
        let foreign = token(&theirs, "theirs", "spiffe://other.org/b", "x", 60);
        assert!(validate_jwt_svid(&bundles, &foreign, "x").is_ok());
        // other.org's key signing for an example.org subject.
        let claimed = token(&theirs, "theirs", "spiffe://example.org/a", "x", 60);
        assert_eq!(
            validate_jwt_svid(&bundles, &claimed, "x"),
            Err(JwtError::ForeignKey {
                kid: "theirs".into(),
                owner: "other.org".into(),
                trust_domain: "example.org".into()
            })
        );
        assert_eq!(
            validate_jwt_svid(&bundles, &good, "y"),
            Err(JwtError::Audience("y".into()))
        );
        assert_eq!(
            validate_jwt_svid(&bundles, &good, ""),
            Err(JwtError::NoAudience)
        );
        let old = token(&ours, "ours", "spiffe://example.org/a", "x", -120);
        assert_eq!(
            validate_jwt_svid(&bundles, &old, "x"),
            Err(JwtError::Expired)
        );
        // Within the leeway, still valid.
        let just = token(&ours, "ours", "spiffe://example.org/a", "x", -5);
        assert!(validate_jwt_svid(&bundles, &just, "x").is_ok());
    }

    #[test]
    fn bundles_read_from_jwks_skip_x509_keys_and_refuse_bad_ones() {
        let s = signer("k1");
        let mut jwk = serde_json::to_value(&s.jwk).expect("json");
        let doc = serde_json::json!({"keys": [
            jwk.clone(),
            {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": ["AAAA"]}
        ]});
        let bundle =
            JwtBundle::from_jwks(td("example.org"), doc.to_string().as_bytes()).expect("bundle");
        assert_eq!(bundle.keys().len(), 1);
        let again =
            JwtBundle::from_jwks(td("example.org"), bundle.to_jwks().as_bytes()).expect("again");
        assert_eq!(again, bundle);
        for bad in [
            "",
            "[]",
            "{\"keys\": 3}",
            "{\"keys\": [{\"kty\": \"EC\"}]}",
            "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"h\", \"k\": \"c2VjcmV0\"}]}",
            "{\"keys\": [{\"use\": \"enc\", \"kty\": \"EC\"}]}",
        ] {
            assert!(
                JwtBundle::from_jwks(td("example.org"), bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        jwk["kid"] = serde_json::Value::Null;
        let doc = serde_json::json!({"keys": [jwk]});
        assert!(JwtBundle::from_jwks(td("example.org"), doc.to_string().as_bytes()).is_err());
        let twice = JwtBundle::new(td("example.org"), vec![s.jwk.clone(), s.jwk.clone()]);
        assert!(twice.is_err());
    }

    #[test]
    fn headers_the_standard_refuses() {
        let s = signer("k1");
        let bundles = JwtBundleSet::default()
            .with(JwtBundle::new(td("example.org"), vec![s.jwk.clone()]).expect("bundle"));
        let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let claims = part(
            serde_json::json!({"sub": "spiffe://example.org/a", "aud": "x", "exp": 9_999_999_999_i64}),
        );
        let with_header = |h: serde_json::Value| format!("{}.{claims}.c2ln", part(h));
        for (header, want) in [
            (
                serde_json::json!({"alg": "none", "kid": "k1"}),
                JwtError::AlgNone,
            ),
            (serde_json::json!({"kid": "k1"}), JwtError::AlgNone),
            (
                serde_json::json!({"alg": "HS256", "kid": "k1"}),
                JwtError::Algorithm("HS256".into()),
            ),
            (
                serde_json::json!({"alg": "XX1", "kid": "k1"}),
                JwtError::Algorithm("XX1".into()),
            ),
            (serde_json::json!({"alg": "ES256"}), JwtError::NoKid),
            (
                serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}),
                JwtError::Type("\"at+jwt\"".into()),
            ),
            (
                serde_json::json!({"alg": "RS256", "kid": "k1"}),
                JwtError::KeyAlgorithm {
                    alg: "RS256".into(),
                    key_alg: "ES256".into(),
                },
            ),
        ] {
            assert_eq!(
                validate_jwt_svid(&bundles, &with_header(header.clone()), "x"),
                Err(want),
                "{header}"
            );
        }
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            validate_jwt_svid(&bundles, &long, "x"),
            Err(JwtError::TooLong(MAX_TOKEN_BYTES + 1))
        );
    }
}
