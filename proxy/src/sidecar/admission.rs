//! Who gets a connection: each listener's [`ConnectionTable`] caps its
//! open connections (at the cap the best candidate to go, a connection that
//! never asked anything or else the one idle the longest, is closed to make
//! room; with none, the newcomer is closed at once rather than left in the
//! kernel's accept queue) and, inbound, the connections of one source; and
//! [`HandshakeFailures`] closes at accept the sources that keep failing
//! TLS handshakes.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use super::connections::{Activity, InFlight};
use super::metrics::Direction;
use super::shared::{Shared, shutting_down};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The key a source address is counted under: the address, or for IPv6
/// its /64 (one host usually holds a whole /64).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// At `max_connections` with no connection to close instead.
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

/// How many connections are looked at for one that can make room: a
/// bound on the work at the cap, whatever the cap.
const EVICTION_SAMPLE: usize = 256;

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
    connections: HashMap<u64, Arc<Activity>>,
}

/// One admitted connection's place in its table, freed when the last clone
/// drops (an upgraded connection's tunnel holds one).
#[derive(Clone)]
pub(crate) struct Slot(Arc<SlotInner>);

struct SlotInner {
    table: Arc<ConnectionTable>,
    id: u64,
    source: IpAddr,
    activity: Arc<Activity>,
}

impl ConnectionTable {
    pub fn new(max: usize, per_source: Option<usize>) -> Arc<Self> {
        Arc::new(ConnectionTable {
            max,
            per_source,
            inner: Mutex::new(Table::default()),
        })
    }

    /// Admits a connection from `source` (a [`source_key`]); at the cap,
    /// first asks another to close. The flag says whether one was.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<(Slot, bool), Refused> {
        let mut table = lock(&self.inner);
        let from_source = table.by_source.get(&source).copied().unwrap_or(0);
        if self.per_source.is_some_and(|cap| from_source >= cap) {
            return Err(Refused::PerSource);
        }
        let mut evicted = false;
        if table.open.saturating_sub(table.leaving) >= self.max {
            // Of those with nothing in flight: one that never asked
            // anything (a slowloris, a connection parked for later) before
            // any that did, then the longest idle.
            // Ties go to the older connection (the lower id), whatever
            // the map's order.
            let candidate = table
                .connections
                .iter()
                .filter(|(_, a)| !a.evicted.load(std::sync::atomic::Ordering::Acquire))
                .take(EVICTION_SAMPLE)
                .filter(|(_, a)| a.is_quiet())
                .min_by_key(|(id, a)| (!a.is_fresh(), a.quiet_since(), **id))
                .map(|(_, a)| a.clone());
            match candidate {
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
        let activity = Arc::new(Activity::new());
        table.connections.insert(id, activity.clone());
        Ok((
            Slot(Arc::new(SlotInner {
                table: self.clone(),
                id,
                source,
                activity,
            })),
            evicted,
        ))
    }
}

impl Slot {
    pub fn activity(&self) -> &Arc<Activity> {
        &self.0.activity
    }

    /// Marks the connection busy until the guard drops (opaque streams,
    /// tunnels): never asked to make room.
    pub fn busy(&self) -> InFlight {
        self.0.activity.busy()
    }
}

impl Drop for SlotInner {
    // A connection asked to close for room stops counting as leaving here.
    fn drop(&mut self) {
        let mut table = lock(&self.table.inner);
        table.open = table.open.saturating_sub(1);
        if table
            .connections
            .remove(&self.id)
            .is_some_and(|a| a.evicted.load(std::sync::atomic::Ordering::Acquire))
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

/// TLS handshake failures per source ([`source_key`]) in fixed windows: a
/// source that reaches the limit in a window is refused at accept until
/// the window ends, so a flood of handshakes that will fail (no client
/// certificate in strict mode) cannot keep the sidecar busy signing.
pub(crate) struct HandshakeFailures {
    limit: u32,
    window: Duration,
    counts: Mutex<Window>,
}

struct Window {
    started: Instant,
    by_source: HashMap<IpAddr, u32>,
}

/// Sources counted per window at most: memory stays bounded; past it, new
/// sources go uncounted until the window turns.
const MAX_TRACKED_SOURCES: usize = 65_536;

impl HandshakeFailures {
    pub fn new(limit: u32, window: Duration) -> Self {
        HandshakeFailures {
            limit,
            window,
            counts: Mutex::new(Window {
                started: Instant::now(),
                by_source: HashMap::new(),
            }),
        }
    }

    /// The current window, turned over if it has ended.
    fn current(&self) -> std::sync::MutexGuard<'_, Window> {
        let mut counts = lock(&self.counts);
        if counts.started.elapsed() >= self.window {
            counts.started = Instant::now();
            counts.by_source.clear();
        }
        counts
    }

    /// Whether `source` is refused now. A limit of 0 turns this off.
    pub fn blocked(&self, source: IpAddr) -> bool {
        self.limit != 0
            && self
                .current()
                .by_source
                .get(&source)
                .is_some_and(|n| *n >= self.limit)
    }

    pub fn failed(&self, source: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let mut counts = self.current();
        if counts.by_source.len() >= MAX_TRACKED_SOURCES && !counts.by_source.contains_key(&source)
        {
            return;
        }
        let n = counts.by_source.entry(source).or_default();
        *n = n.saturating_add(1);
    }
}

/// A listener's side of the sidecar: what its connections share.
pub(crate) trait Side {
    fn shared(&self) -> &Arc<Shared>;
}

/// One configured listener as one worker sees it: the worker's own socket
/// (with several workers, one `SO_REUSEPORT` socket each on the same
/// address) and the connection table every worker's socket for that
/// address shares, so `limits.max_connections` holds per listener whatever
/// the number of workers.
pub(crate) struct Listening {
    pub socket: TcpListener,
    pub table: Arc<ConnectionTable>,
    /// The worker accepting on `socket` (0: the main thread).
    pub worker: usize,
}

impl Listening {
    /// The first worker's view of a listener on `direction`'s side.
    pub fn new(socket: TcpListener, direction: Direction, limits: &super::config::Limits) -> Self {
        // The local app is every outbound listener's only client.
        let per_source =
            (direction == Direction::Inbound).then_some(limits.max_connections_per_source);
        Listening {
            socket,
            table: ConnectionTable::new(limits.max_connections, per_source),
            worker: 0,
        }
    }
}

/// Accepts connections until shutdown. Each is admitted by the listener's
/// [`ConnectionTable`] (and, inbound, the handshake-failure limiter) or
/// closed at once; admitted ones are handled by `handle`, given the
/// listener's side (`this`) and the connection's slot.
pub(crate) async fn accept_loop<T, F, Fut>(
    listening: Listening,
    direction: Direction,
    this: Arc<T>,
    handle: F,
) where
    T: Side,
    F: Fn(Arc<T>, TcpStream, SocketAddr, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let shared = this.shared().clone();
    let Listening {
        socket: listener,
        table,
        worker,
    } = listening;
    let mut shutdown = shared.lifecycle.shutdown.clone();
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
        let key = source_key(source.ip());
        let admitted =
            if direction == Direction::Inbound && shared.traffic.handshake_failures.blocked(key) {
                Err(Refused::HandshakeFailures)
            } else {
                table.admit(key)
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
        shared.metrics.worker_accepted(worker);
        let task = handle(this.clone(), stream, source, slot);
        let metrics = shared.metrics.clone();
        shared.lifecycle.tracker.spawn(async move {
            let _open = metrics.connection_opened(direction);
            task.await;
        });
    }
    // The listener is dropped here: new connections are refused from now on.
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Acquire;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn at_the_cap_an_idle_connection_makes_room_and_busy_ones_never_do() {
        let table = ConnectionTable::new(2, None);
        let (a, _) = table.admit(ip(1)).expect("room");
        let (b, _) = table.admit(ip(2)).expect("room");
        let b_busy = b.busy();
        let (c, evicted) = table.admit(ip(3)).expect("room made");
        assert!(evicted);
        assert!(a.activity().evicted.load(Acquire), "the quiet one goes");
        assert!(!b.activity().evicted.load(Acquire), "the busy one stays");
        // `a` counts until it has closed, as leaving: `c` took its place.
        let _c_busy = c.busy();
        assert_eq!(table.admit(ip(4)).err(), Some(Refused::Full));
        drop(a);
        assert_eq!(
            table.admit(ip(4)).err(),
            Some(Refused::Full),
            "b and c busy"
        );
        drop(b_busy);
        assert!(table.admit(ip(4)).is_ok(), "b is quiet again");
    }

    #[test]
    fn the_connection_idle_the_longest_makes_room_even_when_served_within_a_millisecond() {
        // Sixteen connections, each served one request in this order, all
        // within well under a millisecond: the first served is the one to go.
        let order = [5usize, 3, 11, 0, 15, 7, 1, 9, 13, 2, 8, 14, 4, 10, 6, 12];
        let table = ConnectionTable::new(order.len(), None);
        let slots: Vec<Slot> = (0..order.len())
            .map(|i| {
                table
                    .admit(ip(u8::try_from(i).expect("small")))
                    .expect("room")
                    .0
            })
            .collect();
        for &i in &order {
            drop(slots[i].activity().begin(::http::Version::HTTP_11));
        }
        let (_newcomer, evicted) = table.admit(ip(200)).expect("room made");
        assert!(evicted);
        let gone: Vec<usize> = (0..order.len())
            .filter(|&i| slots[i].activity().evicted.load(Acquire))
            .collect();
        assert_eq!(gone, vec![order[0]], "the first served goes");
        // A connection that never asked anything goes before any idle one.
        let table = ConnectionTable::new(2, None);
        let (served, _) = table.admit(ip(1)).expect("room");
        drop(served.activity().begin(::http::Version::HTTP_11));
        let (parked, _) = table.admit(ip(2)).expect("room");
        let _ = table.admit(ip(3)).expect("room made");
        assert!(parked.activity().evicted.load(Acquire), "never asked: goes");
        assert!(!served.activity().evicted.load(Acquire));
    }

    #[test]
    fn one_source_holds_at_most_its_share() {
        let table = ConnectionTable::new(10, Some(2));
        let _x = table.admit(ip(1)).expect("room");
        let _y = table.admit(ip(1)).expect("room");
        assert_eq!(table.admit(ip(1)).err(), Some(Refused::PerSource));
        assert!(table.admit(ip(2)).is_ok());
        let v6 = |s: &str| source_key(s.parse().expect("ip"));
        assert_eq!(v6("2001:db8::1"), v6("2001:db8::2:3"), "one /64");
        assert_ne!(v6("2001:db8::1"), v6("2001:db8:0:1::1"));
        assert_eq!(v6("::ffff:10.0.0.1"), ip(1));
    }

    #[test]
    fn handshake_failures_block_a_source_for_the_rest_of_the_window() {
        let failures = HandshakeFailures::new(3, Duration::from_secs(3600));
        failures.failed(ip(1));
        failures.failed(ip(1));
        assert!(!failures.blocked(ip(1)));
        failures.failed(ip(1));
        assert!(failures.blocked(ip(1)));
        assert!(!failures.blocked(ip(2)));
        let off = HandshakeFailures::new(0, Duration::from_secs(3600));
        for _ in 0..10 {
            off.failed(ip(1));
        }
        assert!(!off.blocked(ip(1)));
        // A window that has ended forgets.
        let instant = HandshakeFailures::new(1, Duration::ZERO);
        instant.failed(ip(1));
        assert!(!instant.blocked(ip(1)));
    }
}
