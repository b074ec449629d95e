//! The end-to-end load bench: an app reached directly (the baseline) and
//! through a sidecar pair (two `warden proxy` processes, mTLS and a Cedar
//! decision in between), measured side by side in one run.
//!
//! For each scenario and target: closed-loop throughput, latency
//! percentiles at a fixed rate (open loop: requests start on schedule
//! whatever the responses do; latency is measured from each request's
//! start, because tokio's timer fires up to 1 ms late; how late the
//! generator ran is reported as `generator_lag_max_ms`),
//! errors, the sidecars' CPU time per request (from /proc) and their RSS.
//! Results are printed and written to `target/mesh-bench.json`; the
//! open-loop percentiles (p50 to p99.9) of both targets are also drawn,
//! scenario by scenario, in `target/mesh-latency.svg`.
//!
//! Run: `cargo bench --bench mesh`. `WARDEN_BENCH_SECS` (default 3) sets
//! each phase's length; `WARDEN_BENCH_RATE` (default 2000) the open-loop
//! rate; `WARDEN_BENCH_CONNS` (default 16) the closed-loop concurrency;
//! `WARDEN_BENCH_ONLY=tracing` runs only the tracing-cost phases,
//! `WARDEN_BENCH_ONLY=transparent` only the transparent scenario (pods in
//! network namespaces; needs root, else skipped), `WARDEN_BENCH_ONLY=
//! scenarios` only the direct-versus-route scenarios; `WARDEN_BENCH_ROUNDS`
//! (default 3) sets how many rounds the tracing and transparent phases run,
//! and `WARDEN_BENCH_TRACING_RATE` (default 4000) the tracing phases' rate.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use warden_control::ca::{CertificateAuthority, InitOptions};
use warden_proxy::identity::SpiffeId;

// Each bench uses part of the helpers.
#[allow(dead_code)]
#[path = "../support/proc.rs"]
mod proc_stat;
#[path = "../support/proxy.rs"]
mod proxy;
#[path = "../support/runner.rs"]
mod runner;

// Shared with the tests, which use more of them.
#[allow(dead_code)]
#[path = "../../tests/support/otlp.rs"]
mod otlp;
#[allow(dead_code)]
#[path = "../../tests/support/wait.rs"]
mod wait;

mod load;
mod phases;
mod plot;
mod target;
mod tracing_cost;
mod transparent;

use load::{SCENARIOS, open_loop};
use phases::{closed_phase, report};
use runner::env_or;
use target::{Sidecar, start_app, wait_serving};

const FRONTEND: &str = "spiffe://bench.warden/ns/shop/sa/frontend";
const ORDERS: &str = "spiffe://bench.warden/ns/shop/sa/orders";

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn run() -> Result<(), Error> {
    let length = Duration::from_secs(env_or("WARDEN_BENCH_SECS", 3));
    let rate: u64 = env_or("WARDEN_BENCH_RATE", 2000);
    let conns: usize = env_or("WARDEN_BENCH_CONNS", 16);
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::init(
        &dir.path().join("ca"),
        &InitOptions::new("bench.warden".parse()?),
    )?;
    ca.issue_to_dir(
        &SpiffeId::parse(FRONTEND)?,
        None,
        &dir.path().join("frontend"),
    )?;
    ca.issue_to_dir(&SpiffeId::parse(ORDERS)?, None, &dir.path().join("orders"))?;
    let app = start_app().await?;
    let base = |name: &str| {
        vec![
            format!("identity.dir={}", dir.path().join(name).display()),
            format!("service.name={name}"),
            "admin.listen=127.0.0.1:0".to_owned(),
        ]
    };
    let pair = |env: Vec<(String, String)>| {
        let mut s = base("orders");
        s.push("inbound.listen=127.0.0.1:0".into());
        s.push(format!("inbound.app={app}"));
        let server = Sidecar::start(&s, &env)?;
        let inbound = server.inbound.ok_or("no inbound")?;
        let mut c = base("frontend");
        c.push(format!("outbound.routes=[{{listen=\"127.0.0.1:0\", upstream=\"{inbound}\", identity=\"{ORDERS}\"}}]"));
        let client = Sidecar::start(&c, &env)?;
        Ok::<_, Error>((client, server))
    };
    let (client_sidecar, server) = pair(Vec::new())?;
    let via = client_sidecar.outbound.ok_or("no outbound")?;
    wait_serving(via).await?;
    let idle = idle_memory(&[&client_sidecar, &server]).await;
    println!(
        "mesh bench: {}s per phase, closed loop {conns} connections, open loop {rate} req/s (or half the slower target's closed-loop rate); sidecar CPU is both sidecars, from /proc",
        length.as_secs()
    );
    let mut results = vec![idle];
    let mut panels = Vec::new();
    // `WARDEN_BENCH_ONLY=tracing` (or `transparent`) runs only those phases.
    let only = std::env::var("WARDEN_BENCH_ONLY").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only == part;
    for scenario in SCENARIOS.iter().copied().filter(|_| runs("scenarios")) {
        let direct = closed_phase(app, scenario, &[], conns, length).await;
        let mesh = closed_phase(via, scenario, &[&client_sidecar, &server], conns, length).await;
        // The open loop runs both targets at one rate, at most half what the
        // slower one sustained, so it measures latency, not a queue.
        let fair = rate.min((direct.rps.min(mesh.rps) / 2.0) as u64).max(1);
        let mut curves = Vec::new();
        for (label, target, phase) in [("direct", app, &direct), ("mesh", via, &mesh)] {
            let open = open_loop(target, scenario, fair, length).await;
            results.push(report(label, scenario, phase, &open, fair));
            curves.push((
                label.to_owned(),
                plot::PERCENTILES
                    .iter()
                    .map(|(q, _)| load::percentile(&open.latencies_us, *q))
                    .collect(),
            ));
        }
        panels.push(plot::Panel {
            scenario: scenario.name.to_owned(),
            rate: fair,
            curves,
        });
    }
    drop((client_sidecar, server));

    if runs("tracing") {
        results.push(tracing_cost::measure(&pair, conns, length).await?);
    }
    if runs("transparent") {
        let (dir, rounds) = (dir.path().to_owned(), env_or("WARDEN_BENCH_ROUNDS", 3));
        results.extend(
            tokio::task::spawn_blocking(move || {
                transparent::measure(dir, length, rate, conns, rounds)
            })
            .await??,
        );
    }

    let svg = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("mesh-latency.svg");
    if !panels.is_empty() {
        plot::write_svg(&panels, &svg)?;
        println!("latency plot written to {}", svg.display());
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("mesh-bench.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&json!({ "results": results }))?,
    )?;
    println!("written to {}", out.display());
    Ok(())
}

/// Both sidecars' RSS once started and idle (one request served), and how
/// much of `src/link/sidecar.order` the binary still has: the linker packs
/// those functions together, and a file left stale by a dependency or
/// toolchain upgrade shows here first (`benches/link-order.sh` writes it).
async fn idle_memory(sidecars: &[&Sidecar]) -> serde_json::Value {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss: Vec<u64> = sidecars.iter().map(|s| s.usage().1).collect();
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/link/sidecar.order");
    let listed: Vec<String> = std::fs::read_to_string(&order)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let found = std::process::Command::new("nm")
        .arg(env!("CARGO_BIN_EXE_warden"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            let defined: std::collections::HashSet<&str> = std::str::from_utf8(&out.stdout)
                .unwrap_or("")
                .lines()
                .filter_map(|line| line.split_whitespace().nth(2))
                .collect();
            listed
                .iter()
                .filter(|s| defined.contains(s.as_str()))
                .count()
        });
    println!(
        "idle: sidecar RSS {} KiB (frontend, orders); link order: {} of {} functions of {} in the binary",
        rss.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        found.map_or("? (no nm)".to_owned(), |n| n.to_string()),
        listed.len(),
        order.display()
    );
    json!({
        "phase": "idle",
        "sidecar_rss_kib": rss,
        "link_order_listed": listed.len(),
        "link_order_found": found,
    })
}

fn main() -> Result<(), Error> {
    runner::main(run())
}
