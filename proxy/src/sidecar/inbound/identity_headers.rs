//! Stage 4 of a request: telling the app who called. Only the handshake's
//! verified identity reaches the app (whatever the caller sent under these
//! names was dropped by the `target` stage); the header values are made
//! once per connection.

use http::{HeaderMap, HeaderValue};

use crate::identity::PeerIdentity;
use crate::sidecar::http::{PEER_ID, REQUEST_ID, XFCC};

/// `x-warden-peer-id`: the caller's SPIFFE ID.
pub(super) fn peer_id(peer: &PeerIdentity) -> Option<HeaderValue> {
    HeaderValue::from_str(peer.spiffe_id.as_str()).ok()
}

/// `x-forwarded-client-cert` as Envoy spells it: this sidecar's identity
/// (`By`), the hash of the caller's certificate and its SPIFFE ID.
pub(super) fn xfcc(local: &str, peer: &PeerIdentity) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "By={local};Hash={};URI={}",
        peer.leaf_hash, peer.spiffe_id
    ))
    .ok()
}

/// Sets the identity headers of a connection, and the request's id.
pub(super) fn insert(
    headers: &mut HeaderMap,
    xfcc: Option<&HeaderValue>,
    peer_id: Option<&HeaderValue>,
    request_id: &str,
) {
    if let Some(v) = xfcc {
        headers.insert(XFCC, v.clone());
    }
    if let Some(v) = peer_id {
        headers.insert(PEER_ID, v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, v);
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::identity::SpiffeId;

    fn peer() -> PeerIdentity {
        PeerIdentity {
            spiffe_id: SpiffeId::parse("spiffe://example.org/ns/web/sa/client").expect("id"),
            serial: "0a1b".into(),
            leaf_hash: "ab".repeat(32),
            not_after: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn xfcc_names_both_ends_and_the_certificate() {
        let v = xfcc("spiffe://example.org/ns/api/sa/server", &peer()).expect("value");
        assert_eq!(
            v.to_str().expect("ascii"),
            format!(
                "By=spiffe://example.org/ns/api/sa/server;Hash={};URI=spiffe://example.org/ns/web/sa/client",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn insert_replaces_what_the_caller_sent() {
        let mut headers = HeaderMap::new();
        headers.insert(PEER_ID, HeaderValue::from_static("spiffe://evil/admin"));
        headers.append(XFCC, HeaderValue::from_static("URI=spiffe://evil/admin"));
        let p = peer();
        insert(
            &mut headers,
            xfcc("spiffe://example.org/x", &p).as_ref(),
            peer_id(&p).as_ref(),
            "req-1",
        );
        assert_eq!(headers.get_all(PEER_ID).iter().count(), 1);
        assert_eq!(headers[PEER_ID], "spiffe://example.org/ns/web/sa/client");
        assert_eq!(headers.get_all(XFCC).iter().count(), 1);
        assert!(
            headers[XFCC]
                .to_str()
                .expect("ascii")
                .ends_with("URI=spiffe://example.org/ns/web/sa/client")
        );
        assert_eq!(headers[REQUEST_ID], "req-1");
    }

    #[test]
    fn unauthenticated_callers_get_only_a_request_id() {
        let mut headers = HeaderMap::new();
        insert(&mut headers, None, None, "req-2");
        assert!(headers.get(PEER_ID).is_none() && headers.get(XFCC).is_none());
        assert_eq!(headers[REQUEST_ID], "req-2");
    }
}
