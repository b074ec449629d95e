//! Which context attributes a slice of policies can observe.
//!
//! Building Cedar context values is the dominant per-request cost (an
//! `ipaddr` or `datetime` value costs several microseconds, a string about
//! half a microsecond). A policy can only observe the context attributes it
//! names, so the engine builds just those for the slice it evaluates. The
//! scan is conservative: any use of `context` it does not recognise as
//! `context.attr`, `context has attr` or `context["attr"]` means "build
//! everything". The differential test compares against the full context.

use cedar_policy::PolicySet;

/// The context attributes to build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContextNeeds {
    all: bool,
    attrs: Vec<String>,
}

impl ContextNeeds {
    /// Everything: what the unindexed path uses.
    pub fn everything() -> Self {
        ContextNeeds {
            all: true,
            attrs: Vec::new(),
        }
    }

    pub fn wants(&self, attr: &str) -> bool {
        self.all || self.attrs.iter().any(|a| a == attr)
    }

    /// Scans the text of every policy in `policies`.
    pub fn of(policies: &PolicySet) -> Self {
        let mut needs = ContextNeeds::default();
        for policy in policies.policies() {
            needs.scan(&policy.to_string());
            if needs.all {
                break;
            }
        }
        needs
    }

    fn add(&mut self, attr: &str) {
        if !self.attrs.iter().any(|a| a == attr) {
            self.attrs.push(attr.to_owned());
        }
    }

    fn scan(&mut self, text: &str) {
        let mut rest = text;
        while let Some(pos) = rest.find("context") {
            let after = &rest[pos + "context".len()..];
            // `xcontext` or `context_x` are other identifiers.
            let before_ok = rest[..pos]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            let after_ok = after
                .chars()
                .next()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            rest = after;
            if !(before_ok && after_ok) {
                continue;
            }
            match attribute_after(after) {
                Some(attr) => self.add(&attr),
                None => {
                    self.all = true;
                    return;
                }
            }
        }
    }
}

/// The attribute named right after `context`: `.name`, `["name"]` or
/// `has name` / `has "name"`.
fn attribute_after(after: &str) -> Option<String> {
    let trimmed = after.trim_start();
    if let Some(r) = trimmed.strip_prefix('.') {
        return identifier(r.trim_start());
    }
    if let Some(r) = trimmed.strip_prefix('[') {
        return quoted(r.trim_start());
    }
    if let Some(r) = trimmed.strip_prefix("has") {
        let r = r.trim_start();
        return quoted(r).or_else(|| identifier(r));
    }
    None
}

fn identifier(s: &str) -> Option<String> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_owned())
}

fn quoted(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?;
    let end = inner.find(['"', '\\'])?;
    (inner[end..].starts_with('"')).then(|| inner[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn needs(src: &str) -> ContextNeeds {
        ContextNeeds::of(&PolicySet::from_str(src).expect("policy"))
    }

    #[test]
    fn finds_the_attributes_policies_name() {
        let n = needs(
            r#"permit(principal, action, resource) when { context.path == "/x" && context has headers && context["tls"].authenticated };"#,
        );
        assert!(n.wants("path") && n.wants("headers") && n.wants("tls"));
        assert!(!n.wants("now") && !n.wants("source_ip"));
        assert!(!needs("permit(principal, action, resource);").wants("path"));
    }

    #[test]
    fn anything_unrecognised_means_everything() {
        assert!(
            needs(r#"permit(principal, action, resource) when { context == {} };"#).wants("now")
        );
        assert!(
            needs(r#"permit(principal, action, resource) when { [context].contains(context) };"#)
                .wants("now")
        );
    }

    #[test]
    fn other_identifiers_and_strings_are_conservative() {
        // A string mentioning "context" is scanned too: harmless over-inclusion.
        let n = needs(
            r#"permit(principal, action, resource) when { principal.path == "/context.now" };"#,
        );
        assert!(n.wants("now"));
    }
}
