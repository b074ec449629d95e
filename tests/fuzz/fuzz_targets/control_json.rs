//! The control plane's JSON request bodies: never a panic in decoding or
//! in the checks that run on what decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proxy::control::api;

fn text_ok(s: &str) -> bool {
    !s.chars().any(api::is_unsafe_char)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(join) = serde_json::from_slice::<api::JoinRequest>(data) {
        let _ = api::is_valid_instance(&join.instance);
        let _ = warden_control::ca::check_csr(join.csr.as_bytes());
    }
    if let Ok(renew) = serde_json::from_slice::<api::RenewRequest>(data) {
        let _ = api::is_valid_instance(&renew.instance);
    }
    if let Ok(token) = serde_json::from_slice::<api::TokenRequest>(data) {
        let _ = warden_proxy::identity::SpiffeId::parse(&token.spiffe_id);
        for (k, v) in &token.labels {
            let _ = (text_ok(k), text_ok(v));
        }
    }
    if let Ok(revoke) = serde_json::from_slice::<api::RevokeRequest>(data) {
        let _ = text_ok(&revoke.reason);
    }
    if let Ok(push) = serde_json::from_slice::<api::PolicyPush>(data) {
        let _ = warden_proxy::authz::PolicyFiles::from_named(&push.files);
    }
    let _ = serde_json::from_slice::<api::CaRotateRequest>(data);
    let _ = serde_json::from_slice::<api::PolicyRollback>(data);
});
