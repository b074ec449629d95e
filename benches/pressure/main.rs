//! The pressure bench: what abusive clients cost one sidecar, and what they
//! do to everyone else. One `warden proxy` process (permissive inbound, so
//! the clients need no certificates) in front of an app in this process;
//! every phase is bounded in time and connections.
//!
//! 1. Baseline: the sidecar's idle RSS and a victim's latency (a fixed-rate
//!    open loop of small keep-alive requests).
//! 2. Slow readers: `WARDEN_BENCH_SLOW` (default 1000) connections each ask
//!    for a 4 MiB response and stop reading; the sidecar's RSS once it
//!    settles, and the victim's latency meanwhile.
//! 3. Connection storm: `WARDEN_BENCH_STORM` (default 10000) keep-alive
//!    connections each make one request and stay open, up to the sidecar's
//!    connection cap; a new client's time to an answer while the cap is
//!    full (`fresh_client_ms`); then all close and the RSS is followed until
//!    it settles (`rss_after_close_kib`).
//!
//! 4. Handshake flood: a strict sidecar (mTLS required) takes TLS
//!    handshakes without a client certificate from one address, 8 at a
//!    time, while a victim calls it through a client sidecar; the
//!    sidecar's CPU per attempt and the victim's latency, with the
//!    per-source failure limiter off (`limits.max_handshake_failures=0`)
//!    and on (20, the default).
//!
//! Attack connections come from 127.0.0.2 and up, `WARDEN_BENCH_PER_SOURCE`
//! (default 250) per address; the victim from 127.0.0.1.
//! `WARDEN_BENCH_BIN` runs another `warden` binary (an older build, for a
//! before/after comparison in one run); `WARDEN_BENCH_SET` adds `--set`
//! flags (space-separated). Results are printed and written to
//! `target/pressure-bench.json`. `WARDEN_BENCH_ONLY=slow`, `storm` or
//! `flood` runs one attack. Run: `cargo bench --bench pressure`.

use std::time::{Duration, Instant};

use serde_json::json;

// Each bench uses part of the helpers.
#[allow(dead_code)]
#[path = "../support/proc.rs"]
mod proc_stat;
#[path = "../support/proxy.rs"]
mod proxy;
#[path = "../support/runner.rs"]
mod runner;

// Shared with the tests, which use more of it.
#[allow(dead_code)]
#[path = "../../tests/support/wait.rs"]
mod wait;

mod clients;
mod flood;
mod target;

use clients::{fresh_client, idle_keepalive, open_many, slow_reader, victim};
use flood::{handshake_floods, identity_dir};
use runner::env_or;
use target::{Sidecar, start_app};

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn run() -> Result<(), Error> {
    let slow_count: usize = env_or("WARDEN_BENCH_SLOW", 1000);
    let storm: usize = env_or("WARDEN_BENCH_STORM", 10_000);
    let per_source: usize = env_or("WARDEN_BENCH_PER_SOURCE", 250);
    let rate: u64 = env_or("WARDEN_BENCH_RATE", 200);
    let length = Duration::from_secs(env_or("WARDEN_BENCH_SECS", 5));
    let dir = tempfile::tempdir()?;
    let svid = identity_dir(dir.path())?;
    let app = start_app().await?;
    let mut settings = vec![
        format!("identity.dir={}", svid.display()),
        "admin.listen=127.0.0.1:0".to_owned(),
        "inbound.listen=127.0.0.1:0".to_owned(),
        format!("inbound.app={app}"),
        "inbound.mode=permissive".to_owned(),
        // Everyone may call: the bench measures the data path, not policy.
        format!("authz.policies={}", {
            let p = dir.path().join("policies");
            std::fs::create_dir_all(&p)?;
            std::fs::write(p.join("all.cedar"), "permit (principal, action, resource);")?;
            p.display().to_string()
        }),
        format!("limits.max_connections={storm}"),
    ];
    if let Ok(extra) = std::env::var("WARDEN_BENCH_SET") {
        settings.extend(extra.split_whitespace().map(str::to_owned));
    }
    let sidecar = Sidecar::start(&settings)?;
    let target = sidecar.inbound;
    sidecar.ready().await?;
    // Warm up: pools, allocator arenas, policy engine.
    let _ = victim(target, rate, Duration::from_secs(1)).await;
    let idle = sidecar.shrunk_rss(Duration::from_secs(20)).await;
    let base = victim(target, rate, length).await;
    println!(
        "baseline: idle RSS {} KiB; victim p50 {:.2} ms p99 {:.2} ms, {} errors",
        idle, base.p50_ms, base.p99_ms, base.errors
    );

    let only = std::env::var("WARDEN_BENCH_ONLY").unwrap_or_default();
    let slow_count = if only.is_empty() || only == "slow" {
        slow_count
    } else {
        0
    };
    let storm = if only.is_empty() || only == "storm" {
        storm
    } else {
        0
    };
    let slow = open_many(slow_count, per_source, target, slow_reader).await;
    let slow_rss = sidecar.grown_rss(Duration::from_secs(20)).await;
    let under_slow = victim(target, rate, length).await;
    let slow_rss_max = slow_rss.max(sidecar.rss_kib());
    println!(
        "slow readers: {} of {slow_count} open; RSS {} KiB (+{} KiB over idle, {:.0} KiB each); victim p50 {:.2} ms p99 {:.2} ms ({:.2}x baseline), {} errors",
        slow.len(),
        slow_rss_max,
        slow_rss_max.saturating_sub(idle),
        slow_rss_max.saturating_sub(idle) as f64 / slow.len().max(1) as f64,
        under_slow.p50_ms,
        under_slow.p99_ms,
        under_slow.p99_ms / base.p99_ms,
        under_slow.errors
    );
    drop(slow);
    let after_slow = sidecar.shrunk_rss(Duration::from_secs(60)).await;

    let storm_started = Instant::now();
    let held = open_many(storm, per_source, target, idle_keepalive).await;
    let storm_open = storm_started.elapsed();
    let storm_rss = sidecar.rss_kib();
    let (fresh_median, fresh_max, fresh_failures) = fresh_client(target, 10).await;
    println!(
        "storm: {} of {storm} keep-alive connections open in {:.1} s; RSS {} KiB; a new client answered in {:.1} ms median, {:.1} ms max, {} of 10 not answered within 5 s",
        held.len(),
        storm_open.as_secs_f64(),
        storm_rss,
        fresh_median,
        fresh_max,
        fresh_failures
    );
    drop(held);
    let after_storm = sidecar.shrunk_rss(Duration::from_secs(90)).await;
    println!(
        "after the storm: RSS {} KiB ({:.2}x idle); after the slow readers left: {} KiB",
        after_storm,
        after_storm as f64 / idle as f64,
        after_slow
    );
    let floods = if only.is_empty() || only == "flood" {
        handshake_floods(dir.path(), app, rate, length).await?
    } else {
        serde_json::Value::Null
    };
    let report = json!({
        "handshake_flood": floods,
        "binary": std::env::var("WARDEN_BENCH_BIN").ok(),
        "settings": std::env::var("WARDEN_BENCH_SET").ok(),
        "idle_rss_kib": idle,
        "victim_baseline": {"p50_ms": base.p50_ms, "p99_ms": base.p99_ms, "errors": base.errors},
        "slow_readers": {
            "open": slow_count,
            "rss_kib": slow_rss_max,
            "above_idle_kib": slow_rss_max.saturating_sub(idle),
            "victim": {"p50_ms": under_slow.p50_ms, "p99_ms": under_slow.p99_ms, "errors": under_slow.errors},
            "victim_p99_ratio": under_slow.p99_ms / base.p99_ms,
            "rss_after_kib": after_slow,
        },
        "storm": {
            "connections": storm,
            "rss_kib": storm_rss,
            "fresh_client_ms": {"median": fresh_median, "max": fresh_max, "unanswered": fresh_failures},
            "rss_after_close_kib": after_storm,
            "after_over_idle": after_storm as f64 / idle as f64,
        },
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pressure-bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", out.display());
    Ok(())
}

fn main() -> Result<(), Error> {
    runner::main(run())
}
