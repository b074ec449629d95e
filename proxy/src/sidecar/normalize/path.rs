//! The path: one spelling per RFC 3986 (unreserved escapes decoded, dot
//! segments removed), slashes merged and encoded slashes handled as
//! configured.

use std::borrow::Cow;

use serde::Deserialize;

use super::NormalizeError;

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
}
