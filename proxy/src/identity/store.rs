//! The hot-swappable SVID store: the current SVID and the trust bundles sit
//! in `ArcSwap`s that rustls reads on every handshake. Swapping them changes
//! what new handshakes present and accept; live connections are untouched.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::bundle::TrustBundleSet;
use super::jwt::JwtBundleSet;
use super::spiffe_id::SpiffeId;
use super::svid::{SvidError, SvidLeaf, Timestamp};
use super::verify::{ExpectedIdentity, PeerRole, verify_peer_svid};
use crate::tls::crypto_provider;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SvidLoadError {
    #[error("certificate PEM is malformed: {0}")]
    CertPem(String),
    #[error("no certificate found")]
    NoCertificate,
    #[error("private key is unreadable: {0}")]
    Key(String),
    #[error("private key does not match the certificate")]
    KeyMismatch,
    #[error(transparent)]
    Svid(#[from] SvidError),
}

/// An X.509-SVID with its private key, ready for rustls.
#[derive(Clone)]
pub struct Svid {
    leaf: SvidLeaf,
    certified: Arc<CertifiedKey>,
    /// The key as PKCS#8 DER, for the Workload API (which hands the
    /// workload its key); `None` when it was loaded in another encoding.
    pkcs8: Option<Arc<rustls::pki_types::PrivatePkcs8KeyDer<'static>>>,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.leaf.spiffe_id.as_str())
            .field("serial", &self.leaf.serial)
            .field("not_after", &self.leaf.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// An SVID from its chain (leaf first) and private key. The leaf must obey
    /// every X.509-SVID rule, be valid now, and match the key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, SvidLoadError> {
        let leaf_der = chain.first().ok_or(SvidLoadError::NoCertificate)?;
        let leaf = SvidLeaf::parse(leaf_der, Timestamp::now())?;
        let pkcs8 = match &key {
            PrivateKeyDer::Pkcs8(der) => Some(Arc::new(der.clone_key())),
            _ => None,
        };
        let signing_key = crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| SvidLoadError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(SvidLoadError::KeyMismatch);
            }
            Err(e) => return Err(SvidLoadError::Key(e.to_string())),
        }
        Ok(Svid {
            leaf,
            certified: Arc::new(certified),
            pkcs8,
        })
    }

    /// An SVID from PEM: the chain file (leaf first) and a PKCS#8, SEC1 or
    /// PKCS#1 key file.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, SvidLoadError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SvidLoadError::CertPem(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| SvidLoadError::Key(e.to_string()))?;
        Self::from_der(chain, key)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.leaf.spiffe_id
    }

    pub fn serial(&self) -> &str {
        &self.leaf.serial
    }

    pub fn not_before(&self) -> SystemTime {
        self.leaf.not_before.to_system_time()
    }

    pub fn not_after(&self) -> SystemTime {
        self.leaf.not_after.to_system_time()
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The private key as PKCS#8 DER, when it was given so (keys the
    /// sidecar makes always are).
    pub fn pkcs8_key(&self) -> Option<&[u8]> {
        self.pkcs8.as_deref().map(|k| k.secret_pkcs8_der())
    }

    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// Time until expiry; zero once expired.
    pub fn time_left(&self, now: SystemTime) -> Duration {
        self.not_after().duration_since(now).unwrap_or_default()
    }

    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        now >= self.not_before() && now <= self.not_after()
    }

    /// Checks that our own chain validates against our trust domain's bundle,
    /// for both client and server use, so we never install an SVID our peers
    /// would refuse.
    pub fn validate_against(&self, bundles: &TrustBundleSet) -> Result<(), SvidError> {
        let chain = self.chain();
        let expected = ExpectedIdentity::exactly(self.spiffe_id().clone());
        for role in [PeerRole::Client, PeerRole::Server] {
            verify_peer_svid(
                bundles,
                &chain[0],
                &chain[1..],
                UnixTime::now(),
                role,
                &expected,
            )?;
        }
        Ok(())
    }
}

/// The current SVID and trust bundles of this workload.
///
/// Readers (every handshake) never lock. Writers (file watcher, rotation,
/// bundle updates) take `write_lock`, so a check-then-store in one writer
/// cannot interleave with another's and pair an SVID with bundles it was
/// never checked against.
pub struct SvidStore {
    svid: ArcSwapOption<Svid>,
    bundles: ArcSwap<TrustBundleSet>,
    generation: watch::Sender<u64>,
    write_lock: Mutex<()>,
    revoked: ArcSwap<Revoked>,
    revocations: watch::Sender<u64>,
    jwt_bundles: ArcSwap<JwtBundleSet>,
    jwt_generation: watch::Sender<u64>,
}

/// SPIFFE IDs and certificate serials that must be refused although their
/// chains validate: revoked by the control plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    pub spiffe_ids: std::collections::HashSet<String>,
    /// Lowercase hex, no colons.
    pub serials: std::collections::HashSet<String>,
}

impl Revoked {
    pub fn contains(&self, spiffe_id: &str, serial: &str) -> bool {
        (!self.spiffe_ids.is_empty() && self.spiffe_ids.contains(spiffe_id))
            || (!self.serials.is_empty() && self.serials.contains(serial))
    }
}

impl fmt::Debug for SvidStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidStore")
            .field("svid", &self.svid.load().as_deref().map(Svid::spiffe_id))
            .field(
                "trust_domains",
                &self.bundles.load().trust_domains().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for SvidStore {
    fn default() -> Self {
        Self::new()
    }
}

impl SvidStore {
    /// An empty store: handshakes fail until an SVID is installed.
    pub fn new() -> Self {
        SvidStore {
            svid: ArcSwapOption::empty(),
            bundles: ArcSwap::from_pointee(TrustBundleSet::new()),
            generation: watch::Sender::new(0),
            write_lock: Mutex::new(()),
            revoked: ArcSwap::from_pointee(Revoked::default()),
            revocations: watch::Sender::new(0),
            jwt_bundles: ArcSwap::from_pointee(JwtBundleSet::default()),
            jwt_generation: watch::Sender::new(0),
        }
    }

    /// Replaces the revocation list; live connections of newly revoked
    /// peers are cut by their watchers (see [`SvidStore::subscribe_revocations`]).
    pub fn set_revoked(&self, revoked: Revoked) {
        if **self.revoked.load() != revoked {
            self.revoked.store(Arc::new(revoked));
            self.revocations.send_modify(|g| *g += 1);
        }
    }

    /// Whether a peer with this ID and serial is revoked.
    pub fn is_revoked(&self, spiffe_id: &str, serial: &str) -> bool {
        self.revoked.load().contains(spiffe_id, serial)
    }

    /// Fails for a revoked peer: the verifiers call it after the chain checks.
    pub fn check_revocation(&self, leaf: &super::SvidLeaf) -> Result<(), SvidError> {
        let (id, serial) = (leaf.spiffe_id.as_str(), leaf.serial.as_str());
        if self.is_revoked(id, serial) {
            return Err(SvidError::Revoked(format!("{id} (serial {serial})")));
        }
        Ok(())
    }

    /// The JWT bundles (JWKS by trust domain) that JWT-SVIDs are validated against.
    pub fn jwt_bundles(&self) -> Arc<JwtBundleSet> {
        self.jwt_bundles.load_full()
    }

    /// Replaces the JWT bundles when they differ from the current ones.
    pub fn set_jwt_bundles(&self, bundles: JwtBundleSet) {
        if **self.jwt_bundles.load() != bundles {
            self.jwt_bundles.store(Arc::new(bundles));
            self.jwt_generation.send_modify(|g| *g += 1);
        }
    }

    /// Changes whenever the JWT bundles change.
    pub fn subscribe_jwt_bundles(&self) -> watch::Receiver<u64> {
        self.jwt_generation.subscribe()
    }

    /// Changes whenever the revocation list changes.
    pub fn subscribe_revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// A store holding `svid` and `bundles`, after checking they fit together.
    pub fn with(svid: Svid, bundles: TrustBundleSet) -> Result<Self, SvidError> {
        let store = Self::new();
        store.install(svid, Some(bundles))?;
        Ok(store)
    }

    pub fn current(&self) -> Option<Arc<Svid>> {
        self.svid.load_full()
    }

    pub fn bundles(&self) -> Arc<TrustBundleSet> {
        self.bundles.load_full()
    }

    /// Swaps in a new SVID, and new bundles if given, once the SVID's chain
    /// validates against them. On error nothing changes.
    pub fn install(&self, svid: Svid, bundles: Option<TrustBundleSet>) -> Result<(), SvidError> {
        let _writer = self.lock_writers();
        match bundles {
            Some(bundles) => {
                svid.validate_against(&bundles)?;
                self.bundles.store(Arc::new(bundles));
            }
            None => svid.validate_against(&self.bundles.load())?,
        }
        self.svid.store(Some(Arc::new(svid)));
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Replaces the trust bundles (CA rollover, federation changes).
    pub fn set_bundles(&self, bundles: TrustBundleSet) {
        let _writer = self.lock_writers();
        self.bundles.store(Arc::new(bundles));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Drops `expired` if it is still the current SVID: handshakes fail
    /// until a new one arrives. An SVID installed meanwhile by another writer
    /// is left alone. Returns whether it was dropped.
    pub fn clear_if_current(&self, expired: &Arc<Svid>) -> bool {
        let _writer = self.lock_writers();
        let is_current = self
            .svid
            .load()
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, expired));
        if is_current {
            self.svid.store(None);
            self.generation.send_modify(|g| *g += 1);
        }
        is_current
    }

    fn lock_writers(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic in another writer leaves nothing
        // inconsistent, so poisoning is ignored.
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes whenever the SVID or the bundles change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// True while the store holds an SVID that is valid now.
    pub fn has_valid_svid(&self) -> bool {
        self.svid
            .load()
            .as_ref()
            .is_some_and(|s| s.is_valid_at(SystemTime::now()))
    }
}

/// Hands rustls the store's current certificate on every handshake.
#[derive(Debug, Clone)]
pub struct SvidResolver {
    store: Arc<SvidStore>,
}

impl SvidResolver {
    pub fn new(store: Arc<SvidStore>) -> Self {
        Self { store }
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.store.svid.load().as_ref().map(|s| s.certified.clone())
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.store.svid.load().is_some()
    }
}
