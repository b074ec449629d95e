//! Connections to the local app: TCP (`127.0.0.1:PORT`) or a unix socket
//! (`unix:/path`), pooled keep-alive by hyper's client.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Where the app listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for AppAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppAddr::Tcp(addr) => write!(f, "{addr}"),
            AppAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for AppAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(AppAddr::Unix(PathBuf::from(path))),
            Some(_) => Err(format!(
                "{s:?}: a unix socket path must be absolute (unix:/path)"
            )),
            None => s
                .parse()
                .map(AppAddr::Tcp)
                .map_err(|_| format!("{s:?} is neither IP:PORT nor unix:/path")),
        }
    }
}

impl<'de> Deserialize<'de> for AppAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A connection to the app, whichever kind.
pub enum AppStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AppAddr {
    /// Connects within `timeout`; past it, an `io::ErrorKind::TimedOut` error.
    pub async fn connect(&self, timeout: Duration) -> io::Result<AppStream> {
        let connect = async {
            match self {
                AppAddr::Tcp(addr) => {
                    let stream = TcpStream::connect(addr).await?;
                    let _ = stream.set_nodelay(true);
                    Ok(AppStream::Tcp(stream))
                }
                AppAddr::Unix(path) => UnixStream::connect(path).await.map(AppStream::Unix),
            }
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                ))
            })
    }
}

impl AsyncRead for AppStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            AppStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AppStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AppStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            AppStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AppStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            AppStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AppStream::Tcp(s) => s.is_write_vectored(),
            AppStream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            AppStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            AppStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Connection for AppStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// hyper's connector for the app: every URI goes to the one app.
#[derive(Clone)]
pub struct AppConnector {
    app: AppAddr,
    timeout: Duration,
}

impl tower::Service<Uri> for AppConnector {
    type Response = TokioIo<AppStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<AppStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (app, timeout) = (self.app.clone(), self.timeout);
        Box::pin(async move { app.connect(timeout).await.map(TokioIo::new) })
    }
}

pub type AppClient = Client<AppConnector, Incoming>;

/// Idle keep-alive connections kept to the app; more are closed after use.
const MAX_IDLE_APP_CONNECTIONS: usize = 256;

/// Pooled clients to the app: HTTP/1.1, and HTTP/2 (prior knowledge).
pub fn app_clients(
    app: &AppAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> (AppClient, AppClient) {
    let connector = AppConnector {
        app: app.clone(),
        timeout: connect_timeout,
    };
    let h1 = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(MAX_IDLE_APP_CONNECTIONS)
        .build(connector.clone());
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .pool_idle_timeout(idle_timeout)
        .build(connector);
    (h1, h2)
}
