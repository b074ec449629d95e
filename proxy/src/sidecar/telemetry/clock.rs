//! Span timestamps.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time from the monotonic clock: one clock read per span
/// boundary instead of two, against a base re-read every second (so a
/// stepped wall clock shows up in spans within a second).
pub(super) struct Clock {
    base: Mutex<(Instant, u64)>,
}

impl Clock {
    pub(super) fn new() -> Clock {
        Clock {
            base: Mutex::new((Instant::now(), Self::wall())),
        }
    }

    fn wall() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// Unix nanoseconds at `now`.
    pub(super) fn unix_nanos(&self, now: Instant) -> u64 {
        let mut base = match self.base.lock() {
            Ok(base) => base,
            Err(poisoned) => poisoned.into_inner(),
        };
        let since = now.saturating_duration_since(base.0);
        if since >= Duration::from_secs(1) {
            *base = (Instant::now(), Self::wall());
            return base.1;
        }
        base.1
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}
