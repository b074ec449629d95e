//! Usage: sidecars' reports (`POST /v1/usage`, mTLS, each for itself) and
//! the admin views built on them: stored usage, the access report, the
//! policy proposal, a candidate's replay, new edges and the graph.

use super::*;
use crate::access::{self, Evaluator};
use warden_proxy::control::api::{ReportMark, UsageAccepted, UsageReport};

/// The window of the admin views when none is given: 7 days.
pub const DEFAULT_WINDOW_SECS: i64 = 7 * 86_400;
/// The longest window asked for.
const MAX_WINDOW_SECS: i64 = 400 * 86_400;

pub(super) async fn report_usage(
    state: &Arc<State>,
    caller: Option<&Caller>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let caller = workload::mtls_caller(
        state,
        caller,
        "usage",
        "a usage report needs the reporting sidecar's SVID as the TLS client certificate",
    )?;
    let id = caller.id.to_string();
    let mark = report_mark(&req).map_err(|f| refused(state, "usage", &id, Some(&id), f))?;
    let report: UsageReport = read_json(req, api::MAX_USAGE_BODY)
        .await
        .and_then(|r: UsageReport| {
            check_report(&r, &id, state.now())?;
            Ok(r)
        })
        .map_err(|f| refused(state, "usage", &id, Some(&id), f))?;
    let entries = report.entries.len();
    let (serial, now) = (caller.serial.clone(), state.now());
    let counted = state.clone();
    // Counted where it is stored: should the sidecar give up waiting (and
    // this handler be dropped), the transaction still commits.
    let recorded = blocking(move || {
        let recorded = counted
            .db
            .record_usage(&report, mark.as_ref(), &serial, now)?;
        counted.count(|c| {
            if recorded.duplicate {
                c.usage_duplicates += 1;
            } else {
                c.usage_reports += 1;
                c.new_edges += recorded.new.len() as u64;
                c.usage_dropped += recorded.dropped;
            }
        });
        Ok(recorded)
    })
    .await
    .map_err(|e| refused(state, "usage", &id, Some(&id), e.into()))?;
    if recorded.duplicate {
        tracing::debug!(callee = %id, "usage report stored before; not added again");
    } else if recorded.dropped > 0 {
        tracing::warn!(callee = %id, requests = recorded.dropped, "usage past the callee's rows for the day dropped");
    }
    Ok(json_response(
        StatusCode::OK,
        &UsageAccepted {
            duplicate: recorded.duplicate,
            entries,
            new_edges: recorded.new.len(),
            dropped: recorded.dropped,
        },
    ))
}

/// The report's number, if its sidecar sent one (sidecars before it did
/// not); a malformed one is refused.
fn report_mark(req: &Request<Incoming>) -> Result<Option<ReportMark>, Fail> {
    let mut values = req.headers().get_all(api::USAGE_REPORT_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad(format!("more than one {}", api::USAGE_REPORT_HEADER)));
    }
    let text = value
        .to_str()
        .map_err(|_| bad(format!("{} is not ASCII", api::USAGE_REPORT_HEADER)))?;
    ReportMark::parse(text).map(Some).map_err(bad)
}

fn bad(message: impl Into<String>) -> Fail {
    Fail::new(Reason::BadUsage, message)
}

fn check_caller(what: &str, caller: &str) -> Result<(), Fail> {
    if access::peer_of(caller).is_none() {
        return Err(bad(format!(
            "{what}: caller must be a SPIFFE ID or unauthenticated:plaintext|tls-without-certificate"
        )));
    }
    Ok(())
}

/// A report is only for the reporter's own decisions: the callee must be
/// the SPIFFE ID of its client certificate. Then every field is bounded.
fn check_report(report: &UsageReport, id: &str, now: i64) -> Result<(), Fail> {
    if report.callee != id {
        return Err(Fail::new(
            Reason::UsageNotOwn,
            format!(
                "a sidecar reports only its own decisions: the report is for {:?}, the client certificate is {id}",
                report.callee.escape_debug().to_string()
            ),
        ));
    }
    if report.entries.len() > api::MAX_USAGE_ENTRIES
        || report.sources.len() > api::MAX_USAGE_SOURCES
    {
        return Err(Fail::new(
            Reason::BodyTooLarge,
            format!(
                "a usage report holds at most {} entries and {} sources",
                api::MAX_USAGE_ENTRIES,
                api::MAX_USAGE_SOURCES
            ),
        ));
    }
    if report.service.is_empty() {
        return Err(bad("service must not be empty"));
    }
    input::check_text("service", Reason::BadUsage, &report.service, 253)?;
    for (i, e) in report.entries.iter().enumerate() {
        let what = format!("entries[{i}]");
        e.check(now).map_err(|m| bad(format!("{what}: {m}")))?;
        check_caller(&what, &e.caller)?;
    }
    for (i, s) in report.sources.iter().enumerate() {
        let what = format!("sources[{i}]");
        s.check(now).map_err(|m| bad(format!("{what}: {m}")))?;
        check_caller(&what, &s.caller)?;
    }
    Ok(())
}

/// The window's start: `since_secs` (default 7 days) back from now.
fn window(q: &BTreeMap<String, String>, name: &str, default: i64, now: i64) -> Result<i64, Fail> {
    let secs = input::number::<i64>(q, name)?.unwrap_or(default);
    if !(1..=MAX_WINDOW_SECS).contains(&secs) {
        return Err(Fail::new(
            Reason::BadQuery,
            format!("{name} must be between 1 and {MAX_WINDOW_SECS}"),
        ));
    }
    Ok(now - secs)
}

/// The current policy set's files; 404 when none was pushed (the report
/// asks the engine with the set the control plane distributes).
async fn current_files(db: Arc<Store>) -> Result<Option<BTreeMap<String, String>>, Fail> {
    Ok(blocking(move || db.current_policy())
        .await?
        .map(|bundle| bundle.files))
}

fn no_policy() -> Fail {
    Fail::new(
        Reason::UnknownVersion,
        "no policy version is stored: the report asks the engine with the set sidecars get \
         from the control plane (`warden policy push DIR`)",
    )
}

fn internal(e: impl std::fmt::Display) -> Fail {
    Fail::new(Reason::Internal, e.to_string())
}

/// Runs `f` off the async threads (the policy engine is CPU work).
async fn compute<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Fail> + Send + 'static,
) -> Result<T, Fail> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

/// The identities the inventory holds as active.
async fn live_identities(state: &State) -> Result<Vec<String>, Fail> {
    let db = state.db.clone();
    let now = state.now();
    Ok(blocking(move || db.identities(now))
        .await?
        .into_iter()
        .filter(|i| i.status == IdentityStatus::Active)
        .map(|i| i.spiffe_id)
        .collect())
}

pub(super) async fn admin_access(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let db = state.db.clone();
    let now = state.now();
    let q = query_params(&req);
    match (&method, path.as_str()) {
        (&Method::GET, api::ADMIN_USAGE) => {
            input::only_known(&q, &["since_secs", "identity"])?;
            let since = window(&q, "since_secs", DEFAULT_WINDOW_SECS, now)?;
            let identity = q.get("identity").cloned();
            let rows = blocking(move || db.usage_since(since, identity.as_deref())).await?;
            Ok(json_response(
                StatusCode::OK,
                &api::UsageRows { since, rows },
            ))
        }
        (&Method::GET, api::ADMIN_ACCESS_REPORT) | (&Method::GET, api::ADMIN_ACCESS_GRAPH) => {
            input::only_known(&q, &["since_secs", "identity"])?;
            let since = window(&q, "since_secs", DEFAULT_WINDOW_SECS, now)?;
            let identity = q.get("identity").cloned();
            let files = current_files(db.clone()).await?.ok_or_else(no_policy)?;
            let identities = live_identities(state).await?;
            let rows = blocking(move || db.usage_since(since, None)).await?;
            let graph = path == api::ADMIN_ACCESS_GRAPH;
            let out = compute(move || {
                let mut evaluator = Evaluator::from_files(&files).map_err(internal)?;
                let report = access::report::report(
                    &mut evaluator,
                    &rows,
                    &identities,
                    identity.as_deref(),
                    since,
                )
                .map_err(|e| Fail::new(Reason::BadQuery, e))?;
                Ok(if graph {
                    Err(access::graph::render(&rows, &report, "Warden access graph"))
                } else {
                    Ok(report)
                })
            })
            .await?;
            Ok(match out {
                Ok(report) => json_response(StatusCode::OK, &report),
                Err(page) => html_response(page),
            })
        }
        (&Method::GET, api::ADMIN_ACCESS_PROPOSE) => {
            input::only_known(&q, &["since_secs"])?;
            let since = window(&q, "since_secs", DEFAULT_WINDOW_SECS, now)?;
            let files = current_files(db.clone()).await?.unwrap_or_default();
            let rows = blocking(move || db.usage_since(since, None)).await?;
            let proposal = compute(move || {
                access::propose::propose(&rows, &files, since)
                    .map_err(|e| Fail::new(Reason::InvalidPolicy, e))
            })
            .await?;
            Ok(json_response(StatusCode::OK, &proposal))
        }
        (&Method::POST, api::ADMIN_ACCESS_REPLAY) => {
            let body: api::ReplayRequest = read_json(req, MAX_POLICY_BODY).await?;
            let secs = i64::try_from(body.since_secs).unwrap_or(i64::MAX);
            if !(1..=MAX_WINDOW_SECS).contains(&secs) {
                return Err(Fail::new(
                    Reason::BadBody,
                    format!("since_secs must be between 1 and {MAX_WINDOW_SECS}"),
                ));
            }
            let since = now - secs;
            let rows = blocking(move || db.usage_since(since, None)).await?;
            let report = compute(move || {
                let mut candidate = Evaluator::from_files(&body.files)
                    .map_err(|e| Fail::new(Reason::InvalidPolicy, e))?;
                Ok(access::replay::replay(&mut candidate, &rows, since))
            })
            .await?;
            Ok(json_response(StatusCode::OK, &report))
        }
        (&Method::GET, api::ADMIN_ACCESS_EDGES) => {
            input::only_known(&q, &["new_since_secs"])?;
            let since = window(&q, "new_since_secs", 3600, now)?;
            let edges = blocking(move || db.edges_since(since)).await?;
            Ok(json_response(StatusCode::OK, &api::EdgeList { edges }))
        }
        _ => Err(Fail::new(
            Reason::NotFound,
            format!("no admin endpoint {method} {path}"),
        )),
    }
}

fn html_response(page: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(page)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page is self-contained: nothing else may load or run in it.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}
