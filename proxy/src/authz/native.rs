//! Conditions simple enough to decide without Cedar: string comparisons
//! (`==`, `!=`) and `like` patterns over the request's method, path and
//! host, the caller's and the service's string attributes (`trust_domain`,
//! `path`, `namespace`, `service_account`, `name`) and string literals,
//! joined by `&&`, `||` and `!`, and `has` on those attributes. These are the
//! conditions of most mesh policies (`context.path like "/api/*"`,
//! `principal.namespace == resource.namespace`), so evaluating them here
//! gives Cedar's answer without Cedar's per-call cost. A policy with any
//! other condition (headers, extension functions, arithmetic, `in`...) is
//! left to Cedar; a slice is decided here only if all its policies can be,
//! and a request whose evaluation would be an error in Cedar (reading an
//! attribute the entity lacks) goes to Cedar too, which reports it.
//! `tests/authz_differential.rs` checks that the two never disagree.

use serde_json::Value;

use super::model::{HttpRequestFacts, Peer, ServiceInfo};

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

/// A string-valued operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operand {
    Literal(String),
    Context(Attr),
    Principal(&'static str),
    Resource(&'static str),
}

const PRINCIPAL_ATTRS: [&str; 4] = ["trust_domain", "path", "namespace", "service_account"];
const RESOURCE_ATTRS: [&str; 3] = ["name", "trust_domain", "namespace"];

fn known(attrs: &[&'static str], name: &str) -> Option<&'static str> {
    attrs.iter().copied().find(|a| *a == name)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Literal(String),
    Wildcard,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cond {
    Const(bool),
    Eq(Operand, Operand),
    Like(Operand, Vec<Piece>),
    /// `principal has <attr>` / `resource has <attr>`.
    PrincipalHas(&'static str),
    ResourceHas(&'static str),
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

fn var(v: &Value) -> Option<&str> {
    v.get("Var").and_then(Value::as_str)
}

/// A string literal, or `context|principal|resource.<attr>` for an
/// attribute decided here.
fn operand(v: &Value) -> Option<Operand> {
    if let Some(literal) = v.get("Value") {
        return literal.as_str().map(|s| Operand::Literal(s.to_owned()));
    }
    let access = v.get(".")?;
    let attr = access.get("attr")?.as_str()?;
    match var(access.get("left")?)? {
        "context" => Attr::of(attr).map(Operand::Context),
        "principal" => known(&PRINCIPAL_ATTRS, attr).map(Operand::Principal),
        "resource" => known(&RESOURCE_ATTRS, attr).map(Operand::Resource),
        _ => None,
    }
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
            let eq = Cond::Eq(operand(l)?, operand(r)?);
            Some(if op == "==" {
                eq
            } else {
                Cond::Not(Box::new(eq))
            })
        }
        "like" => {
            let attr = operand(arg.get("left")?)?;
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
        "has" => {
            let attr = arg.get("attr")?.as_str()?;
            match var(arg.get("left")?)? {
                // Every context attribute decided here is in every HTTP
                // request context.
                "context" => Attr::of(attr).map(|_| Cond::Const(true)),
                "principal" => known(&PRINCIPAL_ATTRS, attr).map(Cond::PrincipalHas),
                "resource" => known(&RESOURCE_ATTRS, attr).map(Cond::ResourceHas),
                _ => None,
            }
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

/// What a condition can read.
pub(crate) struct Env<'a> {
    pub facts: &'a HttpRequestFacts<'a>,
    pub peer: &'a Peer,
    pub service: &'a ServiceInfo,
}

impl<'a> Env<'a> {
    /// The attribute's value; None if the entity lacks it (Cedar: an error).
    fn principal(&self, attr: &str) -> Option<&'a str> {
        let Peer::Workload(id) = self.peer else {
            return None;
        };
        match attr {
            "trust_domain" => Some(id.trust_domain_name()),
            "path" => Some(id.path()),
            "namespace" => id.namespace_service_account().map(|(ns, _)| ns),
            "service_account" => id.namespace_service_account().map(|(_, sa)| sa),
            _ => None,
        }
    }

    fn resource(&self, attr: &str) -> Option<&'a str> {
        match attr {
            "name" => Some(&self.service.name),
            "trust_domain" => Some(&self.service.trust_domain),
            "namespace" => self.service.namespace.as_deref(),
            _ => None,
        }
    }

    fn value<'o>(&self, operand: &'o Operand) -> Option<&'o str>
    where
        'a: 'o,
    {
        match operand {
            Operand::Literal(s) => Some(s),
            Operand::Context(a) => Some(a.get(self.facts)),
            Operand::Principal(a) => self.principal(a),
            Operand::Resource(a) => self.resource(a),
        }
    }
}

/// The condition's value, or None where Cedar would report an error (an
/// attribute the entity lacks): that request is left to Cedar. `&&` and `||`
/// short-circuit exactly as Cedar's do.
pub(crate) fn eval(c: &Cond, env: &Env<'_>) -> Option<bool> {
    Some(match c {
        Cond::Const(b) => *b,
        Cond::Eq(l, r) => env.value(l)? == env.value(r)?,
        Cond::Like(o, pieces) => like(env.value(o)?, pieces),
        Cond::PrincipalHas(a) => env.principal(a).is_some(),
        Cond::ResourceHas(a) => env.resource(a).is_some(),
        Cond::And(l, r) => eval(l, env)? && eval(r, env)?,
        Cond::Or(l, r) => eval(l, env)? || eval(r, env)?,
        Cond::Not(x) => !eval(x, env)?,
    })
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
        assert!(compiles(
            r#"permit (principal, action, resource) when { principal has namespace && principal.namespace == resource.namespace };"#
        ));
        assert!(!compiles(
            r#"permit (principal, action, resource) when { principal in Namespace::"spiffe://td/ns/x" };"#
        ));
        assert!(!compiles(
            r#"permit (principal, action, resource) when { context.headers has "x" };"#
        ));
        assert!(!compiles(
            r#"permit (principal, action, resource) when { context.source_ip.isLoopback() };"#
        ));
        assert!(!compiles(
            r#"permit (principal, action, resource) when { context.path == 1 };"#
        ));
    }
}
