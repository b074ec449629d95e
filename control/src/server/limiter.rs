//! Bounds the audit rows that refusals write per source address.
//!
//! The first [`PER_WINDOW`] refusals from one address in a 10 s window are
//! audited one by one. The rest are counted and written as one summary row
//! per address when the window ends. A flood of bad tokens or bad
//! certificates cannot become a flood of synced database writes that starves
//! legitimate renewals; the metrics still count every refusal.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

pub(super) const WINDOW: Duration = Duration::from_secs(10);
pub(super) const PER_WINDOW: u32 = 50;
/// Addresses tracked per window; refusals from more share one bucket.
const MAX_SOURCES: usize = 10_000;
/// The bucket for addresses past [`MAX_SOURCES`].
const OTHERS: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

pub(super) struct AuditLimiter {
    window_start: Instant,
    per_source: HashMap<IpAddr, u32>,
    suppressed: BTreeMap<IpAddr, u64>,
}

impl AuditLimiter {
    pub(super) fn new(now: Instant) -> Self {
        AuditLimiter {
            window_start: now,
            per_source: HashMap::new(),
            suppressed: BTreeMap::new(),
        }
    }

    /// Whether a refusal from `source` gets its own audit row.
    pub(super) fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        if now.duration_since(self.window_start) >= WINDOW && self.suppressed.is_empty() {
            self.per_source.clear();
            self.window_start = now;
        }
        let key = if self.per_source.len() >= MAX_SOURCES && !self.per_source.contains_key(&source)
        {
            OTHERS
        } else {
            source
        };
        let seen = self.per_source.entry(key).or_default();
        *seen = seen.saturating_add(1);
        if *seen <= PER_WINDOW {
            return true;
        }
        *self.suppressed.entry(key).or_default() += 1;
        false
    }

    /// Once the window is over: how many refusals each address had beyond
    /// its allowance, for one summary row each; and a new window starts.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<(IpAddr, u64)> {
        if now.duration_since(self.window_start) < WINDOW {
            return Vec::new();
        }
        self.per_source.clear();
        self.window_start = now;
        std::mem::take(&mut self.suppressed).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_summarized_and_others_are_unaffected() {
        let t0 = Instant::now();
        let mut limiter = AuditLimiter::new(t0);
        let flood: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        let admitted = (0..500).filter(|_| limiter.admit(flood, t0)).count();
        assert_eq!(admitted, PER_WINDOW as usize);
        assert!(
            limiter.admit(other, t0),
            "another address keeps its own allowance"
        );
        assert!(
            limiter.take_due(t0 + Duration::from_secs(1)).is_empty(),
            "not before the window ends"
        );
        let due = limiter.take_due(t0 + WINDOW);
        assert_eq!(due, vec![(flood, 450)]);
        // A new window: the address is audited again.
        assert!(limiter.admit(flood, t0 + WINDOW));
        assert!(limiter.take_due(t0 + WINDOW * 2).is_empty());
    }
}
