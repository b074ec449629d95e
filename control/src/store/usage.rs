//! Usage: what each sidecar's callers used, summed per day, and the edges
//! (a caller to a callee, a caller from a source range) with when each was
//! first seen. A report is one transaction: its rows, its new edges and
//! their audit records commit together or not at all.

use warden_proxy::control::api::{Edge, ReportMark, UsageReport, UsageRow};

use super::backend::{Row, Sql};
use super::{AuditEvent, Store, StoreError, insert_audit};
use crate::reason::Reason;

const DAY: i64 = 86_400;

/// New edges audited one by one per report; the rest get one record.
pub const MAX_EDGE_RECORDS: usize = 16;
/// Sidecar processes whose last report number is kept per callee, by
/// default: past them, the least recently updated are forgotten (those
/// updated in the same second as the last kept stay too), so a workload
/// starting processes without end cannot grow the table without end.
pub const MAX_REPORTERS_PER_CALLEE: i64 = 4096;
/// Rows one callee may add per day by default: past them, reports only add
/// to rows it already has (a flood of unique routes or callers, honest or
/// not, stays bounded in the database too).
pub const MAX_ROWS_PER_CALLEE_DAY: i64 = 50_000;

/// What storing a report did.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Edges seen for the first time.
    pub new: Vec<NewEdge>,
    /// Requests not stored: their rows would have passed the callee's
    /// rows for the day.
    pub dropped: u64,
    /// The report's number was stored already: nothing was added.
    pub duplicate: bool,
}

/// An edge seen for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEdge {
    pub edge: Edge,
}

fn clamp(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// `min`/`max` of a stored column and the incoming value, written the
/// same for SQLite and PostgreSQL.
const UPSERT_USAGE: &str = "INSERT INTO usage_daily \
     (day, callee, service, caller, action, route, decision, policies, count, first_seen, last_seen) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
     ON CONFLICT (day, callee, caller, action, route, decision, policies) DO UPDATE SET \
     service = excluded.service, \
     count = usage_daily.count + excluded.count, \
     first_seen = CASE WHEN excluded.first_seen < usage_daily.first_seen \
                  THEN excluded.first_seen ELSE usage_daily.first_seen END, \
     last_seen = CASE WHEN excluded.last_seen > usage_daily.last_seen \
                 THEN excluded.last_seen ELSE usage_daily.last_seen END";

fn edge_row(r: &Row) -> Result<Edge, StoreError> {
    Ok(Edge {
        caller: r.text(0)?,
        callee: r.text(1)?,
        kind: r.text(2)?,
        value: r.text(3)?,
        service: r.text(4)?,
        first_seen: r.int(5)?,
        last_seen: r.int(6)?,
    })
}

/// Inserts `edge` if it is new (true), else moves its `last_seen`.
fn touch_edge(sql: &mut dyn Sql, edge: &Edge) -> Result<bool, StoreError> {
    let inserted = sql.exec(
        "INSERT INTO access_edges (caller, callee, kind, value, service, first_seen, last_seen) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (caller, callee, kind, value) DO NOTHING",
        &[
            (&edge.caller).into(),
            (&edge.callee).into(),
            (&edge.kind).into(),
            (&edge.value).into(),
            (&edge.service).into(),
            edge.first_seen.into(),
            edge.last_seen.into(),
        ],
    )?;
    if inserted == 0 {
        sql.exec(
            "UPDATE access_edges SET last_seen = ?5, service = ?6 \
             WHERE caller = ?1 AND callee = ?2 AND kind = ?3 AND value = ?4 AND last_seen < ?5",
            &[
                (&edge.caller).into(),
                (&edge.callee).into(),
                (&edge.kind).into(),
                (&edge.value).into(),
                edge.last_seen.into(),
                (&edge.service).into(),
            ],
        )?;
    }
    Ok(inserted > 0)
}

/// Records `mark` as the last report of its sidecar process stored (true),
/// or finds it stored already (false): its number is at or below the
/// process's last. A process sends its reports one at a time, and a report
/// again only until it is answered, so a lower number is one stored before.
fn take_mark(
    sql: &mut dyn Sql,
    callee: &str,
    mark: &ReportMark,
    now: i64,
    cap: i64,
) -> Result<bool, StoreError> {
    let seq = i64::try_from(mark.seq)
        .map_err(|_| StoreError::refused(Reason::BadUsage, "report number out of range"))?;
    let last = sql.row(
        "SELECT seq FROM usage_reporters WHERE callee = ?1 AND instance = ?2",
        &[callee.into(), (&mark.instance).into()],
    )?;
    if let Some(row) = &last
        && row.int(0)? >= seq
    {
        return Ok(false);
    }
    sql.exec(
        "INSERT INTO usage_reporters (callee, instance, seq, updated) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (callee, instance) DO UPDATE SET seq = excluded.seq, updated = excluded.updated",
        &[
            callee.into(),
            (&mark.instance).into(),
            seq.into(),
            now.into(),
        ],
    )?;
    if last.is_none() {
        // A new process: the callee's oldest forgotten past the cap.
        sql.exec(
            "DELETE FROM usage_reporters WHERE callee = ?1 AND updated < \
             (SELECT updated FROM usage_reporters WHERE callee = ?1 \
              ORDER BY updated DESC LIMIT 1 OFFSET ?2)",
            &[callee.into(), (cap - 1).into()],
        )?;
    }
    Ok(true)
}

impl Store {
    /// Stores a checked report from the SVID `serial` (refused if it is
    /// revoked or was not issued here): its entries added to their day's
    /// rows, its edges recorded; the edges seen for the first time, at
    /// `now`, are audited (`new_edge`; past [`MAX_EDGE_RECORDS`] in one
    /// report, one record counts the rest) and returned. A report with a
    /// `mark` is stored at most once: one whose number its sidecar process
    /// (the mark's instance) has already had stored changes nothing and is
    /// answered as a duplicate.
    pub fn record_usage(
        &self,
        report: &UsageReport,
        mark: Option<&ReportMark>,
        serial: &str,
        now: i64,
    ) -> Result<Recorded, StoreError> {
        let (cap, reporter_cap) = (self.usage_row_cap, self.reporter_cap);
        let (new, events, dropped, duplicate) = self.backend.tx(|sql| {
            // The TLS layer does not know revocations: refused here, in
            // the transaction that would store the report.
            let svid = sql.row(
                "SELECT s.revoked, s.spiffe_id, i.revoked_at FROM svids s \
                 JOIN identities i ON i.spiffe_id = s.spiffe_id WHERE s.serial = ?1",
                &[serial.into()],
            )?;
            match svid {
                Some(row) if row.text(1)? != report.callee => {
                    return Err(StoreError::refused(
                        Reason::UsageNotOwn,
                        format!("SVID {serial} is not {}'s", report.callee),
                    ));
                }
                Some(row) if row.int(0)? != 0 || row.opt_int(2)?.is_some() => {
                    return Err(StoreError::refused(
                        Reason::SvidRevoked,
                        format!("SVID {serial} is revoked"),
                    ));
                }
                Some(_) => {}
                None => {
                    return Err(StoreError::refused(
                        Reason::UnknownSvid,
                        format!("SVID {serial} was not issued here"),
                    ));
                }
            }
            if let Some(mark) = mark
                && !take_mark(sql, &report.callee, mark, now, reporter_cap)?
            {
                return Ok((Vec::new(), Vec::new(), 0, true));
            }
            let mut calls: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
            // New rows each day may still take for this callee.
            let mut room: std::collections::BTreeMap<i64, i64> = Default::default();
            let mut dropped = 0u64;
            for e in &report.entries {
                let policies = e.policies.join(",");
                let day = e.last_seen.div_euclid(DAY);
                let left = match room.entry(day) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let held = sql
                            .row(
                                "SELECT COUNT(*) FROM usage_daily WHERE day = ?1 AND callee = ?2",
                                &[day.into(), (&report.callee).into()],
                            )?
                            .map_or(Ok(0), |r| r.int(0))?;
                        v.insert(cap - held)
                    }
                };
                if *left <= 0 {
                    let exists = sql
                        .row(
                            "SELECT 1 FROM usage_daily WHERE day = ?1 AND callee = ?2 AND caller = ?3 \
                             AND action = ?4 AND route = ?5 AND decision = ?6 AND policies = ?7",
                            &[
                                day.into(),
                                (&report.callee).into(),
                                (&e.caller).into(),
                                (&e.action).into(),
                                (&e.route).into(),
                                (&e.decision).into(),
                                (&policies).into(),
                            ],
                        )?
                        .is_some();
                    if !exists {
                        dropped = dropped.saturating_add(e.count);
                        continue;
                    }
                } else {
                    // Counted as new whether or not it was (cheap, and
                    // errs on the side of the cap).
                    *left -= 1;
                }
                sql.exec(
                    UPSERT_USAGE,
                    &[
                        (e.last_seen.div_euclid(DAY)).into(),
                        (&report.callee).into(),
                        (&report.service).into(),
                        (&e.caller).into(),
                        (&e.action).into(),
                        (&e.route).into(),
                        (&e.decision).into(),
                        policies.into(),
                        clamp(e.count).into(),
                        e.first_seen.into(),
                        e.last_seen.into(),
                    ],
                )?;
                let seen = calls.entry(&e.caller).or_insert((e.first_seen, e.last_seen));
                seen.0 = seen.0.min(e.first_seen);
                seen.1 = seen.1.max(e.last_seen);
            }
            let mut edges: Vec<Edge> = calls
                .into_iter()
                .map(|(caller, (first, last))| Edge {
                    caller: caller.to_owned(),
                    callee: report.callee.clone(),
                    service: report.service.clone(),
                    kind: "call".into(),
                    value: String::new(),
                    first_seen: first,
                    last_seen: last,
                })
                .collect();
            // A range is known per (caller, callee): another sidecar's
            // reports cannot make it known (or new) here.
            edges.extend(report.sources.iter().map(|s| Edge {
                caller: s.caller.clone(),
                callee: report.callee.clone(),
                service: report.service.clone(),
                kind: "source".into(),
                value: s.range.clone(),
                first_seen: s.first_seen,
                last_seen: s.last_seen,
            }));
            // A new edge is first seen now, whatever the report says (a
            // late or back-dated report does not hide it from
            // `access edges --new-since`).
            for edge in &mut edges {
                edge.first_seen = now;
            }
            let mut new = Vec::new();
            let mut events = Vec::new();
            // Callers new to this callee: their first range is part of
            // their new call edge, not an alert of its own.
            let mut first_calls = std::collections::BTreeSet::new();
            let mut unrecorded = 0usize;
            for edge in edges {
                if touch_edge(sql, &edge)? {
                    if edge.kind == "call" {
                        first_calls.insert(edge.caller.clone());
                    } else if first_calls.contains(&edge.caller) {
                        continue;
                    }
                    if events.len() >= MAX_EDGE_RECORDS {
                        unrecorded += 1;
                        new.push(NewEdge { edge });
                        continue;
                    }
                    let detail = match edge.kind.as_str() {
                        "call" => format!(
                            "new edge: {} called {} ({}) for the first time",
                            edge.caller, edge.callee, edge.service
                        ),
                        _ => format!(
                            "new edge: {} called {} ({}) from {}, a source range not seen for it before",
                            edge.caller, report.callee, edge.service, edge.value
                        ),
                    };
                    let caller_id = edge.caller.starts_with("spiffe://").then_some(edge.caller.as_str());
                    let event = AuditEvent::ok("new_edge", caller_id, None, &report.callee)
                        .with_detail(detail);
                    insert_audit(sql, &event)?;
                    events.push(event);
                    new.push(NewEdge { edge });
                }
            }
            if unrecorded > 0 {
                let event = AuditEvent::ok("new_edge", None, None, &report.callee).with_detail(
                    format!(
                        "{unrecorded} more new edges to {} in one report (see `warden access edges`)",
                        report.callee
                    ),
                );
                insert_audit(sql, &event)?;
                events.push(event);
            }
            Ok((new, events, dropped, false))
        })?;
        for event in &events {
            self.echo(event);
        }
        Ok(Recorded {
            new,
            dropped,
            duplicate,
        })
    }

    /// Usage seen at or after `since` (whole days: a day's rows hold its
    /// counts from midnight UTC), summed per (callee, caller, action,
    /// route, decision, policies); only `identity`'s as caller or callee if
    /// given.
    pub fn usage_since(
        &self,
        since: i64,
        identity: Option<&str>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.backend.tx(|sql| {
            sql.rows(
                "SELECT callee, MAX(service), caller, action, route, decision, policies, \
                        CAST(SUM(count) AS BIGINT), MIN(first_seen), MAX(last_seen) \
                 FROM usage_daily WHERE last_seen >= ?1 \
                   AND (CAST(?2 AS TEXT) IS NULL OR caller = CAST(?2 AS TEXT) OR callee = CAST(?2 AS TEXT)) \
                 GROUP BY callee, caller, action, route, decision, policies \
                 ORDER BY caller, callee, route, action, decision, policies",
                &[since.into(), identity.into()],
            )?
            .iter()
            .map(|r| {
                let policies = r.text(6)?;
                Ok(UsageRow {
                    callee: r.text(0)?,
                    service: r.text(1)?,
                    caller: r.text(2)?,
                    action: r.text(3)?,
                    route: r.text(4)?,
                    decision: r.text(5)?,
                    policies: if policies.is_empty() {
                        Vec::new()
                    } else {
                        policies.split(',').map(str::to_owned).collect()
                    },
                    count: u64::try_from(r.int(7)?).unwrap_or(0),
                    first_seen: r.int(8)?,
                    last_seen: r.int(9)?,
                })
            })
            .collect()
        })
    }

    /// Edges first seen at or after `since`, oldest first.
    pub fn edges_since(&self, since: i64) -> Result<Vec<Edge>, StoreError> {
        self.backend.tx(|sql| {
            sql.rows(
                "SELECT caller, callee, kind, value, service, first_seen, last_seen \
                 FROM access_edges WHERE first_seen >= ?1 \
                 ORDER BY first_seen, caller, callee, kind, value",
                &[since.into()],
            )?
            .iter()
            .map(edge_row)
            .collect()
        })
    }

    /// Deletes usage of days wholly before `before`, and edges last seen
    /// before it (seen again later, an edge is new again); the rows deleted.
    pub fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        self.backend.tx(|sql| {
            let rows = sql.exec(
                "DELETE FROM usage_daily WHERE day < ?1",
                &[before.div_euclid(DAY).into()],
            )?;
            let edges = sql.exec(
                "DELETE FROM access_edges WHERE last_seen < ?1",
                &[before.into()],
            )?;
            // On the same day boundary as the usage they guard.
            let reporters = sql.exec(
                "DELETE FROM usage_reporters WHERE updated < ?1",
                &[(before.div_euclid(DAY) * DAY).into()],
            )?;
            Ok(rows + edges + reporters)
        })
    }
}
