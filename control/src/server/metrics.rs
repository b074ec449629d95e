//! The plaintext health and Prometheus port.

use super::*;

pub(super) async fn serve_metrics(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let response = match req.uri().path() {
                        "/live" | "/ready" => text(StatusCode::OK, "ok\n".into()),
                        "/metrics" => match metrics_text(&state).await {
                            Ok(body) => text(StatusCode::OK, body),
                            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                        },
                        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub(super) fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Time-to-expiry buckets of `warden_control_identities_expiring`.
const EXPIRY_BUCKETS: [(&str, i64); 5] = [
    ("1m", 60),
    ("5m", 300),
    ("15m", 900),
    ("1h", 3600),
    ("24h", 86400),
];

pub(super) async fn metrics_text(state: &Arc<State>) -> Result<String, StoreError> {
    use std::fmt::Write;
    let db = state.db.clone();
    let now = state.now();
    let identities = blocking(move || db.identities(now)).await?;
    let mut out = String::new();
    let c = state
        .counters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = writeln!(
        out,
        "# HELP warden_control_svids_issued_total SVIDs signed, by kind (join or renew).\n# TYPE warden_control_svids_issued_total counter"
    );
    for kind in SvidKind::ALL {
        let _ = writeln!(
            out,
            "warden_control_svids_issued_total{{kind=\"{kind}\"}} {}",
            c.issued.get(&kind).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(
        out,
        "# HELP warden_control_refusals_total Refused requests, by endpoint and reason.\n# TYPE warden_control_refusals_total counter"
    );
    for ((event, reason), n) in &c.refused {
        let _ = writeln!(
            out,
            "warden_control_refusals_total{{event=\"{event}\",reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP warden_control_revocations_total Revocations made through this replica.\n# TYPE warden_control_revocations_total counter\nwarden_control_revocations_total {}",
        c.revocations
    );
    let _ = writeln!(
        out,
        "# HELP warden_control_federation_refreshes_total Federated bundle fetches, by trust domain and outcome (changed, unchanged, failed).\n# TYPE warden_control_federation_refreshes_total counter"
    );
    for ((td, outcome), n) in &c.federation {
        let _ = writeln!(
            out,
            "warden_control_federation_refreshes_total{{trust_domain=\"{td}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP warden_control_jwt_svids_issued_total JWT-SVIDs signed by this replica.\n# TYPE warden_control_jwt_svids_issued_total counter\nwarden_control_jwt_svids_issued_total {}",
        c.jwt_svids
    );
    let _ = writeln!(
        out,
        "# HELP warden_control_usage_reports_total Usage reports from sidecars stored by this replica.\n# TYPE warden_control_usage_reports_total counter\nwarden_control_usage_reports_total {}",
        c.usage_reports
    );
    let _ = writeln!(
        out,
        "# HELP warden_control_new_edges_total Edges (a caller to a service, or a caller from a new source range) seen for the first time by this replica.\n# TYPE warden_control_new_edges_total counter\nwarden_control_new_edges_total {}",
        c.new_edges
    );
    let _ = writeln!(
        out,
        "# HELP warden_control_usage_dropped_total Reported requests not stored: their callee had added its most usage rows for the day.\n# TYPE warden_control_usage_dropped_total counter\nwarden_control_usage_dropped_total {}",
        c.usage_dropped
    );
    let _ = writeln!(
        out,
        "# HELP warden_control_usage_duplicate_reports_total Usage reports a sidecar sent again after this or another replica had stored them (the answer was lost): not added again.\n# TYPE warden_control_usage_duplicate_reports_total counter\nwarden_control_usage_duplicate_reports_total {}",
        c.usage_duplicates
    );
    let _ = writeln!(
        out,
        "# HELP warden_control_policy_pushes_total Policy bundles pushed through this replica.\n# TYPE warden_control_policy_pushes_total counter\nwarden_control_policy_pushes_total {}",
        c.policy_pushes
    );
    let _ = writeln!(
        out,
        "# HELP warden_control_client_certificate_refusals_total TLS handshakes refused for a bad client certificate.\n# TYPE warden_control_client_certificate_refusals_total counter\nwarden_control_client_certificate_refusals_total {}",
        c.handshake_failures
    );
    drop(c);
    let _ = writeln!(
        out,
        "# HELP warden_control_identities Identities in the inventory, by status.\n# TYPE warden_control_identities gauge"
    );
    for status in IdentityStatus::ALL {
        let n = identities.iter().filter(|i| i.status == status).count();
        let _ = writeln!(out, "warden_control_identities{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP warden_control_identities_expiring Active identities whose SVID expires within the window.\n# TYPE warden_control_identities_expiring gauge"
    );
    for (label, secs) in EXPIRY_BUCKETS {
        let n = identities
            .iter()
            .filter(|i| {
                i.status == IdentityStatus::Active && i.expires_at.is_some_and(|e| e - now <= secs)
            })
            .count();
        let _ = writeln!(
            out,
            "warden_control_identities_expiring{{within=\"{label}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP warden_control_ca_expiry_timestamp_seconds When the signing CA certificate expires (Unix time).\n# TYPE warden_control_ca_expiry_timestamp_seconds gauge\nwarden_control_ca_expiry_timestamp_seconds {}",
        Timestamp::from_system_time(state.cas.load().signing.not_after()).0
    );
    Ok(out)
}
