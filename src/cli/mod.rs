//! The command implementations. Each returns the process exit code, or an
//! error that `main` prints; errors name the file and the problem.

pub mod access;
pub mod ca;
pub mod control;
pub mod demo;
pub mod id;
pub mod init;
pub mod kube;
pub mod policy;
pub mod proxy;
pub mod svid;

use std::borrow::Cow;
use std::path::Path;

use anyhow::Context;
use warden_proxy::control::api::is_unsafe_char;

pub(crate) fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Text from elsewhere (the control plane, a file, an error message) made
/// safe for a terminal: control and bidirectional-formatting characters
/// written as `\u{..}`, so no value can move the cursor, forge a line or
/// reorder what is shown.
pub(crate) fn shown(text: &str) -> Cow<'_, str> {
    escaped(text, is_unsafe_char)
}

/// As [`shown`], but keeps line breaks: for multi-line messages (errors)
/// rather than table cells.
pub(crate) fn shown_lines(text: &str) -> Cow<'_, str> {
    escaped(text, |c| c != '\n' && is_unsafe_char(c))
}

fn escaped(text: &str, unsafe_here: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(&unsafe_here) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_here(c) {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON made safe for a terminal: serde escapes C0 controls inside
/// strings; DEL, C1 controls and bidirectional-formatting characters are
/// escaped here too, as JSON `\uXXXX` (still valid JSON). Newlines and
/// spaces between values stay: they are the layout.
pub(crate) fn json_shown(json: String) -> String {
    let unsafe_here = |c: char| is_unsafe_char(c) && !matches!(c, '\n' | '\r' | '\t');
    if !json.chars().any(unsafe_here) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if unsafe_here(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped() {
        assert_eq!(shown("host-1/42"), "host-1/42");
        assert_eq!(shown_lines("a\nb\x1bc"), "a\nb\\u{001b}c");
        assert_eq!(
            shown("a\x1b[2Jb\nc\u{202e}d"),
            "a\\u{001b}[2Jb\\u{000a}c\\u{202e}d"
        );
        let json = serde_json::to_string_pretty(&serde_json::json!({"i": "x\u{9b}y\u{1b}z"}))
            .expect("json");
        let safe = json_shown(json);
        assert!(
            !safe.chars().any(|c| c == '\u{9b}' || c == '\u{1b}'),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back["i"], "x\u{9b}y\u{1b}z");
    }
}
