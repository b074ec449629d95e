//! What the pressure bench attacks: one `warden proxy` process in front of
//! an app in this process, and how its memory is followed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Error, proc_stat, proxy, wait};

const BIG: usize = 4 * 1024 * 1024;

/// The app: `/big` answers 4 MiB, anything else `ok`.
pub async fn start_app() -> Result<SocketAddr, Error> {
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

pub struct Sidecar {
    pub child: Child,
    pub inbound: SocketAddr,
    pub outbound: Option<SocketAddr>,
    pub admin: SocketAddr,
}

impl Sidecar {
    pub fn start(settings: &[String]) -> Result<Self, Error> {
        let bin = std::env::var("WARDEN_BENCH_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_warden").to_owned());
        let (child, listeners) = proxy::start(&bin, settings, &[])?;
        let admin = *listeners.get("admin").ok_or("no admin listener")?;
        Ok(Sidecar {
            child,
            // A client-only sidecar has none; nothing calls it then.
            inbound: listeners.get("inbound").copied().unwrap_or(admin),
            outbound: listeners.get("outbound[0]").copied(),
            admin,
        })
    }

    /// Waits (at most 20 s) for `/ready`.
    pub async fn ready(&self) -> Result<(), Error> {
        wait::poll(Duration::from_secs(20), wait::STEP, async || {
            let Ok(mut s) = TcpStream::connect(self.admin).await else {
                return false;
            };
            let _ = s
                .write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
                .await;
            let mut buf = [0u8; 32];
            matches!(s.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
        })
        .await
        .map_err(|_| "the sidecar never became ready".into())
    }

    pub fn rss_kib(&self) -> u64 {
        proc_stat::rss_kib(self.child.id())
    }

    /// The RSS once it has not grown for 2 s (at most `limit`), sampled
    /// every 500 ms: what an attack holds once it has taken its fill.
    pub async fn grown_rss(&self, limit: Duration) -> u64 {
        self.settle(limit, Duration::from_secs(2), |now, best| now > best)
            .await
    }

    /// The RSS once it has not fallen for 12 s (at most `limit`): what is
    /// left after an attack, once the allocator has had time to give
    /// memory back (jemalloc's decay is 10 s).
    pub async fn shrunk_rss(&self, limit: Duration) -> u64 {
        self.settle(limit, Duration::from_secs(12), |now, best| now + 256 < best)
            .await
    }

    async fn settle(
        &self,
        limit: Duration,
        quiet: Duration,
        moved: impl Fn(u64, u64) -> bool,
    ) -> u64 {
        let mut best = self.rss_kib();
        let mut since = Instant::now();
        // Not settled within `limit`: the best seen is the answer anyway.
        let _ = wait::poll(limit, Duration::from_millis(500), async || {
            let now = self.rss_kib();
            if moved(now, best) {
                best = now;
                since = Instant::now();
            }
            since.elapsed() >= quiet
        })
        .await;
        best
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
