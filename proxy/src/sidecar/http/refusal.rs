//! Warden's own answers: why it answered a request itself
//! ([`RefusalKind`]), and the one place that turns that into an HTTP
//! response or a gRPC status.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{Body, REQUEST_ID};

/// The refusal of load shedding, on either side.
pub fn overloaded() -> Refusal {
    Refusal::new(
        RefusalKind::Overloaded,
        "overloaded: too many requests in flight, retry later",
    )
}

/// The refusal for a request whose own body could not be read.
pub fn malformed_body() -> Refusal {
    Refusal::new(
        RefusalKind::MalformedBody,
        "the request body is malformed or was cut off (bad chunked encoding, reset stream)",
    )
}

fn text_body(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// Why Warden answered a request itself, one variant per cause. The HTTP
/// status and the gRPC code of each are decided here and nowhere else (the
/// README's table of refusals is this match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Too many requests in flight (load shedding).
    Overloaded,
    /// No identity or no policy yet.
    NotReady,
    /// The caller's certificate expired during the connection.
    CertificateLapsed,
    /// The caller's certificate or SPIFFE ID is revoked.
    Revoked,
    /// The policy denied the request.
    Denied,
    /// The explicit proxy has no route to the target.
    NoRoute,
    /// An upgrade other than WebSocket.
    UpgradeRefused,
    /// A request target, host or header that does not normalize.
    BadRequest,
    /// The request's own body is malformed or cut off.
    MalformedBody,
    /// `CONNECT` to the inbound, or a method the proxy does not serve.
    MethodNotAllowed,
    /// An HTTP service asked for with CONNECT, or an opaque one without.
    WrongProtocol,
    /// The app answered with a broken exchange.
    AppFailed,
    /// The app did not accept or answer in time.
    AppTimeout,
    /// The app refused the connection.
    AppUnavailable,
    /// The peer sidecar refused the connection.
    PeerUnreachable,
    /// The peer sidecar did not connect or answer in time.
    PeerTimeout,
    /// The mTLS handshake with the peer failed (most often: not the
    /// identity expected), or it broke the exchange.
    PeerFailed,
}

pub const GRPC_INVALID_ARGUMENT: u8 = 3;
pub const GRPC_UNIMPLEMENTED: u8 = 12;
pub const GRPC_PERMISSION_DENIED: u8 = 7;
pub const GRPC_UNAVAILABLE: u8 = 14;
pub const GRPC_DEADLINE_EXCEEDED: u8 = 4;

impl RefusalKind {
    pub const ALL: [RefusalKind; 17] = [
        RefusalKind::Overloaded,
        RefusalKind::NotReady,
        RefusalKind::CertificateLapsed,
        RefusalKind::Revoked,
        RefusalKind::Denied,
        RefusalKind::NoRoute,
        RefusalKind::UpgradeRefused,
        RefusalKind::BadRequest,
        RefusalKind::MalformedBody,
        RefusalKind::MethodNotAllowed,
        RefusalKind::WrongProtocol,
        RefusalKind::AppFailed,
        RefusalKind::AppTimeout,
        RefusalKind::AppUnavailable,
        RefusalKind::PeerUnreachable,
        RefusalKind::PeerTimeout,
        RefusalKind::PeerFailed,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            RefusalKind::Overloaded
            | RefusalKind::NotReady
            | RefusalKind::CertificateLapsed
            | RefusalKind::AppUnavailable
            | RefusalKind::PeerUnreachable => StatusCode::SERVICE_UNAVAILABLE,
            RefusalKind::Revoked | RefusalKind::Denied | RefusalKind::NoRoute => {
                StatusCode::FORBIDDEN
            }
            RefusalKind::UpgradeRefused
            | RefusalKind::BadRequest
            | RefusalKind::MalformedBody
            | RefusalKind::WrongProtocol => StatusCode::BAD_REQUEST,
            RefusalKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RefusalKind::AppFailed | RefusalKind::PeerFailed => StatusCode::BAD_GATEWAY,
            RefusalKind::AppTimeout | RefusalKind::PeerTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gRPC status a gRPC caller gets. UNAVAILABLE only where retrying
    /// can help (clients retry it); a malformed request is INVALID_ARGUMENT,
    /// a denial PERMISSION_DENIED, a timeout DEADLINE_EXCEEDED.
    pub fn grpc_code(self) -> u8 {
        match self {
            RefusalKind::Overloaded
            | RefusalKind::NotReady
            | RefusalKind::CertificateLapsed
            | RefusalKind::AppFailed
            | RefusalKind::AppUnavailable
            | RefusalKind::PeerUnreachable
            | RefusalKind::PeerFailed => GRPC_UNAVAILABLE,
            RefusalKind::Revoked | RefusalKind::Denied | RefusalKind::NoRoute => {
                GRPC_PERMISSION_DENIED
            }
            RefusalKind::UpgradeRefused
            | RefusalKind::BadRequest
            | RefusalKind::MalformedBody
            | RefusalKind::WrongProtocol => GRPC_INVALID_ARGUMENT,
            RefusalKind::MethodNotAllowed => GRPC_UNIMPLEMENTED,
            RefusalKind::AppTimeout | RefusalKind::PeerTimeout => GRPC_DEADLINE_EXCEEDED,
        }
    }
}

/// A refusal: its kind and what to tell the caller.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub reason: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Self {
        Refusal {
            kind,
            reason: reason.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The response: a short text body naming the request id, or for gRPC a
    /// trailers-only response carrying grpc-status and grpc-message.
    pub fn response(&self, request_id: &str, grpc: bool) -> Response<Body> {
        let mut response = if grpc {
            let mut r = Response::new(text_body(String::new()));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(
                "grpc-status",
                HeaderValue::from(u16::from(self.kind.grpc_code())),
            );
            if let Ok(v) = HeaderValue::from_str(&grpc_message(&self.reason)) {
                h.insert("grpc-message", v);
            }
            r
        } else {
            let mut r = Response::new(text_body(format!(
                "warden: {}\nrequest-id: {request_id}\n",
                self.reason
            )));
            *r.status_mut() = self.kind.status();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        if let Ok(v) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert(REQUEST_ID, v);
        }
        response
    }
}

/// gRPC's percent-encoding of grpc-message: printable ASCII but `%` as is.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's table of refusals, checked against what each kind
    /// answers over HTTP and over gRPC.
    #[test]
    fn every_refusal_kind_answers_its_status_and_grpc_code() {
        use RefusalKind::*;
        let table: [(RefusalKind, u16, u8); 17] = [
            (Overloaded, 503, 14),
            (NotReady, 503, 14),
            (CertificateLapsed, 503, 14),
            (Revoked, 403, 7),
            (Denied, 403, 7),
            (NoRoute, 403, 7),
            (UpgradeRefused, 400, 3),
            (BadRequest, 400, 3),
            (MalformedBody, 400, 3),
            (MethodNotAllowed, 405, 12),
            (WrongProtocol, 400, 3),
            (AppFailed, 502, 14),
            (AppTimeout, 504, 4),
            (AppUnavailable, 503, 14),
            (PeerUnreachable, 503, 14),
            (PeerTimeout, 504, 4),
            (PeerFailed, 502, 14),
        ];
        assert_eq!(
            table.map(|(k, _, _)| k),
            RefusalKind::ALL,
            "the table must list every kind, in order"
        );
        for (kind, status, grpc) in table {
            let refusal = Refusal::new(kind, "why");
            let http = refusal.response("r-1", false);
            assert_eq!(http.status().as_u16(), status, "{kind:?}");
            let g = refusal.response("r-1", true);
            assert_eq!(
                g.status(),
                StatusCode::OK,
                "{kind:?}: gRPC is trailers-only 200"
            );
            assert_eq!(
                g.headers().get("grpc-status").and_then(|v| v.to_str().ok()),
                Some(grpc.to_string().as_str()),
                "{kind:?}"
            );
            assert_eq!(
                g.headers()
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok()),
                Some("why")
            );
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("deny 100% é"), "deny 100%25 %C3%A9");
    }
}
