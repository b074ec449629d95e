//! Headers: the ones of one hop only, Warden's own (never taken from a
//! caller), and the two an upgrade needs.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};

use super::{Refusal, RefusalKind};

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

/// Headers of one hop only (RFC 9110 7.6.1), never forwarded, and
/// `Upgrade` (upgrades are relayed explicitly, never by accident).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where `Connection` and `TE` are in [`HOP_BY_HOP`].
const CONNECTION: usize = 0;
const TE: usize = 5;

/// Which of `names` `headers` holds, found in one pass over its names
/// rather than a hashed lookup of each: most messages hold none of them.
pub fn find_listed<const N: usize>(headers: &HeaderMap, names: &[HeaderName; N]) -> [bool; N] {
    let mut found = [false; N];
    for name in headers.keys() {
        if let Some(i) = names.iter().position(|n| n == name) {
            found[i] = true;
        }
    }
    found
}

/// Removes the `names` that [`find_listed`] found.
pub fn remove_found<const N: usize>(
    headers: &mut HeaderMap,
    names: &[HeaderName; N],
    found: [bool; N],
) {
    for (name, _) in names.iter().zip(found).filter(|(_, f)| *f) {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers, and the headers `Connection` names.
/// `Upgrade` goes too: upgrades are relayed explicitly, never by accident.
/// `te: trailers` is kept (gRPC servers require it; HTTP/2 allows it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them and the rest one or two
    // (`connection: keep-alive`): only those present get a hashed removal.
    let present = find_listed(headers, &HOP_BY_HOP);
    if !present.contains(&true) {
        return;
    }
    let trailers = present[TE]
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    // The ones `Connection` names, but those of the list (removed below,
    // and usually all it names: `keep-alive`), compared before a name is
    // made of them.
    let mut named: Vec<HeaderName> = Vec::new();
    if present[CONNECTION] {
        for token in headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
        {
            if HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(token))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
    remove_found(headers, &HOP_BY_HOP, present);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_indexes_name_their_headers() {
        assert_eq!(HOP_BY_HOP[CONNECTION], header::CONNECTION);
        assert_eq!(HOP_BY_HOP[TE], header::TE);
        assert!(HOP_BY_HOP.contains(&header::UPGRADE));
    }

    #[test]
    fn each_hop_by_hop_header_alone_goes() {
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} kept");
            assert_eq!(h.len(), 1, "{name}");
        }
        let mut te = HeaderMap::new();
        te.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut te);
        assert_eq!(te[header::TE], "trailers");
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
}
