//! Connections to the local app: TCP (`127.0.0.1:PORT`) or a unix socket
//! (`unix:/path`); HTTP/1.1 ones kept alive in a pool of their own.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2::SendRequest};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::{CancellationToken, DropGuard};

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
    h1: AppH1,
    h2: AppH2,
}

impl AppClients {
    pub fn new(app: &AppAddr, limits: &super::config::Limits) -> Self {
        AppClients {
            h1: AppH1::new(app, limits),
            h2: AppH2 {
                app: app.clone(),
                limits: limits.clone(),
                current: tokio::sync::Mutex::new(None),
            },
        }
    }

    /// Sends `req`: for HTTP/1.1 its URI in origin form and its `Host`
    /// set, for HTTP/2 its URI absolute (sent as `:authority`).
    pub async fn send(
        &self,
        req: Request<Incoming>,
        h2: bool,
    ) -> Result<Response<Incoming>, AppError> {
        let (req, fault) = CallerBody::wrap(req);
        let result = if h2 {
            self.h2.send(req).await
        } else {
            self.h1.send(req).await
        };
        match result {
            Err(_) if fault.happened() => Err(AppError::CallerBody),
            other => other,
        }
    }
}

/// How many idle HTTP/1.1 connections in a row may turn out closed as a
/// request is sent on them before a new connection is opened for it.
const MAX_STALE_RETRIES: usize = 2;

/// HTTP/1.1 to the app: idle keep-alive connections on a stack (the most
/// recently used on top, so a quiet period leaves the others to expire),
/// one request at a time on each. A connection goes back on the stack as
/// soon as its response has been read, and is closed once idle for
/// `limits.idle_timeout` (checked every quarter of it, so within 1.25
/// times it) or when more than [`MAX_IDLE_APP_CONNECTIONS`] are idle.
///
/// This replaced hyper-util's pool, which is keyed by scheme and authority
/// (two SipHash lookups a request) and races a connect against each
/// checkout: about 6,500 instructions a request that one app does not need.
struct AppH1 {
    app: AppAddr,
    limits: super::config::Limits,
    idle: Arc<Mutex<IdleH1>>,
    /// Ends the closing task with the pool (an `App` per destination comes
    /// and goes in transparent mode), rather than at its next check.
    _stop: DropGuard,
}

#[derive(Default)]
struct IdleH1 {
    /// Each with the time it went idle.
    conns: Vec<(http1::SendRequest<CallerBody>, Instant)>,
    /// Whether a task is closing the connections idle for too long.
    reaping: bool,
    /// Cancelled when the pool is dropped.
    stop: CancellationToken,
}

fn lock_idle(idle: &Mutex<IdleH1>) -> std::sync::MutexGuard<'_, IdleH1> {
    // Nothing a panic could leave half-done: a stack of connections.
    idle.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AppH1 {
    fn new(app: &AppAddr, limits: &super::config::Limits) -> Self {
        let idle = IdleH1::default();
        let stop = idle.stop.clone().drop_guard();
        AppH1 {
            app: app.clone(),
            limits: limits.clone(),
            idle: Arc::new(Mutex::new(idle)),
            _stop: stop,
        }
    }

    async fn send(&self, req: Request<CallerBody>) -> Result<Response<Incoming>, AppError> {
        let mut req = req;
        let mut stale = 0;
        loop {
            let kept = if stale < MAX_STALE_RETRIES {
                self.checkout()
            } else {
                None
            };
            let reused = kept.is_some();
            let mut sender = match kept {
                Some(sender) => sender,
                None => self.open().await?,
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    self.release(sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    // An idle connection the app closed as the request was
                    // sent: nothing of it went, so it goes on another.
                    Some(unsent) if reused => {
                        req = unsent;
                        stale += 1;
                    }
                    _ => return Err(AppError::Exchange(error_chain(e.error()))),
                },
            }
        }
    }

    /// The most recently used idle connection still open, if any.
    fn checkout(&self) -> Option<http1::SendRequest<CallerBody>> {
        let mut idle = lock_idle(&self.idle);
        while let Some((sender, since)) = idle.conns.pop() {
            if sender.is_ready() && since.elapsed() < self.limits.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    async fn open(&self) -> Result<http1::SendRequest<CallerBody>, AppError> {
        let io = self
            .app
            .connect(self.limits.app_connect_timeout)
            .await
            .map_err(AppError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            // The read buffer (so each chunk read from the app) is part of
            // what a slow caller makes the sidecar hold.
            .max_buf_size(self.limits.buffer_window as usize)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| AppError::Exchange(format!("HTTP/1.1: {}", error_chain(&e))))?;
        drive(self.app.clone(), connection);
        Ok(sender)
    }

    /// `sender` back on the stack once its response has been read: at once
    /// when it already has (a small response arrives with its head), else
    /// from a task that waits for it. A response body dropped unread
    /// closes the connection (unless hyper can drain what is left of it),
    /// and the task ends with it.
    fn release(&self, mut sender: http1::SendRequest<CallerBody>) {
        if sender.is_ready() {
            park(&self.idle, sender, self.limits.idle_timeout);
            return;
        }
        let (idle, idle_timeout) = (Arc::downgrade(&self.idle), self.limits.idle_timeout);
        tokio::spawn(async move {
            if std::future::poll_fn(|cx| sender.poll_ready(cx))
                .await
                .is_ok()
                && let Some(idle) = idle.upgrade()
            {
                park(&idle, sender, idle_timeout);
            }
        });
    }
}

/// Runs a connection to `app` on a task of its own until it ends.
fn drive<C>(app: AppAddr, connection: C)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%app, error = %e, "a connection to the app ended");
        }
    });
}

/// Puts an idle `sender` on the stack, and starts the task that closes
/// connections idle for `idle_timeout` if none runs.
fn park(idle: &Arc<Mutex<IdleH1>>, sender: http1::SendRequest<CallerBody>, idle_timeout: Duration) {
    let mut held = lock_idle(idle);
    if held.conns.len() >= MAX_IDLE_APP_CONNECTIONS {
        return;
    }
    held.conns.push((sender, Instant::now()));
    if !held.reaping {
        held.reaping = true;
        let stop = held.stop.clone();
        tokio::spawn(reap(Arc::downgrade(idle), idle_timeout, stop));
    }
}

/// Closes the connections idle for `idle_timeout`, checking every quarter
/// of it; ends when none is left idle (the next one parked starts another)
/// or the pool is gone.
async fn reap(idle: Weak<Mutex<IdleH1>>, idle_timeout: Duration, stop: CancellationToken) {
    let every = (idle_timeout / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let Some(idle) = idle.upgrade() else { return };
        let mut held = lock_idle(&idle);
        held.conns
            .retain(|(sender, since)| !sender.is_closed() && since.elapsed() < idle_timeout);
        if held.conns.is_empty() {
            held.reaping = false;
            return;
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
        drive(self.app.clone(), connection);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_closing_task_ends_with_the_pool_not_at_its_next_check() {
        let pool = AppH1::new(
            &AppAddr::Tcp("127.0.0.1:9".parse().expect("addr")),
            &crate::sidecar::config::Limits::default(),
        );
        let stop = lock_idle(&pool.idle).stop.clone();
        // Checks every 75 s at the default idle timeout of 300 s.
        let task = tokio::spawn(reap(
            Arc::downgrade(&pool.idle),
            pool.limits.idle_timeout,
            stop,
        ));
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        drop(pool);
        // The clock is paused: it advances only to the next timer, so the
        // task must end before a second passes, not after 75.
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the task ended with the pool")
            .expect("no panic");
    }
}
