//! The policy loader on arbitrary Cedar text (and a schema): never a
//! panic, and whatever loads has a version and a stable digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proxy::authz::policy_set::DEFAULT_SCHEMA;
use warden_proxy::authz::{PolicySnapshot, PolicySource};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Text after a NUL, if any, is a schema instead of the built-in one.
    let (policies, schema) = match text.split_once('\0') {
        Some((p, s)) => (p, s),
        None => (text, DEFAULT_SCHEMA),
    };
    let source = || PolicySource {
        name: "fuzz.cedar".into(),
        text: policies.into(),
    };
    if let Ok(snapshot) = PolicySnapshot::from_sources("schema.cedarschema", schema, vec![source()])
    {
        assert!(snapshot.version().starts_with("sha256:"));
        let again = PolicySnapshot::from_sources("schema.cedarschema", schema, vec![source()])
            .expect("loads twice");
        assert_eq!(again.version(), snapshot.version());
    }
});
