//! Stage 3 of a request: the Cedar decision over the caller's verified
//! identity and the request as the app will see it, and the request's one
//! audit line (at warn for a deny, with the request and trace ids).
//! An upgraded tunnel keeps its facts, to be decided again when the policy
//! set changes.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::Request;

use super::accept::ConnInfo;
use super::observe::Observed;
use crate::authz::{Decision, HttpRequestFacts, Outcome, PeerAuthorizer, TlsVersion};
use crate::sidecar::http::{Refusal, RefusalKind};
use crate::sidecar::metrics::Metrics;
use crate::sidecar::normalize::Target;
use crate::sidecar::splice::Reauthorize;

/// Decides `req` (already through the `target` stage) and writes the audit
/// line.
pub(super) fn decide<B>(
    authorizer: &PeerAuthorizer,
    req: &Request<B>,
    conn: &ConnInfo,
    target: &Target,
    observed: &Observed,
    metrics: &Metrics,
) -> Decision {
    let headers: Vec<(&str, Cow<'_, str>)> = req
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes())))
        .collect();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    let decision = authorizer.authorize_http(&facts(
        req,
        target,
        &headers,
        conn.source.ip(),
        conn.tls_version,
    ));
    if !decision.errors.is_empty() {
        metrics.authz_error();
    }
    let request_id = &observed.id;
    if decision.decision == Outcome::Deny {
        let trace_id = observed.trace_id();
        tracing::warn!(target: "warden::audit", request_id = %request_id, trace_id = %trace_id, method = %req.method(), path = %target.path, "{}", decision.audit_json());
    } else {
        tracing::debug!(target: "warden::audit", request_id = %request_id, "{}", decision.audit_json());
    }
    decision
}

/// What the policy sees of a request: the normalized path and host, the
/// headers the app will get, and how the caller connected.
fn facts<'a, B>(
    req: &'a Request<B>,
    target: &'a Target,
    headers: &'a [(&'a str, &'a str)],
    source_ip: IpAddr,
    tls_version: TlsVersion,
) -> HttpRequestFacts<'a> {
    HttpRequestFacts {
        method: req.method().as_str(),
        path: &target.path,
        host: target.host.as_ref().map_or("", |h| h.name.as_str()),
        port: target.port,
        source_ip,
        headers,
        tls_version,
        now: SystemTime::now(),
    }
}

/// The refusal of a request the policy denied (not in audit mode).
pub(super) fn denied(decision: &Decision) -> Refusal {
    Refusal::new(
        RefusalKind::Denied,
        format!(
            "forbidden: {} may not {} this service",
            decision.principal, decision.action
        ),
    )
}

/// For an upgraded tunnel: its request's facts, kept to be decided again
/// when the policy set changes (see [`Reauthorize`]).
pub(super) fn reauthorize_upgrade<B>(
    authorizer: &PeerAuthorizer,
    admitted: &Decision,
    req: &Request<B>,
    conn: &ConnInfo,
    target: &Target,
    request_id: &str,
    metrics: Arc<Metrics>,
) -> Reauthorize {
    let method = req.method().as_str().to_owned();
    let target = Target {
        path: target.path.clone(),
        query: None,
        host: target.host.clone(),
        port: target.port,
    };
    let source_ip = conn.source.ip();
    let tls_version = conn.tls_version;
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let request_id = request_id.to_owned();
    Reauthorize::new(
        authorizer,
        admitted,
        move |authorizer| {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            authorizer.authorize_http(&HttpRequestFacts {
                method: &method,
                path: &target.path,
                host: target.host.as_ref().map_or("", |h| h.name.as_str()),
                port: target.port,
                source_ip,
                headers: &headers,
                tls_version,
                now: SystemTime::now(),
            })
        },
        move |decision| {
            metrics.reauthorization_close(true);
            tracing::warn!(target: "warden::audit", request_id = %request_id, event = "reauthorization", "closing an upgraded connection the new policy set denies: {}", decision.audit_json());
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::normalize::{PathRules, normalize_request};

    #[test]
    fn the_policy_sees_the_normalized_request() {
        let req = Request::builder()
            .method("DELETE")
            .uri("/a/./b/../admin?x=1")
            .header("host", "Svc.Example.:8443")
            .body(())
            .expect("request");
        let target = normalize_request(&req, PathRules::default()).expect("target");
        let headers = [("host", "svc.example:8443")];
        let f = facts(
            &req,
            &target,
            &headers,
            "198.18.0.7".parse().expect("ip"),
            TlsVersion::Tls12,
        );
        assert_eq!(f.method, "DELETE");
        assert_eq!(f.path, "/a/admin");
        assert_eq!(f.host, "svc.example");
        assert_eq!(f.port, 8443);
        assert_eq!(f.tls_version, TlsVersion::Tls12);
        assert_eq!(f.headers, &headers);
    }
}
