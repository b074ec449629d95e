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
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::http::{CallerBody, error_chain};

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

/// Idle keep-alive connections kept to the app; more are closed after use.
const MAX_IDLE_APP_CONNECTIONS: usize = 256;

/// Why a request to the app failed; [`super::inbound`] maps each to a status.
#[derive(Debug)]
pub enum AppError {
    /// No connection could be made: 503, or 504 when it timed out.
    Connect(io::Error),
    /// The caller's own request body failed to read: 400.
    CallerBody,
    /// The app broke the exchange: 502.
    Exchange(String),
}

/// One app behind the inbound listener: where it is, the authority of
/// requests to it, and its pooled connections.
pub struct App {
    pub addr: AppAddr,
    /// The URI authority of requests to the app (its address, or
    /// `localhost` for a unix socket).
    pub authority: String,
    pub clients: AppClients,
}

impl App {
    pub fn new(addr: AppAddr, limits: &super::config::Limits) -> Self {
        let authority = match &addr {
            AppAddr::Tcp(addr) => addr.to_string(),
            AppAddr::Unix(_) => "localhost".to_owned(),
        };
        App {
            clients: AppClients::new(&addr, limits),
            authority,
            addr,
        }
    }
}

/// Requests to the app: HTTP/1.1 over pooled keep-alive connections, or
/// HTTP/2 (h2c, prior knowledge) multiplexed on one connection. Both read
/// at most `window` bytes ahead of a slow consumer.
pub struct AppClients {
    h1: Client<AppConnector, CallerBody>,
    h2: AppH2,
}

impl AppClients {
    pub fn new(app: &AppAddr, limits: &super::config::Limits) -> Self {
        let connector = AppConnector {
            app: app.clone(),
            timeout: limits.app_connect_timeout,
        };
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(limits.idle_timeout)
            .pool_max_idle_per_host(MAX_IDLE_APP_CONNECTIONS)
            // The read buffer (so each chunk read from the app) is part of
            // what a slow caller makes the sidecar hold.
            .http1_max_buf_size(limits.buffer_window as usize)
            .build(connector);
        AppClients {
            h1,
            h2: AppH2 {
                app: app.clone(),
                limits: limits.clone(),
                current: tokio::sync::Mutex::new(None),
            },
        }
    }

    /// Sends `req` (its URI absolute: the pool is keyed by its authority
    /// for HTTP/1.1, and HTTP/2 sends it as `:authority`).
    pub async fn send(
        &self,
        req: Request<Incoming>,
        h2: bool,
    ) -> Result<Response<Incoming>, AppError> {
        let (req, fault) = CallerBody::wrap(req);
        let result = if h2 {
            self.h2.send(req).await
        } else {
            self.h1.request(req).await.map_err(|e| {
                match super::http::find_source::<io::Error>(&e) {
                    Some(io) if e.is_connect() => {
                        AppError::Connect(io::Error::new(io.kind(), io.to_string()))
                    }
                    _ => AppError::Exchange(error_chain(&e)),
                }
            })
        };
        match result {
            Err(_) if fault.happened() => Err(AppError::CallerBody),
            other => other,
        }
    }
}

/// One multiplexed h2c connection to the app, opened on first use and
/// again after it closes. Unlike a pooled client it leaves `:authority` to
/// each request, so the app sees the host the caller named.
struct AppH2 {
    app: AppAddr,
    limits: super::config::Limits,
    current: tokio::sync::Mutex<Option<SendRequest<CallerBody>>>,
}

impl AppH2 {
    async fn sender(&self) -> Result<SendRequest<CallerBody>, AppError> {
        // Held across the connect: concurrent first requests share one.
        let mut current = self.current.lock().await;
        if let Some(sender) = current.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        // Boxed: the connect's future (an h2 handshake) is kilobytes, and
        // every request's future would otherwise carry and copy it.
        let sender = Box::pin(self.open()).await?;
        *current = Some(sender.clone());
        Ok(sender)
    }

    async fn open(&self) -> Result<SendRequest<CallerBody>, AppError> {
        let io = self
            .app
            .connect(self.limits.app_connect_timeout)
            .await
            .map_err(AppError::Connect)?;
        let (sender, connection) = super::tuned_h2_client(&self.limits)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| AppError::Exchange(format!("HTTP/2 handshake: {}", error_chain(&e))))?;
        let app = self.app.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%app, error = %e, "h2c connection to the app ended");
            }
        });
        Ok(sender)
    }

    async fn send(&self, req: Request<CallerBody>) -> Result<Response<Incoming>, AppError> {
        let mut req = Some(req);
        // A request the connection handed back unsent (it was closing) is
        // retried once on a new connection.
        for attempt in 0..2 {
            let mut sender = self.sender().await?;
            let Some(request) = req.take() else { break };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut e) => {
                    req = e.take_message();
                    if req.is_none() || attempt == 1 {
                        return Err(AppError::Exchange(error_chain(e.error())));
                    }
                    let mut current = self.current.lock().await;
                    if current.as_ref().is_some_and(SendRequest::is_closed) {
                        *current = None;
                    }
                }
            }
        }
        Err(AppError::Exchange(
            "the app kept closing the connection".into(),
        ))
    }
}
