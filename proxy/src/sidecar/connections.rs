//! The life of one connection: what it is doing ([`Activity`]), and for
//! HTTP, serving it: a first request within `header_read_timeout`, each
//! later HTTP/1 head within it once it has started, idle keep-alive closed
//! after `idle_timeout`, closed when asked to make room, revoked peers cut.
//! Who gets a connection at all is `admission`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::admission::Slot;
use super::http::Body;
use super::pacing::{Paced, WriteProgress};
use super::shared::{Shared, shutting_down};
use super::splice::{self, PeerValidity};

/// What one connection is doing, read by its own watchdog and by the
/// table when it needs room.
pub(crate) struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended (ns since `start`: exact, so connections
    /// served one after another never tie for the longest idle).
    last_ns: AtomicU64,
    /// Requests started so far.
    requests: AtomicU64,
    /// When bytes of a new request head started arriving while nothing
    /// was in flight (ms since `start`, plus one; 0: none pending).
    head_since_ms: AtomicU64,
    /// An HTTP/2 connection (its preface seen, or a request made): its
    /// frames are not request heads, and HTTP/2 has its own keep-alive.
    multiplexed: AtomicBool,
    /// Asked to close to make room for another connection.
    pub(super) evicted: AtomicBool,
    evict: Notify,
    /// What the connection has written, for pacing HTTP/1 responses.
    progress: Arc<WriteProgress>,
}

/// A request in flight on a connection, until its response body ends.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ns.store(self.0.now_ns(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ns: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
            progress: Arc::new(WriteProgress::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Holds the connection busy (a tunnel, an opaque stream) until the
    /// guard drops: it is never idle, so never asked to make room.
    pub(crate) fn busy(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Whether nothing is in flight.
    pub(super) fn is_quiet(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Whether the connection has not made a single request yet.
    pub(super) fn is_fresh(&self) -> bool {
        self.requests.load(Ordering::Acquire) == 0
    }

    /// Resolves once the connection is asked to make room (at once if it
    /// already was).
    pub(crate) async fn evicted(&self) {
        if self.evicted.load(Ordering::Acquire) {
            return;
        }
        self.evict.notified().await;
    }

    pub(super) fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(0, Ordering::Release);
        if version == Version::HTTP_2 {
            self.multiplexed.store(true, Ordering::Release);
        }
        InFlight(self.clone())
    }

    /// Bytes arrived: if nothing is in flight they start a request head.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) == 0
            && !self.multiplexed.load(Ordering::Acquire)
        {
            self.head_since_ms
                .store(self.now_ms().saturating_add(1), Ordering::Release);
        }
    }

    /// How long nothing has been in flight (zero while something is).
    pub(crate) fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.quiet_since().elapsed()
    }

    /// When the connection last had something to do: its last request's
    /// end, or its start if it never made one.
    pub(super) fn quiet_since(&self) -> Instant {
        if self.requests.load(Ordering::Acquire) == 0 {
            return self.start;
        }
        self.start + Duration::from_nanos(self.last_ns.load(Ordering::Acquire))
    }

    /// Whether a request head is overdue: the first one `timeout` after
    /// the connection started, a later one `timeout` after its first byte.
    /// Not for HTTP/2: a client may open it early and keep it for later
    /// (`idle_timeout` and HTTP/2's pings govern it).
    fn head_overdue(&self, timeout: Duration) -> bool {
        if self.in_flight.load(Ordering::Acquire) > 0 || self.multiplexed.load(Ordering::Acquire) {
            return false;
        }
        let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        if self.requests.load(Ordering::Acquire) == 0 {
            return now >= timeout;
        }
        match self.head_since_ms.load(Ordering::Acquire) {
            0 => false,
            since => now.saturating_sub(since - 1) >= timeout,
        }
    }

    pub(super) fn ask_to_close(&self) {
        self.evicted.store(true, Ordering::Release);
        self.evict.notify_one();
    }
}

/// An I/O stream that tells its connection's [`Activity`] when bytes arrive.
struct Observed<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Observed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            // HTTP/2 (prior knowledge, or ALPN h2 under TLS) opens with its
            // preface: from then on no request-head timer applies.
            if self.activity.is_fresh() && read.starts_with(b"PRI * HTTP/2") {
                self.activity.multiplexed.store(true, Ordering::Release);
            }
            self.activity.bytes_read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Observed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.activity.progress.wrote(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.activity.progress.wrote(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 or HTTP/2 (detected) on one connection with `handler`.
/// Closes it when its first request head does not arrive within
/// `header_read_timeout` (and a later head within that of its first byte),
/// gracefully when idle for `idle_timeout`, when asked to make room, when
/// the sidecar drains, or when the peer's certificate expires; at once
/// when the peer is revoked.
pub(crate) async fn serve_http<I, F, Fut>(
    io: I,
    shared: &Arc<Shared>,
    slot: Slot,
    validity: Option<PeerValidity>,
    handler: F,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = slot.activity().clone();
    let counted = activity.clone();
    let window = u64::from(shared.config.limits.buffer_window);
    let slot_for_tunnels = slot.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let in_flight = counted.begin(req.version());
        // An upgrade's tunnel outlives this connection's serving: it takes
        // the slot along (`http::relay_upgrade`), so it still counts.
        req.extensions_mut().insert(slot_for_tunnels.clone());
        // HTTP/2 streams are bounded by flow control and the send buffer.
        let progress = (req.version() != Version::HTTP_2).then(|| counted.progress.clone());
        // Boxed: a request's future is kilobytes (the request, its
        // observation and every stage's state), and hyper moves the
        // service's future twice before polling it; a box makes those
        // moves a pointer's.
        let response = Box::pin(handler(req));
        async move {
            let response = response.await;
            // Still in flight while the body streams: an idle check must
            // not retire a connection in the middle of a long response.
            Ok::<_, Infallible>(response.map(|body| Paced::new(body, in_flight, progress, window)))
        }
    });
    let io = Observed {
        inner: io,
        activity: activity.clone(),
    };
    let conn = shared
        .traffic
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let limits = &shared.config.limits;
    let (idle, head_timeout) = (limits.idle_timeout, limits.header_read_timeout);
    let mut ticker = tokio::time::interval(
        (idle.min(head_timeout) / 2)
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(10)),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = shared.lifecycle.shutdown.clone();
    let mut revocations = shared.store.subscribe_revocations();
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = shutting_down(&mut shutdown), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = activity.evicted(), if !closing => {
                // Nothing in flight: nothing to finish, and a connection
                // still reading its first head would ignore a graceful
                // close (hyper closes only between requests).
                if activity.is_quiet() {
                    break;
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            // A revoked peer is cut at once, in-flight requests and all;
            // the ticker catches a revocation this wakeup missed.
            changed = revocations.changed(), if validity.is_some() => {
                if changed.is_err() || splice::lapsed(validity.as_ref()) == Some(splice::Lapse::Revoked) {
                    tracing::info!("closing a connection whose peer was revoked");
                    break;
                }
            }
            _ = ticker.tick() => {
                match splice::lapsed(validity.as_ref()) {
                    Some(splice::Lapse::Revoked) => {
                        tracing::info!("closing a connection whose peer was revoked");
                        break;
                    }
                    Some(splice::Lapse::Expired) if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    // Slowloris, or a connection that never asks anything:
                    // nothing to finish, so no graceful close.
                    _ if activity.head_overdue(head_timeout) => {
                        tracing::debug!("closing a connection whose request head is overdue");
                        break;
                    }
                    _ if !closing && activity.idle_for() >= idle => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ => {}
                }
            }
        }
    }
}
