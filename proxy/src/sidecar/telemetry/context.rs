//! W3C trace context (`traceparent`, `tracestate`) read and written by hand,
//! and the sampler the `OTEL_TRACES_SAMPLER` variables choose.
//!
//! Parsing follows the W3C Trace Context rules: lowercase hex, exact field
//! lengths, no all-zero IDs, version `ff` refused, longer headers only for
//! versions above `00`, unknown flags ignored. A header that breaks a rule is
//! treated as absent (a new trace starts), never as an error.

use http::HeaderName;
use opentelemetry::trace::TraceState;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The caller's span, from its `traceparent` (and `tracestate`).
#[derive(Clone, Debug, PartialEq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    pub state: Option<TraceState>,
}

/// Each byte's value as a lowercase hex digit, or 0xff.
const UNHEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Lowercase hex `text` into `out` (half as long); `None` on any other byte.
fn unhex(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    let mut bad = 0u8;
    for (b, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (UNHEX[usize::from(pair[0])], UNHEX[usize::from(pair[1])]);
        bad |= hi | lo;
        *b = (hi << 4) | (lo & 0x0f);
    }
    // Valid digits are below 16; 0xff marks any other byte.
    (bad < 16).then_some(())
}

/// Lowercase hex of `bytes` into `out` (twice as long).
pub fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Parses a `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`.
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    let value = value.trim_ascii();
    if value.len() < 55 || [2, 35, 52].iter().any(|&i| value[i] != b'-') {
        return None;
    }
    let mut version = [0u8; 1];
    unhex(&value[..2], &mut version)?;
    match version[0] {
        0xff => return None,
        // Version 00 is exactly 55 bytes; later versions may append fields.
        0 if value.len() != 55 => return None,
        0 => {}
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut flags = [0u8; 1];
    unhex(&value[3..35], &mut trace_id)?;
    unhex(&value[36..52], &mut span_id)?;
    unhex(&value[53..55], &mut flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags[0] & 1 == 1))
}

/// The parent named by `headers`, if they carry a valid `traceparent`. A
/// `tracestate` that does not parse is dropped, as the W3C rules ask.
pub fn extract(headers: &http::HeaderMap) -> Option<Parent> {
    // Two `traceparent` headers: no valid parent (W3C).
    let mut parents = headers.get_all(&TRACEPARENT).iter();
    let value = parents.next()?;
    if parents.next().is_some() {
        return None;
    }
    let (trace_id, span_id, sampled) = parse_traceparent(value.as_bytes())?;
    // `tracestate` may come as several header lines: one list, joined.
    let mut lines = headers.get_all(&TRACESTATE).iter().map(|v| v.to_str());
    let state = match (lines.next(), lines.next()) {
        (None, _) => None,
        (Some(Ok(one)), None) => one.parse::<TraceState>().ok(),
        (Some(first), Some(second)) => {
            let all: Result<Vec<&str>, _> = [first, second].into_iter().chain(lines).collect();
            all.ok()
                .and_then(|all| all.join(",").parse::<TraceState>().ok())
        }
        (Some(Err(_)), None) => None,
    }
    .filter(|s| !s.header().is_empty());
    Some(Parent {
        trace_id,
        span_id,
        sampled,
        state,
    })
}

/// The 55-byte `traceparent` for a span.
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; 55] {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut buf[3..35], trace_id);
    hex_into(&mut buf[36..52], span_id);
    if sampled {
        buf[54] = b'1';
    }
    buf
}

/// Which spans are recorded: `OTEL_TRACES_SAMPLER` and its argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Trace ID ratio: the upper bound on the trace ID's low 63 bits.
    Ratio(u64),
    /// The caller's decision when there is a caller, else the root sampler.
    ParentBased(Root),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(u64),
}

fn ratio_bound(ratio: f64) -> u64 {
    // 2^63 for 1.0: every 63-bit value is below it.
    (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

fn ratio_samples(bound: u64, trace_id: &[u8; 16]) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

impl Sampler {
    /// From `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (the ratio,
    /// 1.0 when unset). The default is `parentbased_always_on`.
    pub fn from_env(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, String> {
        let ratio = || -> Result<u64, String> {
            match arg.map(str::trim).filter(|a| !a.is_empty()) {
                None => Ok(ratio_bound(1.0)),
                Some(a) => match a.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(ratio_bound(r)),
                    _ => Err(format!(
                        "OTEL_TRACES_SAMPLER_ARG={a:?} is not a ratio between 0 and 1"
                    )),
                },
            }
        };
        Ok(
            match name.map(str::trim).unwrap_or("parentbased_always_on") {
                "always_on" => Sampler::AlwaysOn,
                "always_off" => Sampler::AlwaysOff,
                "traceidratio" => Sampler::Ratio(ratio()?),
                "" | "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
                "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
                "parentbased_traceidratio" => Sampler::ParentBased(Root::Ratio(ratio()?)),
                other => {
                    return Err(format!(
                        "OTEL_TRACES_SAMPLER={other:?} is not supported: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                    ));
                }
            },
        )
    }

    /// Whether a span of `trace_id` under `parent` is recorded.
    pub fn sampled(self, parent: Option<&Parent>, trace_id: &[u8; 16]) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(bound) => ratio_samples(bound, trace_id),
            Sampler::ParentBased(root) => match (parent, root) {
                (Some(p), _) => p.sampled,
                (None, Root::AlwaysOn) => true,
                (None, Root::AlwaysOff) => false,
                (None, Root::Ratio(bound)) => ratio_samples(bound, trace_id),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use rand::Rng;

    struct One<'a>(&'a str);

    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == TRACEPARENT.as_str()).then_some(self.0)
        }

        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }

    /// What the OpenTelemetry SDK's W3C propagator makes of `value`.
    fn sdk(value: &str) -> Option<([u8; 16], [u8; 8], bool)> {
        let cx = TraceContextPropagator::new().extract(&One(value));
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            (
                sc.trace_id().to_bytes(),
                sc.span_id().to_bytes(),
                sc.is_sampled(),
            )
        })
    }

    #[test]
    fn well_formed_and_malformed_headers() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, sampled) = parse_traceparent(good.as_bytes()).expect("valid");
        assert_eq!(&format_traceparent(&t, &s, sampled), good.as_bytes());
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-x")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
        }
    }

    /// Random headers of the right shape, with random damage, read the same
    /// way by this parser and by the SDK's propagator.
    #[test]
    fn agrees_with_the_sdk_propagator() {
        const ALPHABET: &[u8] = b"0123456789abcdefABF-0000";
        let mut rng = rand::rng();
        let mut agreed_valid = 0;
        for _ in 0..20_000 {
            let version = if rng.random_bool(0.8) { "00" } else { "01" };
            let mut header = format!(
                "{version}-{:032x}-{:016x}-{:02x}",
                rng.random::<u128>() >> (rng.random_range(0..2) * 127),
                rng.random::<u64>() >> (rng.random_range(0..2) * 63),
                rng.random::<u8>()
            )
            .into_bytes();
            for _ in 0..rng.random_range(0..3) {
                let i = rng.random_range(0..header.len());
                header[i] = ALPHABET[rng.random_range(0..ALPHABET.len())];
            }
            let header = String::from_utf8(header).expect("ascii");
            let ours = parse_traceparent(header.as_bytes());
            let theirs = sdk(&header);
            if ours.is_some() {
                assert_eq!(ours, theirs, "{header}");
                agreed_valid += 1;
            } else if theirs.is_some() {
                // The SDK is laxer than the W3C rules in two ways: it reads
                // fields of any length between dashes (hex numbers, not
                // fixed-width strings), and an uppercase version.
                let parts: Vec<&str> = header.split('-').collect();
                let widths_ok =
                    parts.len() >= 4 && parts[..4].iter().map(|p| p.len()).eq([2, 32, 16, 2]);
                assert!(
                    !widths_ok || parts[0].bytes().any(|b| b.is_ascii_uppercase()),
                    "refused a header the SDK accepts: {header}"
                );
            }
        }
        assert!(agreed_valid > 1000, "too few valid cases: {agreed_valid}");
    }

    #[test]
    fn duplicated_traceparent_is_no_parent_and_tracestate_lines_are_one_list() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = http::HeaderMap::new();
        headers.append(TRACEPARENT, http::HeaderValue::from_static(good));
        headers.append(TRACESTATE, http::HeaderValue::from_static("a=1"));
        headers.append(TRACESTATE, http::HeaderValue::from_static("b=2,c=3"));
        let parent = extract(&headers).expect("parent");
        assert_eq!(
            parent.state.map(|s| s.header()).as_deref(),
            Some("a=1,b=2,c=3")
        );
        headers.append(TRACEPARENT, http::HeaderValue::from_static(good));
        assert_eq!(extract(&headers), None);
    }

    #[test]
    fn samplers() {
        let parent = |sampled| Parent {
            trace_id: [1; 16],
            span_id: [1; 8],
            sampled,
            state: None,
        };
        let low = [0u8; 16];
        let high = [0xff; 16];
        let half = Sampler::from_env(Some("parentbased_traceidratio"), Some("0.5")).expect("ok");
        assert!(half.sampled(None, &low));
        assert!(!half.sampled(None, &high));
        assert!(half.sampled(Some(&parent(true)), &high));
        assert!(!half.sampled(Some(&parent(false)), &low));
        let all = Sampler::from_env(None, None).expect("default");
        assert!(all.sampled(None, &high));
        assert!(!all.sampled(Some(&parent(false)), &high));
        let ratio = Sampler::from_env(Some("traceidratio"), Some("1")).expect("ok");
        assert!(
            ratio.sampled(Some(&parent(false)), &high),
            "ignores the parent"
        );
        assert!(Sampler::from_env(Some("traceidratio"), Some("1.5")).is_err());
        assert!(Sampler::from_env(Some("jaeger_remote"), None).is_err());
    }
}
