//! The host: lowercase, no trailing dot, no default port, and one `Host`
//! that agrees with the request target.

use super::NormalizeError;

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
        let Some(port) = self.port else {
            return self.name.clone();
        };
        // Not `format!`: it costs about a thousand instructions, and the
        // inbound side writes this for every request that names a port.
        let mut digits = itoa::Buffer::new();
        let port = digits.format(port);
        let mut out = String::with_capacity(self.name.len() + 1 + port.len());
        out.push_str(&self.name);
        out.push(':');
        out.push_str(port);
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_is_written_as_format_would() {
        for port in [0u16, 1, 9, 10, 99, 100, 8080, 9999, 10000, 65535] {
            for name in ["a", "admin.internal", "[::1]"] {
                let host = Host {
                    name: name.into(),
                    port: Some(port),
                };
                assert_eq!(host.authority(), format!("{name}:{port}"));
            }
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
