//! Route templates: the path a usage entry keeps, ids collapsed.

use super::{MAX_ROUTE, MAX_SEGMENTS};

/// Whether a path segment names one thing rather than a kind of thing: a
/// number, a UUID, a long hex string.
fn is_id(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let hex = |s: &[u8]| s.iter().all(u8::is_ascii_hexdigit);
    if b.len() == 36 && {
        let pieces: Vec<&[u8]> = b.split(|&c| c == b'-').collect();
        pieces.len() == 5
            && pieces.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
            && pieces.iter().all(|p| hex(p))
    } {
        return true;
    }
    b.len() >= 16 && hex(b) && b.iter().any(u8::is_ascii_digit)
}

/// The route template of a path: the query dropped, each id segment
/// `{id}`, at most [`MAX_SEGMENTS`] segments and [`MAX_ROUTE`] bytes.
pub fn route_template(path: &str) -> String {
    let mut out = String::new();
    write_template(path, &mut out);
    out
}

/// [`route_template`] into `out` (emptied first): no allocation once `out`
/// has the capacity.
pub(super) fn write_template(path: &str, out: &mut String) {
    out.clear();
    let path = path.split(['?', '#']).next().unwrap_or("");
    for (i, segment) in path.split('/').skip(1).enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/…");
            break;
        }
        // A segment a template could not tell from a collapsed id or a
        // cut ends the template: it stays a cut, which is never proposed.
        if segment.contains(['{', '}', '…']) {
            out.push_str("/…");
            break;
        }
        out.push('/');
        if is_id(segment) {
            out.push_str("{id}");
        } else {
            out.push_str(segment);
        }
        if out.len() > MAX_ROUTE {
            let mut cut = MAX_ROUTE;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    if out.is_empty() {
        out.push('/');
    }
}
