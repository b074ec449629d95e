//! Request normalization: the one spelling of a request's path and host
//! that both the policy and the app see.
//!
//! Cedar compares strings; apps interpret them. Without this stage a
//! `forbid` on `/admin` is bypassed by `//admin`, `/./admin`, `/x/../admin`
//! or `/%61dmin`, all of which a typical app (nginx) serves as `/admin`, and
//! a `forbid` on host `admin.internal` by `ADMIN.internal.:80`. So before
//! anything is decided, the path is rewritten per RFC 3986 (unreserved
//! percent-escapes decoded, dot segments removed) with slashes merged, the
//! host lowercased with its trailing dot and default port dropped, and the
//! request is forwarded in exactly that form. Everything here is pure and
//! fuzzed (`fuzz/fuzz_targets/normalize.rs`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

/// What to do with `%2F` (`/`) and `%5C` (`\`) in a path: Envoy's
/// `path_with_escaped_slashes_action`. An encoded slash is one segment to
/// Warden and may be two to the app, so the default refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// 400 (Envoy `REJECT_REQUEST`).
    #[default]
    Reject,
    /// Left encoded, hex digits uppercased (Envoy `KEEP_UNCHANGED`): for
    /// apps that never decode them.
    Keep,
    /// Both decoded to `/` before the rest of normalization (Envoy
    /// `UNESCAPE_AND_FORWARD` with path normalization): the policy and the
    /// app both see separators.
    Decode,
}

/// How paths are normalized; the RFC 3986 steps are not optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// `//a///b` becomes `/a/b` (Envoy `merge_slashes`).
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a request cannot be normalized; each is a 400 (a 405 for CONNECT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NormalizeError {
    /// The path is not origin-form (`/...`): `*` or empty.
    NotOriginForm,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C` under [`EscapedSlashes::Reject`].
    EncodedSlash,
    /// A byte that is not allowed in a path (controls, space, raw `\`).
    BadPathByte(u8),
    /// A dot segment with parameters (`..;x`): Tomcat, Jetty and Spring
    /// read it as `..`, so it could climb where the policy saw no climb.
    DotSegmentParams,
    /// More than one `Host` header, or `Host` and the request target's
    /// authority (`:authority`, absolute form) naming different hosts.
    ConflictingHost,
    /// No `Host` nor `:authority` (RFC 9112 3.2 requires one of HTTP/1.1).
    MissingHost,
    /// A host that is not a DNS name, IPv4 or bracketed IPv6 literal, or
    /// that carries user info or a bad port.
    BadHost,
    /// `CONNECT` (and extended CONNECT): this listener is not a proxy.
    Connect,
}

impl fmt::Display for NormalizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NormalizeError::NotOriginForm => {
                write!(f, "the request target must be a path starting with /")
            }
            NormalizeError::BadEscape => {
                write!(
                    f,
                    "malformed percent-escape in the path (% must be followed by two hex digits)"
                )
            }
            NormalizeError::EncodedSlash => write!(
                f,
                "encoded slash (%2F or %5C) in the path is refused (inbound.escaped_slashes = \"reject\")"
            ),
            NormalizeError::BadPathByte(b) => {
                write!(f, "byte 0x{b:02X} is not allowed in a path")
            }
            NormalizeError::DotSegmentParams => {
                write!(f, "a dot segment with parameters (`..;`) is refused")
            }
            NormalizeError::ConflictingHost => write!(
                f,
                "conflicting hosts: more than one Host header, or Host and the request target disagree"
            ),
            NormalizeError::MissingHost => {
                write!(f, "a request needs a Host header (or HTTP/2 :authority)")
            }
            NormalizeError::BadHost => write!(f, "the host is not a valid host[:port]"),
            NormalizeError::Connect => write!(f, "CONNECT is not served by the inbound listener"),
        }
    }
}

impl std::error::Error for NormalizeError {}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 2.3: the characters whose escapes mean the same as themselves.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Bytes a path may carry as they are: RFC 3986 `pchar` and `/`; `%`, and
/// the bytes above 0x7F that `http` accepts (UTF-8 sent raw, which the
/// normal form percent-encodes), are handled apart. Controls, space, `"`,
/// `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}` and `#` are refused: apps
/// disagree on what they mean.
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

/// The normalized form of `path` (no query): unreserved escapes decoded,
/// other escapes with uppercase hex, encoded slashes per the rules, slashes
/// merged if asked, dot segments removed (RFC 3986 5.2.4; `..` never climbs
/// above the root). Borrows when nothing changes, the common case.
pub fn normalize_path(path: &str, rules: PathRules) -> Result<Cow<'_, str>, NormalizeError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(NormalizeError::NotOriginForm);
    }
    if is_canonical(bytes, rules)? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(bytes, rules)?;
    let out = remove_dot_segments(&decoded, rules.merge_slashes)?;
    // Only ASCII is left: raw bytes above 0x7F were percent-encoded, and a
    // decoded escape is an unreserved character or a slash.
    match String::from_utf8(out) {
        Ok(s) => Ok(Cow::Owned(s)),
        Err(_) => Err(NormalizeError::BadEscape),
    }
}

/// Whether `bytes` is already normalized: the fast path, no allocation.
fn is_canonical(bytes: &[u8], rules: PathRules) -> Result<bool, NormalizeError> {
    let mut canonical = true;
    // bytes[0] is the leading `/`; the first segment starts after it.
    let mut i = 1;
    let mut seg_start = 1;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(NormalizeError::BadEscape);
                };
                let value = hi << 4 | lo;
                if value == b'/' || value == b'\\' {
                    if rules.escaped_slashes == EscapedSlashes::Reject {
                        return Err(NormalizeError::EncodedSlash);
                    }
                    if rules.escaped_slashes == EscapedSlashes::Decode {
                        canonical = false;
                    }
                }
                if is_unreserved(value)
                    || bytes[i + 1].is_ascii_lowercase()
                    || bytes[i + 2].is_ascii_lowercase()
                {
                    canonical = false;
                }
                i += 3;
                continue;
            }
            b'/' => {
                if !canonical_segment(&bytes[seg_start..i], rules) {
                    canonical = false;
                }
                seg_start = i + 1;
            }
            // Raw UTF-8: the normal form has it percent-encoded.
            0x80.. => canonical = false,
            _ if !is_path_byte(b) => return Err(NormalizeError::BadPathByte(b)),
            _ => {}
        }
        i += 1;
    }
    let last = bytes.get(seg_start..).unwrap_or_default();
    // A last empty segment is a trailing slash, which stays.
    if !last.is_empty() && !canonical_segment(last, rules) {
        canonical = false;
    }
    Ok(canonical)
}

/// Whether one segment (between slashes) is already in normal form as far
/// as dot segments and empty segments go.
fn canonical_segment(segment: &[u8], rules: PathRules) -> bool {
    let name = segment.split(|b| *b == b';').next().unwrap_or_default();
    !(name == b"." || name == b".." || (rules.merge_slashes && segment.is_empty()))
}

/// Percent-decoding of unreserved characters (and slashes under
/// [`EscapedSlashes::Decode`]); every other escape kept, uppercased.
fn decode(bytes: &[u8], rules: PathRules) -> Result<Vec<u8>, NormalizeError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b >= 0x80 {
            out.extend_from_slice(&[
                b'%',
                HEX_UPPER[usize::from(b >> 4)],
                HEX_UPPER[usize::from(b & 0xf)],
            ]);
            i += 1;
            continue;
        }
        if b != b'%' {
            if !is_path_byte(b) {
                return Err(NormalizeError::BadPathByte(b));
            }
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(NormalizeError::BadEscape);
        };
        let value = hi << 4 | lo;
        let slash = value == b'/' || value == b'\\';
        if slash && rules.escaped_slashes == EscapedSlashes::Reject {
            return Err(NormalizeError::EncodedSlash);
        }
        if slash && rules.escaped_slashes == EscapedSlashes::Decode {
            // Both become separators, as Envoy does with normalization on:
            // apps that read `\` as `/` (IIS, some frameworks) and apps
            // that do not then agree with the policy.
            out.push(b'/');
        } else if is_unreserved(value) {
            out.push(value);
        } else {
            out.extend_from_slice(&[b'%', HEX_UPPER[usize::from(hi)], HEX_UPPER[usize::from(lo)]]);
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 5.2.4 over segments, optionally dropping empty ones.
fn remove_dot_segments(path: &[u8], merge_slashes: bool) -> Result<Vec<u8>, NormalizeError> {
    let mut segments: Vec<&[u8]> = Vec::new();
    // The input starts with `/`; split what follows.
    let mut parts = path[1..].split(|b| *b == b'/').peekable();
    // Whether the result must end with `/` (a trailing slash, or a final
    // `.`/`..` segment, which name a directory).
    let mut trailing = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        let name = segment.split(|b| *b == b';').next().unwrap_or_default();
        if name.len() < segment.len() && (name == b"." || name == b"..") {
            return Err(NormalizeError::DotSegmentParams);
        }
        match segment {
            b"." => trailing = last,
            b".." => {
                segments.pop();
                trailing = last;
            }
            b"" if merge_slashes => trailing = last,
            b"" if last => trailing = true,
            _ => {
                segments.push(segment);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if trailing || segments.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

/// A request's host, normalized: lowercase, no trailing dot, and the port
/// apart (`None` when absent or the scheme's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub port: Option<u16>,
}

impl Host {
    /// `name[:port]`, the form given to the app in `Host`/`:authority`.
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Parses and normalizes one `host[:port]` (`Host` header value or URI
/// authority). `default_port` (80 for http, 443 for https) is dropped.
pub fn normalize_host(raw: &str, default_port: u16) -> Result<Host, NormalizeError> {
    let raw = raw.trim_matches(|c| c == ' ' || c == '\t');
    if raw.is_empty() || raw.contains('@') {
        return Err(NormalizeError::BadHost);
    }
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        // An IPv6 literal: `[addr]` or `[addr]:port`.
        let (addr, after) = rest.split_once(']').ok_or(NormalizeError::BadHost)?;
        // One spelling per address: `[0::1]` and `[::1]` are the same host.
        let addr = addr
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| NormalizeError::BadHost)?
            .to_string();
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(NormalizeError::BadHost)?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (name, port) = match raw.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (raw, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(NormalizeError::BadHost);
        }
        (name.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        // `host:` is allowed by RFC 3986 and means the default port.
        Some("") => None,
        Some(p) => {
            if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NormalizeError::BadHost);
            }
            let port: u16 = p.parse().map_err(|_| NormalizeError::BadHost)?;
            (port != default_port).then_some(port)
        }
    };
    Ok(Host { name, port })
}

/// The host of a request from its `Host` header values and its target's
/// authority (HTTP/2 `:authority`, or an HTTP/1.1 absolute-form target):
/// at most one `Host`, and when both are present they must name the same
/// host. `None` when the request names no host and may omit it (HTTP/2,
/// HTTP/1.0).
pub fn request_host<'a>(
    mut host_headers: impl Iterator<Item = &'a [u8]>,
    target_authority: Option<&str>,
    default_port: u16,
    host_required: bool,
) -> Result<Option<Host>, NormalizeError> {
    let header = host_headers.next();
    if host_headers.next().is_some() {
        return Err(NormalizeError::ConflictingHost);
    }
    let header = match header {
        Some(value) => {
            let text = std::str::from_utf8(value).map_err(|_| NormalizeError::BadHost)?;
            Some(normalize_host(text, default_port)?)
        }
        None => None,
    };
    let target = target_authority
        .map(|a| normalize_host(a, default_port))
        .transpose()?;
    match (header, target) {
        (Some(h), Some(t)) if h != t => Err(NormalizeError::ConflictingHost),
        (Some(h), _) => Ok(Some(h)),
        (None, Some(t)) => Ok(Some(t)),
        (None, None) if host_required => Err(NormalizeError::MissingHost),
        (None, None) => Ok(None),
    }
}

/// A request's target as the policy decides it and the app receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The normalized path.
    pub path: String,
    /// The query, untouched (`None` when the target has no `?`).
    pub query: Option<String>,
    /// The normalized host; `None` when the request names none.
    pub host: Option<Host>,
    /// The port the request was addressed to: the host's, else the
    /// scheme's default.
    pub port: u16,
}

impl Target {
    /// Path and query, for the request line or `:path`.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Normalizes what a request addresses; refuses `CONNECT`, asterisk-form
/// and conflicting or missing hosts.
pub fn normalize_request<B>(
    req: &http::Request<B>,
    rules: PathRules,
) -> Result<Target, NormalizeError> {
    if req.method() == http::Method::CONNECT {
        return Err(NormalizeError::Connect);
    }
    let uri = req.uri();
    let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    let path = normalize_path(uri.path(), rules)?.into_owned();
    let host = request_host(
        req.headers()
            .get_all(http::header::HOST)
            .iter()
            .map(http::HeaderValue::as_bytes),
        uri.authority().map(http::uri::Authority::as_str),
        default_port,
        // HTTP/1.0 and HTTP/2 may leave the host out on the wire, but the
        // app would then answer for a host of its choosing (its default
        // virtual host) that no policy saw: refused as well.
        true,
    )?;
    let port = host.as_ref().and_then(|h| h.port).unwrap_or(default_port);
    Ok(Target {
        path,
        query: uri.query().map(str::to_owned),
        host,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, NormalizeError> {
        normalize_path(path, PathRules::default()).map(Cow::into_owned)
    }

    #[test]
    fn bypass_spellings_of_admin_all_become_admin() {
        for spelling in [
            "/admin",
            "//admin",
            "///admin",
            "/./admin",
            "/x/../admin",
            "/x/y/../../admin",
            "/../admin",
            "/%61dmin",
            "/%61%64%6D%69%6e",
            "/%2e/admin",
            "/%2E%2E/admin",
            "/x/%2e%2e/admin",
            "/.%2e/admin",
            "/admin/.",
        ] {
            let got = norm(spelling).unwrap_or_else(|e| panic!("{spelling}: {e}"));
            assert!(
                got == "/admin" || got == "/admin/",
                "{spelling} normalized to {got}"
            );
        }
    }

    #[test]
    fn the_rfc_3986_examples_hold() {
        // RFC 3986 5.2.4's own examples (as absolute paths).
        assert_eq!(norm("/a/b/c/./../../g").as_deref(), Ok("/a/g"));
        assert_eq!(norm("/mid/content=5/../6").as_deref(), Ok("/mid/6"));
        assert_eq!(norm("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(norm("/a/b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/").as_deref(), Ok("/"));
        assert_eq!(norm("/..").as_deref(), Ok("/"));
        assert_eq!(norm("/a/").as_deref(), Ok("/a/"));
        assert_eq!(norm("/a..b/.c/c.").as_deref(), Ok("/a..b/.c/c."));
    }

    #[test]
    fn escapes_other_than_unreserved_stay_encoded_in_uppercase() {
        assert_eq!(norm("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(norm("/a%3fb").as_deref(), Ok("/a%3Fb"));
        assert_eq!(norm("/%25%32%65").as_deref(), Ok("/%252e"));
        assert_eq!(norm("/caf%C3%A9").as_deref(), Ok("/caf%C3%A9"));
        // Raw UTF-8 and its escapes are one spelling.
        assert_eq!(norm("/café").as_deref(), Ok("/caf%C3%A9"));
    }

    #[test]
    fn encoded_slashes_follow_the_rule() {
        for p in ["/%2fadmin", "/a%2F..%2Fadmin", "/%5cadmin", "/%5Cadmin"] {
            assert_eq!(norm(p), Err(NormalizeError::EncodedSlash), "{p}");
        }
        let keep = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathRules::default()
        };
        assert_eq!(
            normalize_path("/a%2fb/./c", keep).as_deref(),
            Ok("/a%2Fb/c")
        );
        let decode = PathRules {
            escaped_slashes: EscapedSlashes::Decode,
            ..PathRules::default()
        };
        assert_eq!(normalize_path("/%2fadmin", decode).as_deref(), Ok("/admin"));
        assert_eq!(
            normalize_path("/x%2F..%2Fadmin", decode).as_deref(),
            Ok("/admin")
        );
        assert_eq!(normalize_path("/a%5cb", decode).as_deref(), Ok("/a/b"));
    }

    #[test]
    fn slashes_are_merged_unless_asked_not_to() {
        assert_eq!(norm("/a//b///c//").as_deref(), Ok("/a/b/c/"));
        let keep = PathRules {
            merge_slashes: false,
            ..PathRules::default()
        };
        assert_eq!(normalize_path("/a//b", keep).as_deref(), Ok("/a//b"));
        assert_eq!(normalize_path("/a//../b", keep).as_deref(), Ok("/a/b"));
    }

    #[test]
    fn malformed_paths_are_refused() {
        assert_eq!(norm("*"), Err(NormalizeError::NotOriginForm));
        assert_eq!(norm(""), Err(NormalizeError::NotOriginForm));
        assert_eq!(norm("/a%"), Err(NormalizeError::BadEscape));
        assert_eq!(norm("/a%4"), Err(NormalizeError::BadEscape));
        assert_eq!(norm("/a%zz"), Err(NormalizeError::BadEscape));
        assert_eq!(norm("/a\\b"), Err(NormalizeError::BadPathByte(b'\\')));
        assert_eq!(norm("/a b"), Err(NormalizeError::BadPathByte(b' ')));
        for p in ["/x/..;/admin", "/.;x/admin", "/x/%2e%2e;/admin", "/a/..;"] {
            assert_eq!(norm(p), Err(NormalizeError::DotSegmentParams), "{p}");
        }
        assert_eq!(norm("/a;b/c..;d").as_deref(), Ok("/a;b/c..;d"));
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/a/b", "/a/b/", "/a%20b", "/.well-known/x", "/a..b"] {
            assert!(
                matches!(
                    normalize_path(p, PathRules::default()),
                    Ok(Cow::Borrowed(_))
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn hosts_are_lowercased_without_trailing_dot_or_default_port() {
        let plain = Host {
            name: "admin.internal".into(),
            port: None,
        };
        for spelling in [
            "admin.internal",
            "ADMIN.internal",
            "admin.internal.",
            "admin.internal:80",
            "Admin.Internal.:80",
            "admin.internal:",
            "admin.internal:0080",
        ] {
            assert_eq!(
                normalize_host(spelling, 80).as_ref(),
                Ok(&plain),
                "{spelling}"
            );
        }
        let with_port = normalize_host("admin.internal:8080", 80).expect("valid");
        assert_eq!(with_port.port, Some(8080));
        assert_eq!(with_port.authority(), "admin.internal:8080");
        assert_eq!(
            normalize_host("[::1]:80", 80).map(|h| h.authority()),
            Ok("[::1]".into())
        );
        assert_eq!(
            normalize_host("[FE80::1]:8443", 80).map(|h| h.authority()),
            Ok("[fe80::1]:8443".into())
        );
        assert_eq!(
            normalize_host("[0:0::1]", 80).map(|h| h.authority()),
            Ok("[::1]".into())
        );
        for bad in [
            "",
            "a b",
            "user@admin.internal",
            "admin..internal",
            "admin.internal:99999",
            "admin.internal:8a",
            "[::1",
            "[nothex]",
            "a%2e",
            ".",
        ] {
            assert_eq!(
                normalize_host(bad, 80),
                Err(NormalizeError::BadHost),
                "{bad}"
            );
        }
    }

    #[test]
    fn duplicate_conflicting_and_missing_hosts_are_refused() {
        let one = |v: &'static str| std::iter::once(v.as_bytes());
        assert_eq!(
            request_host([b"a".as_slice(), b"b"].into_iter(), None, 80, true),
            Err(NormalizeError::ConflictingHost)
        );
        assert_eq!(
            request_host([b"a".as_slice(), b"a"].into_iter(), None, 80, true),
            Err(NormalizeError::ConflictingHost)
        );
        assert_eq!(
            request_host(one("a"), Some("b"), 80, true),
            Err(NormalizeError::ConflictingHost)
        );
        assert_eq!(
            request_host(one("A.:80"), Some("a"), 80, true).map(|h| h.map(|h| h.authority())),
            Ok(Some("a".into()))
        );
        assert_eq!(
            request_host(std::iter::empty(), None, 80, true),
            Err(NormalizeError::MissingHost)
        );
        assert_eq!(request_host(std::iter::empty(), None, 80, false), Ok(None));
    }
}
