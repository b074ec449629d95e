//! Trust bundles: the root certificates of each trust domain, readable as PEM
//! and as SPIFFE bundle JSON (a JWK set whose keys have `use: x509-svid`).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde::Deserialize;

use super::spiffe_id::TrustDomain;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle for {0} holds no certificate")]
    Empty(String),
    #[error("bundle PEM is malformed: {0}")]
    Pem(String),
    #[error("bundle certificate #{index} cannot be a trust anchor: {reason}")]
    BadAnchor { index: usize, reason: String },
    #[error("bundle JSON is malformed: {0}")]
    Json(String),
    #[error("bundle JSON key #{index}: {reason}")]
    JsonKey { index: usize, reason: String },
}

/// The X.509 roots of one trust domain.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    /// `spiffe_sequence` of the SPIFFE bundle format, when known.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint` in seconds, when known.
    pub refresh_hint: Option<u64>,
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain && self.roots == other.roots
    }
}

impl TrustBundle {
    /// A bundle from DER root certificates; each must parse as a trust anchor.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty(trust_domain.to_string()));
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::BadAnchor {
                        index,
                        reason: format!("{e:?}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustBundle {
            trust_domain,
            roots,
            anchors,
            sequence: None,
            refresh_hint: None,
        })
    }

    /// Reads every `CERTIFICATE` block of a PEM file.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleError::Pem(e.to_string()))?;
        Self::new(trust_domain, roots)
    }

    /// Reads the SPIFFE bundle format: a JWK set whose `x509-svid` keys carry
    /// one certificate each in `x5c`. Keys of other uses (`jwt-svid`) are skipped.
    pub fn from_spiffe_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        let doc: SpiffeBundleJson =
            serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let mut roots = Vec::new();
        for (index, key) in doc.keys.iter().enumerate() {
            if key.use_.as_deref() != Some("x509-svid") {
                continue;
            }
            let [cert] = key.x5c.as_slice() else {
                return Err(BundleError::JsonKey {
                    index,
                    reason: format!(
                        "x509-svid key must carry exactly one x5c entry, found {}",
                        key.x5c.len()
                    ),
                });
            };
            let der = BASE64.decode(cert).map_err(|e| BundleError::JsonKey {
                index,
                reason: format!("x5c is not base64: {e}"),
            })?;
            roots.push(CertificateDer::from(der));
        }
        let mut bundle = Self::new(trust_domain, roots)?;
        bundle.sequence = doc.spiffe_sequence;
        bundle.refresh_hint = doc.spiffe_refresh_hint;
        Ok(bundle)
    }

    /// Reads PEM or SPIFFE bundle JSON, whichever the bytes are.
    pub fn from_bytes(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            Self::from_spiffe_json(trust_domain, bytes)
        } else {
            Self::from_pem(trust_domain, bytes)
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|der| pem_encode("CERTIFICATE", der))
            .collect()
    }

    /// The SPIFFE bundle JSON form: each root an `x509-svid` JWK, as a
    /// bundle endpoint serves it ([`super::spiffe_bundle`]).
    pub fn to_spiffe_json(&self) -> String {
        let keys: Vec<serde_json::Value> = self
            .roots
            .iter()
            .map(super::spiffe_bundle::x509_jwk)
            .collect();
        let mut doc = serde_json::json!({ "keys": keys });
        if let Some(sequence) = self.sequence {
            doc["spiffe_sequence"] = sequence.into();
        }
        if let Some(hint) = self.refresh_hint {
            doc["spiffe_refresh_hint"] = hint.into();
        }
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}

/// PEM-encodes one DER block with 64-column lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What the reader needs of a SPIFFE bundle document.
#[derive(Deserialize)]
struct SpiffeBundleJson {
    keys: Vec<Jwk>,
    spiffe_sequence: Option<u64>,
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Deserialize)]
struct Jwk {
    #[serde(rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    x5c: Vec<String>,
}

/// The bundles of every trust domain this workload trusts: its own and any
/// federated ones. A peer is checked against its own trust domain's bundle only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustBundleSet {
    bundles: BTreeMap<TrustDomain, Arc<TrustBundle>>,
}

impl TrustBundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, bundle: TrustBundle) -> Self {
        self.insert(bundle);
        self
    }

    /// Adds or replaces the bundle of `bundle.trust_domain()`.
    pub fn insert(&mut self, bundle: TrustBundle) {
        self.bundles
            .insert(bundle.trust_domain().clone(), Arc::new(bundle));
    }

    pub fn get(&self, trust_domain_name: &str) -> Option<&Arc<TrustBundle>> {
        // BTreeMap<TrustDomain, _> cannot be queried by &str without a TrustDomain;
        // the set is small (one entry per federated domain), so scan.
        self.bundles
            .iter()
            .find(|(td, _)| td.name() == trust_domain_name)
            .map(|(_, b)| b)
    }

    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.bundles.keys()
    }

    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }

    pub fn len(&self) -> usize {
        self.bundles.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_der(cn: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("keygen");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).expect("self-signed").der().clone()
    }

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).expect("valid trust domain")
    }

    #[test]
    fn pem_and_json_round_trip() {
        let bundle = TrustBundle::new(td("example.org"), vec![root_der("a"), root_der("b")])
            .expect("bundle");
        let from_pem =
            TrustBundle::from_bytes(td("example.org"), bundle.to_pem().as_bytes()).expect("pem");
        assert_eq!(from_pem, bundle);
        let json = bundle.to_spiffe_json();
        assert!(json.contains("\"use\": \"x509-svid\""), "{json}");
        let from_json = TrustBundle::from_bytes(td("example.org"), json.as_bytes()).expect("json");
        assert_eq!(from_json, bundle);
        assert_eq!(from_json.anchors().len(), 2);
    }

    #[test]
    fn json_skips_jwt_keys_and_reads_sequence() {
        let der = root_der("a");
        let json = format!(
            r#"{{"keys":[{{"use":"jwt-svid","kty":"EC","kid":"k"}},{{"use":"x509-svid","kty":"EC","x5c":["{}"]}}],"spiffe_sequence":7,"spiffe_refresh_hint":300}}"#,
            BASE64.encode(&der)
        );
        let bundle = TrustBundle::from_spiffe_json(td("td"), json.as_bytes()).expect("json");
        assert_eq!(bundle.roots(), &[der]);
        assert_eq!(bundle.sequence, Some(7));
        assert_eq!(bundle.refresh_hint, Some(300));
    }

    #[test]
    fn bad_bundles_are_refused() {
        assert_eq!(
            TrustBundle::from_pem(td("td"), b""),
            Err(BundleError::Empty("td".into()))
        );
        assert!(matches!(
            TrustBundle::from_pem(
                td("td"),
                b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"
            ),
            Err(BundleError::Pem(_))
        ));
        assert!(matches!(
            TrustBundle::new(
                td("td"),
                vec![CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])]
            ),
            Err(BundleError::BadAnchor { index: 0, .. })
        ));
        assert!(matches!(
            TrustBundle::from_spiffe_json(td("td"), b"{"),
            Err(BundleError::Json(_))
        ));
        assert!(matches!(
            TrustBundle::from_spiffe_json(
                td("td"),
                br#"{"keys":[{"use":"x509-svid","x5c":["%%"]}]}"#
            ),
            Err(BundleError::JsonKey { index: 0, .. })
        ));
        assert!(matches!(
            TrustBundle::from_spiffe_json(td("td"), br#"{"keys":[{"use":"x509-svid","x5c":[]}]}"#),
            Err(BundleError::JsonKey { index: 0, .. })
        ));
    }

    #[test]
    fn set_looks_up_by_trust_domain() {
        let set = TrustBundleSet::new()
            .with(TrustBundle::new(td("a.org"), vec![root_der("a")]).expect("bundle"))
            .with(TrustBundle::new(td("b.org"), vec![root_der("b")]).expect("bundle"));
        assert_eq!(set.len(), 2);
        assert!(set.get("a.org").is_some());
        assert!(set.get("c.org").is_none());
    }
}
