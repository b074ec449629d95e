//! The control plane's "now". Every decision that depends on the time (a
//! token's or an SVID's expiry, which revocations still matter, an
//! identity's status, a CA rotation's steps, the validity the CA signs)
//! reads one injected [`Clock`]: the system's in production, one the test
//! sets in tests, so that an expiry test moves the clock instead of
//! sleeping.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the time comes from. Any `Fn() -> SystemTime` is one, as for the
/// sidecar's `run_rotation_with_clock`.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;

    /// [`Clock::now`] in whole seconds since the Unix epoch.
    fn unix_now(&self) -> i64 {
        unix_secs(self.now())
    }
}

impl<F: Fn() -> SystemTime + Send + Sync> Clock for F {
    fn now(&self) -> SystemTime {
        self()
    }
}

/// The system clock.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemTime::now)
}

/// Whole seconds since the Unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
