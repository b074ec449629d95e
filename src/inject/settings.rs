//! A pod template's Warden settings, from its annotations: each checked,
//! a bad one refusing the pod with the annotation named.

use super::*;

/// The pod template's configuration, from its annotations.
#[derive(Debug, Default)]
pub(super) struct PodSettings {
    pub(super) skip_inbound_ports: Vec<u16>,
    pub(super) skip_outbound_ports: Vec<u16>,
    pub(super) skip_outbound_cidrs: Vec<String>,
    pub(super) opaque_ports: Vec<u16>,
    pub(super) log_level: Option<String>,
    pub(super) cpu_request: Option<String>,
    pub(super) memory_request: Option<String>,
    pub(super) cpu_limit: Option<String>,
    pub(super) memory_limit: Option<String>,
    pub(super) drain_timeout: Option<String>,
    pub(super) service: Option<String>,
    pub(super) workers: Option<u16>,
}

/// Every annotation Warden reads, with what it sets (a test checks that
/// the README's table names each).
#[cfg_attr(not(test), allow(dead_code))]
pub const ANNOTATIONS: &[(&str, &str)] = &[
    (
        "warden.dev/inject",
        "`enabled` or `disabled`: the webhook injects pods of a labelled namespace unless `disabled`; `warden inject` injects unless `disabled`",
    ),
    (
        "warden.dev/skip-inbound-ports",
        "comma-separated ports `warden init` leaves alone inbound (no mTLS, no policy)",
    ),
    (
        "warden.dev/skip-outbound-ports",
        "comma-separated destination ports left alone outbound",
    ),
    (
        "warden.dev/skip-outbound-cidrs",
        "comma-separated destination CIDRs left alone outbound",
    ),
    (
        "warden.dev/opaque-ports",
        "comma-separated ports that carry opaque TCP inbound (`inbound.opaque_ports`)",
    ),
    (
        "warden.dev/service",
        "the Cedar resource `Service::\"<name>\"` (default: the `app.kubernetes.io/name` or `app` label, else the service account)",
    ),
    (
        "warden.dev/log-level",
        "the sidecar's `WARDEN_LOG` filter (default `warn`)",
    ),
    ("warden.dev/proxy-cpu-request", "default `100m`"),
    ("warden.dev/proxy-memory-request", "default `64Mi`"),
    ("warden.dev/proxy-cpu-limit", "default none"),
    ("warden.dev/proxy-memory-limit", "default `256Mi`"),
    (
        "warden.dev/drain-timeout",
        "how long the sidecar drains after SIGTERM (`limits.drain_timeout`, default `20s`)",
    ),
    (
        "warden.dev/proxy-workers",
        "threads serving traffic (`warden proxy --workers`, 1 to 64; default 1)",
    ),
];

pub(super) fn annotation<'a>(meta: &'a Value, key: &str) -> Option<&'a str> {
    meta.get("annotations")?.get(key)?.as_str()
}

pub(super) fn label<'a>(meta: &'a Value, key: &str) -> Option<&'a str> {
    meta.get("labels")?.get(key)?.as_str()
}

pub(super) fn ports(key: &str, value: &str) -> Result<Vec<u16>, Refused> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                refused(format!(
                    "annotation {key}: {p:?} is not a port (1 to 65535)"
                ))
            })
        })
        .collect()
}

/// A Kubernetes quantity, as far as a resource annotation needs: digits,
/// an optional fraction, an optional suffix.
pub(super) fn quantity(key: &str, value: &str) -> Result<String, Refused> {
    let digits_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ]
    .contains(&suffix);
    if number_ok && suffix_ok {
        Ok(value.to_owned())
    } else {
        Err(refused(format!(
            "annotation {key}: {value:?} is not a Kubernetes quantity (100m, 64Mi)"
        )))
    }
}

/// A quantity's value (`100m` is 0.1, `64Mi` is 67108864), to compare
/// requests with limits.
pub(super) fn quantity_value(q: &str) -> f64 {
    let end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(end);
    let scale = match suffix {
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => 1.0,
    };
    number.parse::<f64>().unwrap_or(0.0) * scale
}

/// The sidecar's requests and limits: the annotations over the defaults
/// (requests 100m CPU and 64Mi, a 256Mi memory limit). A limit below a
/// default request lowers the request to it, and a request above the
/// default limit raises that limit to it (the API server refuses a request
/// above its limit); both annotated, a request above its limit is refused.
pub(super) fn resolve_resources(s: &mut PodSettings) -> Result<(), Refused> {
    if s.memory_limit.is_none() {
        let raised = s
            .memory_request
            .clone()
            .filter(|r| quantity_value(r) > quantity_value("256Mi"));
        s.memory_limit = Some(raised.unwrap_or_else(|| "256Mi".to_owned()));
    }
    for (resource, request, limit, default) in [
        ("cpu", &mut s.cpu_request, &s.cpu_limit, "100m"),
        ("memory", &mut s.memory_request, &s.memory_limit, "64Mi"),
    ] {
        match (request.as_ref(), limit) {
            (Some(r), Some(l)) if quantity_value(r) > quantity_value(l) => {
                return Err(refused(format!(
                    "the sidecar's {resource} request {r} is above its limit {l} (warden.dev/proxy-{resource}-request and -limit)"
                )));
            }
            (None, Some(l)) if quantity_value(l) < quantity_value(default) => {
                *request = Some(l.clone());
            }
            (None, _) => *request = Some(default.to_owned()),
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn settings(meta: &Value) -> Result<PodSettings, Refused> {
    let mut s = PodSettings::default();
    let get = |k: &str| annotation(meta, k);
    if let Some(v) = get("warden.dev/skip-inbound-ports") {
        s.skip_inbound_ports = ports("warden.dev/skip-inbound-ports", v)?;
    }
    if let Some(v) = get("warden.dev/skip-outbound-ports") {
        s.skip_outbound_ports = ports("warden.dev/skip-outbound-ports", v)?;
    }
    if let Some(v) = get("warden.dev/opaque-ports") {
        s.opaque_ports = ports("warden.dev/opaque-ports", v)?;
    }
    if let Some(v) = get("warden.dev/skip-outbound-cidrs") {
        for cidr in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            cidr.parse::<warden_proxy::intercept::Cidr>()
                .map_err(|e| refused(format!("annotation warden.dev/skip-outbound-cidrs: {e}")))?;
            s.skip_outbound_cidrs.push(cidr.to_owned());
        }
    }
    if let Some(v) = get("warden.dev/log-level") {
        if v.is_empty()
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_=,:.-".contains(c))
        {
            return Err(refused(format!(
                "annotation warden.dev/log-level: {v:?} is not a log filter (info, warden_proxy=debug)"
            )));
        }
        s.log_level = Some(v.to_owned());
    }
    for (key, slot) in [
        ("warden.dev/proxy-cpu-request", &mut s.cpu_request),
        ("warden.dev/proxy-memory-request", &mut s.memory_request),
        ("warden.dev/proxy-cpu-limit", &mut s.cpu_limit),
        ("warden.dev/proxy-memory-limit", &mut s.memory_limit),
    ] {
        if let Some(v) = get(key) {
            *slot = Some(quantity(key, v)?);
        }
    }
    resolve_resources(&mut s)?;
    if let Some(v) = get("warden.dev/drain-timeout") {
        humantime::parse_duration(v).map_err(|e| {
            refused(format!(
                "annotation warden.dev/drain-timeout: {v:?}: {e} (use 20s, 1m)"
            ))
        })?;
        s.drain_timeout = Some(v.to_owned());
    }
    if let Some(v) = get("warden.dev/proxy-workers") {
        let workers = v.parse::<u16>().ok().filter(|n| (1..=64).contains(n));
        s.workers = Some(workers.ok_or_else(|| {
            refused(format!(
                "annotation warden.dev/proxy-workers: {v:?} is not a number of workers (1 to 64)"
            ))
        })?);
    }
    if let Some(v) = get("warden.dev/service") {
        if v.is_empty() || v.len() > 253 || v.chars().any(|c| c.is_control() || c == '"') {
            return Err(refused(format!(
                "annotation warden.dev/service: {v:?} is not a service name"
            )));
        }
        s.service = Some(v.to_owned());
    }
    if let Some(v) = get(ANNOTATION_INJECT)
        && v != "enabled"
        && v != "disabled"
    {
        return Err(refused(format!(
            "annotation {ANNOTATION_INJECT}: {v:?} is neither enabled nor disabled"
        )));
    }
    Ok(s)
}
