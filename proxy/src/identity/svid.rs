//! X.509-SVID leaf rules: what a certificate must look like to carry a
//! workload identity, per the SPIFFE X.509-SVID specification.
//!
//! [`inspect_leaf`] reports every rule a certificate breaks (for people);
//! [`SvidLeaf::parse`] refuses at the first one (for handshakes).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::spiffe_id::{SpiffeId, SpiffeIdError};

/// RSA keys shorter than this are refused as weak.
pub const MIN_RSA_BITS: usize = 2048;

/// One rule of the X.509-SVID specification that a leaf certificate breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafRule {
    #[error("has no URI SAN: an X.509-SVID carries exactly one SPIFFE ID")]
    NoUriSan,
    #[error("has {0} URI SANs: an X.509-SVID carries exactly one")]
    MultipleUriSans(usize),
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId { uri: String, reason: SpiffeIdError },
    #[error("SPIFFE ID {0} has no path: a workload SVID must not carry the trust domain's own ID")]
    RootPathId(String),
    #[error("is a CA certificate (basicConstraints cA=true): a leaf SVID must set cA=false")]
    CaFlagSet,
    #[error("key usage allows keyCertSign: a leaf SVID must not sign certificates")]
    KeyCertSign,
    #[error("key usage allows cRLSign: a leaf SVID must not sign CRLs")]
    CrlSign,
    #[error("has no key usage extension: a leaf SVID must have digitalSignature")]
    NoKeyUsage,
    #[error("key usage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("key usage extension is not marked critical")]
    KeyUsageNotCritical,
    #[error(
        "extended key usage lacks {0}: when present it must hold both serverAuth and clientAuth"
    )]
    MissingEku(&'static str),
    #[error("RSA key of {0} bits is too weak: at least 2048 bits are required")]
    WeakRsaKey(usize),
    #[error("unsupported public key: {0} (ECDSA P-256/P-384, Ed25519 or RSA >= 2048 are accepted)")]
    UnsupportedKey(String),
    #[error("expired at {0}")]
    Expired(Timestamp),
    #[error("not valid before {0}")]
    NotYetValid(Timestamp),
}

/// Why a certificate could not be used as an X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("no certificate was presented")]
    EmptyChain,
    #[error("certificate is not valid DER: {0}")]
    Malformed(String),
    #[error("certificate {0}")]
    Rule(LeafRule),
    #[error(
        "no trust bundle for trust domain {0:?}: the peer's chain can only be checked against its own trust domain's bundle"
    )]
    UnknownTrustDomain(String),
    #[error(
        "chain does not validate against the bundle of trust domain {trust_domain:?}: {reason}"
    )]
    UntrustedChain {
        trust_domain: String,
        reason: String,
    },
    #[error("peer identity {actual} is not the expected {expected}")]
    UnexpectedIdentity { actual: String, expected: String },
    #[error("{0} is revoked")]
    Revoked(String),
}

impl From<LeafRule> for SvidError {
    fn from(rule: LeafRule) -> Self {
        SvidError::Rule(rule)
    }
}

/// Seconds since the Unix epoch, printed as RFC 3339 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_secs(self.0.unsigned_abs())
        }
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX)),
        }
    }

    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match time::OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }) {
            Some(s) => f.write_str(&s),
            None => write!(f, "@{}", self.0),
        }
    }
}

/// The facts of a leaf certificate that identity decisions use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidLeaf {
    pub spiffe_id: SpiffeId,
    /// Serial number, lowercase hex with colons stripped.
    pub serial: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl SvidLeaf {
    /// Parses a leaf and checks every X.509-SVID leaf rule, including validity
    /// at `now`. Returns the first rule broken.
    pub fn parse(der: &[u8], now: Timestamp) -> Result<Self, SvidError> {
        let report = inspect_leaf(der, now)?;
        if let Some(rule) = report.broken.into_iter().next() {
            return Err(SvidError::Rule(rule));
        }
        let spiffe_id = report
            .spiffe_id
            .ok_or(SvidError::Rule(LeafRule::NoUriSan))?;
        Ok(SvidLeaf {
            spiffe_id,
            serial: report.serial,
            not_before: report.not_before,
            not_after: report.not_after,
        })
    }
}

/// Everything `warden svid inspect` shows about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafReport {
    pub spiffe_id: Option<SpiffeId>,
    pub uri_sans: Vec<String>,
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub key: String,
    /// Every X.509-SVID rule the certificate breaks, in a stable order.
    pub broken: Vec<LeafRule>,
}

/// Parses a certificate and lists every X.509-SVID leaf rule it breaks.
/// Only bytes that are not a certificate at all are an error.
pub fn inspect_leaf(der: &[u8], now: Timestamp) -> Result<LeafReport, SvidError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidError::Malformed(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let mut broken = Vec::new();

    let uri_sans = uri_sans(&cert)?;
    let mut spiffe_id = None;
    match the_spiffe_id(&uri_sans) {
        Ok(id) if id.is_root() => broken.push(LeafRule::RootPathId(id.to_string())),
        Ok(id) => spiffe_id = Some(id),
        Err(rule) => broken.push(rule),
    }

    let basic = cert
        .basic_constraints()
        .map_err(|e| SvidError::Malformed(format!("basicConstraints: {e}")))?;
    if basic.is_some_and(|b| b.value.ca) {
        broken.push(LeafRule::CaFlagSet);
    }

    match cert
        .key_usage()
        .map_err(|e| SvidError::Malformed(format!("keyUsage: {e}")))?
    {
        None => broken.push(LeafRule::NoKeyUsage),
        Some(ku) => {
            if ku.value.key_cert_sign() {
                broken.push(LeafRule::KeyCertSign);
            }
            if ku.value.crl_sign() {
                broken.push(LeafRule::CrlSign);
            }
            if !ku.value.digital_signature() {
                broken.push(LeafRule::NoDigitalSignature);
            }
            if !ku.critical {
                broken.push(LeafRule::KeyUsageNotCritical);
            }
        }
    }

    // The X.509-SVID spec lets leaves omit extendedKeyUsage, but when it is
    // present both serverAuth and clientAuth must be set.
    if let Some(eku) = cert
        .extended_key_usage()
        .map_err(|e| SvidError::Malformed(format!("extendedKeyUsage: {e}")))?
    {
        if !eku.value.server_auth {
            broken.push(LeafRule::MissingEku("serverAuth"));
        }
        if !eku.value.client_auth {
            broken.push(LeafRule::MissingEku("clientAuth"));
        }
    }

    let key = match check_public_key(cert.public_key()) {
        Ok(description) => description,
        Err(rule) => {
            let description = rule.to_string();
            broken.push(rule);
            description
        }
    };

    let not_before = Timestamp(cert.validity().not_before.timestamp());
    let not_after = Timestamp(cert.validity().not_after.timestamp());
    if now > not_after {
        broken.push(LeafRule::Expired(not_after));
    } else if now < not_before {
        broken.push(LeafRule::NotYetValid(not_before));
    }

    Ok(LeafReport {
        spiffe_id,
        uri_sans,
        serial: hex::encode(cert.raw_serial()),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before,
        not_after,
        key,
        broken,
    })
}

/// The URI SANs of a certificate, in order.
fn uri_sans(cert: &X509Certificate<'_>) -> Result<Vec<String>, SvidError> {
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push((*uri).to_owned());
                    }
                }
            }
            ParsedExtension::ParseError { error }
                if ext.oid == x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME =>
            {
                return Err(SvidError::Malformed(format!("subjectAltName: {error}")));
            }
            _ => {}
        }
    }
    Ok(uris)
}

/// Accepts ECDSA P-256/P-384, Ed25519 and RSA of at least 2048 bits; returns
/// a short description of the key.
pub fn check_public_key(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<String, LeafRule> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok("ECDSA P-256".into()),
            Some(c) if c == OID_NIST_EC_P384 => Ok("ECDSA P-384".into()),
            Some(c) => Err(LeafRule::UnsupportedKey(format!("ECDSA on curve {c}"))),
            None => Err(LeafRule::UnsupportedKey(
                "ECDSA without a named curve".into(),
            )),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok("Ed25519".into());
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(LeafRule::UnsupportedKey("malformed RSA key".into())),
        };
        return if bits < MIN_RSA_BITS {
            Err(LeafRule::WeakRsaKey(bits))
        } else {
            Ok(format!("RSA {bits}"))
        };
    }
    Err(LeafRule::UnsupportedKey(format!("algorithm {alg}")))
}

/// The SPIFFE ID of the first (leaf) certificate of a verified peer chain.
/// Call once per connection after the handshake; the verifiers already
/// enforced every rule.
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Result<SpiffeId, SvidError> {
    let leaf = chain.first().ok_or(SvidError::EmptyChain)?;
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
    the_spiffe_id(&uri_sans(&cert)?).map_err(SvidError::Rule)
}

/// The SPIFFE ID of a certificate with these URI SANs: exactly one, valid.
fn the_spiffe_id(uri_sans: &[String]) -> Result<SpiffeId, LeafRule> {
    match uri_sans {
        [uri] => SpiffeId::parse(uri).map_err(|reason| LeafRule::InvalidSpiffeId {
            uri: uri.clone(),
            reason,
        }),
        [] => Err(LeafRule::NoUriSan),
        many => Err(LeafRule::MultipleUriSans(many.len())),
    }
}
