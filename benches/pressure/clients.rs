//! The clients: attackers from 127.0.0.2 and up (slow readers, idle
//! keep-alive connections) and the victim from 127.0.0.1 whose latency is
//! measured meanwhile.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Source addresses for attack connections: 127.0.0.2, .3, ...
pub fn source(i: usize, per_source: usize) -> IpAddr {
    let n = 2 + i / per_source.max(1);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        u8::try_from(n / 250).unwrap_or(255),
        u8::try_from(n % 250).unwrap_or(255),
    ))
}

pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))?
}

/// A slow reader: asks for 4 MiB, reads the first bytes, then stops.
pub async fn slow_reader(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
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
pub async fn idle_keepalive(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
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
pub async fn open_many<F, Fut>(
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

pub struct Victim {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// A fixed-rate open loop of small requests from 127.0.0.1.
pub async fn victim(target: SocketAddr, rate: u64, length: Duration) -> Victim {
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
pub async fn fresh_client(target: SocketAddr, tries: usize) -> (f64, f64, usize) {
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
