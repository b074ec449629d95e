//! What tracing costs: the keep-alive scenario through fresh sidecar
//! pairs with tracing off, 1% sampled and 100% sampled.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::load::{SCENARIOS, percentile};
use crate::phases::{closed_phase, open_cpu_phase};
use crate::runner::env_or;
use crate::target::{Sidecar, wait_serving};
use crate::{Error, otlp};

/// Runs the configurations through pairs from `pair` (client, server),
/// prints the figures, and returns them for the JSON report.
pub async fn measure(
    pair: impl Fn(Vec<(String, String)>) -> Result<(Sidecar, Sidecar), Error>,
    conns: usize,
    length: Duration,
) -> Result<serde_json::Value, Error> {
    // What tracing costs: the keep-alive scenario through fresh pairs with
    // tracing off, 1% sampled and 100% sampled, spans sent to a real OTLP
    // receiver in this process.
    let receiver = otlp::Receiver::counting();
    let collector = otlp::start_receiver(receiver.clone()).await;
    let endpoint = (
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        format!("http://{collector}"),
    );
    let sampled = |ratio: &str| {
        vec![
            endpoint.clone(),
            (
                "OTEL_TRACES_SAMPLER".to_owned(),
                "parentbased_traceidratio".to_owned(),
            ),
            ("OTEL_TRACES_SAMPLER_ARG".to_owned(), ratio.to_owned()),
        ]
    };
    // The three configurations run in alternating rounds (off, 1%, 100%,
    // off, ...) so that a slow patch of this shared machine hits all of
    // them; each ratio compares phases of the same round.
    let rounds: usize = env_or("WARDEN_BENCH_ROUNDS", 3);
    let mut configs = Vec::new();
    for (label, env) in [
        ("tracing off", Vec::new()),
        ("1% sampled", sampled("0.01")),
        ("100% sampled", sampled("1.0")),
    ] {
        let (client, server) = pair(env)?;
        let via = client.outbound.ok_or("no outbound")?;
        wait_serving(via).await?;
        configs.push((label, client, server, via));
    }
    // Each round measures every configuration twice: a closed loop (as
    // fast as it goes) and an open loop at one fixed rate for all of them
    // (`WARDEN_BENCH_TRACING_RATE`, default 4000 req/s).
    let fixed_rate: u64 = env_or("WARDEN_BENCH_TRACING_RATE", 4000);
    let mut closed_by_round: Vec<Vec<f64>> = Vec::new();
    let mut fixed_by_round: Vec<Vec<f64>> = Vec::new();
    let mut tracing = Vec::new();
    for round in 0..rounds {
        let (mut closed_row, mut fixed_row) = (Vec::new(), Vec::new());
        for (label, client, server, via) in &configs {
            let phase = closed_phase(*via, SCENARIOS[0], &[client, server], conns, length).await;
            let cpu: f64 = phase.cpu_us.iter().sum();
            let (open, fixed_cpu) =
                open_cpu_phase(*via, SCENARIOS[0], &[client, server], fixed_rate, length).await;
            println!(
                "tracing cost, round {round}, {label:<13} closed loop {:>6.0} req/s {cpu:>6.1} us/req, errors {};  at {fixed_rate}/s {fixed_cpu:>6.1} us/req, p50 {:.3} ms, errors {}",
                phase.rps,
                phase.closed.errors,
                percentile(&open.latencies_us, 50.0),
                open.errors
            );
            tracing.push(json!({
                "round": round,
                "tracing": label,
                "requests_per_second": phase.rps,
                "sidecar_cpu_us_per_request_total": cpu,
                "errors": phase.closed.errors,
                "fixed_rate": fixed_rate,
                "fixed_rate_sidecar_cpu_us_per_request_total": fixed_cpu,
                "fixed_rate_errors": open.errors,
            }));
            closed_row.push(cpu);
            fixed_row.push(fixed_cpu);
        }
        closed_by_round.push(closed_row);
        fixed_by_round.push(fixed_row);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    for (loop_label, by_round) in [
        ("closed loop".to_owned(), &closed_by_round),
        (format!("at {fixed_rate}/s"), &fixed_by_round),
    ] {
        println!(
            "tracing cost, {loop_label}, tracing off   median {:.1} us/req",
            median(by_round.iter().map(|r| r[0]).collect())
        );
        for (i, (label, ..)) in configs.iter().enumerate().skip(1) {
            let ratios: Vec<f64> = by_round.iter().map(|r| r[i] / r[0] - 1.0).collect();
            let cpus: Vec<f64> = by_round.iter().map(|r| r[i]).collect();
            println!(
                "tracing cost, {loop_label}, {label:<13} median {:.1} us/req, vs off in the same round: median {:+.0}% (rounds: {})",
                median(cpus),
                100.0 * median(ratios.clone()),
                ratios
                    .iter()
                    .map(|r| format!("{:+.0}%", 100.0 * r))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    drop(configs);
    let spans = receiver.count.load(Ordering::Relaxed);
    println!("spans received by the OTLP receiver: {spans}");
    Ok(json!({ "tracing_cost": tracing, "spans_received": spans }))
}
