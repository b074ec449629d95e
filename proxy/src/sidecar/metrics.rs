//! The sidecar's Prometheus metrics, rendered in the text exposition format
//! on the admin port's `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::authz::ReloadStatus;
use crate::identity::SvidStore;

use super::telemetry::TraceStats;

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
    /// Failed, with a reason from [`handshake_failure`].
    Failed(&'static str),
    Timeout,
    /// Permissive mode: a plaintext connection, no handshake at all.
    Plaintext,
}

impl Handshake {
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Handshake::Ok => ("ok", ""),
            Handshake::Failed(reason) => ("failed", reason),
            Handshake::Timeout => ("timeout", "timeout"),
            Handshake::Plaintext => ("plaintext", ""),
        }
    }
}

/// Why a handshake failed, as a bounded metric label.
pub fn handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::InvalidData => "protocol",
            _ => "connection",
        };
    };
    match tls {
        Error::NoCertificatesPresented => "no_certificate",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired",
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "untrusted",
        Error::InvalidCertificate(CertificateError::Other(other))
            if matches!(
                other.0.downcast_ref::<crate::identity::SvidError>(),
                Some(crate::identity::SvidError::Revoked(_))
            ) =>
        {
            "revoked"
        }
        Error::InvalidCertificate(_) => "invalid_certificate",
        Error::AlertReceived(_) => "alert_received",
        Error::NoApplicationProtocol => "alpn",
        Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::InvalidMessage(_)
        | Error::PeerIncompatible(_)
        | Error::PeerMisbehaved(_) => "protocol",
        _ => "other",
    }
}

/// Upper bounds (seconds) of the request duration histogram.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, n) in BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if seconds <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

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

    pub fn authz_error(&self) {
        self.authz_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(
        &self,
        store: &SvidStore,
        policy: Option<&ReloadStatus>,
        traces: Option<&TraceStats>,
    ) -> String {
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
            let (outcome, reason) = outcome.labels();
            let _ = writeln!(
                out,
                "warden_tls_handshakes_total{{direction=\"{}\",outcome=\"{outcome}\",reason=\"{reason}\"}} {n}",
                direction.label(),
            );
        }
        family(
            &mut out,
            "warden_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its response head, by direction, decision and status class.",
        );
        for ((direction, decision, class), h) in lock(&self.durations).iter() {
            let labels = format!(
                "direction=\"{}\",decision=\"{decision}\",status_class=\"{class}\"",
                direction.label()
            );
            for (bound, n) in BUCKETS.iter().zip(h.buckets.iter()) {
                let _ = writeln!(
                    out,
                    "warden_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "warden_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\nwarden_request_duration_seconds_sum{{{labels}}} {}\nwarden_request_duration_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }
        family(
            &mut out,
            "warden_peer_requests_total",
            "counter",
            "HTTP requests by the SPIFFE ID at the other end (the caller inbound, the server outbound); at most 100 identities, the rest as \"other\".",
        );
        for ((direction, peer), n) in lock(&self.peers).iter() {
            let _ = writeln!(
                out,
                "warden_peer_requests_total{{direction=\"{}\",peer=\"{}\"}} {n}",
                direction.label(),
                escape(peer)
            );
        }
        family(
            &mut out,
            "warden_svid_rotations_total",
            "counter",
            "Times the SVID or the trust bundles changed after the first load.",
        );
        let _ = writeln!(
            out,
            "warden_svid_rotations_total {}",
            self.rotations.load(Ordering::Relaxed)
        );
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
            "warden_connections_refused_total",
            "counter",
            "Connections closed as soon as they were accepted, by direction and reason: max_connections (the cap is full and no connection is idle), per_source (the source address holds limits.max_connections_per_source), handshake_failures (the source failed too many TLS handshakes lately).",
        );
        for ((direction, reason), n) in lock(&self.refused).iter() {
            let _ = writeln!(
                out,
                "warden_connections_refused_total{{direction=\"{}\",reason=\"{reason}\"}} {n}",
                direction.label()
            );
        }
        family(
            &mut out,
            "warden_connections_evicted_total",
            "counter",
            "Idle connections closed to make room for a new one at limits.max_connections, by direction.",
        );
        for direction in [Direction::Inbound, Direction::Outbound] {
            let _ = writeln!(
                out,
                "warden_connections_evicted_total{{direction=\"{}\"}} {}",
                direction.label(),
                self.evicted[direction.index()].load(Ordering::Relaxed)
            );
        }
        family(
            &mut out,
            "warden_reauthorization_closes_total",
            "counter",
            "Live opaque connections and upgraded tunnels closed because a new policy set denies them.",
        );
        for (i, kind) in ["tcp", "upgrade"].iter().enumerate() {
            let _ = writeln!(
                out,
                "warden_reauthorization_closes_total{{kind=\"{kind}\"}} {}",
                self.reauthorization_closes[i].load(Ordering::Relaxed)
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
        if let Some(traces) = traces {
            family(
                &mut out,
                "warden_trace_spans_total",
                "counter",
                "Finished spans, by what became of them: exported, dropped because the export queue was full, or lost in a failed export.",
            );
            for (outcome, n) in [
                ("exported", &traces.exported),
                ("queue_full", &traces.queue_full),
                ("export_failed", &traces.export_failed),
            ] {
                let _ = writeln!(
                    out,
                    "warden_trace_spans_total{{outcome=\"{outcome}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
            family(
                &mut out,
                "warden_trace_exports_total",
                "counter",
                "OTLP export requests to the collector, by result.",
            );
            let _ = writeln!(
                out,
                "warden_trace_exports_total{{result=\"ok\"}} {}\nwarden_trace_exports_total{{result=\"failed\"}} {}",
                traces.exports_ok.load(Ordering::Relaxed),
                traces.exports_failed.load(Ordering::Relaxed)
            );
        }
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
            if let Some(version) = &policy.version {
                family(
                    &mut out,
                    "warden_policy_info",
                    "gauge",
                    "The active policy set's version (always 1).",
                );
                let _ = writeln!(
                    out,
                    "warden_policy_info{{version=\"{}\"}} 1",
                    escape(version)
                );
            }
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
