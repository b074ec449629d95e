//! `warden policy replay`: every recorded (caller, action, service, route)
//! whose decision a candidate policy set would change.

use std::collections::BTreeMap;

use warden_proxy::control::api::{ReplayChange, ReplayReport, UsageRow};

use super::{Evaluator, Query};

/// Replays `rows` under `candidate`: the recorded decision against the
/// candidate's, per (caller, callee, action, route), with the requests
/// affected.
pub fn replay(candidate: &mut Evaluator, rows: &[UsageRow], since: i64) -> ReplayReport {
    let mut changes: BTreeMap<(Query, String), ReplayChange> = BTreeMap::new();
    for row in rows {
        let q = Query::of(row);
        let (allowed, policies) = candidate.allows(&q);
        let now = if allowed { "allow" } else { "deny" };
        if now == row.decision {
            continue;
        }
        changes
            .entry((q, row.decision.clone()))
            .and_modify(|c| c.count += row.count)
            .or_insert_with(|| ReplayChange {
                caller: row.caller.clone(),
                action: row.action.clone(),
                service: row.service.clone(),
                callee: row.callee.clone(),
                route: row.route.clone(),
                was: row.decision.clone(),
                now: now.to_owned(),
                policies,
                count: row.count,
            });
    }
    ReplayReport {
        since,
        replayed: rows.len(),
        changes: changes.into_values().collect(),
    }
}
