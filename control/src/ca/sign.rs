//! Signing a checked CSR into an X.509-SVID.

use std::time::{Duration, SystemTime};

use rcgen::{ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SubjectPublicKeyInfo};
use warden_proxy::identity::Timestamp;
use warden_proxy::identity::keygen::svid_subject;

use super::{
    BACKDATE, CertificateAuthority, CsrError, IssuedSvid, MAX_LIFETIME, MIN_SVID_TTL, SignRequest,
    csr, random_serial,
};

impl CertificateAuthority {
    /// Checks a CSR (PEM or DER) and signs it into an X.509-SVID.
    pub fn sign_csr(&self, csr: &[u8], request: &SignRequest) -> Result<IssuedSvid, CsrError> {
        self.sign_csr_at(csr, request, SystemTime::now())
    }

    /// [`CertificateAuthority::sign_csr`] with `now` as the time of signing
    /// (the control plane's clock): the SVID is valid from about `now`.
    pub fn sign_csr_at(
        &self,
        csr: &[u8],
        request: &SignRequest,
        now: SystemTime,
    ) -> Result<IssuedSvid, CsrError> {
        let der = csr::decode(csr)?;
        let checked = csr::check(&der)?;
        let spiffe_id = match (checked.requested_id, &request.bound_id) {
            (Some(requested), Some(bound)) if requested != *bound => {
                return Err(CsrError::IdentityMismatch {
                    requested: requested.to_string(),
                    bound: bound.to_string(),
                });
            }
            (Some(requested), _) => requested,
            (None, Some(bound)) => bound.clone(),
            (None, None) => return Err(CsrError::MissingSpiffeId),
        };
        if !spiffe_id.is_member_of(self.trust_domain()) {
            return Err(CsrError::ForeignTrustDomain {
                id: spiffe_id.to_string(),
                trust_domain: self.trust_domain().to_string(),
            });
        }
        if spiffe_id.is_root() {
            return Err(CsrError::RootPathId(spiffe_id.to_string()));
        }
        let ttl = request
            .ttl
            .unwrap_or(Duration::from_secs(self.settings.default_svid_ttl_secs));
        if ttl.as_secs() > self.settings.max_svid_ttl_secs {
            return Err(CsrError::TtlTooLong {
                requested_secs: ttl.as_secs(),
                max_secs: self.settings.max_svid_ttl_secs,
            });
        }
        if ttl < MIN_SVID_TTL {
            return Err(CsrError::TtlTooShort(ttl.as_secs()));
        }
        let not_before = now - BACKDATE.min(ttl / 4);
        // An SVID never outlives the CA that signed it (nor MAX_LIFETIME,
        // should ca.json have been edited by hand).
        let not_after = now
            .checked_add(ttl.min(MAX_LIFETIME))
            .ok_or(CsrError::TtlTooLong {
                requested_secs: ttl.as_secs(),
                max_secs: MAX_LIFETIME.as_secs(),
            })?
            .min(self.not_after);
        if not_after <= now {
            return Err(CsrError::CaExpired);
        }

        let public_key = SubjectPublicKeyInfo::from_der(&checked.spki_der)
            .map_err(|e| CsrError::UnsupportedKey(e.to_string()))?;
        let mut params = svid_subject(&spiffe_id).map_err(|e| CsrError::Internal(e.to_string()))?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| CsrError::Internal(e.to_string()))?;

        let mut chain = Vec::with_capacity(1 + self.intermediates.len());
        chain.push(cert.der().clone());
        chain.extend(self.intermediates.iter().cloned());
        Ok(IssuedSvid {
            spiffe_id,
            serial: hex::encode(serial.to_bytes()),
            not_before: Timestamp::from_system_time(not_before),
            not_after: Timestamp::from_system_time(not_after),
            chain,
        })
    }
}
