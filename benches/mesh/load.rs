//! The load: the scenarios (HTTP/1.1 keep-alive, h2, a connection per
//! request, bodies), a closed loop (as fast as answers come) and an open
//! loop (requests start on schedule), and latency percentiles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Clone, Copy)]
pub enum Mode {
    KeepAlive,
    H2,
    NewConnection,
}

#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub mode: Mode,
    pub body: usize,
}

pub const SCENARIOS: [Scenario; 5] = [
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

pub type BenchClient = Client<HttpConnector, Full<Bytes>>;

pub fn client(mode: Mode) -> BenchClient {
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

pub async fn one(client: &BenchClient, target: SocketAddr, scenario: Scenario) -> bool {
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

pub struct Closed {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

pub async fn closed_loop(
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

pub struct Open {
    pub latencies_us: Vec<u64>,
    pub errors: u64,
    pub lag: Duration,
}

pub async fn open_loop(
    target: SocketAddr,
    scenario: Scenario,
    rate: u64,
    length: Duration,
) -> Open {
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

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}
