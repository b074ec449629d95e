//! Reads Kubernetes YAML as Kubernetes does: YAML 1.1 (go-yaml v2 under
//! sigs.k8s.io/yaml), where a plain `0644` is the number 420 and a plain
//! `on` is `true`. serde_yaml_ng reads YAML 1.2 (`0644` stays the string
//! "0644", which the API server then refuses as a volume's `defaultMode`),
//! and no serde YAML reader says whether a scalar was quoted. So the
//! events come from yaml-rust2's parser, and each plain scalar is resolved
//! here by YAML 1.1's rules; a quoted one is always a string. Anchors,
//! aliases and `<<` merge keys are applied; a key given twice is refused,
//! as kubectl does.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Every document of `text`, as JSON values (empty documents included, as null).
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| e.to_string())?;
    match builder.error {
        Some(e) => Err(e),
        None => Ok(builder.documents),
    }
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
    },
    Map {
        entries: Map<String, Value>,
        key: Option<Key>,
        merges: Vec<Value>,
        anchor: usize,
    },
}

enum Key {
    Named(String),
    /// A plain `<<`: the value's entries are merged in.
    Merge,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    documents: Vec<Value>,
    anchors: HashMap<usize, Value>,
    error: Option<String>,
}

impl Builder {
    fn fail(&mut self, message: String, mark: Marker) {
        if self.error.is_none() {
            self.error = Some(format!(
                "line {} column {}: {message}",
                mark.line(),
                mark.col() + 1
            ));
        }
    }

    fn in_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn push(&mut self, value: Value, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map {
                entries,
                key,
                merges,
                ..
            }) => match key.take() {
                None => {
                    let name = match value {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => "null".to_owned(),
                        _ => return self.fail("a map or list as a key".into(), mark),
                    };
                    *key = Some(Key::Named(name));
                }
                Some(Key::Merge) => merges.push(value),
                Some(Key::Named(name)) => {
                    if entries.contains_key(&name) {
                        return self.fail(format!("key {name:?} is given twice"), mark);
                    }
                    entries.insert(name, value);
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                if self.in_key_position() && style == TScalarStyle::Plain && text == "<<" {
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(Key::Merge);
                    }
                    return;
                }
                match resolve(&text, style, tag.as_ref()) {
                    Ok(value) => self.push(value, anchor, mark),
                    Err(e) => self.fail(e, mark),
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(value) => self.push(value, 0, mark),
                None => self.fail("an alias to no anchor".into(), mark),
            },
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                items: Vec::new(),
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                entries: Map::new(),
                key: None,
                merges: Vec::new(),
                anchor,
            }),
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor }) = self.stack.pop() {
                    self.push(Value::Array(items), anchor, mark);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    mut entries,
                    merges,
                    anchor,
                    ..
                }) = self.stack.pop()
                {
                    // Own keys win; of merged maps, the first wins.
                    for merge in merges {
                        let maps = match merge {
                            Value::Object(map) => vec![map],
                            Value::Array(list) => {
                                let mut maps = Vec::new();
                                for item in list {
                                    match item {
                                        Value::Object(map) => maps.push(map),
                                        _ => return self.fail("<< merges maps only".into(), mark),
                                    }
                                }
                                maps
                            }
                            _ => return self.fail("<< merges maps only".into(), mark),
                        };
                        for map in maps {
                            for (k, v) in map {
                                entries.entry(k).or_insert(v);
                            }
                        }
                    }
                    self.push(Value::Object(entries), anchor, mark);
                }
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// A scalar's value: quoted, or tagged `!!str`, a string; plain, by YAML
/// 1.1's rules as go-yaml v2 applies them.
fn resolve(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    let plain = style == TScalarStyle::Plain;
    let tagged_str = tag.is_some_and(|t| t.suffix == "str" || t.suffix.ends_with(":str"));
    if !plain || tagged_str {
        return Ok(Value::String(text.to_owned()));
    }
    Ok(resolve_plain(text)?.unwrap_or_else(|| Value::String(text.to_owned())))
}

/// None: a string.
fn resolve_plain(text: &str) -> Result<Option<Value>, String> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Some(Value::Null)),
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Ok(Some(Value::Bool(true)));
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Ok(Some(Value::Bool(false)));
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => {
            return Err(format!("{text}: infinity and NaN have no JSON form"));
        }
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return Ok(None);
    }
    let cleaned: String = text.chars().filter(|c| *c != '_').collect();
    let (negative, digits) = match cleaned.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, cleaned.strip_prefix('+').unwrap_or(&cleaned)),
    };
    let radix_int = |body: &str, radix: u32| -> Option<i128> {
        (!body.is_empty() && body.chars().all(|c| c.is_digit(radix)))
            .then(|| i128::from_str_radix(body, radix).ok())
            .flatten()
    };
    let int = if let Some(hex) = digits.strip_prefix("0x") {
        radix_int(hex, 16)
    } else if let Some(bin) = digits.strip_prefix("0b") {
        radix_int(bin, 2)
    } else if digits.len() > 1 && digits.starts_with('0') {
        radix_int(&digits[1..], 8)
    } else {
        radix_int(digits, 10)
    };
    if let Some(n) = int {
        let n = if negative { -n } else { n };
        if let Ok(n) = i64::try_from(n) {
            return Ok(Some(Value::Number(n.into())));
        }
        if let Ok(n) = u64::try_from(n) {
            return Ok(Some(Value::Number(n.into())));
        }
    }
    // [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    let (mantissa, exponent) = match digits.find(['e', 'E']) {
        Some(at) => (&digits[..at], Some(&digits[at + 1..])),
        None => (digits, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, fraction)) => {
            whole.chars().all(|c| c.is_ascii_digit())
                && fraction.chars().all(|c| c.is_ascii_digit())
                && !(whole.is_empty() && fraction.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.chars().all(|c| c.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    if mantissa_ok
        && exponent_ok
        && let Ok(f) = cleaned.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Ok(Some(Value::Number(n)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_scalars_are_read_as_yaml_1_1_and_quoted_ones_as_strings() {
        let docs = documents(
            "mode: 0644\nhex: 0x1F\nbin: 0b11\nbig: 1_000\nneg: -12\nf: 1.5\ne: 1e3\ndot: .5\n\
             o: on\nOff: Off\nyy: y\nnn: n\nnothing: ~\nempty:\nq1: '0644'\nq2: \"on\"\nt: !!str 12\n\
             name: nginx:1.27\nip: 10.0.0.1\nv: 1.2.3\nport: 8080\ndate: x2001-12-14\nzero: 0\n\
             eight: 08\n",
        )
        .expect("yaml");
        assert_eq!(
            docs,
            vec![json!({
                "mode": 420, "hex": 31, "bin": 3, "big": 1000, "neg": -12, "f": 1.5, "e": 1000.0,
                "dot": 0.5, "o": true, "false": false, "yy": true, "nn": false, "nothing": null,
                "empty": null, "q1": "0644", "q2": "on", "t": "12", "name": "nginx:1.27",
                "ip": "10.0.0.1", "v": "1.2.3", "port": 8080, "date": "x2001-12-14", "zero": 0,
                "eight": 8.0,
            })]
        );
    }

    #[test]
    fn anchors_merges_documents_and_refusals() {
        let docs = documents(
            "base: &b {image: a, pull: Always}\nc:\n  <<: *b\n  image: mine\nlist: [*b]\n---\n---\nx: 1\n",
        )
        .expect("yaml");
        assert_eq!(docs[0]["c"], json!({"image": "mine", "pull": "Always"}));
        assert_eq!(docs[0]["list"][0]["image"], "a");
        assert_eq!(docs[1], Value::Null);
        assert_eq!(docs[2], json!({"x": 1}));
        // `on` and `y` are both `true` as keys, as in Kubernetes: twice.
        for bad in [
            "a: 1\na: 2\n",
            "on: 1\ny: 2\n",
            "a: [\n",
            "a: *nope\n",
            "? [a]\n: 1\n",
            "a: .inf\n",
            "<<: 1\n",
        ] {
            assert!(documents(bad).is_err(), "{bad:?} accepted");
        }
    }
}
