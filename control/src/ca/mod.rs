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

mod authority;
pub use authority::ServerCertificate;
mod certs;
mod csr;
pub mod jwt;
mod parent;
pub mod rotation;
mod sign;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use warden_proxy::identity::{SpiffeId, Timestamp, TrustBundle, TrustDomain, pem_encode};

use crate::files::FileError;
use certs::{
    CaCertificates, ca_params, invalid, not_after, parse_cert, parse_certs, random_serial, read,
};
pub use csr::CsrError;

/// Checks a CSR (PEM or DER) the way the CA does before it signs one:
/// structure, signature, key strength, no CA rights, at most one URI SAN
/// and a valid SPIFFE ID in it. Returns the ID it names, if any. For tools
/// and fuzzing; signing runs the same checks itself.
pub fn check_csr(csr: &[u8]) -> Result<Option<SpiffeId>, CsrError> {
    let der = csr::decode(csr)?;
    csr::check(&der).map(|checked| checked.requested_id)
}

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
/// Every file of a CA directory, as `warden install` puts them in a Secret.
pub const CA_FILES: [&str; 6] = [
    CONFIG_FILE,
    CERT_FILE,
    KEY_FILE,
    CHAIN_FILE,
    BUNDLE_FILE,
    jwt::JWT_KEY_FILE,
];

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
    /// Its JWT-SVID signing key; `None` for a CA made before JWT-SVIDs
    /// whose directory cannot be written.
    jwt: Option<std::sync::Arc<jwt::JwtKey>>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
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

    /// The JWT-SVID signing key.
    pub fn jwt_key(&self) -> Option<&std::sync::Arc<jwt::JwtKey>> {
        self.jwt.as_ref()
    }
}

#[cfg(test)]
mod tests;
