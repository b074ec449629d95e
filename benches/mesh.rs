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
//! Results are printed and written to `target/mesh-bench.json`.
//!
//! Run: `cargo bench --bench mesh`. `WARDEN_BENCH_SECS` (default 3) sets
//! each phase's length; `WARDEN_BENCH_RATE` (default 2000) the open-loop
//! rate; `WARDEN_BENCH_CONNS` (default 16) the closed-loop concurrency;
//! `WARDEN_BENCH_ONLY=tracing` runs only the tracing-cost phases, and
//! `WARDEN_BENCH_ROUNDS` (default 3) sets how many rounds of them, and
//! `WARDEN_BENCH_TRACING_RATE` (default 4000) their fixed open-loop rate.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use warden_control::ca::{CertificateAuthority, InitOptions};
use warden_proxy::identity::SpiffeId;

#[path = "support/proc.rs"]
mod proc_stat;
#[path = "support/runner.rs"]
mod runner;

use runner::env_or;

// Shared with the tests, which use more of it.
#[allow(dead_code)]
#[path = "../tests/support/otlp.rs"]
mod otlp;

const FRONTEND: &str = "spiffe://bench.warden/ns/shop/sa/frontend";
const ORDERS: &str = "spiffe://bench.warden/ns/shop/sa/orders";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The app: `/echo` returns the body, anything else a short text.
async fn start_app() -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/echo" {
                        req.into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default()
                    } else {
                        Bytes::from_static(b"ok\n")
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

struct Sidecar {
    child: Child,
    inbound: Option<SocketAddr>,
    outbound: Option<SocketAddr>,
}

impl Sidecar {
    fn start(settings: &[String], env: &[(String, String)]) -> Result<Self, Error> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
        command.arg("proxy").env("WARDEN_LOG", "error");
        command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for s in settings {
            command.arg("--set").arg(s);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut sidecar = Sidecar {
            child,
            inbound: None,
            outbound: None,
        };
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line == "started" {
                return Ok(sidecar);
            }
            if let Some((what, addr)) = line.split_once(' ') {
                let addr: SocketAddr = addr.parse()?;
                match what {
                    "inbound" => sidecar.inbound = Some(addr),
                    "outbound[0]" => sidecar.outbound = Some(addr),
                    _ => {}
                }
            }
        }
        Err("warden proxy exited before starting".into())
    }

    /// CPU time (user + system) so far, and resident memory, from /proc.
    fn usage(&self) -> (Duration, u64) {
        let pid = self.child.id();
        (proc_stat::cpu_time(pid), proc_stat::rss_kib(pid))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Mode {
    KeepAlive,
    H2,
    NewConnection,
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    mode: Mode,
    body: usize,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "http1_keepalive",
        mode: Mode::KeepAlive,
        body: 0,
    },
    Scenario {
        name: "h2",
        mode: Mode::H2,
        body: 0,
    },
    Scenario {
        name: "new_connection_per_request",
        mode: Mode::NewConnection,
        body: 0,
    },
    Scenario {
        name: "http1_body_1KiB",
        mode: Mode::KeepAlive,
        body: 1024,
    },
    Scenario {
        name: "http1_body_64KiB",
        mode: Mode::KeepAlive,
        body: 64 * 1024,
    },
];

type BenchClient = Client<HttpConnector, Full<Bytes>>;

fn client(mode: Mode) -> BenchClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    match mode {
        Mode::H2 => {
            builder.http2_only(true);
        }
        Mode::NewConnection => {
            builder.pool_max_idle_per_host(0);
        }
        Mode::KeepAlive => {}
    }
    builder.build(connector)
}

async fn one(client: &BenchClient, target: SocketAddr, scenario: Scenario) -> bool {
    let req =
        if scenario.body == 0 {
            Request::get(format!("http://{target}/bench")).body(Full::new(Bytes::new()))
        } else {
            Request::post(format!("http://{target}/echo"))
                .body(Full::new(Bytes::from(vec![b'x'; scenario.body])))
        };
    let Ok(req) = req else { return false };
    match client.request(req).await {
        Ok(response) => {
            let ok = response.status().is_success();
            let body = response.into_body().collect().await;
            ok && body.is_ok()
        }
        Err(_) => false,
    }
}

struct Closed {
    requests: u64,
    errors: u64,
    elapsed: Duration,
}

async fn closed_loop(
    target: SocketAddr,
    scenario: Scenario,
    conns: usize,
    length: Duration,
) -> Closed {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let shared = client(scenario.mode);
    for _ in 0..conns {
        let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
        // HTTP/1 gets a client (a connection) per worker; h2 shares one.
        let client = match scenario.mode {
            Mode::H2 => shared.clone(),
            _ => client(scenario.mode),
        };
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if one(&client, target, scenario).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Closed {
        requests: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

struct Open {
    latencies_us: Vec<u64>,
    errors: u64,
    lag: Duration,
}

async fn open_loop(target: SocketAddr, scenario: Scenario, rate: u64, length: Duration) -> Open {
    let client = client(scenario.mode);
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let total = (length.as_secs_f64() * rate as f64) as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(scheduled).await;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let ok = one(&client, target, scenario).await;
            (ok, started.elapsed(), started - scheduled)
        }));
    }
    let mut latencies_us = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    let mut lag = Duration::ZERO;
    for t in tasks {
        match t.await {
            Ok((true, latency, late)) => {
                latencies_us.push(latency.as_micros() as u64);
                lag = lag.max(late);
            }
            _ => errors += 1,
        }
    }
    latencies_us.sort_unstable();
    Open {
        latencies_us,
        errors,
        lag,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

/// One closed-loop phase, with the sidecars' CPU time and RSS around it.
struct ClosedPhase {
    closed: Closed,
    rps: f64,
    cpu_us: Vec<f64>,
    rss_kib: Vec<u64>,
}

async fn closed_phase(
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
async fn open_cpu_phase(
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

fn report(
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

/// Waits (bounded) until a request goes through `via`.
async fn wait_serving(via: SocketAddr) -> Result<(), Error> {
    for _ in 0..100 {
        if one(&client(Mode::KeepAlive), via, SCENARIOS[0]).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the sidecar pair never served a request".into())
}

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
    println!(
        "mesh bench: {}s per phase, closed loop {conns} connections, open loop {rate} req/s (or half the slower target's closed-loop rate); sidecar CPU is both sidecars, from /proc",
        length.as_secs()
    );
    let mut results = Vec::new();
    // `WARDEN_BENCH_ONLY=tracing` runs only the tracing-cost phases.
    let only_tracing = std::env::var("WARDEN_BENCH_ONLY").is_ok_and(|v| v == "tracing");
    for scenario in SCENARIOS.iter().copied().filter(|_| !only_tracing) {
        let direct = closed_phase(app, scenario, &[], conns, length).await;
        let mesh = closed_phase(via, scenario, &[&client_sidecar, &server], conns, length).await;
        // The open loop runs both targets at one rate, at most half what the
        // slower one sustained, so it measures latency, not a queue.
        let fair = rate.min((direct.rps.min(mesh.rps) / 2.0) as u64).max(1);
        for (label, target, phase) in [("direct", app, &direct), ("mesh", via, &mesh)] {
            let open = open_loop(target, scenario, fair, length).await;
            results.push(report(label, scenario, phase, &open, fair));
        }
    }
    drop((client_sidecar, server));

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
    results.push(json!({ "tracing_cost": tracing, "spans_received": spans }));

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

fn main() -> Result<(), Error> {
    runner::main(run())
}
