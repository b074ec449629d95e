//! One measured phase (closed or open loop) with the sidecars' CPU time
//! and RSS around it, and how a phase is printed and recorded.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::load::{Closed, Open, Scenario, closed_loop, open_loop, percentile};
use crate::target::Sidecar;

/// One closed-loop phase, with the sidecars' CPU time and RSS around it.
pub struct ClosedPhase {
    pub closed: Closed,
    pub rps: f64,
    pub cpu_us: Vec<f64>,
    pub rss_kib: Vec<u64>,
}

pub async fn closed_phase(
    target: SocketAddr,
    scenario: Scenario,
    sidecars: &[&Sidecar],
    conns: usize,
    length: Duration,
) -> ClosedPhase {
    // Warm up pools, connections and caches.
    closed_loop(target, scenario, conns, Duration::from_millis(300)).await;
    let before: Vec<(Duration, u64)> = sidecars.iter().map(|s| s.usage()).collect();
    let closed = closed_loop(target, scenario, conns, length).await;
    let after: Vec<(Duration, u64)> = sidecars.iter().map(|s| s.usage()).collect();
    let cpu_us = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0).as_micros() as f64 / closed.requests.max(1) as f64)
        .collect();
    ClosedPhase {
        rps: closed.requests as f64 / closed.elapsed.as_secs_f64(),
        closed,
        cpu_us,
        rss_kib: after.iter().map(|u| u.1).collect(),
    }
}

/// One open-loop phase at a fixed rate, with the sidecars' CPU time per
/// answered request around it: the same offered load for every
/// configuration, so the per-request figure does not move with how much
/// each wake-up batches (which a closed loop's throughput changes).
pub async fn open_cpu_phase(
    target: SocketAddr,
    scenario: Scenario,
    sidecars: &[&Sidecar],
    rate: u64,
    length: Duration,
) -> (Open, f64) {
    let before: Vec<Duration> = sidecars.iter().map(|s| s.usage().0).collect();
    let open = open_loop(target, scenario, rate, length).await;
    let after: Vec<Duration> = sidecars.iter().map(|s| s.usage().0).collect();
    let answered = open.latencies_us.len().max(1) as f64;
    let cpu = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (*a - *b).as_micros() as f64 / answered)
        .sum();
    (open, cpu)
}

fn joined<T: std::fmt::Display>(values: &[T], format: impl Fn(&T) -> String) -> String {
    if values.is_empty() {
        return "-".to_owned();
    }
    values.iter().map(format).collect::<Vec<_>>().join(" + ")
}

pub fn report(
    label: &str,
    scenario: Scenario,
    phase: &ClosedPhase,
    open: &Open,
    rate: u64,
) -> serde_json::Value {
    let p = |q| percentile(&open.latencies_us, q);
    let cpu_total: f64 = phase.cpu_us.iter().sum();
    let cpu = if phase.cpu_us.is_empty() {
        "-".to_owned()
    } else {
        format!(
            "{cpu_total:.1} ({})",
            joined(&phase.cpu_us, |c| format!("{c:.1}"))
        )
    };
    println!(
        "{:<28} {:<7} {:>8.0} req/s  @{rate}/s: p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  errors {}/{}  sidecar CPU {cpu} us/req  RSS {} KiB",
        scenario.name,
        label,
        phase.rps,
        p(50.0),
        p(99.0),
        p(99.9),
        phase.closed.errors,
        open.errors,
        joined(&phase.rss_kib, u64::to_string),
    );
    json!({
        "scenario": scenario.name,
        "target": label,
        "closed_loop": { "seconds": phase.closed.elapsed.as_secs_f64(), "requests": phase.closed.requests, "errors": phase.closed.errors, "requests_per_second": phase.rps },
        "open_loop": { "rate": rate, "requests": open.latencies_us.len(), "errors": open.errors, "p50_ms": p(50.0), "p99_ms": p(99.0), "p99_9_ms": p(99.9), "generator_lag_max_ms": open.lag.as_secs_f64() * 1000.0 },
        "sidecar_cpu_us_per_request": phase.cpu_us,
        "sidecar_cpu_us_per_request_total": cpu_total,
        "sidecar_rss_kib": phase.rss_kib,
    })
}
