//! SPIFFE ID parsing: never a panic; what parses prints back to itself
//! and parses again to the same ID; a namespace and service account read
//! from it build it again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proxy::identity::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        assert_eq!(id.as_str(), text, "a parsed ID is its own text");
        let again = SpiffeId::parse(id.as_str()).expect("a parsed ID parses again");
        assert_eq!(again, id);
        assert!(id.is_member_of(&id.trust_domain()));
        if let Some((ns, sa)) = id.namespace_service_account() {
            let rebuilt = SpiffeId::from_namespace_service_account(&id.trust_domain(), ns, sa)
                .expect("a namespace and service account read from an ID build one");
            assert_eq!(
                rebuilt, id,
                "the namespace and service account are the whole path"
            );
        }
    }
    if let Ok(td) = TrustDomain::new(text) {
        let _ = td.workload_id("/x");
    }
});
