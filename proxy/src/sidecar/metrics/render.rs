//! `/metrics`: every family in the Prometheus text exposition format.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::authz::ReloadStatus;
use crate::identity::SvidStore;
use crate::sidecar::telemetry::TraceStats;

use super::histogram::BUCKETS;
use super::{Direction, Metrics, Transparent, lock, unix_seconds};

impl Metrics {
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
            "warden_worker_connections_total",
            "counter",
            "Connections admitted, by the worker thread that accepted them (--workers): how evenly the kernel spreads them.",
        );
        for (worker, n) in lock(&self.worker_connections).iter() {
            let _ = writeln!(
                out,
                "warden_worker_connections_total{{worker=\"{worker}\"}} {n}"
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
            "warden_transparent_connections_total",
            "counter",
            "Connections of the transparent listeners, by direction and outcome: inbound redirected (to the app at the port it was sent to), direct (not redirected, to inbound.app) or loop (not redirected, no inbound.app: closed); outbound meshed_http, meshed_tcp (mTLS to a mesh destination), passthrough (outside the mesh, plaintext), denied (outside the mesh, outbound.unknown = \"deny\") or loop (not redirected: closed).",
        );
        for direction in [Direction::Inbound, Direction::Outbound] {
            for outcome in Transparent::ALL {
                let n =
                    self.transparent[direction.index()][outcome.index()].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "warden_transparent_connections_total{{direction=\"{}\",outcome=\"{}\"}} {n}",
                        direction.label(),
                        outcome.label()
                    );
                }
            }
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
