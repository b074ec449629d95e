//! How connections are let in and served: the per-listener connection cap
//! (at the cap the oldest idle connection makes room, else the newcomer is
//! closed at once rather than left in the kernel's accept queue), the
//! per-source cap, the refusal of sources that keep failing TLS handshakes,
//! and the life of one HTTP connection: a first request within
//! `header_read_timeout`, each later head within it once it has started,
//! idle ones closed after `idle_timeout`, revoked peers cut.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::http::Body;
use super::metrics::Direction;
use super::pacing::{Paced, WriteProgress};
use super::splice::{self, PeerValidity};
use super::{Shared, shutting_down};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one connection is doing, read by its own watchdog and by the
/// table when it needs room.
pub(crate) struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended (ms since `start`).
    last_ms: AtomicU64,
    /// Requests started so far.
    requests: AtomicU64,
    /// When bytes of a new request head started arriving while nothing
    /// was in flight (ms since `start`, plus one; 0: none pending).
    head_since_ms: AtomicU64,
    /// An HTTP/2 connection (after its first request): its frames are not
    /// request heads, and HTTP/2 has its own keep-alive.
    multiplexed: AtomicBool,
    /// Asked to close to make room for another connection.
    evicted: AtomicBool,
    evict: Notify,
    /// What the connection has written, for pacing HTTP/1 responses.
    progress: Arc<WriteProgress>,
}

/// A request in flight on a connection, until its response body ends.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
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

    fn begin(self: &Arc<Self>, version: Version) -> InFlight {
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
        let since = if self.requests.load(Ordering::Acquire) == 0 {
            0
        } else {
            self.last_ms.load(Ordering::Acquire)
        };
        Duration::from_millis(self.now_ms().saturating_sub(since))
    }

    /// Whether a request head is overdue: the first one `timeout` after
    /// the connection started, a later one `timeout` after its first byte.
    fn head_overdue(&self, timeout: Duration) -> bool {
        if self.in_flight.load(Ordering::Acquire) > 0 {
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

    fn ask_to_close(&self) {
        self.evicted.store(true, Ordering::Release);
        self.evict.notify_one();
    }
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// At `max_connections` with no idle connection to close.
    Full,
    /// The source already holds `max_connections_per_source`.
    PerSource,
    /// The source failed too many TLS handshakes lately.
    HandshakeFailures,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Full => "max_connections",
            Refused::PerSource => "per_source",
            Refused::HandshakeFailures => "handshake_failures",
        }
    }
}

/// The open connections of one listener.
pub(crate) struct ConnectionTable {
    max: usize,
    /// `None`: no per-source cap (listeners whose only client is the local app).
    per_source: Option<usize>,
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    open: usize,
    /// Connections asked to close for room that have not closed yet.
    leaving: usize,
    by_source: HashMap<IpAddr, usize>,
    next_id: u64,
    /// HTTP connections, the ones that can be asked to close when idle.
    http: HashMap<u64, Arc<Activity>>,
}

/// One admitted connection's place in its table, freed when dropped.
pub(crate) struct Slot {
    table: Arc<ConnectionTable>,
    id: u64,
    source: IpAddr,
}

impl ConnectionTable {
    pub fn new(max: usize, per_source: Option<usize>) -> Arc<Self> {
        Arc::new(ConnectionTable {
            max,
            per_source,
            inner: Mutex::new(Table::default()),
        })
    }

    /// Admits a connection from `source`, asking the longest-idle HTTP
    /// connection to close if the table is full.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<(Slot, bool), Refused> {
        let mut table = lock(&self.inner);
        let from_source = table.by_source.get(&source).copied().unwrap_or(0);
        if self.per_source.is_some_and(|cap| from_source >= cap) {
            return Err(Refused::PerSource);
        }
        let mut evicted = false;
        if table.open.saturating_sub(table.leaving) >= self.max {
            let oldest = table
                .http
                .values()
                .filter(|a| !a.evicted.load(Ordering::Acquire))
                .map(|a| (a.idle_for(), a))
                .filter(|(idle, _)| !idle.is_zero())
                .max_by_key(|(idle, _)| *idle)
                .map(|(_, a)| a.clone());
            match oldest {
                Some(activity) => {
                    activity.ask_to_close();
                    table.leaving += 1;
                    evicted = true;
                }
                None => return Err(Refused::Full),
            }
        }
        table.open += 1;
        *table.by_source.entry(source).or_default() += 1;
        let id = table.next_id;
        table.next_id += 1;
        Ok((
            Slot {
                table: self.clone(),
                id,
                source,
            },
            evicted,
        ))
    }
}

impl Slot {
    /// Lists the connection as an HTTP one, which may be asked to close
    /// when idle and room is needed.
    fn track(&self, activity: Arc<Activity>) {
        lock(&self.table.inner).http.insert(self.id, activity);
    }
}

impl Drop for Slot {
    // A connection asked to close for room stops counting as leaving here.
    fn drop(&mut self) {
        let mut table = lock(&self.table.inner);
        table.open = table.open.saturating_sub(1);
        if table
            .http
            .remove(&self.id)
            .is_some_and(|a| a.evicted.load(Ordering::Acquire))
        {
            table.leaving = table.leaving.saturating_sub(1);
        }
        if let Some(n) = table.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                table.by_source.remove(&self.source);
            }
        }
    }
}

/// TLS handshake failures per source address over a sliding window: a
/// source past the limit is refused at accept until the window passes, so
/// a flood of handshakes that will fail (no client certificate in strict
/// mode) cannot keep the sidecar busy signing.
pub(crate) struct HandshakeFailures {
    limit: u32,
    window: Duration,
    by_source: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Sources tracked at most; past it the oldest entries are pruned.
const MAX_TRACKED_SOURCES: usize = 65_536;

impl HandshakeFailures {
    pub fn new(limit: u32, window: Duration) -> Self {
        HandshakeFailures {
            limit,
            window,
            by_source: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `source` is refused now. A limit of 0 turns this off.
    pub fn blocked(&self, source: IpAddr) -> bool {
        if self.limit == 0 {
            return false;
        }
        let sources = lock(&self.by_source);
        sources
            .get(&source)
            .is_some_and(|(since, n)| *n >= self.limit && since.elapsed() < self.window)
    }

    pub fn failed(&self, source: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let mut sources = lock(&self.by_source);
        if sources.len() >= MAX_TRACKED_SOURCES {
            let window = self.window;
            sources.retain(|_, (since, _)| since.elapsed() < window);
        }
        if sources.len() >= MAX_TRACKED_SOURCES {
            return;
        }
        let entry = sources.entry(source).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Accepts connections until shutdown. Each is admitted by the listener's
/// [`ConnectionTable`] (and, inbound, the handshake-failure limiter) or
/// closed at once; admitted ones are handled by `handle` with their slot.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    direction: Direction,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limits = &shared.config.limits;
    // The local app is every outbound listener's only client.
    let per_source = (direction == Direction::Inbound).then_some(limits.max_connections_per_source);
    let table = ConnectionTable::new(limits.max_connections, per_source);
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutting_down(&mut shutdown) => break,
        };
        let (stream, source) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source_ip = source.ip().to_canonical();
        let admitted =
            if direction == Direction::Inbound && shared.handshake_failures.blocked(source_ip) {
                Err(Refused::HandshakeFailures)
            } else {
                table.admit(source_ip)
            };
        let slot = match admitted {
            Ok((slot, evicted)) => {
                if evicted {
                    shared.metrics.connection_evicted(direction);
                }
                slot
            }
            Err(why) => {
                shared.metrics.connection_refused(direction, why.label());
                tracing::debug!(%source, reason = why.label(), "connection refused at accept");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let task = handle(stream, source, slot);
        let metrics = shared.metrics.clone();
        shared.tracker.spawn(async move {
            let _open = metrics.connection_opened(direction);
            task.await;
        });
    }
    // The listener is dropped here: new connections are refused from now on.
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
        if buf.filled().len() > before {
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
    let activity = Arc::new(Activity::new());
    slot.track(activity.clone());
    let counted = activity.clone();
    let window = u64::from(shared.config.limits.buffer_window);
    let service = service_fn(move |req: Request<Incoming>| {
        let in_flight = counted.begin(req.version());
        // HTTP/2 streams are bounded by flow control and the send buffer.
        let progress = (req.version() != Version::HTTP_2).then(|| counted.progress.clone());
        let response = handler(req);
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
    let mut shutdown = shared.shutdown.clone();
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
            () = activity.evict.notified(), if !closing => {
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
