//! The sidecar's Prometheus metrics, rendered in the text exposition format
//! on the admin port's `/metrics`.

mod histogram;
mod labels;
mod render;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use histogram::Histogram;
pub use labels::{Direction, Handshake, Transparent, handshake_failure};

/// Distinct peer identities given their own label; the rest count as "other".
pub const DEFAULT_MAX_PEER_LABELS: usize = 100;

type RequestKey = (Direction, u16, &'static str);

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    handshakes: Mutex<BTreeMap<(Direction, Handshake), u64>>,
    tcp: Mutex<BTreeMap<(Direction, &'static str), u64>>,
    durations: Mutex<BTreeMap<(Direction, &'static str, &'static str), Histogram>>,
    peers: Mutex<BTreeMap<(Direction, String), u64>>,
    rotations: AtomicU64,
    open_connections: [AtomicI64; 2],
    /// Connections closed at accept, by direction and why.
    refused: Mutex<BTreeMap<(Direction, &'static str), u64>>,
    /// Idle connections closed to make room for a new one, by direction.
    evicted: [AtomicU64; 2],
    shed: AtomicU64,
    authz_errors: AtomicU64,
    /// Tunnels closed because a new policy set denies them: opaque, upgrade.
    reauthorization_closes: [AtomicU64; 2],
    /// Connections of the transparent listeners, by direction and outcome.
    transparent: [[AtomicU64; Transparent::ALL.len()]; 2],
    /// Connections accepted, by the worker (thread) that accepted them.
    worker_connections: Mutex<BTreeMap<usize, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Holds one open connection in the gauge until dropped.
pub struct OpenConnection<'a> {
    metrics: &'a Metrics,
    direction: Direction,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.metrics.open_connections[self.direction.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a finished request; `decision` is "allow", "deny" or "none"
    /// (refused before a decision, or outbound).
    pub fn request(&self, direction: Direction, status: u16, decision: &'static str) {
        *lock(&self.requests)
            .entry((direction, status, decision))
            .or_default() += 1;
    }

    /// Counts an opaque TCP connection; `decision` as for requests.
    pub fn tcp_connection(&self, direction: Direction, decision: &'static str) {
        *lock(&self.tcp).entry((direction, decision)).or_default() += 1;
    }

    /// How long a request took, to its response head.
    pub fn duration(
        &self,
        direction: Direction,
        decision: &'static str,
        status: u16,
        took: std::time::Duration,
    ) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        lock(&self.durations)
            .entry((direction, decision, class))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Counts a request by the identity at the other end; past
    /// `DEFAULT_MAX_PEER_LABELS` distinct identities, under "other".
    pub fn peer_request(&self, direction: Direction, peer: &str) {
        let mut peers = lock(&self.peers);
        let key = (direction, peer.to_owned());
        if let Some(n) = peers.get_mut(&key) {
            *n += 1;
            return;
        }
        let key = if peers.len() >= DEFAULT_MAX_PEER_LABELS {
            (direction, "other".to_owned())
        } else {
            key
        };
        *peers.entry(key).or_default() += 1;
    }

    /// The SVID (or its bundles) changed.
    pub fn rotation(&self) {
        self.rotations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshake(&self, direction: Direction, outcome: Handshake) {
        *lock(&self.handshakes)
            .entry((direction, outcome))
            .or_default() += 1;
    }

    pub fn connection_opened(&self, direction: Direction) -> OpenConnection<'_> {
        self.open_connections[direction.index()].fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            metrics: self,
            direction,
        }
    }

    /// A connection closed as soon as it was accepted; `reason` is
    /// `max_connections`, `per_source` or `handshake_failures`.
    pub fn connection_refused(&self, direction: Direction, reason: &'static str) {
        *lock(&self.refused).entry((direction, reason)).or_default() += 1;
    }

    /// An idle connection closed to make room at the connection cap.
    pub fn connection_evicted(&self, direction: Direction) {
        self.evicted[direction.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn open_connections(&self, direction: Direction) -> i64 {
        self.open_connections[direction.index()].load(Ordering::Relaxed)
    }

    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// A live tunnel closed because the policy set that replaced the one it
    /// was admitted under denies it; `upgrade` or else opaque TCP.
    pub fn reauthorization_close(&self, upgrade: bool) {
        self.reauthorization_closes[usize::from(upgrade)].fetch_add(1, Ordering::Relaxed);
    }

    /// A transparent listener's connection and what became of it.
    pub fn transparent(&self, direction: Direction, outcome: Transparent) {
        self.transparent[direction.index()][outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn authz_error(&self) {
        self.authz_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection accepted (and admitted) by worker `worker`.
    pub fn worker_accepted(&self, worker: usize) {
        *lock(&self.worker_connections).entry(worker).or_default() += 1;
    }
}

pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
