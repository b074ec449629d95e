//! To the peer sidecar over HTTP/1.1 (`outbound.peer_http1 = "dedicated"`):
//! each app connection gets an mTLS connection of its own, so a request is
//! relayed with no HTTP/2 framing and no hop through the shared
//! connection's task. The connection goes back to the peer's idle pool when
//! the app's connection ends.

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::sync::Mutex;

use super::Route;
use super::forward::{
    from_peer, kept_closing, peer_authority, peer_failed, peer_refusal, peer_timeout,
};
use crate::sidecar::http::{
    Body, BodyFault, CallerBody, ORIG_PROTO, Refusal, RefusalKind, malformed_body, strip_hop_by_hop,
};
use crate::sidecar::peer::{H1Conn, PeerError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// One app connection's way to the peer: the HTTP/1.1 connection it holds.
pub(crate) struct Lane {
    route: Arc<Route>,
    held: Mutex<Option<H1Conn>>,
}

impl Lane {
    pub fn new(route: Arc<Route>) -> Self {
        Lane {
            route,
            held: Mutex::new(None),
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(conn) = self.held.get_mut().take() {
            self.route.channel.release_h1(conn);
        }
    }
}

/// What became of a request on the lane.
pub(super) enum Relayed {
    Done(Result<Response<Body>, Refusal>),
    /// No HTTP/1.1 connection could be had (the peer has as many as it
    /// takes, or refused a new one): the request, untouched, goes on the
    /// multiplexed connection.
    Multiplex(Request<Incoming>),
}

impl Route {
    pub(super) async fn forward_dedicated(
        &self,
        lane: &Lane,
        mut req: Request<Incoming>,
    ) -> Relayed {
        let mut held = lane.held.lock().await;
        // The connection first: a full peer leaves the request as it came.
        // `h1` bounds a new connection by the peer connect timeout.
        match self.channel.h1(&mut held).await {
            Ok(Some(_)) => {}
            Ok(None) => return Relayed::Multiplex(req),
            // Not for a timeout (the caller would wait twice): any other
            // failure, such as the peer's per-source cap, gets one more
            // chance on the multiplexed connection, which tells the caller
            // what went wrong if it fails too.
            Err(e) if !matches!(e, PeerError::Timeout { .. }) => {
                tracing::debug!(error = %e, "no HTTP/1.1 connection to the peer; multiplexing");
                return Relayed::Multiplex(req);
            }
            Err(e) => return Relayed::Done(Err(peer_refusal(e))),
        }
        let from_version = match for_peer_http1(&mut req, self.upstream) {
            Ok(version) => version,
            Err(refusal) => return Relayed::Done(Err(refusal)),
        };
        let (req, fault) = CallerBody::wrap(req);
        Relayed::Done(self.exchange(&mut held, req, &fault, from_version).await)
    }

    /// Sends `req` on the held connection. A request the connection handed
    /// back unsent (it was closing) goes once more on another; so does a
    /// safe, bodiless one (GET, HEAD, OPTIONS) that a reused connection
    /// lost before any answer, as the peer may have closed it as idle just
    /// as it was sent (HTTP/1.1 cannot say "not taken").
    async fn exchange(
        &self,
        held: &mut Option<H1Conn>,
        req: Request<CallerBody>,
        fault: &BodyFault,
        from_version: Version,
    ) -> Result<Response<Body>, Refusal> {
        let timeout = self.shared.config.limits.app_response_timeout;
        let mut req = Some(req);
        for attempt in 0..2 {
            let conn = match self.channel.h1(held).await {
                Ok(Some(conn)) => conn,
                // Full meanwhile (the connection closed and the pool
                // filled): nothing was sent, and the caller is told.
                Ok(None) => {
                    return Err(Refusal::new(
                        RefusalKind::PeerFailed,
                        format!("peer sidecar {} has no connection to spare", self.upstream),
                    ));
                }
                Err(e) => return Err(peer_refusal(e)),
            };
            let Some(request) = req.take() else { break };
            conn.last_used = Instant::now();
            let reused = conn.requests > 0;
            conn.requests += 1;
            let again = (reused && attempt == 0)
                .then(|| replayable(&request))
                .flatten();
            if conn.sender.ready().await.is_err() {
                // Closed before anything was sent: another connection.
                req = Some(request);
                *held = None;
                continue;
            }
            match tokio::time::timeout(timeout, conn.sender.try_send_request(request)).await {
                Ok(Ok(response)) => return Ok(from_peer(response, from_version)),
                Ok(Err(_)) if fault.happened() => {
                    *held = None;
                    return Err(malformed_body());
                }
                Ok(Err(mut e)) => {
                    *held = None;
                    req = e.take_message().or(again);
                    if req.is_none() || attempt == 1 {
                        return Err(peer_failed(self.upstream, e.error()));
                    }
                }
                Err(_) => {
                    *held = None;
                    return Err(peer_timeout(self.upstream, timeout));
                }
            }
        }
        Err(kept_closing(self.upstream))
    }
}

/// A copy of `req` to send again, if it is safe to (an idempotent method
/// that changes nothing, and no body).
fn replayable(req: &Request<CallerBody>) -> Option<Request<CallerBody>> {
    let safe = matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    if !safe || !http_body::Body::is_end_stream(req.body()) {
        return None;
    }
    let mut again = Request::new(CallerBody::empty());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    Some(again)
}

/// The app's request as the peer gets it over HTTP/1.1: origin-form, the
/// app's host in `Host` (the upstream's address when it named none), no
/// hop-by-hop headers. Returns the version the app spoke.
fn for_peer_http1<B>(req: &mut Request<B>, upstream: SocketAddr) -> Result<Version, Refusal> {
    let from_version = req.version();
    let authority = peer_authority(req, upstream);
    // Checked as the multiplexed path's URI would check it.
    if authority.parse::<http::uri::Authority>().is_err() {
        return Err(bad_host(&authority));
    }
    let host = HeaderValue::from_str(&authority).map_err(|_| bad_host(&authority))?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = path.parse::<Uri>().map_err(|_| bad_host(&authority))?;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    headers.insert(header::HOST, host);
    headers.remove(ORIG_PROTO);
    *req.version_mut() = Version::HTTP_11;
    Ok(from_version)
}

fn bad_host(authority: &str) -> Refusal {
    Refusal::new(
        RefusalKind::BadRequest,
        format!("bad Host header {authority:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodiless(method: http::Method) -> Request<CallerBody> {
        let mut req = Request::new(CallerBody::empty());
        *req.method_mut() = method;
        *req.uri_mut() = "/orders?id=7".parse().expect("uri");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("orders.svc"));
        req
    }

    #[test]
    fn only_safe_bodiless_requests_are_sent_again() {
        for method in [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS] {
            let again = replayable(&bodiless(method.clone())).expect("safe");
            assert_eq!(again.method(), method);
            assert_eq!(again.uri(), "/orders?id=7");
            assert_eq!(again.headers()[header::HOST], "orders.svc");
            assert!(http_body::Body::is_end_stream(again.body()));
        }
        for method in [http::Method::POST, http::Method::PUT, http::Method::DELETE] {
            assert!(replayable(&bodiless(method)).is_none());
        }
    }

    #[test]
    fn the_peer_gets_origin_form_and_the_apps_host() {
        let upstream: SocketAddr = "127.0.0.1:7443".parse().expect("addr");
        let mut req = Request::builder()
            .version(Version::HTTP_10)
            .uri("http://orders.svc:8080/x?y=1")
            .header(header::CONNECTION, "keep-alive")
            .header(ORIG_PROTO, "forged")
            .body(())
            .expect("request");
        assert_eq!(
            for_peer_http1(&mut req, upstream).expect("ok"),
            Version::HTTP_10
        );
        assert_eq!(req.uri(), "/x?y=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()[header::HOST], "orders.svc:8080");
        assert!(req.headers().get(header::CONNECTION).is_none());
        assert!(req.headers().get(ORIG_PROTO).is_none());
        let mut bad = Request::builder()
            .uri("/")
            .header(header::HOST, "bad host")
            .body(())
            .expect("request");
        assert_eq!(
            for_peer_http1(&mut bad, upstream)
                .expect_err("refused")
                .kind,
            RefusalKind::BadRequest
        );
    }
}
