//! HTTP plumbing shared by the inbound and outbound sides: the body type,
//! hop-by-hop headers, Warden's own headers and its error responses.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: streamed from a peer or the app, or made here.
pub type Body = BoxBody<Bytes, BoxError>;

/// The caller's certificate and identity, Envoy's format.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// The caller's SPIFFE ID, plainly.
pub const PEER_ID: HeaderName = HeaderName::from_static("x-warden-peer-id");
/// Set by Warden on its own responses and passed to the app.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-warden-request-id");
/// Between sidecars: the request left the caller's app as HTTP/1.1 and
/// travels as HTTP/2; the receiving sidecar restores HTTP/1.1.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("x-warden-orig-proto");
pub const ORIG_PROTO_HTTP1: &str = "HTTP/1.1";

/// Headers of one hop only (RFC 9110 7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, and the headers `Connection` names.
/// `Upgrade` goes too: upgrades are relayed explicitly, never by accident.
/// `te: trailers` is kept (gRPC servers require it; HTTP/2 allows it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a header name is one of Warden's own, or would look like one to
/// an app that maps `_` to `-` (CGI, WSGI, Rack): callers never set these.
pub fn is_reserved(name: &HeaderName) -> bool {
    let n = name.as_str();
    let dashed = |prefix: &str| {
        n.len() >= prefix.len()
            && n.as_bytes()[..prefix.len()]
                .iter()
                .zip(prefix.as_bytes())
                .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
    };
    (dashed("x-warden-")) || (n.len() == XFCC.as_str().len() && dashed(XFCC.as_str()))
}

/// Drops every reserved header (see [`is_reserved`]) a caller sent.
pub fn strip_reserved(headers: &mut HeaderMap) {
    let reserved: Vec<HeaderName> = headers.keys().filter(|n| is_reserved(n)).cloned().collect();
    for name in reserved {
        headers.remove(name);
    }
}

/// Protocols an HTTP/1.1 upgrade may switch to. Anything else (h2c, say)
/// would turn one authorized request into an unchecked tunnel.
pub fn upgrade_allowed(protocol: &HeaderValue) -> Result<(), Refusal> {
    if protocol.as_bytes().eq_ignore_ascii_case(b"websocket") {
        Ok(())
    } else {
        Err(Refusal::new(
            RefusalKind::UpgradeRefused,
            format!(
                "upgrade to {:?} is not supported (only websocket)",
                String::from_utf8_lossy(protocol.as_bytes())
            ),
        ))
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` plus `Upgrade: <protocol>`), if it does.
pub fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// Puts back the two hop-by-hop headers an upgrade needs on the next hop.
pub fn restore_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Strips a response's hop-by-hop headers, keeping a 101's upgrade.
pub fn strip_response<B>(response: &mut Response<B>) {
    let upgrade = (response.status() == StatusCode::SWITCHING_PROTOCOLS)
        .then(|| response.headers().get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(response.headers_mut());
    if let Some(protocol) = upgrade {
        restore_upgrade(response.headers_mut(), protocol);
    }
}

/// Sends an upgrade request on a fresh HTTP/1.1 connection over `io`; if the
/// server switches protocols, the caller's upgraded connection and the
/// server's are spliced together until either side closes.
pub async fn relay_upgrade<I>(
    io: I,
    mut req: Request<hyper::body::Incoming>,
    tracker: &tokio_util::task::TaskTracker,
    idle: std::time::Duration,
    validity: Option<super::splice::PeerValidity>,
    reauthorize: Option<super::splice::Reauthorize>,
) -> Result<Response<hyper::body::Incoming>, hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let from_caller = hyper::upgrade::on(&mut req);
    // The tunnel keeps the caller's connection's place in its table (and
    // busy, never closed to make room) after the HTTP side is done.
    let busy = req
        .extensions()
        .get::<super::admission::Slot>()
        .map(super::admission::Slot::busy);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tracker.spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    let mut response = sender.send_request(req).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let from_server = hyper::upgrade::on(&mut response);
        // Tracked, so a drain waits for the tunnel (up to its deadline).
        tracker.spawn(async move {
            let _busy = busy;
            match tokio::join!(from_caller, from_server) {
                (Ok(caller), Ok(server)) => {
                    let mut caller = hyper_util::rt::TokioIo::new(caller);
                    let mut server = hyper_util::rt::TokioIo::new(server);
                    if let Err(e) = super::splice::splice(
                        &mut caller,
                        &mut server,
                        idle,
                        validity.as_ref(),
                        reauthorize,
                    )
                    .await
                    {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                (caller, server) => {
                    tracing::debug!(
                        caller_ok = caller.is_ok(),
                        server_ok = server.is_ok(),
                        "upgrade not completed"
                    );
                }
            }
        });
    }
    Ok(response)
}

/// Whether the request is gRPC (its errors are grpc-status trailers, not HTTP codes).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A fresh request id: 16 hex digits.
pub fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A caller's request body on its way upstream, remembering whether
/// reading it failed (a malformed chunked encoding, a stream the caller
/// reset): the upstream request then fails, and the fault is the caller's
/// (400), not the upstream's (502).
pub struct CallerBody {
    inner: hyper::body::Incoming,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Set once a [`CallerBody`] failed to read.
#[derive(Clone, Default)]
pub struct BodyFault(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl BodyFault {
    pub fn happened(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl CallerBody {
    /// Wraps a request's body; the returned [`BodyFault`] tells later
    /// whether it failed.
    pub fn wrap(req: Request<hyper::body::Incoming>) -> (Request<CallerBody>, BodyFault) {
        let fault = BodyFault::default();
        let failed = fault.0.clone();
        (req.map(|inner| CallerBody { inner, failed }), fault)
    }
}

impl http_body::Body for CallerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(_))) = &polled {
            self.failed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
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

/// The first error in `e`'s source chain of type `T`.
pub fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        current = err.source();
    }
    None
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
    fn hop_by_hop_headers_and_the_ones_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn te_trailers_survives_and_reserved_names_are_recognized() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::TE], "trailers");
        for name in [
            "x-warden-peer-id",
            "x_warden_peer_id",
            "x-forwarded-client-cert",
            "x_forwarded_client_cert",
            "x-warden-anything",
        ] {
            assert!(is_reserved(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "x-forwarded-for",
            "x-forwarded-client-certs",
            "x-wardenx",
            "warden",
        ] {
            assert!(!is_reserved(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("deny 100% é"), "deny 100%25 %C3%A9");
    }
}
