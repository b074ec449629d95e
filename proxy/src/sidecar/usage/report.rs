//! A report taken from the pending table, and one put back.

use super::*;

impl Usage {
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
}

/// The inverse of [`caller_name`].
fn principal_of(caller: &str) -> String {
    match caller.strip_prefix("unauthenticated:") {
        Some(kind) => format!("Unauthenticated::\"{kind}\""),
        None => format!("Workload::\"{caller}\""),
    }
}
