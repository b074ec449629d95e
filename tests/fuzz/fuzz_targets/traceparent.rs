//! W3C `traceparent` parsing: never a panic; what parses formats back to
//! a value that parses to the same trace context.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_proxy::sidecar::telemetry::{format_traceparent, parse_traceparent};

fuzz_target!(|data: &[u8]| {
    if let Some((trace, span, sampled)) = parse_traceparent(data) {
        let formatted = format_traceparent(&trace, &span, sampled);
        assert_eq!(parse_traceparent(&formatted), Some((trace, span, sampled)));
    }
});
