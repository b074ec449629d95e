//! `warden policy propose`: a policy set that permits exactly the observed
//! allowed traffic, one permit per (caller, service, action), its routes as
//! path patterns, commented with the counts it came from; the current
//! set's `forbid` policies are kept as they are written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use warden_proxy::authz::policy_files::SCHEMA_FILE;
use warden_proxy::control::api::{PolicyProposal, UsageRow};
use warden_proxy::identity::SpiffeId;

use super::{Evaluator, peer_of, tcp_port};

/// The file the permits are written to.
pub const PERMITS_FILE: &str = "observed.cedar";
/// The file the kept forbids are written to.
pub const FORBIDS_FILE: &str = "forbids.cedar";

/// `text` as a Cedar string literal's body.
pub fn cedar_escape(text: &str, in_like: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '*' if in_like => out.push_str("\\*"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// The condition matching a route template: `==` for a plain path; for
/// one with ids, `like` with `*` for each `{id}`, held to the template's
/// number of segments (Cedar's `*` also matches `/`). None for a cut
/// route (`…`): what it stood for is unknown, so it is never proposed.
pub fn route_condition(route: &str) -> Option<String> {
    if route.contains('…') {
        return None;
    }
    if !route.contains("{id}") {
        return Some(format!(
            "context.path == \"{}\"",
            cedar_escape(route, false)
        ));
    }
    let pattern = route
        .split("{id}")
        .map(|piece| cedar_escape(piece, true))
        .collect::<Vec<_>>()
        .join("*");
    let deeper = "/*".repeat(route.matches('/').count() + 1);
    Some(format!(
        "(context.path like \"{pattern}\" && !(context.path like \"{deeper}\"))"
    ))
}

fn principal(caller: &str) -> Option<String> {
    match caller.strip_prefix("unauthenticated:") {
        Some(kind) => Some(format!(
            "Unauthenticated::\"{}\"",
            cedar_escape(kind, false)
        )),
        None => Some(format!(
            "Workload::\"{}\"",
            cedar_escape(SpiffeId::parse(caller).ok()?.as_ref(), false)
        )),
    }
}

fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[derive(Default)]
struct Group {
    /// Route -> allowed requests.
    routes: BTreeMap<String, u64>,
    count: u64,
    first: i64,
    last: i64,
    decided_by: BTreeSet<String>,
}

/// The proposal over `rows`, keeping the forbids of `current` (file name
/// -> text); validated against `current`'s schema (or the built-in one).
/// A recorded allow counts only if `current` (when there is one) allows it
/// too: a report cannot widen the set. No allowed traffic in the window:
/// an empty proposal (no files).
pub fn propose(
    rows: &[UsageRow],
    current: &BTreeMap<String, String>,
    since: i64,
) -> Result<PolicyProposal, String> {
    let mut now_allowed = if current.is_empty() {
        None
    } else {
        Some(Evaluator::from_files(current).map_err(|e| format!("the current policy set: {e}"))?)
    };
    let mut groups: BTreeMap<(String, String, String, String), Group> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.decision == "allow") {
        if peer_of(&r.caller).is_none() {
            continue;
        }
        if let Some(current) = now_allowed.as_mut()
            && !current.allows(&super::Query::of(r)).0
        {
            continue;
        }
        let key = (
            r.caller.clone(),
            r.service.clone(),
            r.callee.clone(),
            r.action.clone(),
        );
        let g = groups.entry(key).or_insert_with(|| Group {
            first: r.first_seen,
            last: r.last_seen,
            ..Group::default()
        });
        *g.routes.entry(r.route.clone()).or_default() += r.count;
        g.count += r.count;
        g.first = g.first.min(r.first_seen);
        g.last = g.last.max(r.last_seen);
        g.decided_by.extend(r.policies.iter().cloned());
    }
    if groups.is_empty() {
        return Ok(PolicyProposal {
            since,
            ..PolicyProposal::default()
        });
    }
    let mut permits = String::from(
        "// Proposed by `warden policy propose` from the traffic observed: each\n\
         // permit allows exactly what one caller was allowed and used, on one\n\
         // service. Anything else is denied. Review before `warden policy push`.\n",
    );
    let mut requests = 0;
    for (n, ((caller, service, callee, action), g)) in groups.iter().enumerate() {
        let Some(principal) = principal(caller) else {
            continue;
        };
        requests += g.count;
        let _ = write!(
            permits,
            "\n// {caller} -> {service} ({callee}): {action}, {} on {}, \
             first {}, last {}; decided by {}\n",
            super::report::plural(g.count, "request"),
            super::report::plural(g.routes.len() as u64, "route"),
            date(g.first),
            date(g.last),
            g.decided_by.iter().cloned().collect::<Vec<_>>().join(", "),
        );
        for (route, count) in &g.routes {
            let _ = writeln!(permits, "//   {route}: {count}");
        }
        let mut conditions = Vec::new();
        // The resource's name alone is not unique across namespaces.
        if let Ok(id) = SpiffeId::parse(callee) {
            conditions.push(format!(
                "resource.trust_domain == \"{}\"",
                cedar_escape(id.trust_domain_name(), false)
            ));
            if let Some((ns, _)) = id.namespace_service_account() {
                conditions.push(format!(
                    "resource has namespace && resource.namespace == \"{}\"",
                    cedar_escape(ns, false)
                ));
            }
        }
        let routes: Vec<String> = if action == "connect" {
            g.routes
                .keys()
                .filter_map(|r| tcp_port(r))
                .map(|p| format!("context.port == {p}"))
                .collect()
        } else {
            g.routes.keys().filter_map(|r| route_condition(r)).collect()
        };
        if routes.len() < g.routes.len() {
            let _ = writeln!(
                permits,
                "// not proposed: routes cut short (…), which a permit could only match too widely"
            );
        }
        if routes.is_empty() {
            continue;
        }
        conditions.push(if routes.len() == 1 {
            routes[0].clone()
        } else {
            format!("({})", routes.join(" || "))
        });
        let _ = write!(
            permits,
            "@id(\"observed-{:04}\")\npermit (\n  principal == {principal},\n  action == Action::\"{}\",\n  resource == Service::\"{}\"\n)\nwhen {{\n  {}\n}};\n",
            n + 1,
            cedar_escape(action, false),
            cedar_escape(service, false),
            conditions.join(" &&\n  "),
        );
    }
    let mut files = BTreeMap::new();
    files.insert(PERMITS_FILE.to_owned(), permits);
    let forbids = kept_forbids(current)?;
    let forbids_kept = forbids.len();
    if !forbids.is_empty() {
        let mut text =
            String::from("// The forbid policies of the current set, kept as they are written.\n");
        for f in forbids {
            text.push('\n');
            text.push_str(&f);
            text.push('\n');
        }
        files.insert(FORBIDS_FILE.to_owned(), text);
    }
    if let Some(schema) = current.get(SCHEMA_FILE) {
        files.insert(SCHEMA_FILE.to_owned(), schema.clone());
    }
    // Checked as a sidecar will load it.
    let checked = Evaluator::from_files(&files)
        .map_err(|e| format!("the proposal does not validate: {e}"))?;
    Ok(PolicyProposal {
        since,
        permits: checked.policies().iter().filter(|(_, p)| *p).count(),
        files,
        forbids_kept,
        requests,
    })
}

/// The text of every `forbid` in `current`'s policy files.
fn kept_forbids(current: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (name, text) in current {
        if name == SCHEMA_FILE {
            continue;
        }
        let set: cedar_policy::PolicySet = text
            .parse()
            .map_err(|e| format!("the current policy file {name} does not parse: {e}"))?;
        let mut forbids: Vec<_> = set
            .policies()
            .filter(|p| p.effect() == cedar_policy::Effect::Forbid)
            .collect();
        forbids.sort_by_key(|p| p.id().to_string());
        out.extend(forbids.into_iter().map(|p| {
            let text = p.to_string();
            if text.trim_end().ends_with(';') {
                text
            } else {
                format!("{text};")
            }
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_become_exact_or_like_conditions() {
        let cond = |r: &str| route_condition(r).unwrap_or_default();
        assert_eq!(cond("/orders"), "context.path == \"/orders\"");
        assert_eq!(
            cond("/orders/{id}/items/{id}"),
            "(context.path like \"/orders/*/items/*\" && !(context.path like \"/*/*/*/*/*\"))"
        );
        assert_eq!(
            cond("/a*b/{id}"),
            "(context.path like \"/a\\*b/*\" && !(context.path like \"/*/*/*\"))"
        );
        assert_eq!(route_condition("/long…"), None);
        assert_eq!(route_condition("/a/…"), None);
        assert_eq!(cond("/q\"x"), "context.path == \"/q\\\"x\"");
    }
}
