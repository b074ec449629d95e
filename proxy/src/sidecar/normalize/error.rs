//! Why a request cannot be normalized.

use std::fmt;

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
