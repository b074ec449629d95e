//! HTTP plumbing shared by the inbound and outbound sides: the body type,
//! hop-by-hop headers and Warden's own ([`headers`]), the caller's body
//! ([`body`]), upgrades ([`upgrade`]) and Warden's own answers
//! ([`refusal`]).

mod body;
mod headers;
mod refusal;
mod upgrade;

use bytes::Bytes;
use http::Request;
use http::header;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

pub use body::{BodyFault, CallerBody};
pub use headers::{
    ORIG_PROTO, ORIG_PROTO_HTTP1, PEER_ID, REQUEST_ID, XFCC, find_listed, is_reserved,
    remove_found, restore_upgrade, strip_hop_by_hop, strip_reserved, strip_response,
    upgrade_allowed, upgrade_protocol,
};
pub use refusal::{
    GRPC_DEADLINE_EXCEEDED, GRPC_INVALID_ARGUMENT, GRPC_PERMISSION_DENIED, GRPC_UNAVAILABLE,
    GRPC_UNIMPLEMENTED, Refusal, RefusalKind, malformed_body, overloaded,
};
pub use upgrade::relay_upgrade;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: streamed from a peer or the app, or made here.
pub type Body = BoxBody<Bytes, BoxError>;

/// Whether the request is gRPC (its errors are grpc-status trailers, not HTTP codes).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A fresh request id: 16 hex digits.
pub fn request_id() -> String {
    // Not `format!` nor `hex::encode` (which collects chars one by one):
    // into a buffer, then one allocation.
    let mut digits = [0u8; 16];
    // 8 bytes always fit 16 digits.
    let _ = hex::encode_to_slice(rand::random::<u64>().to_be_bytes(), &mut digits);
    String::from_utf8_lossy(&digits).into_owned()
}

pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// The host a request was addressed to: `Host`, or the URI's authority (HTTP/2).
pub fn request_host<B>(req: &Request<B>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default()
}

/// An error and its sources, one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_16_lowercase_hex_digits_and_differ() {
        let (a, b) = (super::request_id(), super::request_id());
        for id in [&a, &b] {
            assert_eq!(id.len(), 16, "{id}");
            assert!(
                id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        assert_ne!(a, b);
    }
}
