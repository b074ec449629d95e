//! Stage 2 of a request: one spelling of its target for the policy and the
//! app, and headers that say the same. The path and host are normalized
//! (`normalize`), `Host` is set to the normalized host, headers an app
//! framework would read as a different URL or method are dropped, an
//! upgrade other than WebSocket is refused, and hop-by-hop and Warden's own
//! headers are stripped: the policy sees exactly what the app will.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request};

use crate::sidecar::http::{
    Refusal, RefusalKind, find_listed, remove_found, strip_hop_by_hop, strip_reserved,
    upgrade_allowed, upgrade_protocol,
};
use crate::sidecar::normalize::{NormalizeError, PathRules, Target, normalize_request};

/// A request's target, and the protocol it asks to upgrade to.
#[derive(Debug)]
pub(super) struct Prepared {
    pub target: Target,
    /// An allowed `Upgrade` (WebSocket), restored on the app's connection.
    pub upgrade: Option<HeaderValue>,
}

pub(super) fn prepare<B>(req: &mut Request<B>, rules: PathRules) -> Result<Prepared, Refusal> {
    let target = normalize_request(req, rules).map_err(|e| normalize_refusal(&e))?;
    // A policy reading `context.headers` sees the canonical Host too.
    canonical_headers(req.headers_mut(), &target);
    let upgrade = upgrade_protocol(req);
    if let Some(protocol) = &upgrade {
        upgrade_allowed(protocol)?;
    }
    strip_hop_by_hop(req.headers_mut());
    // Whatever the caller claims about identity is dropped; only the
    // handshake's verified identity reaches the app.
    strip_reserved(req.headers_mut());
    Ok(Prepared { target, upgrade })
}

/// Headers some frameworks read as the real URL or method (Symfony and IIS
/// rewrites, Rails and Express method overrides): a request carrying them
/// would be routed to something the policy never decided on.
// Names, not strings: a string is parsed into a name on every lookup. A
// static, as `HOP_BY_HOP` is: a const array is built anew at each use.
static OVERRIDE_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// `Host` set to the normalized host, and the override headers dropped.
fn canonical_headers(headers: &mut HeaderMap, target: &Target) {
    let authority = target.host.as_ref().map(|host| host.authority());
    // Usually one `Host`, already as normalized: left as it is.
    let mut hosts = headers.get_all(header::HOST).iter();
    let kept = match (hosts.next(), hosts.next(), &authority) {
        (Some(host), None, Some(authority)) => host.as_bytes() == authority.as_bytes(),
        _ => false,
    };
    if !kept {
        headers.remove(header::HOST);
        if let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            headers.insert(header::HOST, v);
        }
    }
    // Requests almost never carry them.
    let found = find_listed(headers, &OVERRIDE_HEADERS);
    remove_found(headers, &OVERRIDE_HEADERS, found);
}

/// 405 for CONNECT, 400 for every other target that does not normalize.
fn normalize_refusal(e: &NormalizeError) -> Refusal {
    let kind = match e {
        NormalizeError::Connect => RefusalKind::MethodNotAllowed,
        _ => RefusalKind::BadRequest,
    };
    Refusal::new(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};

    use super::*;
    use crate::sidecar::http::{PEER_ID, XFCC};

    fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn the_target_and_host_header_are_canonical() {
        let mut req = request(
            Method::GET,
            "/x/../admin/./a",
            &[("host", "API.Example.ORG.:8080")],
        );
        let prepared = prepare(&mut req, PathRules::default()).expect("prepared");
        assert_eq!(prepared.target.path, "/admin/a");
        assert_eq!(req.headers()[header::HOST], "api.example.org:8080");
        assert!(prepared.upgrade.is_none());
    }

    #[test]
    fn a_host_header_is_one_and_canonical() {
        let mut one = request(Method::GET, "/", &[("host", "svc:8080")]);
        prepare(&mut one, PathRules::default()).expect("prepared");
        assert_eq!(one.headers().get_all(header::HOST).iter().count(), 1);
        assert_eq!(one.headers()[header::HOST], "svc:8080");
        let mut upper = request(Method::GET, "/", &[("host", "SVC:8080")]);
        prepare(&mut upper, PathRules::default()).expect("prepared");
        assert_eq!(upper.headers().get_all(header::HOST).iter().count(), 1);
        assert_eq!(upper.headers()[header::HOST], "svc:8080");
    }

    #[test]
    fn override_identity_and_hop_by_hop_headers_are_dropped() {
        let mut req = request(
            Method::POST,
            "/public",
            &[
                ("host", "svc"),
                ("x-http-method-override", "DELETE"),
                ("x-original-url", "/admin"),
                ("x-warden-peer-id", "spiffe://evil/admin"),
                ("x-forwarded-client-cert", "URI=spiffe://evil/admin"),
                ("connection", "close, x-keep"),
                ("x-keep", "1"),
            ],
        );
        prepare(&mut req, PathRules::default()).expect("prepared");
        let h = req.headers();
        for name in [
            "x-http-method-override",
            "x-original-url",
            "connection",
            "x-keep",
        ] {
            assert!(h.get(name).is_none(), "{name} kept");
        }
        assert!(h.get(PEER_ID).is_none() && h.get(XFCC).is_none());
    }

    #[test]
    fn websocket_upgrades_pass_and_others_are_refused() {
        let mut ws = request(
            Method::GET,
            "/chat",
            &[
                ("host", "svc"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
            ],
        );
        let prepared = prepare(&mut ws, PathRules::default()).expect("websocket");
        assert_eq!(prepared.upgrade.expect("upgrade"), "websocket");
        let mut h2c = request(
            Method::GET,
            "/",
            &[
                ("host", "svc"),
                ("connection", "upgrade"),
                ("upgrade", "h2c"),
            ],
        );
        let refusal = prepare(&mut h2c, PathRules::default()).expect_err("refused");
        assert_eq!(refusal.kind, RefusalKind::UpgradeRefused);
    }

    #[test]
    fn connect_and_bad_targets_are_refused_by_kind() {
        let mut connect = request(Method::CONNECT, "svc:443", &[]);
        let refusal = prepare(&mut connect, PathRules::default()).expect_err("connect");
        assert_eq!(refusal.status(), StatusCode::METHOD_NOT_ALLOWED);
        let mut slash = request(Method::GET, "/%2fadmin", &[("host", "svc")]);
        let refusal = prepare(&mut slash, PathRules::default()).expect_err("slash");
        assert_eq!(refusal.kind, RefusalKind::BadRequest);
    }
}
