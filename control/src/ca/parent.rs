//! Bring your own PKI: our signing CA as an intermediate under an existing CA.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair, PublicKeyData};
use warden_proxy::identity::TrustDomain;

use super::{
    CaCertificates, CaError, ParentCa, ca_params, invalid, not_after, parse_cert, parse_certs,
};

/// Bring your own PKI: our CA certificate for `key`, signed as an
/// intermediate (pathlen 0) by `parent`. Returns it, the certificates to send
/// after the leaf, and the trust bundle's roots.
pub(super) fn sign_under_parent(
    parent: &ParentCa,
    key: &KeyPair,
    trust_domain: &TrustDomain,
    ca_ttl: Duration,
    now: SystemTime,
) -> Result<CaCertificates, CaError> {
    let (cert_path, key_path) = (Path::new("--root-cert"), Path::new("--root-key"));
    let parent_chain = parse_certs(cert_path, &parent.cert_pem)?;
    let parent_cert = parent_chain
        .first()
        .ok_or_else(|| invalid(cert_path, "holds no certificate"))?;
    let parent_key = KeyPair::from_pem(&parent.key_pem)
        .map_err(|e| invalid(key_path, format!("unreadable key: {e}")))?;
    let parsed = parse_cert(cert_path, parent_cert)?;
    if parsed.public_key().raw != parent_key.subject_public_key_info().as_slice() {
        return Err(invalid(
            key_path,
            "the key does not belong to the --root-cert certificate",
        ));
    }
    if !parsed.is_ca() {
        return Err(invalid(
            cert_path,
            "the certificate is not a CA (basicConstraints cA=false)",
        ));
    }
    let ttl = not_after(&parsed)
        .duration_since(now)
        .map_err(|_| invalid(cert_path, "the parent CA has expired"))?
        .min(ca_ttl);
    let issuer = Issuer::from_ca_cert_der(parent_cert, parent_key)
        .map_err(|e| invalid(cert_path, format!("cannot sign with it: {e}")))?;
    let cert = ca_params(trust_domain, ttl, Some(0), now)
        .signed_by(key, &issuer)
        .map_err(|e| {
            invalid(
                key_path,
                format!("signing failed (does the key match the certificate?): {e}"),
            )
        })?;
    // Our intermediate, then the parent's chain minus its root, go on the wire.
    let root = parent_chain
        .last()
        .cloned()
        .unwrap_or_else(|| parent_cert.clone());
    let mut intermediates = vec![cert.der().clone()];
    intermediates.extend(
        parent_chain
            .iter()
            .take(parent_chain.len().saturating_sub(1))
            .cloned(),
    );
    Ok(CaCertificates {
        cert: cert.der().clone(),
        intermediates,
        roots: vec![root],
    })
}
