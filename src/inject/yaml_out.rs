//! Writes JSON values as YAML that Kubernetes reads back unchanged.
//!
//! Kubernetes reads YAML 1.1 (go-yaml v2 under sigs.k8s.io/yaml), where
//! the plain scalars `on`, `yes`, `n`, `0755`, `1_000` and `2001-12-14`
//! are not strings. The YAML writers of serde_yaml_ng and serde_norway
//! follow YAML 1.2 and leave `on`, `yes`, `n` and `1_000` plain (checked
//! when this was written: `value: on` came out unquoted, which the API
//! server would read as a boolean), and no serde YAML crate takes a
//! scalar style. So writing is done here: a string is plain only when it
//! cannot be read as anything else under either version, and otherwise
//! double-quoted with escapes; multi-line text (a PEM bundle) is a literal
//! block. Reading is `yaml_in`'s.

use serde_json::Value;

/// One document, block style, sequences at their key's column (as kubectl
/// writes them), ending with a newline.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => mapping(&mut out, map, 0),
        Value::Array(list) if !list.is_empty() => sequence(&mut out, list, 0),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn mapping(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (key, value) in map {
        pad(out, indent);
        out.push_str(&scalar_string(key));
        out.push(':');
        after_key(out, value, indent);
    }
}

/// A value after `key:` (or after `- ` for a sequence of sequences).
fn after_key(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            mapping(out, map, indent + 2);
        }
        Value::Array(list) if !list.is_empty() => {
            out.push('\n');
            sequence(out, list, indent);
        }
        Value::String(s) if literal_block_fits(s) => literal_block(out, s, indent + 2),
        scalar => {
            out.push(' ');
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
}

fn sequence(out: &mut String, list: &[Value], indent: usize) {
    for item in list {
        pad(out, indent);
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                // The first key on the dash's line, the others under it.
                let mut block = String::new();
                mapping(&mut block, map, indent + 2);
                out.push(' ');
                out.push_str(&block[indent + 2..]);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                sequence(out, inner, indent + 2);
            }
            Value::String(s) if literal_block_fits(s) => literal_block(out, s, indent + 2),
            scalar => {
                out.push(' ');
                out.push_str(&inline(scalar));
                out.push('\n');
            }
        }
    }
}

fn inline(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_string(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// Text of several lines that a literal block keeps exactly: printable,
/// no carriage return, no line ending in a space, the first line not
/// starting with one (that would need an indentation indicator).
fn literal_block_fits(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\n'])
        && s.chars().all(|c| c == '\n' || !needs_escape(c))
        && s.split('\n').all(|line| !line.ends_with([' ', '\t']))
}

fn literal_block(out: &mut String, s: &str, indent: usize) {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    out.push_str(match trailing {
        0 => " |-\n",
        1 => " |\n",
        _ => " |+\n",
    });
    for line in body.split('\n') {
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..trailing {
        out.push('\n');
    }
}

/// Characters a YAML reader does not take as they are in a scalar.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{feff}' | '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}'
        )
}

/// Words YAML 1.1 reads as booleans or null, in any case.
const WORDS: &[&str] = &[
    "y", "n", "yes", "no", "true", "false", "on", "off", "null", "~",
];

/// A string written plain if nothing else could be read from it, else
/// double-quoted.
fn scalar_string(s: &str) -> String {
    if is_plain_safe(s) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphanumeric() || first == '/') {
        return false;
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._/:@+=-".contains(c))
    {
        return false;
    }
    // `a:` ends a key; `a:b` is fine.
    if s.ends_with(':') {
        return false;
    }
    if WORDS.iter().any(|w| w.eq_ignore_ascii_case(s)) {
        return false;
    }
    // Anything starting with a digit that is made only of what numbers,
    // dates and times are made of may be read as one (0755, 1e3, 1_000,
    // 0x1f, 0b11, 2001-12-14, 12:30, 1.27): quoted. `64Mi`, `100m` stay plain.
    if first.is_ascii_digit()
        && s.chars()
            .all(|c| "0123456789._:-+eExXoObBabcdefABCDEF".contains(c))
    {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    /// What both a YAML 1.2 reader (serde_yaml_ng) and our YAML 1.1 reader
    /// (as Kubernetes) read back; they must agree.
    fn back(text: &str) -> Value {
        let v12 = Value::deserialize(serde_yaml_ng::Deserializer::from_str(text)).expect(text);
        let v11 = super::super::yaml_in::documents(text)
            .expect(text)
            .remove(0);
        assert_eq!(v11, v12, "YAML 1.1 and 1.2 disagree on\n{text}");
        v11
    }

    #[test]
    fn every_value_reads_back_the_same() {
        let value = json!({
            "strings": ["yes", "No", "on", "OFF", "y", "n", "true", "null", "~", "", " x", "x ",
                "0755", "1e3", "1_000", "0x1F", "0b11", "2001-12-14", "12:30", "1.27", ".inf",
                "-", "- a", "a: b", "a:", "#c", "a #c", "&a", "*a", "!t", "%p", "@x", "`x",
                "{a}", "[a]", "a,b", "'q'", "\"q\"", "back\\slash", "tab\tx", "nul\u{0}x",
                "del\u{7f}x", "c1\u{85}x", "bom\u{feff}", "ünïcödé", "64Mi", "100m",
                "nginx:1.27", "spiffe://example.org/warden/control", "$(A)/$(B)",
                "line\nline", "two\n\n", "no end\nx", " lead\nx", "trail \nx", "cr\r\nx"],
            "numbers": [0, -1, 1.5, 65535],
            "bools": [true, false],
            "null": null,
            "empty": {"map": {}, "list": []},
            "nested": [[1, [2]], {"a": [{"b": "c"}]}, []],
            "yes": "key that is a word",
            "pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        });
        let text = to_string(&value);
        assert_eq!(back(&text), value, "{text}");
        // What YAML 1.1 (Kubernetes) reads as a boolean, number, date or
        // null is quoted, though YAML 1.2 would read it back as a string.
        for word in [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "n",
            "null",
            "~",
            "0755",
            "1e3",
            "1_000",
            "0x1F",
            "0b11",
            "2001-12-14",
            "12:30",
            "1.27",
        ] {
            assert!(
                text.contains(&format!("- \"{word}\"\n")),
                "{word} not quoted:\n{text}"
            );
        }
        assert!(to_string(&json!({"k": "\u{ffff}"})).contains("\\uffff"));
        assert!(text.contains("- \"on\"\n"), "{text}");
        assert!(text.contains("pem: |\n  -----BEGIN"), "{text}");
    }
}
