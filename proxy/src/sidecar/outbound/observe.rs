//! What every outbound request leaves behind: its metrics, its access-log
//! line and its trace span (the client side of the peer's).

use std::time::Instant;

use http::{Request, Response};

use super::Route;
use crate::sidecar::http::{Body, REQUEST_ID, Refusal, RefusalKind, is_grpc, request_id};
use crate::sidecar::metrics::Direction;
use crate::sidecar::telemetry::{self, ActiveSpan, Attributes, Kind};

pub(super) struct Observed {
    started: Instant,
    id: String,
    grpc: bool,
    /// Method and path for the access log, when it is on.
    access: Option<(String, String)>,
    span: Option<ActiveSpan>,
}

impl Observed {
    /// Starts the request's span, whose context the peer continues.
    pub fn start<B>(route: &Route, req: &mut Request<B>) -> Self {
        let shared = &*route.shared;
        let started = Instant::now();
        let access = shared
            .config
            .telemetry
            .access_log
            .then(|| (req.method().to_string(), req.uri().path().to_owned()));
        let span = shared.traces.as_ref().map(|traces| {
            let method = req.method().clone();
            // Owned (cheap: shared bytes), as `req` lends its headers to
            // `start` meanwhile; the attributes borrow them only when sampled.
            let uri = req.uri().clone();
            let attributes = |list: &mut Attributes<'_>| {
                telemetry::put_method(list, &method);
                list.str("url.path", uri.path());
                list.str("server.address", &route.server_address);
                list.int("server.port", i64::from(route.upstream.port()));
                list.str("warden.peer.id", route.channel.expected().as_str());
                if let Some(svid) = shared.store.current() {
                    list.str("warden.local.id", svid.spiffe_id().as_str());
                }
            };
            traces.start(Kind::Client, &method, req.headers_mut(), attributes)
        });
        Observed {
            started,
            id: request_id(),
            grpc: is_grpc(req),
            access,
            span,
        }
    }

    /// Records the outcome and produces the response (a refusal's, as HTTP
    /// or gRPC).
    pub fn finish(self, route: &Route, outcome: Result<Response<Body>, Refusal>) -> Response<Body> {
        let metrics = &route.shared.metrics;
        let (response, status) = match outcome {
            Ok(response) => {
                let status = response.status().as_u16();
                (response, status)
            }
            Err(refusal) => {
                // Shedding is counted, not logged: under overload a line
                // per request would add to it.
                if refusal.kind != RefusalKind::Overloaded {
                    tracing::warn!(request_id = %self.id, upstream = %route.upstream, reason = %refusal.reason, "outbound request failed");
                }
                // Counted by what it means, also when gRPC carries it as 200.
                let status = refusal.status().as_u16();
                (refusal.response(&self.id, self.grpc), status)
            }
        };
        metrics.request(Direction::Outbound, status, "none");
        metrics.duration(Direction::Outbound, "none", status, self.started.elapsed());
        let peer = route.channel.expected().as_str();
        metrics.peer_request(Direction::Outbound, peer);
        if let Some((method, path)) = &self.access {
            telemetry::access_log(&telemetry::Access {
                direction: "outbound",
                // The peer's id for the request, when it answered.
                request_id: response
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                trace_id: self.span.as_ref().map(ActiveSpan::trace_id),
                method,
                path,
                status,
                duration: self.started.elapsed(),
                peer,
                decision: "none",
            });
        }
        if let Some(span) = self.span {
            span.finish(response.status().as_u16(), false, |_| {});
        }
        response
    }
}
