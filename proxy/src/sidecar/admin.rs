//! The admin server, apart from traffic ports: `/live`, `/ready`,
//! `/identity`, `/policy` and `/metrics`, open to anything that can reach
//! it (keep it on loopback), and `PUT /logging`, which needs the bearer
//! token the sidecar wrote to `admin.token_file`: anything on the pod's
//! loopback (a compromised app, an SSRF in it) can reach the admin port.
//! `GET /app-health/<name>` runs one of `admin.app_probes` against the app
//! (see `probes`): a pod's admin port is on its IP for the kubelet.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use super::metrics::unix_seconds;
use super::shared::Shared;
use crate::identity::Timestamp;

/// Connections the admin server serves at once, and from one source
/// address: a pod's admin port is on its address for the kubelet, so
/// anything in the cluster can connect; past either a new connection is
/// closed at once.
const MAX_ADMIN_CONNECTIONS: usize = 64;
const MAX_ADMIN_CONNECTIONS_PER_SOURCE: usize = 8;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots =
        super::slots::ConnectionSlots::new(MAX_ADMIN_CONNECTIONS, MAX_ADMIN_CONNECTIONS_PER_SOURCE);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(peer.ip()) else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    if req.uri().path() == "/logging" {
                        return Ok::<_, Infallible>(logging(req, &shared).await);
                    }
                    if let Some(name) = req.uri().path().strip_prefix("/app-health/")
                        && req.method() == Method::GET
                    {
                        let host = match &shared.config.identity {
                            super::config::IdentitySource::Control(c) => {
                                super::probes::probe_host(&c.endpoint_addresses)
                            }
                            super::config::IdentitySource::Files(_)
                            | super::config::IdentitySource::WorkloadApi(_) => {
                                super::probes::probe_host(&[])
                            }
                        };
                        let (status, body) =
                            super::probes::run(&shared.config.admin.app_probes, host, name).await;
                        return Ok(reply(status, "text/plain", body));
                    }
                    Ok(route(&req, &shared))
                }
            });
            // A request head within 10 s, and the whole exchange within a
            // minute: a slow client cannot hold a slot.
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service),
            )
            .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn json_reply(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", format!("{value}\n"))
}

fn route(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => {
            let reasons = shared.not_ready_reasons();
            if reasons.is_empty() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", reasons.join("; ")),
                )
            }
        }
        "/identity" => identity(shared),
        "/policy" => {
            let status = shared.policy_status().unwrap_or_default();
            json_reply(
                StatusCode::OK,
                json!({
                    "version": status.version,
                    "source": match &shared.config.authz.policies {
                        Some(p) => p.display().to_string(),
                        None if shared.config.policies_from_control() => "control plane".into(),
                        None => "built-in default".into(),
                    },
                    "mode": shared.config.authz.mode,
                    "reloads": status.reloads,
                    "failures": status.failures,
                    "last_error": status.last_error,
                }),
            )
        }
        "/metrics" => {
            let mut text = shared.metrics.render(
                &shared.store,
                shared.policy_status().as_ref(),
                shared.traces.as_ref().map(|t| t.stats()),
            );
            text.push_str(&format!(
                "# HELP warden_usage_overflow_total Decisions counted but not kept as a /usage entry (a caller's route keys, or the callers, at their cap).\n# TYPE warden_usage_overflow_total counter\nwarden_usage_overflow_total {}\n",
                shared.usage.overflow_total()
            ));
            let reports = &shared.usage.reports;
            let reporting = matches!(
                shared.config.identity,
                super::config::IdentitySource::Control(_)
            ) && !shared.config.usage.report_interval.is_zero();
            if reporting {
                text.push_str("# HELP warden_usage_reports_total Usage reports to the control plane, by outcome (failed: kept for the next; refused: dropped).\n# TYPE warden_usage_reports_total counter\n");
                for (outcome, n) in [
                    ("sent", &reports.sent),
                    ("failed", &reports.failed),
                    ("refused", &reports.refused),
                ] {
                    text.push_str(&format!(
                        "warden_usage_reports_total{{outcome=\"{outcome}\"}} {}\n",
                        n.load(std::sync::atomic::Ordering::Relaxed)
                    ));
                }
            }
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/usage" => json_reply(
            StatusCode::OK,
            serde_json::to_value(shared.usage.snapshot()).unwrap_or_default(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /live /ready /identity /policy /metrics /usage /logging\n".into(),
        ),
    }
}

/// The credential of mutating admin requests: a random token written to a
/// file only the sidecar's user can read.
pub(crate) struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    /// Makes a fresh token and writes it to `path`, mode 0600: into a new
    /// file beside it (never through an existing file or symlink), then
    /// renamed over `path`.
    pub fn create(path: &std::path::Path) -> std::io::Result<Self> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut staged = path.as_os_str().to_owned();
        staged.push(format!(".{}.tmp", std::process::id()));
        let staged = std::path::PathBuf::from(staged);
        let _ = std::fs::remove_file(&staged);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)
            .and_then(|mut file| {
                file.write_all(token.as_bytes())?;
                file.write_all(b"\n")?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&staged, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `authorization` is `Bearer <token>` (scheme in any case).
    fn accepts(&self, authorization: Option<&header::HeaderValue>) -> bool {
        let Some(token) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(crate::control::api::bearer_token)
        else {
            return false;
        };
        // Digests compared, so the comparison's time says nothing of the token.
        <[u8; 32]>::from(Sha256::digest(token.as_bytes())) == self.digest
    }
}

/// Why a mutating request is refused, or `None` when it carries the token.
fn refuse_mutation(req: &Request<Incoming>, shared: &Shared) -> Option<Response<Full<Bytes>>> {
    let Some(token) = &shared.admin_token else {
        return Some(reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "the admin API is read-only: set admin.token_file to allow changes\n".into(),
        ));
    };
    if token.accepts(req.headers().get(header::AUTHORIZATION)) {
        return None;
    }
    let mut response = reply(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "send Authorization: Bearer <the token in admin.token_file>\n".into(),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    Some(response)
}

/// `GET /logging`: the log filter in force. `PUT /logging` with a filter
/// (RUST_LOG syntax, e.g. `info,warden::access=info`) as the body, and the
/// admin token: replace it. Audit lines do not go through this filter.
async fn logging(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let Some(control) = &shared.log_control else {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "this process does not expose its log filter\n".into(),
        );
    };
    let new = match *req.method() {
        Method::GET | Method::HEAD => None,
        Method::PUT => {
            if let Some(refusal) = refuse_mutation(&req, shared) {
                // At most one audit line a second: anything on loopback can
                // send these, and audit lines cannot be filtered away.
                static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let now = unix_seconds(SystemTime::now());
                if LAST.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
                    tracing::warn!(target: "warden::audit", "admin: PUT /logging refused: no valid token");
                }
                return refusal;
            }
            let limited = http_body_util::Limited::new(req.into_body(), 4096);
            match limited.collect().await {
                Ok(body) => Some(String::from_utf8_lossy(&body.to_bytes()).trim().to_owned()),
                Err(_) => {
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "text/plain",
                        "a log filter is at most 4 KiB\n".into(),
                    );
                }
            }
        }
        _ => {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET or PUT\n".into(),
            );
        }
    };
    match control(new.as_deref()) {
        Ok(filter) => reply(StatusCode::OK, "text/plain", format!("{filter}\n")),
        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

fn timestamp(t: SystemTime) -> String {
    Timestamp(i64::try_from(unix_seconds(t)).unwrap_or(i64::MAX)).to_string()
}

fn identity(shared: &Shared) -> Response<Full<Bytes>> {
    let Some(svid) = shared.store.current() else {
        return json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "no SVID loaded yet" }),
        );
    };
    let now = SystemTime::now();
    let lifetime = svid
        .not_after()
        .duration_since(svid.not_before())
        .unwrap_or_default();
    // Files are rotated by whoever writes them; this is when a well-behaved
    // writer (half the lifetime) replaces them.
    let renew_after = svid.not_before() + lifetime / 2;
    json_reply(
        StatusCode::OK,
        json!({
            "spiffe_id": svid.spiffe_id().to_string(),
            "serial": svid.serial(),
            "not_before": timestamp(svid.not_before()),
            "not_after": timestamp(svid.not_after()),
            "seconds_left": svid.time_left(now).as_secs(),
            "next_rotation": timestamp(renew_after),
            "source": if shared.control_watch.is_some() { "control" } else { "files" },
            "control": shared.control_watch.as_ref().map(|w| {
                let w = w.borrow();
                json!({
                    "connected": w.connected,
                    "revocation_seq": w.revocation_seq,
                    "revoked": w.revoked,
                    "policy_version": w.policy_version,
                    "last_error": w.last_error,
                    "endpoints_mark": w.endpoints_mark,
                    "endpoints": w.endpoints,
                    "registration_error": w.registration_error,
                })
            }),
            "trust_domains": shared.store.bundles().trust_domains().map(|t| t.to_string()).collect::<Vec<_>>(),
            "policy_version": shared.engine().and_then(|e| e.version()),
        }),
    )
}
