//! The sidecar's configuration loader on arbitrary TOML and overrides:
//! never a panic, only a `ConfigError` naming what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proxy::sidecar::SidecarConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line, if it looks like one, doubles as a `--set` flag and
    // an environment variable, so the override layers are fuzzed too.
    let first = text.lines().next().unwrap_or("").to_owned();
    let path = std::path::Path::new("fuzz.toml");
    let _ = SidecarConfig::parse(Some((path, text)), [], &[]);
    let _ = SidecarConfig::parse(
        None,
        [("WARDEN_LIMITS_X".to_owned(), first.clone())],
        &[first],
    );
});
