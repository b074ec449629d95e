//! Key and CSR generation. Keys are made where they are used (the sidecar)
//! and never leave it: only the CSR travels to the CA.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
};

use super::spiffe_id::SpiffeId;

/// A fresh ECDSA P-256 key and a CSR for `spiffe_id`.
pub struct KeyAndCsr {
    /// PKCS#8 PEM of the private key.
    pub key_pem: String,
    /// The CSR, DER-encoded.
    pub csr_der: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot generate a key and CSR: {0}")]
pub struct KeygenError(String);

/// Certificate parameters naming `spiffe_id` the way Warden SVIDs do:
/// subject `O=Warden`, the SPIFFE ID as the only SAN. Shared by the CSR made
/// here and the certificate the CA builds, which adds the rest.
pub fn svid_subject(spiffe_id: &SpiffeId) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Warden");
    params.subject_alt_names = vec![SanType::URI(spiffe_id.as_str().try_into()?)];
    Ok(params)
}

/// Generates an ECDSA P-256 key and a CSR carrying `spiffe_id` as its only
/// URI SAN.
pub fn new_key_and_csr(spiffe_id: &SpiffeId) -> Result<KeyAndCsr, KeygenError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| KeygenError(e.to_string()))?;
    let csr = svid_subject(spiffe_id)
        .map_err(|e| KeygenError(e.to_string()))?
        .serialize_request(&key)
        .map_err(|e| KeygenError(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_der: csr.der().to_vec(),
    })
}

/// Generates an ECDSA P-256 key and a CSR naming no identity: for a join,
/// where the token decides the SPIFFE ID the CA puts in the certificate.
pub fn new_key_and_bare_csr() -> Result<KeyAndCsr, KeygenError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| KeygenError(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Warden");
    let csr = params
        .serialize_request(&key)
        .map_err(|e| KeygenError(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_der: csr.der().to_vec(),
    })
}
