//! `warden access report`: per identity, what the policies allow it
//! against what it used in the window.

use std::collections::{BTreeMap, BTreeSet};

use warden_proxy::control::api::{AccessReport, BroadPolicy, Grant, IdentityAccess, UsageRow};

use super::{Evaluator, Query};

/// A permit covering at least this many identities...
const BROAD_COVERS: usize = 3;
/// The most questions one report asks the engine (identities x probes):
/// a window past it is refused rather than computed for minutes.
pub const MAX_EVALUATIONS: usize = 2_000_000;

/// The (service, callee, action, route) questions asked for every
/// identity: each route seen on a service, with each action seen on it
/// (any caller), so a grant nobody used on a known route shows.
pub fn probes(rows: &[UsageRow]) -> Vec<(String, String, String, String)> {
    let mut routes: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut actions: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for r in rows {
        let service = (r.service.as_str(), r.callee.as_str());
        if r.action == "connect" {
            out.insert((
                r.service.clone(),
                r.callee.clone(),
                r.action.clone(),
                r.route.clone(),
            ));
            continue;
        }
        routes.entry(service).or_default().insert(&r.route);
        actions.entry(service).or_default().insert(&r.action);
    }
    for (service, routes) in &routes {
        for route in routes {
            for action in &actions[service] {
                out.insert((
                    service.0.to_owned(),
                    service.1.to_owned(),
                    (*action).to_owned(),
                    (*route).to_owned(),
                ));
            }
        }
    }
    out.into_iter().collect()
}

/// `n thing` or `n things`.
pub fn plural(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

fn short(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// The report over `rows` (the window's usage) for `identities` (the
/// inventory's live ones; the callers seen are added), or only `only`.
pub fn report(
    evaluator: &mut Evaluator,
    rows: &[UsageRow],
    identities: &[String],
    only: Option<&str>,
    since: i64,
) -> Result<AccessReport, String> {
    let mut everyone: BTreeSet<String> = identities.iter().cloned().collect();
    everyone.extend(rows.iter().map(|r| r.caller.clone()));
    if let Some(only) = only {
        everyone.insert(only.to_owned());
    }
    let probes = probes(rows);
    if everyone.len().saturating_mul(probes.len()) > MAX_EVALUATIONS {
        return Err(format!(
            "{} identities x {} routes is more than the {MAX_EVALUATIONS} decisions a report makes: \
             shorten the window",
            everyone.len(),
            probes.len()
        ));
    }
    // Allowed requests by (caller, callee, action, route).
    let mut used: BTreeMap<(&str, &str, &str, &str), u64> = BTreeMap::new();
    let mut denied: BTreeMap<&str, u64> = BTreeMap::new();
    // Requests each identity served (as the callee).
    let mut served: BTreeMap<&str, u64> = BTreeMap::new();
    let mut last_seen: BTreeMap<&str, i64> = BTreeMap::new();
    // Identities whose allowed requests a policy decided.
    let mut policy_users: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut deciding: BTreeSet<&str> = BTreeSet::new();
    for r in rows {
        let seen = last_seen.entry(&r.caller).or_insert(r.last_seen);
        *seen = (*seen).max(r.last_seen);
        deciding.extend(r.policies.iter().map(String::as_str));
        *served.entry(&r.callee).or_default() += r.count;
        if r.decision == "allow" {
            *used
                .entry((&r.caller, &r.callee, &r.action, &r.route))
                .or_default() += r.count;
            for p in &r.policies {
                policy_users.entry(p).or_default().insert(&r.caller);
            }
        } else {
            *denied.entry(&r.caller).or_default() += r.count;
        }
    }
    let mut covers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for identity in &everyone {
        let mut granted = Vec::new();
        for (service, callee, action, route) in &probes {
            let q = Query {
                caller: identity.clone(),
                service: service.clone(),
                callee: callee.clone(),
                action: action.clone(),
                route: route.clone(),
            };
            let (allowed, policies) = evaluator.allows(&q);
            if !allowed {
                continue;
            }
            for p in &policies {
                covers
                    .entry(p.clone())
                    .or_default()
                    .insert(identity.clone());
            }
            let count = used
                .get(&(
                    identity.as_str(),
                    callee.as_str(),
                    action.as_str(),
                    route.as_str(),
                ))
                .copied()
                .unwrap_or(0);
            granted.push(Grant {
                service: service.clone(),
                callee: callee.clone(),
                action: action.clone(),
                route: route.clone(),
                count,
                policies,
            });
        }
        let used_grants = granted.iter().filter(|g| g.count > 0).count();
        let requests: u64 = used
            .iter()
            .filter(|((c, ..), _)| *c == identity)
            .map(|(_, n)| *n)
            .sum();
        let denied_here = denied.get(identity.as_str()).copied().unwrap_or(0);
        let unused: Vec<String> = granted
            .iter()
            .filter(|g| g.count == 0)
            .map(|g| format!("{} {} {}", g.action, g.service, g.route))
            .collect();
        let mut summary = format!(
            "{}: {} of {} grants used",
            short(identity),
            used_grants,
            granted.len()
        );
        if !unused.is_empty() {
            let shown: Vec<&str> = unused.iter().take(5).map(String::as_str).collect();
            summary.push_str(&format!(
                "; never used: {}{}",
                shown.join(", "),
                if unused.len() > 5 { ", ..." } else { "" }
            ));
        }
        let served_here = served.get(identity.as_str()).copied().unwrap_or(0);
        let idle = requests == 0 && denied_here == 0;
        if denied_here > 0 {
            summary.push_str(&format!("; {}", plural(denied_here, "denied request")));
        }
        if idle && served_here > 0 {
            summary.push_str(&format!(
                "; made no request, served {}",
                plural(served_here, "request")
            ));
        }
        if idle && served_here == 0 {
            summary
                .push_str("; made and served no request in the window -> a candidate for removal");
        } else if !unused.is_empty() {
            summary.push_str(" -> `warden policy propose` narrows it to what it used");
        }
        out.push(IdentityAccess {
            identity: identity.clone(),
            granted,
            used: used_grants,
            denied: denied_here,
            requests,
            last_seen_as_caller: last_seen.get(identity.as_str()).copied(),
            summary,
        });
    }
    // Every identity was asked (the policies' coverage needs them all);
    // only the one asked for is shown.
    if let Some(only) = only {
        out.retain(|i| i.identity == only);
    }
    let policies = evaluator.policies();
    let idle_policies = policies
        .iter()
        .filter(|(id, _)| !deciding.contains(id.as_str()))
        .map(|(id, _)| id.clone())
        .collect();
    let broad_policies = policies
        .iter()
        .filter(|(_, permit)| *permit)
        .filter_map(|(id, _)| {
            let covered = covers.get(id).map_or(0, BTreeSet::len);
            let used_by = policy_users.get(id.as_str()).map_or(0, BTreeSet::len);
            (covered >= BROAD_COVERS && used_by * 2 <= covered).then(|| BroadPolicy {
                policy: id.clone(),
                covers: covered,
                used_by,
            })
        })
        .collect();
    Ok(AccessReport {
        since,
        policy_version: evaluator.snapshot().version().to_owned(),
        identities: out,
        idle_policies,
        broad_policies,
    })
}
