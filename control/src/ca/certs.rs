//! The CA's own certificate: its parameters, serial numbers, and reading
//! certificates from its files.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use warden_proxy::identity::{Timestamp, TrustDomain};
use x509_parser::prelude::FromDer;

use super::{BACKDATE, CaError};

pub(super) fn ca_params(
    trust_domain: &TrustDomain,
    ttl: Duration,
    path_len: Option<u8>,
    now: SystemTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Warden CA {trust_domain}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Warden");
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if let Ok(uri) = trust_domain.id().as_str().try_into() {
        params.subject_alt_names = vec![SanType::URI(uri)];
    }
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ttl).into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = path_len.is_some();
    params
}

/// 16 random bytes, positive: 127 bits of entropy, above the 64 the
/// CA/Browser Forum and the issue require.
pub(super) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    SerialNumber::from_slice(&bytes)
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn invalid(path: &Path, reason: impl std::fmt::Display) -> CaError {
    CaError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

pub(super) fn parse_certs(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, CaError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("malformed PEM: {e}")))
}

/// A new signing CA's certificate, what goes on the wire after a leaf, and
/// the roots peers must trust.
pub(super) struct CaCertificates {
    pub(super) cert: CertificateDer<'static>,
    pub(super) intermediates: Vec<CertificateDer<'static>>,
    pub(super) roots: Vec<CertificateDer<'static>>,
}

pub(super) fn parse_cert<'a>(
    path: &Path,
    der: &'a [u8],
) -> Result<x509_parser::certificate::X509Certificate<'a>, CaError> {
    x509_parser::certificate::X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| invalid(path, format!("not a certificate: {e}")))
}

pub(super) fn not_after(cert: &x509_parser::certificate::X509Certificate<'_>) -> SystemTime {
    Timestamp(cert.validity().not_after.timestamp()).to_system_time()
}
