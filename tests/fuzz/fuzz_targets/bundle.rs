//! Trust bundles as PEM and as SPIFFE JSON (JWK set): never a panic; a
//! bundle that loads survives a round trip through both encodings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proxy::identity::{TrustBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("example.org").expect("trust domain");
    for loaded in [
        TrustBundle::from_bytes(td.clone(), data),
        TrustBundle::from_pem(td.clone(), data),
        TrustBundle::from_spiffe_json(td.clone(), data),
    ] {
        if let Ok(bundle) = loaded {
            let pem = TrustBundle::from_pem(td.clone(), bundle.to_pem().as_bytes())
                .expect("our own PEM loads");
            assert_eq!(pem.roots(), bundle.roots());
            let json =
                TrustBundle::from_spiffe_json(td.clone(), bundle.to_spiffe_json().as_bytes())
                    .expect("our own JSON loads");
            assert_eq!(json.roots(), bundle.roots());
        }
    }
});
