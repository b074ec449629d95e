//! What every inbound request leaves behind, whatever stage answered it:
//! its metrics, its access-log line and its trace span.

use std::time::Instant;

use http::Request;
use http::Response;

use super::accept::ConnInfo;
use crate::authz::{Decision, Peer};
use crate::sidecar::http::{Body, Refusal, RefusalKind, is_grpc, request_id};
use crate::sidecar::metrics::Direction;
use crate::sidecar::shared::Shared;
use crate::sidecar::telemetry::{self, ActiveSpan, Attributes, Kind};

/// A request being observed: started with its arrival.
pub(super) struct Observed {
    started: Instant,
    pub id: String,
    pub grpc: bool,
    /// Method and path for the access log, when it is on.
    access: Option<(String, String)>,
    span: Option<ActiveSpan>,
}

impl Observed {
    /// Starts the request's span (continuing the caller's trace).
    pub fn start<B>(shared: &Shared, req: &mut Request<B>, conn: &ConnInfo) -> Self {
        let started = Instant::now();
        let id = request_id();
        let access = shared
            .config
            .telemetry
            .access_log
            .then(|| (req.method().to_string(), req.uri().path().to_owned()));
        let grpc = is_grpc(req);
        let span = shared.traces.as_ref().map(|traces| {
            let method = req.method().clone();
            // Owned (cheap: shared bytes), as `req` lends its headers to
            // `start` meanwhile; the attributes borrow them only when sampled.
            let uri = req.uri().clone();
            let attributes = |list: &mut Attributes<'_>| {
                telemetry::put_method(list, &method);
                list.str("url.path", uri.path());
                list.str("client.address", &conn.client_address);
                list.str("tls.protocol.version", conn.tls_version.as_str());
                list.str("warden.request.id", &id);
                if let Some(svid) = shared.store.current() {
                    list.str("warden.local.id", svid.spiffe_id().as_str());
                }
                if let Peer::Workload(peer) = &conn.peer {
                    list.str("warden.peer.id", peer.as_str());
                }
            };
            traces.start(Kind::Server, &method, req.headers_mut(), attributes)
        });
        Observed {
            started,
            id,
            grpc,
            access,
            span,
        }
    }

    /// The trace id for the audit line; empty when tracing is off.
    pub fn trace_id(&self) -> String {
        self.span
            .as_ref()
            .map(ActiveSpan::trace_id)
            .unwrap_or_default()
    }

    /// Records the outcome and produces the response (a refusal's, as HTTP
    /// or gRPC).
    pub fn finish(
        self,
        shared: &Shared,
        conn: &ConnInfo,
        outcome: Result<Response<Body>, Refusal>,
        decision: Option<&Decision>,
    ) -> Response<Body> {
        let label = label(decision, outcome.as_ref().err().map(|r| r.kind));
        let (response, status) = match outcome {
            Ok(response) => {
                let status = response.status().as_u16();
                (response, status)
            }
            // Counted by what it means, also when gRPC carries it as 200.
            Err(refusal) => (
                refusal.response(&self.id, self.grpc),
                refusal.status().as_u16(),
            ),
        };
        let metrics = &shared.metrics;
        metrics.request(Direction::Inbound, status, label);
        metrics.duration(Direction::Inbound, label, status, self.started.elapsed());
        let peer = match &conn.peer {
            Peer::Workload(peer) => peer.as_str(),
            Peer::Unauthenticated(_) => "unauthenticated",
        };
        metrics.peer_request(Direction::Inbound, peer);
        if let Some((method, path)) = &self.access {
            telemetry::access_log(&telemetry::Access {
                direction: "inbound",
                request_id: &self.id,
                trace_id: self.span.as_ref().map(ActiveSpan::trace_id),
                method,
                path,
                status,
                duration: self.started.elapsed(),
                peer,
                decision: label,
            });
        }
        if let Some(span) = self.span {
            span.finish(status, true, |list| {
                list.str("warden.authz.decision", label);
                if let Some(d) = decision {
                    list.strs("warden.authz.policies", &d.policies);
                    list.str("warden.authz.policy_version", &d.policy_version);
                }
            });
        }
        response
    }
}

/// The decision label of metrics, spans and access logs: the policy's
/// outcome once it decided; before that `deny` for a revoked caller and
/// `none` for a request refused before any decision.
fn label(decision: Option<&Decision>, refused: Option<RefusalKind>) -> &'static str {
    match (decision, refused) {
        (Some(d), _) => d.decision.as_str(),
        (None, Some(RefusalKind::Revoked)) => "deny",
        (None, _) => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_decision_or_a_revocation_is_labelled() {
        assert_eq!(label(None, Some(RefusalKind::Revoked)), "deny");
        assert_eq!(label(None, Some(RefusalKind::Overloaded)), "none");
        assert_eq!(label(None, Some(RefusalKind::NotReady)), "none");
        assert_eq!(label(None, Some(RefusalKind::BadRequest)), "none");
        assert_eq!(label(None, None), "none");
    }
}
