//! Checking a certificate signing request before the CA signs anything.
//!
//! The CA never copies extensions from a CSR: it takes the public key and the
//! SPIFFE ID, and builds every other field itself. Requests for anything else
//! (CA rights, extra SANs) are refused rather than silently dropped, so a
//! misconfigured client learns what it did wrong.

use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use warden_proxy::identity::svid::check_public_key;
use warden_proxy::identity::{LeafRule, SpiffeId, SpiffeIdError};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::reason::{CsrReason, Reason};

/// Why the CA refused to sign. [`CsrError::reason`] is what audit records
/// and API responses say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is not a valid PKCS#10 request: {0}")]
    Malformed(String),
    #[error("CSR signature does not verify with its own public key")]
    BadSignature,
    #[error("CSR key is too weak: RSA of {0} bits (at least 2048 are required)")]
    WeakKey(usize),
    #[error("CSR key is not supported: {0}")]
    UnsupportedKey(String),
    #[error("CSR asks for CA rights ({0}): an X.509-SVID is always a leaf")]
    RequestsCa(&'static str),
    #[error("CSR carries {0} URI SANs: an X.509-SVID carries exactly one SPIFFE ID")]
    MultipleUriSans(usize),
    #[error("CSR carries a {0} SAN: Warden SVIDs carry only the SPIFFE ID")]
    UnsupportedSan(String),
    #[error("CSR URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId { uri: String, reason: SpiffeIdError },
    #[error("CSR asks for {requested} but this request is bound to {bound}")]
    IdentityMismatch { requested: String, bound: String },
    #[error("CSR names no SPIFFE ID and the request binds none")]
    MissingSpiffeId,
    #[error("{id} is outside this CA's trust domain {trust_domain}")]
    ForeignTrustDomain { id: String, trust_domain: String },
    #[error("{0} has no path: a workload SVID must not carry the trust domain's own ID")]
    RootPathId(String),
    #[error("requested TTL of {requested_secs}s exceeds this CA's maximum of {max_secs}s")]
    TtlTooLong { requested_secs: u64, max_secs: u64 },
    #[error("requested TTL of {0}s is below the minimum of 5s")]
    TtlTooShort(u64),
    #[error("the CA expires before this SVID could be valid")]
    CaExpired,
    #[error("signing failed: {0}")]
    Internal(String),
}

impl CsrError {
    /// One namespace of reasons for the API: `csr_identity_mismatch`, ...;
    /// the CA's own failures are not the caller's (500, 503).
    pub fn reason(&self) -> Reason {
        match self {
            CsrError::Malformed(_) => Reason::Csr(CsrReason::Malformed),
            CsrError::BadSignature => Reason::Csr(CsrReason::BadSignature),
            CsrError::WeakKey(_) => Reason::Csr(CsrReason::WeakKey),
            CsrError::UnsupportedKey(_) => Reason::Csr(CsrReason::UnsupportedKey),
            CsrError::RequestsCa(_) => Reason::Csr(CsrReason::RequestsCa),
            CsrError::MultipleUriSans(_) => Reason::Csr(CsrReason::MultipleUriSans),
            CsrError::UnsupportedSan(_) => Reason::Csr(CsrReason::UnsupportedSan),
            CsrError::InvalidSpiffeId { .. } => Reason::Csr(CsrReason::InvalidSpiffeId),
            CsrError::IdentityMismatch { .. } => Reason::Csr(CsrReason::IdentityMismatch),
            CsrError::MissingSpiffeId => Reason::Csr(CsrReason::MissingSpiffeId),
            CsrError::ForeignTrustDomain { .. } => Reason::Csr(CsrReason::ForeignTrustDomain),
            CsrError::RootPathId(_) => Reason::Csr(CsrReason::RootPathId),
            CsrError::TtlTooLong { .. } => Reason::Csr(CsrReason::TtlTooLong),
            CsrError::TtlTooShort(_) => Reason::Csr(CsrReason::TtlTooShort),
            CsrError::CaExpired => Reason::CaExpired,
            CsrError::Internal(_) => Reason::Internal,
        }
    }
}

/// What the CA takes from an acceptable CSR.
#[derive(Debug)]
pub(crate) struct CheckedCsr {
    /// The SPIFFE ID the CSR names, if it names one.
    pub requested_id: Option<SpiffeId>,
    /// The DER SubjectPublicKeyInfo to certify.
    pub spki_der: Vec<u8>,
}

/// Accepts a CSR as PEM (`CERTIFICATE REQUEST`) or DER.
pub(crate) fn decode(csr: &[u8]) -> Result<Vec<u8>, CsrError> {
    let trimmed = csr.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        CertificateSigningRequestDer::from_pem_slice(trimmed)
            .map(|der| der.as_ref().to_vec())
            .map_err(|e| CsrError::Malformed(format!("PEM: {e}")))
    } else {
        Ok(csr.to_vec())
    }
}

pub(crate) fn check(csr_der: &[u8]) -> Result<CheckedCsr, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    // The key first: a weak key deserves that reason, not "bad signature"
    // (ring cannot verify RSA signatures under 2048 bits at all).
    let spki = &csr.certification_request_info.subject_pki;
    check_public_key(spki).map_err(|rule| match rule {
        LeafRule::WeakRsaKey(bits) => CsrError::WeakKey(bits),
        other => CsrError::UnsupportedKey(other.to_string()),
    })?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    // Several extensionRequest attributes are legal ASN.1 but meaningless;
    // refuse them rather than read only the first.
    let extension_requests: Vec<_> = csr
        .certification_request_info
        .iter_attributes()
        .filter_map(|attr| match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(req) => Some(req),
            _ => None,
        })
        .collect();
    if extension_requests.len() > 1 {
        return Err(CsrError::Malformed(format!(
            "{} extensionRequest attributes (at most one is allowed)",
            extension_requests.len()
        )));
    }
    let mut uris = Vec::new();
    let requested = extension_requests
        .iter()
        .flat_map(|req| req.extensions.iter().map(|ext| ext.parsed_extension()));
    for ext in requested {
        match ext {
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(CsrError::RequestsCa("basicConstraints cA=true"));
            }
            ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() => {
                return Err(CsrError::RequestsCa("keyUsage keyCertSign"));
            }
            ParsedExtension::KeyUsage(ku) if ku.crl_sign() => {
                return Err(CsrError::RequestsCa("keyUsage cRLSign"));
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                        other => return Err(CsrError::UnsupportedSan(san_kind(other).into())),
                    }
                }
            }
            ParsedExtension::ParseError { error } => {
                return Err(CsrError::Malformed(format!("requested extension: {error}")));
            }
            _ => {}
        }
    }
    let requested_id = match uris.as_slice() {
        [] => None,
        [uri] => Some(
            SpiffeId::parse(uri).map_err(|reason| CsrError::InvalidSpiffeId {
                uri: uri.clone(),
                reason,
            })?,
        ),
        many => return Err(CsrError::MultipleUriSans(many.len())),
    };
    Ok(CheckedCsr {
        requested_id,
        spki_der: spki.raw.to_vec(),
    })
}

fn san_kind(name: &GeneralName<'_>) -> &'static str {
    match name {
        GeneralName::DNSName(_) => "DNS name",
        GeneralName::IPAddress(_) => "IP address",
        GeneralName::RFC822Name(_) => "email",
        GeneralName::DirectoryName(_) => "directory name",
        _ => "non-URI",
    }
}
