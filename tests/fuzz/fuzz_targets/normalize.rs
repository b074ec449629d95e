//! The path and host normalizer, with a differential oracle: normalizing
//! twice changes nothing; no output keeps a dot segment (with or without
//! parameters), raw non-ASCII, an encoded slash
//! (unless kept on purpose), an escape of an unreserved character,
//! lowercase hex, or (when merging) an empty segment; hosts come out
//! lowercase without a trailing dot and round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proxy::sidecar::normalize::{EscapedSlashes, PathRules, normalize_host, normalize_path};

fn check_path(input: &str, rules: PathRules) {
    let Ok(out) = normalize_path(input, rules) else {
        return;
    };
    let out = out.into_owned();
    assert!(out.starts_with('/'), "{input:?} -> {out:?}");
    let again = normalize_path(&out, rules).expect("a normalized path normalizes");
    assert_eq!(again, out.as_str(), "not idempotent on {input:?}");
    assert!(out.is_ascii(), "raw non-ASCII left in {out:?}");
    let segments: Vec<&str> = out[1..].split('/').collect();
    assert!(
        !segments.iter().any(|s| {
            let name = s.split(';').next().unwrap_or_default();
            name == "." || name == ".."
        }),
        "dot segment left in {out:?} from {input:?}"
    );
    if rules.merge_slashes {
        assert!(!out.contains("//"), "{out:?} from {input:?}");
    }
    let bytes = out.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'%' {
            continue;
        }
        let hex = &out[i + 1..i + 3];
        assert_eq!(hex, hex.to_ascii_uppercase(), "lowercase escape in {out:?}");
        let value = u8::from_str_radix(hex, 16).expect("escape");
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "escaped unreserved character in {out:?}"
        );
        if rules.escaped_slashes != EscapedSlashes::Keep {
            assert!(value != b'/' && value != b'\\', "encoded slash in {out:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let rules = PathRules {
        merge_slashes: choice & 1 == 0,
        escaped_slashes: match (choice >> 1) % 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Decode,
        },
    };
    check_path(text, rules);
    if let Ok(host) = normalize_host(text, 80) {
        assert_eq!(host.name, host.name.to_ascii_lowercase());
        assert!(!host.name.ends_with('.'), "{host:?}");
        assert_ne!(host.port, Some(80));
        let again = normalize_host(&host.authority(), 80).expect("a normalized host normalizes");
        assert_eq!(again, host, "host not idempotent on {text:?}");
    }
});
