//! SPIFFE IDs and trust domains, parsed exactly as the SPIFFE ID specification
//! requires: `spiffe://<trust-domain>[/<path>]`, no port, userinfo, query,
//! fragment or percent-encoding, lowercase trust domains.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME_PREFIX: &str = "spiffe://";
/// Longest trust domain name the spec allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest SPIFFE ID the spec requires implementations to support, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// The rule of the SPIFFE ID specification that a string breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("scheme must be `spiffe://` (lowercase, with two slashes)")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain must be lowercase: found {0:?}")]
    UppercaseTrustDomain(char),
    #[error("trust domain must not carry a port (found `:`)")]
    Port,
    #[error("trust domain must not carry userinfo (found `@`)")]
    UserInfo,
    #[error("percent-encoding is not allowed (found `%`)")]
    PercentEncoded,
    #[error("a query is not allowed (found `?`)")]
    Query,
    #[error("a fragment is not allowed (found `#`)")]
    Fragment,
    #[error("trust domain contains {0:?}: only a-z, 0-9, '.', '-' and '_' are allowed")]
    TrustDomainChar(char),
    #[error("trust domain is {0} bytes long: at most 255 are allowed")]
    TrustDomainTooLong(usize),
    #[error("path contains an empty segment (`//`)")]
    EmptySegment,
    #[error("path contains a `.` or `..` segment")]
    DotSegment,
    #[error("path must not end with a slash")]
    TrailingSlash,
    #[error("path contains {0:?}: only a-z, A-Z, 0-9, '.', '-' and '_' are allowed")]
    PathChar(char),
    #[error("SPIFFE ID is {0} bytes long: at most 2048 are allowed")]
    TooLong(usize),
}

/// A SPIFFE trust domain name such as `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain {
    name: String,
}

impl TrustDomain {
    /// Parses a trust domain name (`example.org`) or the ID of a trust domain
    /// (`spiffe://example.org`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.starts_with(SCHEME_PREFIX) {
            let id = SpiffeId::parse(name)?;
            if !id.path().is_empty() {
                return Err(SpiffeIdError::TrustDomainChar('/'));
            }
            return Ok(id.trust_domain());
        }
        validate_trust_domain(name)?;
        Ok(TrustDomain {
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `spiffe://<name>`: the ID of the trust domain itself.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME_PREFIX}{}", self.name),
            path_start: SCHEME_PREFIX.len() + self.name.len(),
        }
    }

    /// The workload ID `spiffe://<td><path>`; `path` must start with `/`.
    pub fn workload_id(&self, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        if !path.starts_with('/') {
            // Without the slash the path would extend the trust domain name.
            return Err(match path.chars().next() {
                None => SpiffeIdError::EmptySegment,
                Some(_) => SpiffeIdError::PathChar(first_char(path)),
            });
        }
        SpiffeId::parse(&format!("{SCHEME_PREFIX}{}{path}", self.name))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustDomain::new(s)
    }
}

/// A validated SPIFFE ID. Cheap to compare and hash; the string form is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset where the path starts (equals `uri.len()` for a root ID).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(input.len()));
        }
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        validate_trust_domain(&rest[..td_len])?;
        validate_path(&rest[td_len..])?;
        Ok(SpiffeId {
            uri: input.to_owned(),
            path_start: SCHEME_PREFIX.len() + td_len,
        })
    }

    /// Builds `spiffe://<td>/ns/<namespace>/sa/<service_account>`, the
    /// Kubernetes-style convention.
    pub fn from_namespace_service_account(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        for part in [namespace, service_account] {
            if part.contains('/') {
                return Err(SpiffeIdError::PathChar('/'));
            }
        }
        trust_domain.workload_id(&format!("/ns/{namespace}/sa/{service_account}"))
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain_name(&self) -> &str {
        &self.uri[SCHEME_PREFIX.len()..self.path_start]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain {
            name: self.trust_domain_name().to_owned(),
        }
    }

    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain_name() == trust_domain.name()
    }

    /// The path, with its leading `/`; empty for the trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// True for `spiffe://td` (no path). X.509-SVIDs must not carry such an ID.
    pub fn is_root(&self) -> bool {
        self.path().is_empty()
    }

    /// `(namespace, service_account)` when the path is exactly
    /// `/ns/<namespace>/sa/<service_account>`; the convention is not required.
    pub fn namespace_service_account(&self) -> Option<(&str, &str)> {
        // Byte scans (a policy on the namespace asks for every request).
        let rest = self.path().strip_prefix("/ns/")?;
        let slash = rest.bytes().position(|b| b == b'/')?;
        let (ns, sa) = (&rest[..slash], rest[slash..].strip_prefix("/sa/")?);
        if ns.is_empty() || sa.is_empty() || sa.bytes().any(|b| b == b'/') {
            return None;
        }
        Some((ns, sa))
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    // Byte scan: every allowed character is ASCII, so the first byte that is
    // not allowed starts the offending character.
    if let Some(i) = td
        .bytes()
        .position(|b| !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'))
    {
        let c = first_char(&td[i..]);
        return Err(if c.is_ascii_uppercase() {
            SpiffeIdError::UppercaseTrustDomain(c)
        } else {
            forbidden_char(c).unwrap_or(SpiffeIdError::TrustDomainChar(c))
        });
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    Ok(())
}

fn first_char(s: &str) -> char {
    s.chars().next().unwrap_or('\0')
}

/// Characters that betray a URI feature the spec forbids; named so the error
/// says which feature, not only which character.
fn forbidden_char(c: char) -> Option<SpiffeIdError> {
    match c {
        ':' => Some(SpiffeIdError::Port),
        '@' => Some(SpiffeIdError::UserInfo),
        '%' => Some(SpiffeIdError::PercentEncoded),
        '?' => Some(SpiffeIdError::Query),
        '#' => Some(SpiffeIdError::Fragment),
        _ => None,
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    let Some(rest) = path.strip_prefix('/') else {
        // Empty: the trust domain's own ID. (A non-empty path always starts
        // with '/', since the trust domain ends at the first slash.)
        return Ok(());
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if let Some(i) = segment.bytes().position(|b| !is_path_byte(b)) {
            let c = first_char(&segment[i..]);
            // ':' and '@' are legal URI path characters, just not SPIFFE ones.
            let feature = if c == ':' || c == '@' {
                None
            } else {
                forbidden_char(c)
            };
            return Err(feature.unwrap_or(SpiffeIdError::PathChar(c)));
        }
        match segment {
            "" if segments.peek().is_none() => return Err(SpiffeIdError::TrailingSlash),
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.uri
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        TrustDomain::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::SpiffeIdError as E;
    use super::*;

    fn err(s: &str) -> SpiffeIdError {
        match SpiffeId::parse(s) {
            Ok(id) => panic!("{s:?} parsed as {id}, expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn valid_ids() {
        for (input, td, path) in [
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/workload", "example.org", "/workload"),
            (
                "spiffe://example.org/ns/prod/sa/api",
                "example.org",
                "/ns/prod/sa/api",
            ),
            (
                "spiffe://a-b_c.9/P.a-t_h/UPPER/x",
                "a-b_c.9",
                "/P.a-t_h/UPPER/x",
            ),
            ("spiffe://td/...", "td", "/..."),
            ("spiffe://td/.x/..y", "td", "/.x/..y"),
            ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
        ] {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain_name(), td, "{input}");
            assert_eq!(id.path(), path, "{input}");
            assert_eq!(id.as_str(), input);
            assert_eq!(id.to_string(), input);
        }
    }

    #[test]
    fn scheme_rules() {
        assert_eq!(err(""), E::Empty);
        assert_eq!(err("example.org/x"), E::WrongScheme);
        assert_eq!(err("https://example.org/x"), E::WrongScheme);
        assert_eq!(err("SPIFFE://example.org/x"), E::WrongScheme);
        assert_eq!(err("spiffe:/example.org/x"), E::WrongScheme);
        assert_eq!(err("spiffe://"), E::MissingTrustDomain);
        assert_eq!(err("spiffe:///path"), E::MissingTrustDomain);
    }

    #[test]
    fn trust_domain_rules() {
        assert_eq!(err("spiffe://Example.org/x"), E::UppercaseTrustDomain('E'));
        assert_eq!(err("spiffe://example.org:8080/x"), E::Port);
        assert_eq!(err("spiffe://user@example.org/x"), E::UserInfo);
        assert_eq!(err("spiffe://user:pw@example.org/x"), E::Port);
        assert_eq!(err("spiffe://exa%6dple.org/x"), E::PercentEncoded);
        assert_eq!(err("spiffe://example.org?x=1"), E::Query);
        assert_eq!(err("spiffe://example.org#frag"), E::Fragment);
        assert_eq!(err("spiffe://exämple.org/x"), E::TrustDomainChar('ä'));
        assert_eq!(err("spiffe://exa mple/x"), E::TrustDomainChar(' '));
        assert_eq!(err("spiffe://a+b/x"), E::TrustDomainChar('+'));
        let td255 = "a".repeat(255);
        assert!(SpiffeId::parse(&format!("spiffe://{td255}/x")).is_ok());
        let td256 = "a".repeat(256);
        assert_eq!(
            err(&format!("spiffe://{td256}/x")),
            E::TrustDomainTooLong(256)
        );
    }

    #[test]
    fn path_rules() {
        assert_eq!(err("spiffe://example.org/"), E::TrailingSlash);
        assert_eq!(err("spiffe://example.org/a/"), E::TrailingSlash);
        assert_eq!(err("spiffe://example.org//a"), E::EmptySegment);
        assert_eq!(err("spiffe://example.org/a//b"), E::EmptySegment);
        assert_eq!(err("spiffe://example.org/a/./b"), E::DotSegment);
        assert_eq!(err("spiffe://example.org/a/../b"), E::DotSegment);
        assert_eq!(err("spiffe://example.org/.."), E::DotSegment);
        assert_eq!(err("spiffe://example.org/."), E::DotSegment);
        assert_eq!(err("spiffe://example.org/a%2Fb"), E::PercentEncoded);
        assert_eq!(err("spiffe://example.org/a?b=c"), E::Query);
        assert_eq!(err("spiffe://example.org/a#b"), E::Fragment);
        assert_eq!(err("spiffe://example.org/café"), E::PathChar('é'));
        assert_eq!(err("spiffe://example.org/a b"), E::PathChar(' '));
        assert_eq!(err("spiffe://example.org/a:b"), E::PathChar(':'));
        assert_eq!(err("spiffe://example.org/a@b"), E::PathChar('@'));
        assert_eq!(err("spiffe://example.org/a*b"), E::PathChar('*'));
    }

    #[test]
    fn length_limit_is_2048_bytes() {
        let prefix = "spiffe://example.org/";
        let exact = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
        assert_eq!(exact.len(), 2048);
        assert!(SpiffeId::parse(&exact).is_ok());
        let longer = format!("{exact}b");
        assert_eq!(err(&longer), E::TooLong(2049));
    }

    #[test]
    fn namespace_service_account_convention() {
        let td = TrustDomain::new("example.org").expect("valid");
        let id = SpiffeId::from_namespace_service_account(&td, "prod", "api").expect("valid");
        assert_eq!(id.as_str(), "spiffe://example.org/ns/prod/sa/api");
        assert_eq!(id.namespace_service_account(), Some(("prod", "api")));
        for other in [
            "spiffe://example.org/ns/prod",
            "spiffe://example.org/ns/prod/sa/api/extra",
            "spiffe://example.org/sa/api/ns/prod",
            "spiffe://example.org/billing",
            "spiffe://example.org",
        ] {
            let id = SpiffeId::parse(other).expect("valid");
            assert_eq!(id.namespace_service_account(), None, "{other}");
        }
        assert_eq!(
            SpiffeId::from_namespace_service_account(&td, "a/b", "c"),
            Err(E::PathChar('/'))
        );
        assert_eq!(td.workload_id("x"), Err(E::PathChar('x')));
        assert_eq!(td.workload_id(""), Err(E::EmptySegment));
        assert_eq!(
            td.workload_id("/x").map(|id| id.to_string()),
            Ok("spiffe://example.org/x".into())
        );
        assert_eq!(
            SpiffeId::from_namespace_service_account(&td, "", "c"),
            Err(E::EmptySegment)
        );
    }

    #[test]
    fn trust_domain_parsing() {
        assert_eq!(
            TrustDomain::new("example.org").map(|t| t.to_string()),
            Ok("example.org".into())
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org").map(|t| t.to_string()),
            Ok("example.org".into())
        );
        assert!(TrustDomain::new("spiffe://example.org/x").is_err());
        assert_eq!(TrustDomain::new(""), Err(E::MissingTrustDomain));
        assert_eq!(
            TrustDomain::new("EXAMPLE"),
            Err(E::UppercaseTrustDomain('E'))
        );
        assert_eq!(TrustDomain::new("td:1"), Err(E::Port));
        let id = SpiffeId::parse("spiffe://example.org/x").expect("valid");
        assert!(id.is_member_of(&TrustDomain::new("example.org").expect("valid")));
        assert!(!id.is_member_of(&TrustDomain::new("example.com").expect("valid")));
        assert!(
            TrustDomain::new("example.org")
                .expect("valid")
                .id()
                .is_root()
        );
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://td/a\"").expect("valid");
        assert_eq!(
            serde_json::to_string(&id).expect("serializes"),
            "\"spiffe://td/a\""
        );
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/a/\"").is_err());
    }
}
