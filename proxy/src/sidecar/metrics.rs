//! The sidecar's Prometheus metrics, rendered in the text exposition format
//! on the admin port's `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::authz::ReloadStatus;
use crate::identity::SvidStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Outcome label of a TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Handshake {
    Ok,
    Failed,
    Timeout,
    /// Permissive mode: a plaintext connection, no handshake at all.
    Plaintext,
}

impl Handshake {
    fn label(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Failed => "failed",
            Handshake::Timeout => "timeout",
            Handshake::Plaintext => "plaintext",
        }
    }
}

type RequestKey = (Direction, u16, &'static str);

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    handshakes: Mutex<BTreeMap<(Direction, Handshake), u64>>,
    tcp: Mutex<BTreeMap<(Direction, &'static str), u64>>,
    open_connections: [AtomicI64; 2],
    shed: AtomicU64,
    authz_errors: AtomicU64,
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

    pub fn open_connections(&self, direction: Direction) -> i64 {
        self.open_connections[direction.index()].load(Ordering::Relaxed)
    }

    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn authz_error(&self) {
        self.authz_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, store: &SvidStore, policy: Option<&ReloadStatus>) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "warden_requests_total",
            "counter",
            "HTTP requests handled, by direction, status code and authorization decision.",
        );
        for ((direction, status, decision), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "warden_requests_total{{direction=\"{}\",status=\"{status}\",decision=\"{decision}\"}} {n}",
                direction.label()
            );
        }
        family(
            &mut out,
            "warden_tcp_connections_total",
            "counter",
            "Opaque TCP connections, by direction and authorization decision.",
        );
        for ((direction, decision), n) in lock(&self.tcp).iter() {
            let _ = writeln!(
                out,
                "warden_tcp_connections_total{{direction=\"{}\",decision=\"{decision}\"}} {n}",
                direction.label()
            );
        }
        family(
            &mut out,
            "warden_tls_handshakes_total",
            "counter",
            "TLS handshakes, by direction and outcome.",
        );
        for ((direction, outcome), n) in lock(&self.handshakes).iter() {
            let _ = writeln!(
                out,
                "warden_tls_handshakes_total{{direction=\"{}\",outcome=\"{}\"}} {n}",
                direction.label(),
                outcome.label()
            );
        }
        family(
            &mut out,
            "warden_open_connections",
            "gauge",
            "Connections open now, by direction.",
        );
        for direction in [Direction::Inbound, Direction::Outbound] {
            let _ = writeln!(
                out,
                "warden_open_connections{{direction=\"{}\"}} {}",
                direction.label(),
                self.open_connections(direction)
            );
        }
        family(
            &mut out,
            "warden_requests_shed_total",
            "counter",
            "Requests refused with 503 because max_concurrent_requests were in flight.",
        );
        let _ = writeln!(
            out,
            "warden_requests_shed_total {}",
            self.shed.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "warden_authz_errors_total",
            "counter",
            "Authorization decisions that carried evaluation errors (each is a deny).",
        );
        let _ = writeln!(
            out,
            "warden_authz_errors_total {}",
            self.authz_errors.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "warden_svid_expiry_timestamp_seconds",
            "gauge",
            "When the current SVID expires (Unix time); 0 when there is none.",
        );
        let expiry = store
            .current()
            .map(|s| unix_seconds(s.not_after()))
            .unwrap_or(0);
        let _ = writeln!(out, "warden_svid_expiry_timestamp_seconds {expiry}");
        if let Some(policy) = policy {
            family(
                &mut out,
                "warden_policy_reloads_total",
                "counter",
                "Policy set loads, by result.",
            );
            let _ = writeln!(
                out,
                "warden_policy_reloads_total{{result=\"ok\"}} {}\nwarden_policy_reloads_total{{result=\"refused\"}} {}",
                policy.reloads, policy.failures
            );
        }
        out
    }
}

pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
