//! Who is on the other end of a verified connection: read once from the
//! peer's leaf certificate at the handshake, then carried by the
//! connection (policy principal, identity headers, expiry and revocation
//! watch) instead of being parsed or formatted again.

use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::{SpiffeId, SvidError, SvidLeaf, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub spiffe_id: SpiffeId,
    /// Serial number, lowercase hex: what revocations name.
    pub serial: String,
    /// SHA-256 of the leaf certificate (DER), lowercase hex: the `Hash` of
    /// `x-forwarded-client-cert`.
    pub leaf_hash: String,
    pub not_after: SystemTime,
}

impl PeerIdentity {
    /// The identity a leaf certificate proves, checked against every
    /// X.509-SVID leaf rule at `now`.
    pub fn from_leaf(der: &[u8], now: Timestamp) -> Result<Self, SvidError> {
        let leaf = SvidLeaf::parse(der, now)?;
        Ok(PeerIdentity {
            spiffe_id: leaf.spiffe_id,
            serial: leaf.serial,
            leaf_hash: hex::encode(Sha256::digest(der)),
            not_after: leaf.not_after.to_system_time(),
        })
    }

    /// The identity of a TLS connection's peer: `Ok(None)` when it sent no
    /// certificate (permissive mode), an error when the certificate it sent
    /// is not a usable SVID (the verifiers refuse those; never serve one).
    pub fn of_connection(conn: &rustls::CommonState) -> Result<Option<Self>, SvidError> {
        match conn.peer_certificates() {
            Some([leaf, ..]) => Self::from_leaf(leaf, Timestamp::now()).map(Some),
            _ => Ok(None),
        }
    }
}
