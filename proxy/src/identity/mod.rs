//! Workload identity: SPIFFE IDs, X.509-SVIDs, trust bundles, SVID validation
//! and the hot-swappable store. The one place both the sidecar and the control
//! plane take identity from.

pub mod backoff;
pub mod bundle;
pub mod file_source;
pub mod jwt;
pub mod keygen;
pub mod peer;
pub mod rotation;
pub mod spiffe_bundle;
pub mod spiffe_id;
pub mod store;
pub mod svid;
pub mod verifiers;
pub mod verify;

pub use backoff::Backoff;
pub use bundle::{BundleError, TrustBundle, TrustBundleSet, pem_encode};
pub use file_source::{FileSource, FileSourceError, FileWatcher, WatchStatus};
pub use jwt::{JwtBundle, JwtBundleSet, JwtError, ValidatedJwt, validate_jwt_svid};
pub use keygen::{KeyAndCsr, KeygenError, new_key_and_csr};
pub use peer::PeerIdentity;
pub use rotation::{RotationPolicy, SvidSource, SvidUpdate, run_rotation, run_rotation_with_clock};
pub use spiffe_bundle::SpiffeBundle;
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use store::{Revoked, Svid, SvidLoadError, SvidResolver, SvidStore};
pub use svid::{
    LeafReport, LeafRule, SvidError, SvidLeaf, Timestamp, inspect_leaf, peer_spiffe_id,
};
pub use verifiers::{SpiffeClientVerifier, SpiffeServerVerifier};
pub use verify::{
    ExpectedIdentity, PeerRole, describe_io_error, describe_tls_error, verify_peer_svid,
};
