//! The CA's CSR checks on arbitrary PEM or DER: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(id)) = warden_control::ca::check_csr(data) {
        assert!(id.as_str().starts_with("spiffe://"));
    }
});
