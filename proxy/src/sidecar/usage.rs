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
    let mut out = String::new();
    write_template(path, &mut out);
    out
}

/// [`route_template`] into `out` (emptied first): no allocation once `out`
/// has the capacity.
fn write_template(path: &str, out: &mut String) {
    out.clear();
    let path = path.split(['?', '#']).next().unwrap_or("");
    for (i, segment) in path.split('/').skip(1).enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/…");
            break;
        }
        // A segment a template could not tell from a collapsed id or a
        // cut ends the template: it stays a cut, which is never proposed.
        if segment.contains(['{', '}', '…']) {
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
}

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

    /// Takes at most `max` pending entries (and the sources of their
    /// callers) as a report from `callee` for `service`; None when nothing
    /// is pending. Give it back with [`Usage::restore`] if it is not sent
    /// (too large: taken again in smaller parts).
    pub fn take_report(
        &self,
        callee: &str,
        service: &str,
        max: usize,
        now: i64,
    ) -> Option<UsageReport> {
        let mut tables = self.tables();
        let pending = &mut tables.pending;
        if pending.table.entries == 0
            && pending.table.overflow_callers == 0
            && pending.table.callers.values().all(|t| t.overflow == 0)
        {
            return None;
        }
        let mut entries = Vec::new();
        let mut sources = Vec::new();
        let mut overflow = std::mem::take(&mut pending.table.overflow_callers);
        let callers: Vec<Arc<str>> = pending.table.callers.keys().cloned().collect();
        for caller in callers {
            let room = max.saturating_sub(entries.len());
            if room == 0 {
                break;
            }
            let Some(table) = pending.table.callers.get_mut(&caller) else {
                continue;
            };
            let ranges = pending.sources.get(&caller).map_or(0, Map::len);
            if sources.len() + ranges > MAX_USAGE_SOURCES {
                continue;
            }
            // A caller with more routes than there is room for: some now,
            // the rest (and its sources) in a later report.
            let taken: Vec<(RouteKey, Counts)> = if table.routes.len() <= room {
                table.routes.drain().collect()
            } else {
                let keys: Vec<RouteKey> = table.routes.keys().take(room).cloned().collect();
                keys.into_iter()
                    .filter_map(|k| table.routes.remove_entry(&k))
                    .collect()
            };
            pending.table.entries -= taken.len();
            let name = caller_name(&caller);
            for (key, counts) in taken {
                let entry = UsageRecord {
                    caller: name.clone(),
                    action: action_name(&key.action),
                    route: key.route,
                    decision: key.decision.to_owned(),
                    policies: key.policies,
                    count: counts.count.min(MAX_USAGE_COUNT),
                    first_seen: counts.first_seen,
                    last_seen: counts.last_seen,
                };
                // What the control plane would refuse (a policy id it
                // cannot take, a clock far ahead) would cost the whole
                // report: counted as overflow instead.
                match entry.check(now) {
                    Ok(()) => entries.push(entry),
                    Err(e) => {
                        tracing::debug!(error = %e, "usage entry not reportable");
                        overflow = overflow.saturating_add(counts.count);
                    }
                }
            }
            if !table.routes.is_empty() {
                continue;
            }
            if let Some(table) = pending.table.callers.remove(&caller) {
                overflow = overflow.saturating_add(table.overflow);
            }
            for (range, counts) in pending.sources.remove(&caller).unwrap_or_default() {
                sources.push(SourceRecord {
                    caller: name.clone(),
                    range: range.text(),
                    count: counts.count,
                    first_seen: counts.first_seen,
                    last_seen: counts.last_seen,
                });
            }
        }
        // Sources of callers with no entry held (every decision overflowed).
        let orphans: Vec<Arc<str>> = pending
            .sources
            .keys()
            .filter(|c| !pending.table.callers.contains_key(&**c))
            .cloned()
            .collect();
        for caller in orphans {
            if sources.len() + pending.sources.get(&caller).map_or(0, Map::len) > MAX_USAGE_SOURCES
            {
                break;
            }
            if let Some(ranges) = pending.sources.remove(&caller) {
                let name = caller_name(&caller);
                sources.extend(ranges.into_iter().map(|(range, counts)| SourceRecord {
                    caller: name.clone(),
                    range: range.text(),
                    count: counts.count,
                    first_seen: counts.first_seen,
                    last_seen: counts.last_seen,
                }));
            }
        }
        entries.sort_by(|a, b| {
            (&a.caller, &a.route, &a.action).cmp(&(&b.caller, &b.route, &b.action))
        });
        Some(UsageReport {
            callee: callee.to_owned(),
            service: service.to_owned(),
            entries,
            sources,
            overflow,
        })
    }

    /// Puts back a report that was not sent: merged into what is
    /// pending, within the same caps (what does not fit is overflow).
    pub fn restore(&self, report: UsageReport) {
        let mut tables = self.tables();
        let pending = &mut tables.pending;
        pending.table.overflow_callers = pending
            .table
            .overflow_callers
            .saturating_add(report.overflow);
        for e in report.entries {
            let principal = principal_of(&e.caller);
            let Some(decision) = ["allow", "deny"].into_iter().find(|d| *d == e.decision) else {
                continue;
            };
            let action = format!("Action::\"{}\"", e.action);
            let key = KeyRef {
                action: &action,
                route: &e.route,
                decision,
                policies: &e.policies,
            };
            pending.table.add(
                &principal,
                &key,
                Counts {
                    count: e.count,
                    first_seen: e.first_seen,
                    last_seen: e.last_seen,
                },
            );
        }
        for s in report.sources {
            let principal = principal_of(&s.caller);
            let counts = Counts {
                count: s.count,
                first_seen: s.first_seen,
                last_seen: s.last_seen,
            };
            if !pending.sources.contains_key(principal.as_str())
                && pending.sources.len() >= MAX_CALLERS
            {
                continue;
            }
            let Some(range) = SourceRange::parse(&s.range) else {
                continue;
            };
            let ranges = pending
                .sources
                .entry(Arc::from(principal.as_str()))
                .or_default();
            add_source(ranges, range, counts);
        }
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

/// The inverse of [`caller_name`].
fn principal_of(caller: &str) -> String {
    match caller.strip_prefix("unauthenticated:") {
        Some(kind) => format!("Unauthenticated::\"{kind}\""),
        None => format!("Workload::\"{caller}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Mode, Outcome};

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn decision(principal: &str, outcome: Outcome, policies: &[&str]) -> Decision {
        Decision {
            allowed: outcome == Outcome::Allow,
            decision: outcome,
            mode: Mode::Enforce,
            principal: principal.into(),
            action: "Action::\"GET\"".into(),
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
            ("/a/{id}/b", "/a/…"),
            ("/a/x…/b", "/a/…"),
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
        assert!(usage.record(&allow, "/orders/1", LOCAL, 100));
        assert!(usage.record(&allow, "/orders/2", LOCAL, 105));
        assert!(usage.record(
            &decision(frontend, Outcome::Deny, &[]),
            "/admin",
            LOCAL,
            110
        ));
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
                assert!(usage.record(&d, &format!("/r{r}x"), LOCAL, 1));
            }
        }
        assert_eq!(usage.overflow_total(), 0);
        assert!(!usage.record(&decision("late", Outcome::Allow, &[]), "/a", LOCAL, 2));
        assert_eq!(usage.overflow_total(), 1);
        // A key already held still counts.
        assert!(usage.record(&decision("c0", Outcome::Allow, &[]), "/r0x", LOCAL, 3));
        assert_eq!(usage.snapshot().entries.len(), MAX_ENTRIES);
    }

    #[test]
    fn a_flood_of_unique_paths_or_callers_stays_bounded() {
        let usage = Usage::default();
        let caller = "Workload::\"spiffe://example.org/ns/x/sa/flood\"";
        let d = decision(caller, Outcome::Allow, &["p"]);
        for i in 0..(MAX_ROUTES_PER_CALLER + 500) {
            usage.record(&d, &format!("/r{i}/x"), LOCAL, 1);
        }
        let snapshot = usage.snapshot();
        assert_eq!(snapshot.entries.len(), MAX_ROUTES_PER_CALLER);
        assert_eq!(snapshot.overflow, vec![(caller.to_owned(), 500)]);
        // Known keys still count once full.
        usage.record(&d, "/r0/x", LOCAL, 2);
        assert_eq!(usage.overflow_total(), 500);
        for i in 0..(MAX_CALLERS + 10) {
            usage.record(
                &decision(&format!("c{i}"), Outcome::Allow, &[]),
                "/",
                LOCAL,
                3,
            );
        }
        assert_eq!(usage.snapshot().overflow_callers, 11);
        assert_eq!(usage.overflow_total(), 511);
    }

    #[test]
    fn reports_drain_what_is_pending_and_a_failed_send_gives_it_back() {
        let usage = Usage::default();
        let frontend = "Workload::\"spiffe://example.org/ns/shop/sa/frontend\"";
        let allow = decision(frontend, Outcome::Allow, &["p1"]);
        usage.record(&allow, "/orders/1", LOCAL, 100);
        usage.record(&allow, "/orders/2", "10.1.2.3".parse().expect("ip"), 101);
        usage.record(
            &decision("Unauthenticated::\"plaintext\"", Outcome::Deny, &[]),
            "/x",
            LOCAL,
            102,
        );
        let report = usage.take_report("spiffe://example.org/orders", "orders", 1024, 200);
        let report = report.expect("pending");
        assert_eq!(report.entries.len(), 2, "{report:?}");
        assert_eq!(
            report.entries[0].caller,
            "spiffe://example.org/ns/shop/sa/frontend"
        );
        assert_eq!(report.entries[0].action, "GET");
        assert_eq!(report.entries[0].count, 2);
        assert_eq!(report.entries[1].caller, "unauthenticated:plaintext");
        let mut ranges: Vec<&str> = report.sources.iter().map(|s| s.range.as_str()).collect();
        ranges.sort();
        assert_eq!(ranges, ["10.1.2.0/24", "127.0.0.0/24", "127.0.0.0/24"]);
        assert!(usage.take_report("x", "y", 1024, 200).is_none(), "drained");
        // Not sent: back, and merged with what came since.
        usage.restore(report);
        usage.record(&allow, "/orders/3", LOCAL, 103);
        let again = usage.take_report("x", "y", 1024, 200).expect("restored");
        let orders = &again.entries[0];
        assert_eq!(
            (orders.count, orders.first_seen, orders.last_seen),
            (3, 100, 103)
        );
        // The cumulative view is not drained by reports.
        assert_eq!(usage.snapshot().entries[1].counts.count, 3);
        assert_eq!(
            source_range("::ffff:10.9.8.7".parse().expect("ip")),
            "10.9.8.0/24"
        );
        assert_eq!(
            source_range("2001:db8:1:2:3::4".parse().expect("ip")),
            "2001:db8:1:2::/64"
        );
        // What the control plane would refuse is counted, not sent.
        usage.record(
            &decision(frontend, Outcome::Allow, &["a,b"]),
            "/x",
            LOCAL,
            104,
        );
        let odd = usage.take_report("x", "y", 1024, 200).expect("pending");
        assert!(odd.entries.is_empty(), "{odd:?}");
        assert_eq!(odd.overflow, 1);
    }

    #[test]
    fn a_report_holds_at_most_max_entries_and_the_rest_waits() {
        let usage = Usage::default();
        for c in 0..4 {
            let d = decision(
                &format!("Workload::\"spiffe://t/c{c}\""),
                Outcome::Allow,
                &[],
            );
            for r in 0..10 {
                usage.record(&d, &format!("/r{r}x"), LOCAL, 1);
            }
        }
        // A caller's routes may be split; its sources go with its last part.
        let first = usage.take_report("x", "y", 25, 200).expect("first");
        assert_eq!((first.entries.len(), first.sources.len()), (25, 2));
        assert_eq!(usage.pending_entries(), 15);
        let second = usage.take_report("x", "y", 25, 200).expect("second");
        assert_eq!((second.entries.len(), second.sources.len()), (15, 2));
        assert!(usage.take_report("x", "y", 25, 200).is_none());
        // One entry a report still moves a caller with many routes along.
        for r in 0..3 {
            usage.record(
                &decision("Workload::\"spiffe://t/one\"", Outcome::Allow, &[]),
                &format!("/r{r}x"),
                LOCAL,
                1,
            );
        }
        for left in [2, 1, 0] {
            let one = usage.take_report("x", "y", 1, 200).expect("one");
            assert_eq!(one.entries.len(), 1);
            assert_eq!(usage.pending_entries(), left);
        }
    }
}
