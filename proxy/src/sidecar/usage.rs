//! What this sidecar's service is used for: every decision, aggregated by
//! caller, action, route template, outcome and the deciding policies, with
//! counts and first and last seen. The raw path never becomes a key: ids
//! collapse (`/orders/42` is `/orders/{id}`), and each caller holds at most
//! [`MAX_ROUTES_PER_CALLER`] keys (then an overflow count), with at most
//! [`MAX_CALLERS`] callers, so a flood of unique paths or identities costs
//! bounded memory. `GET /usage` on the admin server shows it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::authz::Decision;

/// Route keys one caller may hold; more are counted, not kept.
pub const MAX_ROUTES_PER_CALLER: usize = 256;
/// Callers kept; more are counted, not kept.
pub const MAX_CALLERS: usize = 1024;
/// Entries kept, all callers together; more are counted, not kept.
pub const MAX_ENTRIES: usize = 16_384;
/// The longest route template kept (a longer one is cut, with `…`).
pub const MAX_ROUTE: usize = 256;
/// The most path segments a template keeps (then `/…`).
pub const MAX_SEGMENTS: usize = 16;

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
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut out = String::new();
    for (i, segment) in path.split('/').skip(1).enumerate() {
        if i == MAX_SEGMENTS {
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
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RouteKey {
    action: String,
    route: String,
    decision: &'static str,
    /// The deciding policy ids, sorted, comma-joined.
    policies: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub count: u64,
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
}

#[derive(Default)]
struct CallerTable {
    routes: HashMap<RouteKey, Counts>,
    overflow: u64,
}

#[derive(Default)]
struct Table {
    callers: HashMap<Arc<str>, CallerTable>,
    /// Entries of every caller.
    entries: usize,
    overflow_callers: u64,
}

/// The aggregates.
#[derive(Default)]
pub struct Usage {
    table: Mutex<Table>,
    /// Every decision counted and not kept, for `/metrics` without the lock.
    overflow: AtomicU64,
}

/// One aggregate, as `/usage` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageEntry {
    pub caller: String,
    pub action: String,
    pub route: String,
    pub decision: &'static str,
    pub policies: Vec<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

/// Everything held, sorted by caller, route and action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageSnapshot {
    pub entries: Vec<UsageEntry>,
    /// Decisions not kept as an entry because their caller held
    /// [`MAX_ROUTES_PER_CALLER`] keys already, by caller.
    pub overflow: Vec<(String, u64)>,
    /// Decisions not kept because [`MAX_CALLERS`] callers were held.
    pub overflow_callers: u64,
}

impl Usage {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `decision` on `path` at `now` (Unix seconds); whether it was
    /// kept as an entry (false: counted as overflow).
    pub fn record(&self, decision: &Decision, path: &str, now: i64) -> bool {
        let mut policies = decision.policies.clone();
        policies.sort();
        let key = RouteKey {
            action: decision.action.clone(),
            route: route_template(path),
            decision: decision.decision.as_str(),
            policies: policies.join(","),
        };
        let mut table = self.table();
        let principal: &str = &decision.principal;
        if !table.callers.contains_key(principal) {
            if table.callers.len() >= MAX_CALLERS {
                table.overflow_callers += 1;
                self.overflow.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            table
                .callers
                .insert(Arc::from(principal), CallerTable::default());
        }
        let all_full = table.entries >= MAX_ENTRIES;
        let Some(caller) = table.callers.get_mut(principal) else {
            return false;
        };
        let full = all_full || caller.routes.len() >= MAX_ROUTES_PER_CALLER;
        let kept = match caller.routes.get_mut(&key) {
            Some(counts) => {
                counts.count += 1;
                counts.last_seen = counts.last_seen.max(now);
                true
            }
            None if full => {
                caller.overflow += 1;
                false
            }
            None => {
                caller.routes.insert(
                    key,
                    Counts {
                        count: 1,
                        first_seen: now,
                        last_seen: now,
                    },
                );
                table.entries += 1;
                true
            }
        };
        if !kept {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
        kept
    }

    /// What is held now. The lock is held only to copy the table out.
    pub fn snapshot(&self) -> UsageSnapshot {
        type Row = (Arc<str>, RouteKey, Counts);
        let (rows, mut overflow, overflow_callers) = {
            let table = self.table();
            let rows: Vec<Row> = table
                .callers
                .iter()
                .flat_map(|(caller, t)| {
                    t.routes
                        .iter()
                        .map(move |(k, counts)| (caller.clone(), k.clone(), *counts))
                })
                .collect();
            let overflow: Vec<(String, u64)> = table
                .callers
                .iter()
                .filter(|(_, t)| t.overflow > 0)
                .map(|(c, t)| (c.to_string(), t.overflow))
                .collect();
            (rows, overflow, table.overflow_callers)
        };
        let mut entries: Vec<UsageEntry> = rows
            .into_iter()
            .map(|(caller, k, counts)| UsageEntry {
                caller: caller.to_string(),
                policies: if k.policies.is_empty() {
                    Vec::new()
                } else {
                    k.policies.split(',').map(str::to_owned).collect()
                },
                action: k.action,
                route: k.route,
                decision: k.decision,
                counts,
            })
            .collect();
        entries.sort_by(|a, b| {
            (&a.caller, &a.route, &a.action, a.decision, &a.policies).cmp(&(
                &b.caller,
                &b.route,
                &b.action,
                b.decision,
                &b.policies,
            ))
        });
        overflow.sort();
        UsageSnapshot {
            entries,
            overflow,
            overflow_callers,
        }
    }

    /// Decisions counted as overflow, all callers together.
    pub fn overflow_total(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Mode, Outcome};

    fn decision(principal: &str, outcome: Outcome, policies: &[&str]) -> Decision {
        Decision {
            allowed: outcome == Outcome::Allow,
            decision: outcome,
            mode: Mode::Enforce,
            principal: principal.into(),
            action: "Action::\"read\"".into(),
            resource: "Service::\"orders\"".into(),
            policies: policies.iter().map(|p| (*p).to_owned()).collect(),
            errors: Vec::new(),
            policy_version: "v1".into(),
        }
    }

    #[test]
    fn ids_collapse_into_templates() {
        for (path, want) in [
            ("/orders/42", "/orders/{id}"),
            ("/orders/42/items/7?x=1", "/orders/{id}/items/{id}"),
            (
                "/users/123e4567-e89b-12d3-a456-426614174000/profile",
                "/users/{id}/profile",
            ),
            ("/blobs/deadbeef00112233aabb", "/blobs/{id}"),
            ("/orders", "/orders"),
            ("/health", "/health"),
            ("/", "/"),
            ("", "/"),
            ("/v2/orders", "/v2/orders"),
            ("/cafebabecafebabe", "/cafebabecafebabe"),
            (
                "/------------------------------------",
                "/------------------------------------",
            ),
            (
                "/123e4567e-89b-12d3-a456-426614174000",
                "/123e4567e-89b-12d3-a456-426614174000",
            ),
        ] {
            assert_eq!(route_template(path), want, "{path}");
        }
        let deep = "/a".repeat(40);
        assert_eq!(route_template(&deep).matches('/').count(), MAX_SEGMENTS + 1);
        let long = format!("/{}", "é".repeat(400));
        assert!(route_template(&long).len() <= MAX_ROUTE + '…'.len_utf8());
    }

    #[test]
    fn decisions_aggregate_with_counts_and_times() {
        let usage = Usage::default();
        let frontend = "Workload::\"spiffe://example.org/ns/shop/sa/frontend\"";
        let allow = decision(frontend, Outcome::Allow, &["p2", "p1"]);
        assert!(usage.record(&allow, "/orders/1", 100));
        assert!(usage.record(&allow, "/orders/2", 105));
        assert!(usage.record(&decision(frontend, Outcome::Deny, &[]), "/admin", 110));
        let snapshot = usage.snapshot();
        assert_eq!(snapshot.entries.len(), 2, "{snapshot:?}");
        let orders = &snapshot.entries[1];
        assert_eq!(orders.route, "/orders/{id}");
        assert_eq!(orders.policies, ["p1", "p2"]);
        assert_eq!(
            orders.counts,
            Counts {
                count: 2,
                first_seen: 100,
                last_seen: 105
            }
        );
        assert_eq!(snapshot.entries[0].decision, "deny");
        assert!(snapshot.entries[0].policies.is_empty());
    }

    #[test]
    fn the_entries_of_all_callers_together_are_capped() {
        let usage = Usage::default();
        for c in 0..(MAX_ENTRIES / MAX_ROUTES_PER_CALLER) {
            let d = decision(&format!("c{c}"), Outcome::Allow, &[]);
            for r in 0..MAX_ROUTES_PER_CALLER {
                assert!(usage.record(&d, &format!("/r{r}x"), 1));
            }
        }
        assert_eq!(usage.overflow_total(), 0);
        assert!(!usage.record(&decision("late", Outcome::Allow, &[]), "/a", 2));
        assert_eq!(usage.overflow_total(), 1);
        // A key already held still counts.
        assert!(usage.record(&decision("c0", Outcome::Allow, &[]), "/r0x", 3));
        assert_eq!(usage.snapshot().entries.len(), MAX_ENTRIES);
    }

    #[test]
    fn a_flood_of_unique_paths_or_callers_stays_bounded() {
        let usage = Usage::default();
        let caller = "Workload::\"spiffe://example.org/ns/x/sa/flood\"";
        let d = decision(caller, Outcome::Allow, &["p"]);
        for i in 0..(MAX_ROUTES_PER_CALLER + 500) {
            usage.record(&d, &format!("/r{i}/x"), 1);
        }
        let snapshot = usage.snapshot();
        assert_eq!(snapshot.entries.len(), MAX_ROUTES_PER_CALLER);
        assert_eq!(snapshot.overflow, vec![(caller.to_owned(), 500)]);
        // Known keys still count once full.
        usage.record(&d, "/r0/x", 2);
        assert_eq!(usage.overflow_total(), 500);
        for i in 0..(MAX_CALLERS + 10) {
            usage.record(&decision(&format!("c{i}"), Outcome::Allow, &[]), "/", 3);
        }
        assert_eq!(usage.snapshot().overflow_callers, 11);
        assert_eq!(usage.overflow_total(), 511);
    }
}
