//! X.509-SVID inspection of arbitrary DER: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use warden_proxy::identity::{SvidLeaf, Timestamp, peer_spiffe_id, svid::inspect_leaf};

fuzz_target!(|data: &[u8]| {
    let now = Timestamp(1_800_000_000);
    if let Ok(leaf) = SvidLeaf::parse(data, now) {
        // Whatever parses as an SVID names a valid SPIFFE ID.
        assert!(leaf.spiffe_id.as_str().starts_with("spiffe://"));
    }
    let _ = inspect_leaf(data, now);
    let _ = peer_spiffe_id(&[CertificateDer::from(data.to_vec())]);
});
