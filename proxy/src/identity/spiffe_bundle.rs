//! The SPIFFE bundle format (SPIFFE Trust Domain and Bundle standard): one
//! JWK set holding a trust domain's X.509 authorities (`use: x509-svid`,
//! the key's parameters and the certificate in `x5c`) and JWT authorities
//! (`use: jwt-svid`, with a `kid`), with `spiffe_sequence` and
//! `spiffe_refresh_hint`. What a bundle endpoint serves and federation
//! reads.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::bundle::{BundleError, TrustBundle};
use super::jwt::{JwtBundle, JwtError};
use super::spiffe_id::{SpiffeId, TrustDomain};

/// The largest bundle document read (SPIRE's hold a few keys: a few KiB).
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;

/// One trust domain's bundle in the SPIFFE format.
#[derive(Debug, Clone, PartialEq)]
pub struct SpiffeBundle {
    pub x509: TrustBundle,
    pub jwt: JwtBundle,
    pub sequence: u64,
    /// Seconds: how often a federated party should fetch it again.
    pub refresh_hint: Option<u64>,
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A certificate as an `x509-svid` JWK: its public key's type and
/// parameters, and the certificate itself in `x5c`. (`kty` is `EC` when the
/// key cannot be read, as before the parameters were written.)
pub(super) fn x509_jwk(der: &CertificateDer<'_>) -> Value {
    let mut key = json!({"use": "x509-svid", "kty": "EC", "x5c": [STANDARD.encode(der)]});
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return key;
    };
    let spki = cert.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string());
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            let data = point.data();
            let (crv, len) = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => ("P-256", 32),
                Some("1.3.132.0.34") => ("P-384", 48),
                Some("1.3.132.0.35") => ("P-521", 66),
                _ => return key,
            };
            // Uncompressed: 0x04, then X and Y.
            if data.len() == 1 + 2 * len && data[0] == 4 {
                key["crv"] = json!(crv);
                key["x"] = json!(b64url(&data[1..=len]));
                key["y"] = json!(b64url(&data[1 + len..]));
            }
        }
        Ok(PublicKey::RSA(rsa)) => {
            let trim = |b: &[u8]| -> Vec<u8> {
                let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
                b[start..].to_vec()
            };
            key["kty"] = json!("RSA");
            key["n"] = json!(b64url(&trim(rsa.modulus)));
            key["e"] = json!(b64url(&trim(rsa.exponent)));
        }
        _ if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => {
            key["kty"] = json!("OKP");
            key["crv"] = json!("Ed25519");
            key["x"] = json!(b64url(&spki.subject_public_key.data));
        }
        _ => {}
    }
    key
}

/// The trust domains named by a certificate's SPIFFE URI SANs.
fn san_trust_domains(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => SpiffeId::parse(uri)
                .ok()
                .map(|id| id.trust_domain_name().to_owned()),
            _ => None,
        })
        .collect()
}

impl SpiffeBundle {
    /// The document, keys in a stable order (X.509 authorities, then JWT).
    pub fn to_json(&self) -> String {
        let mut keys: Vec<Value> = self.x509.roots().iter().map(x509_jwk).collect();
        for jwk in self.jwt.keys().values() {
            keys.push(serde_json::to_value(jwk).unwrap_or(Value::Null));
        }
        let mut doc = json!({"keys": keys, "spiffe_sequence": self.sequence});
        if let Some(hint) = self.refresh_hint {
            doc["spiffe_refresh_hint"] = json!(hint);
        }
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    /// Reads a bundle document for `trust_domain`. Refused: not JSON, no
    /// X.509 authority, a bad key, a CA certificate whose SPIFFE ID names
    /// another trust domain, a document over [`MAX_BUNDLE_BYTES`].
    pub fn parse(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        if json.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::Json(format!(
                "{} bytes, more than the {MAX_BUNDLE_BYTES} accepted",
                json.len()
            )));
        }
        let x509 = TrustBundle::from_spiffe_json(trust_domain.clone(), json)?;
        for (index, root) in x509.roots().iter().enumerate() {
            if let Some(other) = san_trust_domains(root)
                .into_iter()
                .find(|td| td != trust_domain.name())
            {
                return Err(BundleError::JsonKey {
                    index,
                    reason: format!(
                        "a CA of trust domain {other}, not of {}",
                        trust_domain.name()
                    ),
                });
            }
        }
        let jwt = JwtBundle::from_jwks(trust_domain, json).map_err(|e| match e {
            JwtError::Bundle { reason, .. } => BundleError::Json(reason),
            other => BundleError::Json(other.to_string()),
        })?;
        Ok(SpiffeBundle {
            sequence: x509.sequence.unwrap_or(0),
            refresh_hint: x509.refresh_hint,
            x509,
            jwt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(td: &str) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://{td}").try_into().expect("uri"),
        )];
        let cert = params.self_signed(&key).expect("cert");
        (cert.der().clone(), key)
    }

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).expect("td")
    }

    #[test]
    fn a_bundle_reads_back_with_its_keys_and_parameters() {
        let (root, key) = ca("example.org");
        let x509 = TrustBundle::new(td("example.org"), vec![root.clone()]).expect("bundle");
        let encoding = jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der());
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::ES256)
                .expect("jwk");
        jwk.common.key_id = Some("k1".into());
        jwk.common.public_key_use = Some(super::super::jwt::jwt_svid_use());
        let jwt = JwtBundle::new(td("example.org"), vec![jwk.clone()]).expect("jwt");
        let bundle = SpiffeBundle {
            x509,
            jwt,
            sequence: 42,
            refresh_hint: Some(300),
        };
        let text = bundle.to_json();
        let doc: Value = serde_json::from_str(&text).expect("json");
        let x509_key = &doc["keys"][0];
        assert_eq!(x509_key["use"], "x509-svid");
        assert_eq!(x509_key["kty"], "EC");
        assert_eq!(x509_key["crv"], "P-256");
        // The x509-svid key's coordinates are the certificate's key's, as
        // the JWT key's are (the same key here).
        let jwk_json = serde_json::to_value(&jwk).expect("json");
        assert_eq!(x509_key["x"], jwk_json["x"]);
        assert_eq!(x509_key["y"], jwk_json["y"]);
        assert_eq!(doc["keys"][1]["use"], "jwt-svid");
        assert_eq!(doc["spiffe_sequence"], 42);
        assert_eq!(doc["spiffe_refresh_hint"], 300);
        let back = SpiffeBundle::parse(td("example.org"), text.as_bytes()).expect("parse");
        assert_eq!(back, bundle);
    }

    #[test]
    fn a_bundle_of_another_trust_domain_or_garbage_is_refused() {
        let (root, _) = ca("other.org");
        let bundle = SpiffeBundle {
            x509: TrustBundle::new(td("other.org"), vec![root]).expect("bundle"),
            jwt: JwtBundle::new(td("other.org"), Vec::new()).expect("jwt"),
            sequence: 1,
            refresh_hint: None,
        };
        let err = SpiffeBundle::parse(td("example.org"), bundle.to_json().as_bytes())
            .expect_err("refused");
        assert!(err.to_string().contains("trust domain other.org"), "{err}");
        for garbage in [&b"garbage"[..], b"{}", b"{\"keys\": []}", b"[1,2]"] {
            assert!(SpiffeBundle::parse(td("example.org"), garbage).is_err());
        }
        let huge = vec![b' '; MAX_BUNDLE_BYTES + 1];
        assert!(SpiffeBundle::parse(td("example.org"), &huge).is_err());
    }
}
