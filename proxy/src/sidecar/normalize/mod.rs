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

mod error;
mod host;
mod path;

pub use error::NormalizeError;
pub use host::{Host, normalize_host, request_host};
pub use path::{EscapedSlashes, PathRules, normalize_path};

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
        let mut out = String::new();
        self.push_path_and_query(&mut out);
        out
    }

    /// [`Self::path_and_query`] appended to `out` (per request: no
    /// formatting machinery).
    pub fn push_path_and_query(&self, out: &mut String) {
        out.reserve(self.path.len() + self.query.as_ref().map_or(0, |q| q.len() + 1));
        out.push_str(&self.path);
        if let Some(q) = &self.query {
            out.push('?');
            out.push_str(q);
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
