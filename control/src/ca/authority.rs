//! Creating a CA on disk, loading one, and issuing an SVID into a
//! directory.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};
use warden_proxy::identity::{SpiffeId, TrustBundle, new_key_and_csr, pem_encode};

use super::{
    BUNDLE_FILE, CERT_FILE, CHAIN_FILE, CONFIG_FILE, CaCertificates, CaError, CaSettings,
    CertificateAuthority, InitOptions, IssueError, IssuedSvid, KEY_FILE, SignRequest, ca_params,
    invalid, not_after, parent, parse_cert, parse_certs, read,
};
use crate::files::{self, FileError, PRIVATE_MODE, PUBLIC_MODE};

impl CertificateAuthority {
    /// Creates a CA in `dir` (created if missing). Refuses if `dir` already
    /// holds any CA file.
    pub fn init(dir: &Path, options: &InitOptions) -> Result<Self, CaError> {
        Self::init_at(dir, options, SystemTime::now())
    }

    /// [`CertificateAuthority::init`] with `now` as the time of creation
    /// (the control plane's clock): the CA certificate is valid from `now`.
    pub fn init_at(dir: &Path, options: &InitOptions, now: SystemTime) -> Result<Self, CaError> {
        options.validate()?;
        if options.default_svid_ttl > options.max_svid_ttl {
            return Err(CaError::Generate(format!(
                "default SVID TTL ({}s) exceeds the maximum ({}s)",
                options.default_svid_ttl.as_secs(),
                options.max_svid_ttl.as_secs()
            )));
        }
        for name in super::CA_FILES {
            let path = dir.join(name);
            if path.exists() {
                return Err(FileError::Exists(path).into());
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| FileError::Io {
            path: dir.to_owned(),
            source,
        })?;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let td = &options.trust_domain;
        let CaCertificates {
            cert: cert_der,
            intermediates,
            roots,
        } = match &options.parent {
            None => {
                let params = ca_params(td, options.ca_ttl, None, now);
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| CaError::Generate(e.to_string()))?;
                CaCertificates {
                    cert: cert.der().clone(),
                    intermediates: Vec::new(),
                    roots: vec![cert.der().clone()],
                }
            }
            Some(parent) => parent::sign_under_parent(parent, &key, td, options.ca_ttl, now)?,
        };
        let bundle =
            TrustBundle::new(td.clone(), roots).map_err(|e| CaError::Generate(e.to_string()))?;
        let settings = CaSettings {
            trust_domain: td.clone(),
            default_svid_ttl_secs: options.default_svid_ttl.as_secs(),
            max_svid_ttl_secs: options.max_svid_ttl.as_secs(),
        };
        let chain_pem: String = intermediates
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect();
        // The key first: if anything after it fails, the CA is incomplete but
        // nothing is overwritten on the next attempt by accident.
        files::write_new(
            &dir.join(KEY_FILE),
            key.serialize_pem().as_bytes(),
            PRIVATE_MODE,
        )?;
        super::jwt::JwtKey::create(dir)?;
        files::write_new(
            &dir.join(CERT_FILE),
            pem_encode("CERTIFICATE", &cert_der).as_bytes(),
            PUBLIC_MODE,
        )?;
        files::write_new(&dir.join(CHAIN_FILE), chain_pem.as_bytes(), PUBLIC_MODE)?;
        files::write_new(
            &dir.join(BUNDLE_FILE),
            bundle.to_pem().as_bytes(),
            PUBLIC_MODE,
        )?;
        let json =
            serde_json::to_vec_pretty(&settings).map_err(|e| CaError::Generate(e.to_string()))?;
        files::write_new(&dir.join(CONFIG_FILE), &json, PUBLIC_MODE)?;
        Self::load(dir)
    }

    /// Loads the CA kept in `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.exists() {
            return Err(CaError::NotACa(dir.to_owned(), CONFIG_FILE));
        }
        let settings: CaSettings =
            serde_json::from_slice(&read(&config_path)?).map_err(|e| invalid(&config_path, e))?;
        let cert_path = dir.join(CERT_FILE);
        let cert_der = parse_certs(&cert_path, &read(&cert_path)?)?
            .into_iter()
            .next()
            .ok_or_else(|| invalid(&cert_path, "holds no certificate"))?;
        let key_path = dir.join(KEY_FILE);
        let key_pem =
            String::from_utf8(read(&key_path)?).map_err(|_| invalid(&key_path, "not PEM text"))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(&key_path, format!("unreadable key: {e}")))?;
        let not_after = not_after(&parse_cert(&cert_path, &cert_der)?);
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| invalid(&cert_path, e))?;
        let chain_path = dir.join(CHAIN_FILE);
        let intermediates = parse_certs(&chain_path, &read(&chain_path)?)?;
        let bundle_path = dir.join(BUNDLE_FILE);
        let bundle = TrustBundle::from_bytes(settings.trust_domain.clone(), &read(&bundle_path)?)
            .map_err(|e| invalid(&bundle_path, e))?;
        let jwt = match super::jwt::JwtKey::load_or_create(dir) {
            Ok(key) => Some(std::sync::Arc::new(key)),
            Err(e) => {
                tracing::warn!(error = %e, "this CA has no JWT-SVID signing key: JWT-SVIDs are off until one is made");
                None
            }
        };
        Ok(CertificateAuthority {
            settings,
            issuer,
            intermediates,
            bundle,
            not_after,
            jwt,
        })
    }

    /// Makes a key here, signs an SVID for `id` and writes `svid.key`
    /// (0600), `svid.pem` (leaf, then chain) and `bundle.pem` into `dir`,
    /// each replaced atomically and the key first, so a watching sidecar
    /// never reads half a file and keeps its last good SVID meanwhile. A
    /// developer and demo convenience: in a mesh the key never leaves the
    /// sidecar.
    pub fn issue_to_dir(
        &self,
        id: &SpiffeId,
        ttl: Option<Duration>,
        dir: &Path,
    ) -> Result<IssuedSvid, IssueError> {
        let kc = new_key_and_csr(id).map_err(|e| IssueError::Keygen(e.to_string()))?;
        let request = SignRequest {
            bound_id: Some(id.clone()),
            ttl,
        };
        let svid = self.sign_csr(&kc.csr_der, &request)?;
        std::fs::create_dir_all(dir).map_err(|source| CaError::Read {
            path: dir.to_owned(),
            source,
        })?;
        files::write_replace(&dir.join("svid.key"), kc.key_pem.as_bytes(), PRIVATE_MODE)
            .map_err(CaError::from)?;
        files::write_replace(
            &dir.join("svid.pem"),
            svid.chain_pem().as_bytes(),
            PUBLIC_MODE,
        )
        .map_err(CaError::from)?;
        files::write_replace(
            &dir.join("bundle.pem"),
            self.bundle().to_pem().as_bytes(),
            PUBLIC_MODE,
        )
        .map_err(CaError::from)?;
        Ok(svid)
    }
}

/// A TLS server certificate and its key, PEM.
#[derive(Debug)]
pub struct ServerCertificate {
    /// The leaf, then the CA's chain.
    pub chain_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl CertificateAuthority {
    /// Makes a key and signs a TLS server certificate for `dns_names`, for
    /// a server outside the mesh that a client authenticates by name with
    /// this CA's bundle (the Kubernetes API server calling the injection
    /// webhook). It carries no SPIFFE ID, so it is never a workload's
    /// identity, and only the server-auth purpose. It lives `ttl`, at most
    /// as long as the CA.
    pub fn issue_server_certificate(
        &self,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<ServerCertificate, IssueError> {
        use rcgen::{
            CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
            KeyUsagePurpose, SanType,
        };
        if dns_names.is_empty() {
            return Err(IssueError::Keygen(
                "a server certificate needs a DNS name".into(),
            ));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IssueError::Keygen(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, dns_names[0].as_str());
        params.subject_alt_names = dns_names
            .iter()
            .map(|name| {
                name.as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| IssueError::Keygen(format!("{name:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        let not_after = now
            .checked_add(ttl)
            .unwrap_or(self.not_after)
            .min(self.not_after);
        if not_after <= now {
            return Err(IssueError::Sign(super::CsrError::CaExpired));
        }
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = not_after.into();
        params.serial_number = Some(super::random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| IssueError::Keygen(e.to_string()))?;
        let mut chain_pem = pem_encode("CERTIFICATE", cert.der());
        for intermediate in &self.intermediates {
            chain_pem.push_str(&pem_encode("CERTIFICATE", intermediate));
        }
        Ok(ServerCertificate {
            chain_pem,
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}
