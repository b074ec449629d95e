//! Conditions simple enough to decide without Cedar: string comparisons and
//! `like` patterns on the request's method, path and host, joined by `&&`,
//! `||` and `!`, and `context has` on those attributes. These are the
//! conditions of most mesh policies (`context.path like "/api/*"`), and on an
//! HTTP request they cannot fail, so evaluating them here gives Cedar's
//! answer without Cedar's per-call cost. A policy with any other condition
//! (entity attributes, extension functions, headers, arithmetic...) is left
//! to Cedar; a slice is decided here only if all its policies can be.
//! `tests/authz_differential.rs` checks that the two never disagree.

use serde_json::Value;

use super::model::HttpRequestFacts;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attr {
    Method,
    Path,
    Host,
}

impl Attr {
    fn of(name: &str) -> Option<Attr> {
        match name {
            "method" => Some(Attr::Method),
            "path" => Some(Attr::Path),
            "host" => Some(Attr::Host),
            _ => None,
        }
    }

    fn get<'a>(self, facts: &HttpRequestFacts<'a>) -> &'a str {
        match self {
            Attr::Method => facts.method,
            Attr::Path => facts.path,
            Attr::Host => facts.host,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Literal(String),
    Wildcard,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cond {
    Const(bool),
    Eq(Attr, String),
    Like(Attr, Vec<Piece>),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
}

/// A policy of a slice, decided here.
#[derive(Debug, Clone)]
pub(crate) struct NativePolicy {
    pub id: String,
    pub permit: bool,
    pub condition: Cond,
}

/// The policy's conditions (every `when` and the negation of every
/// `unless`, joined by `&&`), if they are all of the simple kind.
pub(crate) fn compile(policy: &cedar_policy::Policy) -> Option<Cond> {
    let json = policy.to_json().ok()?;
    let mut all = Cond::Const(true);
    for condition in json.get("conditions")?.as_array()? {
        let body = expr(condition.get("body")?)?;
        let body = match condition.get("kind")?.as_str()? {
            "when" => body,
            "unless" => Cond::Not(Box::new(body)),
            _ => return None,
        };
        all = Cond::And(Box::new(all), Box::new(body));
    }
    Some(all)
}

fn is_context(v: &Value) -> bool {
    v.get("Var").and_then(Value::as_str) == Some("context")
}

/// `context.<attr>` for an attribute decided here.
fn context_attr(v: &Value) -> Option<Attr> {
    let access = v.get(".")?;
    if !is_context(access.get("left")?) {
        return None;
    }
    Attr::of(access.get("attr")?.as_str()?)
}

fn string_literal(v: &Value) -> Option<String> {
    v.get("Value")?.as_str().map(str::to_owned)
}

fn binary(v: &Value) -> Option<(&Value, &Value)> {
    Some((v.get("left")?, v.get("right")?))
}

fn expr(v: &Value) -> Option<Cond> {
    let object = v.as_object()?;
    if object.len() != 1 {
        return None;
    }
    let (op, arg) = object.iter().next()?;
    match op.as_str() {
        "Value" => arg.as_bool().map(Cond::Const),
        "&&" => {
            let (l, r) = binary(arg)?;
            Some(Cond::And(Box::new(expr(l)?), Box::new(expr(r)?)))
        }
        "||" => {
            let (l, r) = binary(arg)?;
            Some(Cond::Or(Box::new(expr(l)?), Box::new(expr(r)?)))
        }
        "!" => Some(Cond::Not(Box::new(expr(arg.get("arg")?)?))),
        "==" | "!=" => {
            let (l, r) = binary(arg)?;
            let eq = match (context_attr(l), context_attr(r)) {
                (Some(a), None) => Cond::Eq(a, string_literal(r)?),
                (None, Some(a)) => Cond::Eq(a, string_literal(l)?),
                _ => return None,
            };
            Some(if op == "==" {
                eq
            } else {
                Cond::Not(Box::new(eq))
            })
        }
        "like" => {
            let attr = context_attr(arg.get("left")?)?;
            let mut pieces: Vec<Piece> = Vec::new();
            for p in arg.get("pattern")?.as_array()? {
                match p {
                    Value::String(w) if w == "Wildcard" => pieces.push(Piece::Wildcard),
                    Value::Object(o) => {
                        let lit = o.get("Literal")?.as_str()?;
                        match pieces.last_mut() {
                            Some(Piece::Literal(s)) => s.push_str(lit),
                            _ => pieces.push(Piece::Literal(lit.to_owned())),
                        }
                    }
                    _ => return None,
                }
            }
            Some(Cond::Like(attr, pieces))
        }
        // Every attribute decided here is in every HTTP request context.
        "has" => {
            if !is_context(arg.get("left")?) {
                return None;
            }
            Attr::of(arg.get("attr")?.as_str()?).map(|_| Cond::Const(true))
        }
        _ => None,
    }
}

/// Whether `text` matches the whole pattern (`*` matches any run of
/// characters, including none).
fn like(text: &str, pieces: &[Piece]) -> bool {
    let text = text.as_bytes();
    // Classic wildcard matching with a single backtrack point: linear in
    // practice, and never worse than text x pattern.
    let (mut t, mut p) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        match pieces.get(p) {
            Some(Piece::Wildcard) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Piece::Literal(lit)) if text[t..].starts_with(lit.as_bytes()) => {
                t += lit.len();
                p += 1;
            }
            None if t == text.len() => return true,
            _ => match star {
                // Let the last `*` swallow one more byte and retry after it.
                Some((sp, st)) if st < text.len() => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                _ => return false,
            },
        }
    }
}

pub(crate) fn eval(c: &Cond, facts: &HttpRequestFacts<'_>) -> bool {
    match c {
        Cond::Const(b) => *b,
        Cond::Eq(a, s) => a.get(facts) == s,
        Cond::Like(a, pieces) => like(a.get(facts), pieces),
        Cond::And(l, r) => eval(l, facts) && eval(r, facts),
        Cond::Or(l, r) => eval(l, facts) || eval(r, facts),
        Cond::Not(x) => !eval(x, facts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Piece {
        Piece::Literal(s.to_owned())
    }

    #[test]
    fn like_matches_whole_strings() {
        let w = || Piece::Wildcard;
        let cases: &[(&str, Vec<Piece>, bool)] = &[
            ("/api/x", vec![lit("/api/"), w()], true),
            ("/api/", vec![lit("/api/"), w()], true),
            ("/ap", vec![lit("/api/"), w()], false),
            ("/a/b/c", vec![lit("/a"), w(), lit("/c")], true),
            ("/a/c/c/d", vec![lit("/a"), w(), lit("/c")], false),
            ("/a/c/x/c", vec![lit("/a"), w(), lit("/c")], true),
            ("", vec![w()], true),
            ("abc", vec![], false),
            ("", vec![], true),
            ("aaa", vec![w(), lit("a"), w(), lit("a")], true),
            ("é/x", vec![w(), lit("/x")], true),
        ];
        for (text, pattern, want) in cases {
            assert_eq!(like(text, pattern), *want, "{text:?} like {pattern:?}");
        }
    }

    #[test]
    fn only_simple_conditions_compile() {
        let compiles = |src: &str| compile(&src.parse().expect("policy")).is_some();
        assert!(compiles(
            r#"permit (principal, action, resource) when { context has path && context.path like "/api/*" } unless { context.method != "GET" || false };"#
        ));
        assert!(compiles("permit (principal, action, resource);"));
        assert!(!compiles(
            r#"permit (principal, action, resource) when { principal.namespace == "x" };"#
        ));
        assert!(!compiles(
            r#"permit (principal, action, resource) when { context.headers has "x" };"#
        ));
        assert!(!compiles(
            r#"permit (principal, action, resource) when { context.source_ip.isLoopback() };"#
        ));
        assert!(!compiles(
            r#"permit (principal, action, resource) when { context.path == context.host };"#
        ));
    }
}
