//! The certificate authority: creates (or imports) a signing CA and signs
//! CSRs into X.509-SVIDs that follow the SPIFFE X.509-SVID specification.
//!
//! On disk a CA is one directory:
//!
//! | file        | holds                                                  |
//! |-------------|--------------------------------------------------------|
//! | `ca.json`   | trust domain and TTL limits                            |
//! | `ca.crt`    | the signing certificate (root, or our intermediate)    |
//! | `ca.key`    | its private key, mode 0600                             |
//! | `chain.pem` | certificates sent after the leaf (empty for a root CA) |
//! | `bundle.pem`| the trust bundle: the root(s) peers must trust         |

mod csr;
mod parent;
pub mod rotation;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use warden_proxy::identity::keygen::svid_subject;
use warden_proxy::identity::{
    SpiffeId, Timestamp, TrustBundle, TrustDomain, new_key_and_csr, pem_encode,
};
use x509_parser::prelude::FromDer;

pub use csr::CsrError;

/// Checks a CSR (PEM or DER) the way the CA does before it signs one:
/// structure, signature, key strength, no CA rights, at most one URI SAN
/// and a valid SPIFFE ID in it. Returns the ID it names, if any. For tools
/// and fuzzing; signing runs the same checks itself.
pub fn check_csr(csr: &[u8]) -> Result<Option<SpiffeId>, CsrError> {
    let der = csr::decode(csr)?;
    csr::check(&der).map(|checked| checked.requested_id)
}

use crate::files::{self, FileError, PRIVATE_MODE, PUBLIC_MODE};

/// Default SVID lifetime.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(3600);
/// Default upper bound on requested SVID lifetimes.
pub const DEFAULT_MAX_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of a CA created by `warden ca init`.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Shortest SVID lifetime the CA signs. Seconds-long SVIDs are for tests
/// and drills (renewal every few seconds); production runs minutes to hours.
pub const MIN_SVID_TTL: Duration = Duration::from_secs(5);
/// How far `not_before` is moved into the past, for peers with slow clocks.
/// An SVID is backdated by at most a quarter of its lifetime, so a short one
/// is not renewed the moment it arrives (renewal is due at half-life,
/// counted from `not_before`).
pub const BACKDATE: Duration = Duration::from_secs(30);
/// No lifetime (CA or SVID) may exceed this; it also keeps every date far
/// inside what X.509 and the time libraries can represent.
pub const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

const CONFIG_FILE: &str = "ca.json";
const CERT_FILE: &str = "ca.crt";
const KEY_FILE: &str = "ca.key";
const CHAIN_FILE: &str = "chain.pem";
const BUNDLE_FILE: &str = "bundle.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{0} holds no CA ({1} is missing); create one with `warden ca init`")]
    NotACa(PathBuf, &'static str),
    #[error("cannot create the CA: {0}")]
    Generate(String),
}

/// Why [`CertificateAuthority::issue_to_dir`] failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("cannot make a key: {0}")]
    Keygen(String),
    #[error("the CA refused to sign: {0}")]
    Sign(#[from] CsrError),
    #[error(transparent)]
    Files(#[from] CaError),
}

/// The settings kept in `ca.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaSettings {
    pub trust_domain: TrustDomain,
    pub default_svid_ttl_secs: u64,
    pub max_svid_ttl_secs: u64,
}

/// How to create a CA.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub trust_domain: TrustDomain,
    /// Lifetime of the CA certificate (capped by the parent's for an intermediate).
    pub ca_ttl: Duration,
    pub default_svid_ttl: Duration,
    pub max_svid_ttl: Duration,
    /// Bring your own PKI: sign our CA as an intermediate under this parent.
    pub parent: Option<ParentCa>,
}

impl InitOptions {
    fn validate(&self) -> Result<(), CaError> {
        let secs = |d: Duration| d.as_secs();
        for (name, value) in [
            ("CA TTL", self.ca_ttl),
            ("maximum SVID TTL", self.max_svid_ttl),
        ] {
            if value > MAX_LIFETIME {
                return Err(CaError::Generate(format!(
                    "{name} of {}s exceeds the limit of 100 years",
                    secs(value)
                )));
            }
        }
        if self.default_svid_ttl < MIN_SVID_TTL {
            return Err(CaError::Generate(format!(
                "default SVID TTL of {}s is below the minimum of {}s",
                secs(self.default_svid_ttl),
                secs(MIN_SVID_TTL)
            )));
        }
        Ok(())
    }

    pub fn new(trust_domain: TrustDomain) -> Self {
        InitOptions {
            trust_domain,
            ca_ttl: DEFAULT_CA_TTL,
            default_svid_ttl: DEFAULT_SVID_TTL,
            max_svid_ttl: DEFAULT_MAX_SVID_TTL,
            parent: None,
        }
    }
}

/// An existing CA to create ours under.
#[derive(Clone)]
pub struct ParentCa {
    /// PEM: the parent certificate first, then its own chain up to the root.
    pub cert_pem: Vec<u8>,
    pub key_pem: String,
}

impl std::fmt::Debug for ParentCa {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParentCa")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// What the CA is asked to sign.
#[derive(Debug, Clone, Default)]
pub struct SignRequest {
    /// The identity this request is bound to (for example by a join token or
    /// the caller's current SVID). A CSR naming another ID is refused; a CSR
    /// naming none gets this one.
    ///
    /// `None` trusts the CSR to name its own ID (any ID in the trust domain):
    /// only for callers that hold the CA key anyway, such as the local
    /// `warden svid issue`. Anything serving remote callers must bind.
    pub bound_id: Option<SpiffeId>,
    /// Requested lifetime; the CA default when `None`.
    pub ttl: Option<Duration>,
}

/// A signed X.509-SVID.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    pub spiffe_id: SpiffeId,
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// Leaf first, then the intermediates up to (not including) the root.
    pub chain: Vec<CertificateDer<'static>>,
}

impl IssuedSvid {
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }
}

/// A loaded CA, ready to sign.
pub struct CertificateAuthority {
    settings: CaSettings,
    issuer: Issuer<'static, KeyPair>,
    /// Sent after the leaf: our intermediate and its parents (empty for a root).
    intermediates: Vec<CertificateDer<'static>>,
    bundle: TrustBundle,
    not_after: SystemTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn ca_params(trust_domain: &TrustDomain, ttl: Duration, path_len: Option<u8>) -> CertificateParams {
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
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ttl).into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = path_len.is_some();
    params
}

/// 16 random bytes, positive: 127 bits of entropy, above the 64 the
/// CA/Browser Forum and the issue require.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> CaError {
    CaError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("malformed PEM: {e}")))
}

/// A new signing CA's certificate, what goes on the wire after a leaf, and
/// the roots peers must trust.
struct CaCertificates {
    cert: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
}

fn parse_cert<'a>(
    path: &Path,
    der: &'a [u8],
) -> Result<x509_parser::certificate::X509Certificate<'a>, CaError> {
    x509_parser::certificate::X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| invalid(path, format!("not a certificate: {e}")))
}

fn not_after(cert: &x509_parser::certificate::X509Certificate<'_>) -> SystemTime {
    Timestamp(cert.validity().not_after.timestamp()).to_system_time()
}

impl CertificateAuthority {
    /// Creates a CA in `dir` (created if missing). Refuses if `dir` already
    /// holds any CA file.
    pub fn init(dir: &Path, options: &InitOptions) -> Result<Self, CaError> {
        options.validate()?;
        if options.default_svid_ttl > options.max_svid_ttl {
            return Err(CaError::Generate(format!(
                "default SVID TTL ({}s) exceeds the maximum ({}s)",
                options.default_svid_ttl.as_secs(),
                options.max_svid_ttl.as_secs()
            )));
        }
        for name in [CONFIG_FILE, CERT_FILE, KEY_FILE, CHAIN_FILE, BUNDLE_FILE] {
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
                let params = ca_params(td, options.ca_ttl, None);
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| CaError::Generate(e.to_string()))?;
                CaCertificates {
                    cert: cert.der().clone(),
                    intermediates: Vec::new(),
                    roots: vec![cert.der().clone()],
                }
            }
            Some(parent) => parent::sign_under_parent(parent, &key, td, options.ca_ttl)?,
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
        Ok(CertificateAuthority {
            settings,
            issuer,
            intermediates,
            bundle,
            not_after,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.settings.trust_domain
    }

    pub fn settings(&self) -> &CaSettings {
        &self.settings
    }

    /// The trust bundle peers need to validate SVIDs from this CA.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
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

    /// Checks a CSR (PEM or DER) and signs it into an X.509-SVID.
    pub fn sign_csr(&self, csr: &[u8], request: &SignRequest) -> Result<IssuedSvid, CsrError> {
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
        let now = SystemTime::now();
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

#[cfg(test)]
mod tests;
