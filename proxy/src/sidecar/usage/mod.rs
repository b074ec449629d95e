//! What this sidecar's service is used for: every decision, aggregated by
//! caller, action, route template, outcome and the deciding policies, with
//! counts and first and last seen. The raw path never becomes a key: ids
//! collapse (`/orders/42` is `/orders/{id}`), and each caller holds at most
//! [`MAX_ROUTES_PER_CALLER`] keys (then an overflow count), with at most
//! [`MAX_CALLERS`] callers, so a flood of unique paths or identities costs
//! bounded memory. `GET /usage` on the admin server shows it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::authz::Decision;
use crate::control::api::{
    MAX_USAGE_COUNT, MAX_USAGE_SOURCES, SourceRecord, UsageRecord, UsageReport,
};

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

mod report;
mod route;
#[cfg(test)]
mod tests;

pub use route::route_template;
use route::write_template;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RouteKey {
    action: String,
    route: String,
    decision: &'static str,
    /// The deciding policy ids, sorted.
    policies: Vec<String>,
}

/// A [`RouteKey`] borrowed from a decision: looked up without allocating
/// (it hashes as the key it stands for), made owned only when inserted.
#[derive(Hash)]
struct KeyRef<'a> {
    action: &'a str,
    route: &'a str,
    decision: &'static str,
    policies: &'a [String],
}

impl hashbrown::Equivalent<RouteKey> for KeyRef<'_> {
    fn equivalent(&self, key: &RouteKey) -> bool {
        self.action == key.action
            && self.route == key.route
            && self.decision == key.decision
            && self.policies == key.policies.as_slice()
    }
}

impl KeyRef<'_> {
    fn to_key(&self) -> RouteKey {
        RouteKey {
            action: self.action.to_owned(),
            route: self.route.to_owned(),
            decision: self.decision,
            policies: self.policies.to_vec(),
        }
    }
}

/// Maps keyed by the caller's verified identity, the route template and
/// the source range: foldhash, seeded at random per process. Not SipHash
/// (the previous choice): three quarters of the usage table's work per
/// request went to hashing the same keys into its five maps. foldhash does
/// not claim resistance to collision attacks; what bounds their cost here
/// is the caps and the seed. Callers choose routes, but a caller's routes
/// are at most [`MAX_ROUTES_PER_CALLER`] and its source ranges at most
/// [`MAX_SOURCES_PER_CALLER`], so a lookup there compares at most that many
/// keys; the callers map (at most [`MAX_CALLERS`]) is keyed by verified
/// identities, which a caller cannot pick freely; and the seed cannot be
/// observed from outside.
type Map<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub count: u64,
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
}

#[derive(Default)]
struct CallerTable {
    routes: Map<RouteKey, Counts>,
    overflow: u64,
}

#[derive(Default)]
struct Table {
    callers: Map<Arc<str>, CallerTable>,
    /// Entries of every caller.
    entries: usize,
    overflow_callers: u64,
}

impl Counts {
    fn merge(&mut self, other: Counts) {
        self.count = self.count.saturating_add(other.count);
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
    }
}

impl Table {
    /// Adds `counts` to `key` of `caller`; whether it was kept (false:
    /// counted as overflow, a cap being reached).
    fn add(&mut self, caller: &str, key: &KeyRef<'_>, counts: Counts) -> bool {
        let all_full = self.entries >= MAX_ENTRIES;
        if self.callers.len() >= MAX_CALLERS && !self.callers.contains_key(caller) {
            self.overflow_callers = self.overflow_callers.saturating_add(counts.count);
            return false;
        }
        let table = self.callers.entry_ref(caller).or_default();
        let full = all_full || table.routes.len() >= MAX_ROUTES_PER_CALLER;
        match table.routes.get_mut(key) {
            Some(held) => {
                held.merge(counts);
                true
            }
            None if full => {
                table.overflow = table.overflow.saturating_add(counts.count);
                false
            }
            None => {
                table.routes.insert(key.to_key(), counts);
                self.entries += 1;
                true
            }
        }
    }
}

/// The most source ranges kept per caller until the next report.
pub const MAX_SOURCES_PER_CALLER: usize = 16;

/// Since the last report: the same aggregates, and the source ranges each
/// caller called from.
#[derive(Default)]
struct Pending {
    table: Table,
    sources: Map<Arc<str>, Map<SourceRange, Counts>>,
}

/// A source range held without allocating: an IPv4 /24 or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceRange {
    V4([u8; 3]),
    V6([u16; 4]),
}

impl SourceRange {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                SourceRange::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                SourceRange::V6([s[0], s[1], s[2], s[3]])
            }
        }
    }

    /// As a report writes it (`10.1.2.0/24`, `2001:db8:1:2::/64`).
    fn text(self) -> String {
        match self {
            SourceRange::V4([a, b, c]) => format!("{a}.{b}.{c}.0/24"),
            SourceRange::V6([a, b, c, d]) => {
                format!("{}/64", std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        }
    }

    /// The inverse of [`SourceRange::text`].
    fn parse(text: &str) -> Option<Self> {
        let (ip, _) = text.split_once('/')?;
        let range = SourceRange::of(ip.parse().ok()?);
        (range.text() == text).then_some(range)
    }
}

#[derive(Default)]
struct Tables {
    /// Everything since start, for `/usage`.
    all: Table,
    /// Not yet reported to the control plane.
    pending: Pending,
    /// The template of the path being recorded (its capacity reused).
    scratch: String,
}

/// The aggregates.
#[derive(Default)]
pub struct Usage {
    table: Mutex<Tables>,
    /// Every decision counted and not kept, for `/metrics` without the lock.
    overflow: AtomicU64,
    /// Reports to the control plane, by outcome.
    pub reports: ReportCounts,
}

/// Usage reports by outcome, for `/metrics`.
#[derive(Default)]
pub struct ReportCounts {
    pub sent: AtomicU64,
    /// Not sent (kept for the next report).
    pub failed: AtomicU64,
    /// Refused by the control plane (dropped).
    pub refused: AtomicU64,
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

/// The range a source address is counted in: its IPv4 /24 or IPv6 /64.
pub fn source_range(ip: IpAddr) -> String {
    SourceRange::of(ip).text()
}

/// A principal as Cedar writes it (`Workload::"spiffe://..."`,
/// `Unauthenticated::"plaintext"`) as a report names it: the SPIFFE ID,
/// or `unauthenticated:<kind>`.
pub fn caller_name(principal: &str) -> String {
    let inner = |prefix: &str| {
        principal
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix('"'))
            .map(str::to_owned)
    };
    if let Some(id) = inner("Workload::\"") {
        return id;
    }
    if let Some(kind) = inner("Unauthenticated::\"") {
        return format!("unauthenticated:{kind}");
    }
    principal.to_owned()
}

/// An action as Cedar writes it (`Action::"GET"`) as a report names it.
pub fn action_name(action: &str) -> String {
    action
        .strip_prefix("Action::\"")
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(action)
        .to_owned()
}

impl Usage {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `decision` on `path`, from `source`, at `now` (Unix
    /// seconds); whether it was kept as an entry (false: counted as
    /// overflow).
    pub fn record(&self, decision: &Decision, path: &str, source: IpAddr, now: i64) -> bool {
        // Usually one policy, so already sorted: no copy.
        let policies: std::borrow::Cow<'_, [String]> = if decision.policies.is_sorted() {
            std::borrow::Cow::Borrowed(&decision.policies)
        } else {
            let mut sorted = decision.policies.clone();
            sorted.sort();
            std::borrow::Cow::Owned(sorted)
        };
        let one = Counts {
            count: 1,
            first_seen: now,
            last_seen: now,
        };
        let principal: &str = &decision.principal;
        let range = SourceRange::of(source);
        let mut tables = self.tables();
        let Tables {
            all,
            pending,
            scratch,
        } = &mut *tables;
        write_template(path, scratch);
        let key = KeyRef {
            action: &decision.action,
            route: scratch,
            decision: decision.decision.as_str(),
            policies: &policies,
        };
        let kept = all.add(principal, &key, one);
        pending.table.add(principal, &key, one);
        if let Some(ranges) = pending.sources.get_mut(principal) {
            add_source(ranges, range, one);
        } else if pending.sources.len() < MAX_CALLERS {
            pending
                .sources
                .insert(Arc::from(principal), Map::from_iter([(range, one)]));
        }
        drop(tables);
        if !kept {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
        kept
    }

    /// Entries waiting for the next report.
    pub fn pending_entries(&self) -> usize {
        self.tables().pending.table.entries
    }

    /// What is held now. The lock is held only to copy the table out.
    pub fn snapshot(&self) -> UsageSnapshot {
        type Row = (Arc<str>, RouteKey, Counts);
        let (rows, mut overflow, overflow_callers) = {
            let tables = self.tables();
            let table = &tables.all;
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
                policies: k.policies,
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

/// Adds to a caller's source ranges, within [`MAX_SOURCES_PER_CALLER`].
fn add_source(ranges: &mut Map<SourceRange, Counts>, range: SourceRange, counts: Counts) {
    let full = ranges.len() >= MAX_SOURCES_PER_CALLER;
    match ranges.entry(range) {
        hashbrown::hash_map::Entry::Occupied(mut held) => held.get_mut().merge(counts),
        hashbrown::hash_map::Entry::Vacant(slot) if !full => {
            slot.insert(counts);
        }
        hashbrown::hash_map::Entry::Vacant(_) => {}
    }
}
