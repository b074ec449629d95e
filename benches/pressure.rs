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

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use warden_control::ca::{CertificateAuthority, InitOptions};
use warden_proxy::identity::SpiffeId;

#[path = "support/proc.rs"]
mod proc_stat;
#[path = "support/runner.rs"]
mod runner;

use runner::env_or;

type Error = Box<dyn std::error::Error + Send + Sync>;

const BIG: usize = 4 * 1024 * 1024;

/// The app: `/big` answers 4 MiB, anything else `ok`.
async fn start_app() -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let big = Bytes::from(vec![b'x'; BIG]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let big = big.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let body = if req.uri().path() == "/big" {
                        big.clone()
                    } else {
                        Bytes::from_static(b"ok\n")
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

struct Sidecar {
    child: Child,
    inbound: SocketAddr,
    outbound: Option<SocketAddr>,
    admin: SocketAddr,
}

impl Sidecar {
    fn start(settings: &[String]) -> Result<Self, Error> {
        let bin = std::env::var("WARDEN_BENCH_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_warden").to_owned());
        let mut command = Command::new(bin);
        command.arg("proxy").env("WARDEN_LOG", "error");
        for s in settings {
            command.arg("--set").arg(s);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (mut inbound, mut outbound, mut admin) = (None, None, None);
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line == "started" {
                let admin = admin.ok_or("no admin listener")?;
                return Ok(Sidecar {
                    child,
                    // A client-only sidecar has none; nothing calls it then.
                    inbound: inbound.unwrap_or(admin),
                    outbound,
                    admin,
                });
            }
            match line.split_once(' ') {
                Some(("inbound", addr)) => inbound = Some(addr.parse()?),
                Some(("outbound[0]", addr)) => outbound = Some(addr.parse()?),
                Some(("admin", addr)) => admin = Some(addr.parse()?),
                _ => {}
            }
        }
        Err("warden proxy exited before starting".into())
    }

    /// Waits (at most 20 s) for `/ready`.
    async fn ready(&self) -> Result<(), Error> {
        for _ in 0..400 {
            if let Ok(mut s) = TcpStream::connect(self.admin).await {
                let _ = s
                    .write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
                    .await;
                let mut buf = [0u8; 32];
                if let Ok(n) = s.read(&mut buf).await
                    && buf[..n].starts_with(b"HTTP/1.1 200")
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("the sidecar never became ready".into())
    }

    fn rss_kib(&self) -> u64 {
        proc_stat::rss_kib(self.child.id())
    }

    /// The RSS once it has not grown for 2 s (at most `limit`), sampled
    /// every 500 ms: what an attack holds once it has taken its fill.
    async fn grown_rss(&self, limit: Duration) -> u64 {
        self.settle(limit, Duration::from_secs(2), |now, best| now > best)
            .await
    }

    /// The RSS once it has not fallen for 12 s (at most `limit`): what is
    /// left after an attack, once the allocator has had time to give
    /// memory back (jemalloc's decay is 10 s).
    async fn shrunk_rss(&self, limit: Duration) -> u64 {
        self.settle(limit, Duration::from_secs(12), |now, best| now + 256 < best)
            .await
    }

    async fn settle(
        &self,
        limit: Duration,
        quiet: Duration,
        moved: impl Fn(u64, u64) -> bool,
    ) -> u64 {
        let started = Instant::now();
        let mut best = self.rss_kib();
        let mut since = Instant::now();
        while started.elapsed() < limit && since.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.rss_kib();
            if moved(now, best) {
                best = now;
                since = Instant::now();
            }
        }
        best
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Source addresses for attack connections: 127.0.0.2, .3, ...
fn source(i: usize, per_source: usize) -> IpAddr {
    let n = 2 + i / per_source.max(1);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        u8::try_from(n / 250).unwrap_or(255),
        u8::try_from(n % 250).unwrap_or(255),
    ))
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))?
}

/// A slow reader: asks for 4 MiB, reads the first bytes, then stops.
async fn slow_reader(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let mut stream = connect_from(from, to).await.ok()?;
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .ok()?;
    let mut first = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => Some(stream),
        _ => None,
    }
}

/// A keep-alive connection that made one small request and stays open.
async fn idle_keepalive(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let mut stream = connect_from(from, to).await.ok()?;
    stream
        .write_all(b"GET /small HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .ok()?;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
        Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200") => Some(stream),
        _ => None,
    }
}

/// Opens `count` connections with `open`, `batch` at a time.
async fn open_many<F, Fut>(
    count: usize,
    per_source: usize,
    to: SocketAddr,
    open: F,
) -> Vec<TcpStream>
where
    F: Fn(IpAddr, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Option<TcpStream>> + Send + 'static,
{
    let mut streams = Vec::with_capacity(count);
    let batch = 200;
    let mut i = 0;
    while i < count {
        let tasks: Vec<_> = (i..(i + batch).min(count))
            .map(|j| tokio::spawn(open(source(j, per_source), to)))
            .collect();
        for t in tasks {
            if let Ok(Some(s)) = t.await {
                streams.push(s);
            }
        }
        i += batch;
    }
    streams
}

struct Victim {
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// A fixed-rate open loop of small requests from 127.0.0.1.
async fn victim(target: SocketAddr, rate: u64, length: Duration) -> Victim {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let total = (length.as_secs_f64() * rate as f64) as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        tokio::time::sleep_until(start + interval * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let req = Request::get(format!("http://{target}/healthz"))
                .body(Full::new(Bytes::new()))
                .ok()?;
            let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                .await
                .ok()?
                .ok()?;
            let ok = response.status().is_success();
            response.into_body().collect().await.ok()?;
            ok.then(|| started.elapsed())
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Some(l)) => latencies.push(l.as_secs_f64() * 1000.0),
            _ => errors += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |p: f64| {
        latencies
            .get(((latencies.len().saturating_sub(1)) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Victim {
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        errors,
    }
}

/// Time for a new client (127.0.0.1) to get an answer, over `tries`: (median, max) in ms.
async fn fresh_client(target: SocketAddr, tries: usize) -> (f64, f64, usize) {
    let mut times = Vec::new();
    let mut failures = 0;
    for _ in 0..tries {
        let started = Instant::now();
        let answered = async {
            let mut s = TcpStream::connect(target).await.ok()?;
            s.write_all(b"GET /small HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.ok()?;
            buf[..n].starts_with(b"HTTP/1.1 200").then_some(())
        };
        match tokio::time::timeout(Duration::from_secs(5), answered).await {
            Ok(Some(())) => times.push(started.elapsed().as_secs_f64() * 1000.0),
            _ => failures += 1,
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let max = times.last().copied().unwrap_or(f64::NAN);
    (median, max, failures)
}

const ORDERS: &str = "spiffe://bench.warden/ns/shop/sa/orders";
const FRONTEND: &str = "spiffe://bench.warden/ns/shop/sa/frontend";

/// A CA in `dir` and SVIDs for orders and frontend; orders' directory.
fn identity_dir(dir: &std::path::Path) -> Result<std::path::PathBuf, Error> {
    let ca =
        CertificateAuthority::init(&dir.join("ca"), &InitOptions::new("bench.warden".parse()?))?;
    ca.issue_to_dir(&SpiffeId::parse(FRONTEND)?, None, &dir.join("frontend"))?;
    let out = dir.join("orders");
    ca.issue_to_dir(&SpiffeId::parse(ORDERS)?, None, &out)?;
    Ok(out)
}

/// A TLS client that trusts the bench CA and presents no certificate:
/// every handshake with a strict sidecar fails, after the sidecar has done
/// the expensive part (key exchange and signature).
fn certless_client(dir: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, Error> {
    use warden_proxy::identity::{ExpectedIdentity, SpiffeServerVerifier, SvidStore};
    let bundle = warden_proxy::identity::TrustBundle::from_pem(
        "bench.warden".parse()?,
        &std::fs::read(dir.join("orders/bundle.pem"))?,
    )?;
    let store = Arc::new(SvidStore::new());
    store.set_bundles(warden_proxy::identity::TrustBundleSet::new().with(bundle));
    let verifier = SpiffeServerVerifier::new(store, ExpectedIdentity::AnyTrusted);
    let mut config =
        rustls::ClientConfig::builder_with_provider(warden_proxy::tls::crypto_provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
    // Every handshake a full one, as a flood's would be.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

struct Flood {
    attempts: u64,
    cpu_us_per_attempt: f64,
    victim: Victim,
}

/// `concurrency` loops of certificate-less TLS handshakes from 127.0.0.50
/// against `target` for `length`, with a victim calling through `via`
/// meanwhile; the server sidecar's CPU per attempt.
async fn flood(
    server: &Sidecar,
    target: SocketAddr,
    via: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    rate: u64,
    length: Duration,
) -> Flood {
    let concurrency = 8;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu_before = proc_stat::cpu_time(server.child.id());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (stop, attempts, tls) = (stop.clone(), attempts.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(tcp) = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 50)), target).await
                else {
                    continue;
                };
                let name = rustls::pki_types::ServerName::try_from("warden").expect("name");
                if let Ok(Ok(mut tls)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
                )
                .await
                {
                    // The server's refusal arrives after the client's Finished.
                    let _ = tls.write_all(b"x").await;
                    let mut buf = [0u8; 16];
                    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
                }
            }
        }));
    }
    let victim = victim(via, rate, length).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let cpu = proc_stat::cpu_time(server.child.id()).saturating_sub(cpu_before);
    let attempts = attempts.load(std::sync::atomic::Ordering::Relaxed);
    Flood {
        attempts,
        cpu_us_per_attempt: cpu.as_secs_f64() * 1e6 / attempts.max(1) as f64,
        victim,
    }
}

/// The handshake flood, without and with the per-source limiter: a strict
/// orders sidecar, a frontend sidecar routing the victim to it.
async fn handshake_floods(
    dir: &std::path::Path,
    app: SocketAddr,
    rate: u64,
    length: Duration,
) -> Result<serde_json::Value, Error> {
    let tls = certless_client(dir)?;
    let mut results = serde_json::Map::new();
    for (name, limit) in [("limiter_off", "0"), ("limiter_on", "20")] {
        let server = Sidecar::start(&[
            format!("identity.dir={}", dir.join("orders").display()),
            "admin.listen=127.0.0.1:0".to_owned(),
            "inbound.listen=127.0.0.1:0".to_owned(),
            format!("inbound.app={app}"),
            "service.name=orders".to_owned(),
            format!("limits.max_handshake_failures={limit}"),
        ])?;
        server.ready().await?;
        let client = Sidecar::start(&[
            format!("identity.dir={}", dir.join("frontend").display()),
            "admin.listen=127.0.0.1:0".to_owned(),
            format!(
                "outbound.routes=[{{listen=\"127.0.0.1:0\", upstream=\"{}\", identity=\"{ORDERS}\"}}]",
                server.inbound
            ),
        ])?;
        client.ready().await?;
        let via = client.outbound.ok_or("no route")?;
        // `/healthz`: what the built-in policy lets a same-namespace caller do.
        let _ = victim(via, rate, Duration::from_secs(1)).await;
        let base = victim(via, rate, length).await;
        let flooded = flood(&server, server.inbound, via, tls.clone(), rate, length).await;
        println!(
            "handshake flood, {name}: {} attempts, {:.0} us of sidecar CPU each; victim p99 {:.2} ms -> {:.2} ms ({:.2}x), {} errors",
            flooded.attempts,
            flooded.cpu_us_per_attempt,
            base.p99_ms,
            flooded.victim.p99_ms,
            flooded.victim.p99_ms / base.p99_ms,
            flooded.victim.errors
        );
        results.insert(
            name.to_owned(),
            json!({
                "attempts": flooded.attempts,
                "cpu_us_per_attempt": flooded.cpu_us_per_attempt,
                "victim_p99_ms": {"before": base.p99_ms, "during": flooded.victim.p99_ms},
                "victim_errors": flooded.victim.errors,
            }),
        );
    }
    Ok(serde_json::Value::Object(results))
}

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
