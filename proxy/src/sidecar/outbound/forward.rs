//! To the peer sidecar: the app's request rewritten as HTTP/2 on the
//! shared mTLS connection (its HTTP/1.1 origin noted, so the peer's answer
//! goes back in the protocol the app spoke), with one retry on a new
//! connection when the shared one was closing.

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::Route;
use crate::sidecar::http::{
    Body, CallerBody, ORIG_PROTO, ORIG_PROTO_HTTP1, Refusal, RefusalKind, boxed, error_chain,
    malformed_body, request_host, strip_hop_by_hop, strip_response,
};
use crate::sidecar::peer::PeerError;

impl Route {
    pub(super) async fn forward(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Refusal> {
        let from_version = for_peer(&mut req, self.upstream)?;
        let timeout = self.shared.config.limits.app_response_timeout;
        let (req, fault) = CallerBody::wrap(req);
        let mut req = Some(req);
        // A request the shared connection refused before sending (it was
        // closing: GOAWAY, a peer restart) is retried once on a new one.
        let connect_timeout = self.shared.config.limits.peer_connect_timeout;
        for attempt in 0..2 {
            // Bounded as a whole: waiting behind another request's connect
            // attempt counts too.
            let (mut sender, connection) =
                tokio::time::timeout(connect_timeout, self.channel.sender())
                    .await
                    .map_err(|_| {
                        peer_refusal(PeerError::Timeout {
                            addr: self.upstream,
                            timeout: connect_timeout,
                        })
                    })?
                    .map_err(peer_refusal)?;
            let Some(request) = req.take() else { break };
            match tokio::time::timeout(timeout, sender.try_send_request(request)).await {
                Ok(Ok(response)) => return Ok(from_peer(response, from_version)),
                Ok(Err(_)) if fault.happened() => return Err(malformed_body()),
                Ok(Err(mut e)) => {
                    req = e.take_message();
                    if req.is_none() || attempt == 1 {
                        return Err(peer_failed(self.upstream, e.error()));
                    }
                    self.channel.reset(connection).await;
                }
                Err(_) => return Err(peer_timeout(self.upstream, timeout)),
            }
        }
        Err(kept_closing(self.upstream))
    }
}

/// The app's request as the peer gets it: HTTP/2 with the app's host as
/// `:authority` (the upstream's address when it named none), no hop-by-hop
/// headers, and the app's HTTP/1.1 noted. Returns the version the app spoke.
fn for_peer<B>(req: &mut Request<B>, upstream: SocketAddr) -> Result<Version, Refusal> {
    let from_version = req.version();
    let authority = peer_authority(req, upstream);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = format!("http://{authority}{path}")
        .parse::<Uri>()
        .map_err(|_| {
            Refusal::new(
                RefusalKind::BadRequest,
                format!("bad Host header {authority:?}"),
            )
        })?;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(ORIG_PROTO);
    if from_version != Version::HTTP_2 {
        headers.insert(ORIG_PROTO, HeaderValue::from_static(ORIG_PROTO_HTTP1));
    }
    *req.version_mut() = Version::HTTP_2;
    Ok(from_version)
}

/// The host the app named (its `Host`, or its request target's authority),
/// or the upstream's address when it named none.
pub(super) fn peer_authority<B>(req: &Request<B>, upstream: SocketAddr) -> String {
    let host = request_host(req);
    if host.is_empty() {
        upstream.to_string()
    } else {
        host
    }
}

/// The peer's response as the app gets it: in the protocol the app spoke,
/// without hop-by-hop or Warden's own headers.
pub(super) fn from_peer(mut response: Response<Incoming>, version: Version) -> Response<Body> {
    strip_response(&mut response);
    response.headers_mut().remove(ORIG_PROTO);
    *response.version_mut() = version;
    response.map(boxed)
}

/// 502: the peer sidecar broke the exchange.
pub(super) fn peer_failed(upstream: SocketAddr, e: &hyper::Error) -> Refusal {
    Refusal::new(
        RefusalKind::PeerFailed,
        format!(
            "peer sidecar {upstream} failed the request: {}",
            error_chain(e)
        ),
    )
}

/// 502: every connection tried closed before taking the request.
pub(super) fn kept_closing(upstream: SocketAddr) -> Refusal {
    Refusal::new(
        RefusalKind::PeerFailed,
        format!("peer sidecar {upstream} kept closing the connection"),
    )
}

/// 504: the peer sidecar did not start its response in time.
pub(super) fn peer_timeout(upstream: SocketAddr, timeout: std::time::Duration) -> Refusal {
    Refusal::new(
        RefusalKind::PeerTimeout,
        format!("peer sidecar {upstream} did not respond within {timeout:?}"),
    )
}

/// The refusal of a peer sidecar that could not be reached or proven.
pub(super) fn peer_refusal(e: PeerError) -> Refusal {
    let kind = match e {
        PeerError::Unreachable { .. } => RefusalKind::PeerUnreachable,
        PeerError::Timeout { .. } => RefusalKind::PeerTimeout,
        PeerError::Handshake { .. } | PeerError::Protocol { .. } => RefusalKind::PeerFailed,
    };
    Refusal::new(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> SocketAddr {
        "127.0.0.1:7443".parse().expect("addr")
    }

    #[test]
    fn http1_becomes_h2_with_its_origin_noted() {
        let mut req = Request::builder()
            .uri("/orders?id=7")
            .header(header::HOST, "orders.svc:8080")
            .header(header::CONNECTION, "keep-alive")
            .header(ORIG_PROTO, "forged")
            .body(())
            .expect("request");
        let from = for_peer(&mut req, upstream()).expect("rewritten");
        assert_eq!(from, Version::HTTP_11);
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.uri(), "http://orders.svc:8080/orders?id=7");
        assert!(req.headers().get(header::HOST).is_none());
        assert!(req.headers().get(header::CONNECTION).is_none());
        assert_eq!(req.headers()[ORIG_PROTO], ORIG_PROTO_HTTP1);
    }

    #[test]
    fn no_host_names_the_upstream_and_h2_stays_unmarked() {
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("/")
            .body(())
            .expect("request");
        assert_eq!(for_peer(&mut req, upstream()).expect("ok"), Version::HTTP_2);
        assert_eq!(req.uri(), "http://127.0.0.1:7443/");
        assert!(req.headers().get(ORIG_PROTO).is_none());
    }

    #[test]
    fn a_bad_host_is_refused() {
        let mut req = Request::builder()
            .uri("/")
            .header(header::HOST, "bad host")
            .body(())
            .expect("request");
        let refusal = for_peer(&mut req, upstream()).expect_err("refused");
        assert_eq!(refusal.kind, RefusalKind::BadRequest);
    }
}
