//! The rotation schedule: refresh an SVID at about half its lifetime (with
//! jitter so a fleet does not renew in lockstep), back off exponentially on
//! failure, and keep serving the current SVID until it really expires.
//!
//! The schedule is independent of where SVIDs come from: anything that
//! implements [`SvidSource`] (files on disk, the control plane) plugs in.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;

use super::backoff::Backoff;
use super::bundle::TrustBundleSet;
use super::store::{Svid, SvidStore};

/// When to refresh, and how to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationPolicy {
    /// Fraction of the lifetime after which to refresh (0.5 = half-life).
    pub refresh_fraction: f64,
    /// Refresh time is moved by up to ± this fraction of the lifetime.
    pub jitter_fraction: f64,
    /// First retry delay after a failure; doubles each further failure.
    pub initial_backoff: Duration,
    /// Retry delays never exceed this.
    pub max_backoff: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            refresh_fraction: 0.5,
            jitter_fraction: 0.1,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RotationPolicy {
    /// The policy with every field forced into a usable range: fractions
    /// finite and within [0, 1] (defaults if not finite), the first backoff
    /// at least 100 ms and the cap at least the first backoff. `run_rotation`
    /// applies this, so no setting can make it panic or spin.
    pub fn sanitized(&self) -> Self {
        let defaults = RotationPolicy::default();
        let fraction = |x: f64, default: f64| {
            if x.is_finite() {
                x.clamp(0.0, 1.0)
            } else {
                default
            }
        };
        let initial_backoff = self.initial_backoff.max(Duration::from_millis(100));
        RotationPolicy {
            refresh_fraction: fraction(self.refresh_fraction, defaults.refresh_fraction),
            jitter_fraction: fraction(self.jitter_fraction, defaults.jitter_fraction),
            initial_backoff,
            max_backoff: self.max_backoff.max(initial_backoff),
        }
    }

    /// Delay from `now` until the SVID valid from `not_before` to `not_after`
    /// should be refreshed. `jitter` in [-1, 1] picks the point in the jitter
    /// window. Zero when that point has passed.
    pub fn refresh_delay(
        &self,
        not_before: SystemTime,
        not_after: SystemTime,
        now: SystemTime,
        jitter: f64,
    ) -> Duration {
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        let jitter = if jitter.is_finite() {
            jitter.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let fraction = (self.refresh_fraction + self.jitter_fraction * jitter).clamp(0.0, 1.0);
        if !fraction.is_finite() {
            return Duration::ZERO;
        }
        let refresh_at = not_before + lifetime.mul_f64(fraction);
        refresh_at.duration_since(now).unwrap_or_default()
    }

    /// When an SVID valid from `not_before` to `not_after` counts as not
    /// renewed in time: halfway from the latest point this schedule would
    /// renew it (`refresh_fraction + jitter_fraction`) to its expiry. The
    /// slack is for writers on their own schedule (cert-manager renews at
    /// two thirds of the lifetime by default).
    pub fn overdue_at(&self, not_before: SystemTime, not_after: SystemTime) -> SystemTime {
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        let latest = (self.refresh_fraction + self.jitter_fraction).clamp(0.0, 1.0);
        let fraction = if latest.is_finite() {
            latest + (1.0 - latest) / 2.0
        } else {
            1.0
        };
        not_before + lifetime.mul_f64(fraction)
    }

    /// The retry schedule of this policy (renewals and the control-plane
    /// watch alike).
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.initial_backoff,
            cap: self.max_backoff,
            jitter: self.jitter_fraction,
        }
    }

    /// Delay before retry number `failures` (1 for the first retry). `jitter`
    /// in [0, 1] shortens it by up to `jitter_fraction`, so a fleet that failed
    /// together does not retry together.
    pub fn backoff_delay(&self, failures: u32, jitter: f64) -> Duration {
        self.backoff().delay(failures, jitter)
    }
}

/// What a source hands over: a new SVID and, if they changed, new bundles.
#[derive(Debug)]
pub struct SvidUpdate {
    pub svid: Svid,
    pub bundles: Option<TrustBundleSet>,
}

/// Where SVIDs come from.
pub trait SvidSource: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Obtains a fresh SVID (for a CA-backed source, with a new key).
    fn fetch(&self) -> impl Future<Output = Result<SvidUpdate, Self::Error>> + Send;
}

/// Keeps `store` supplied from `source` until `shutdown` completes.
///
/// Fetches at once when the store is empty, then at about half-life of each
/// SVID. On failure retries with capped exponential backoff while the current
/// SVID keeps serving; once it expires it is dropped so handshakes fail
/// clearly instead of presenting an expired certificate.
pub async fn run_rotation<S: SvidSource>(
    store: Arc<SvidStore>,
    source: S,
    policy: RotationPolicy,
    shutdown: impl Future<Output = ()>,
) {
    run_rotation_with_clock(store, source, policy, shutdown, SystemTime::now).await;
}

/// [`run_rotation`] reading wall-clock time from `clock`, so tests can run
/// it in tokio's paused time (which `SystemTime::now` does not follow).
pub async fn run_rotation_with_clock<S: SvidSource>(
    store: Arc<SvidStore>,
    source: S,
    policy: RotationPolicy,
    shutdown: impl Future<Output = ()>,
    clock: impl Fn() -> SystemTime,
) {
    tokio::pin!(shutdown);
    let policy = policy.sanitized();
    let mut failures: u32 = 0;
    loop {
        let now = clock();
        let current = store.current();
        let mut delay = match (&current, failures) {
            (None, 0) => Duration::ZERO,
            (Some(svid), 0) => {
                let jitter = rand::rng().random_range(-1.0..=1.0);
                policy.refresh_delay(svid.not_before(), svid.not_after(), now, jitter)
            }
            (_, n) => policy.backoff().next_delay(n),
        };
        if let Some(svid) = &current {
            let left = svid.time_left(now);
            if failures > 0 {
                // Retry at least twice more before the SVID runs out, so a
                // source that comes back late in the lifetime is not missed
                // by a long backoff.
                delay = delay.min((left / 2).max(policy.initial_backoff));
            }
            // Wake up at expiry at the latest, to drop the expired SVID.
            delay = delay.min(left);
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(delay) => {}
        }
        if let Some(svid) = store.current()
            && !svid.is_valid_at(clock())
            && store.clear_if_current(&svid)
        {
            tracing::error!(spiffe_id = %svid.spiffe_id(), serial = svid.serial(), "SVID expired and could not be renewed; handshakes will fail until a new SVID arrives");
        }
        let fetched = tokio::select! {
            () = &mut shutdown => return,
            fetched = source.fetch() => fetched,
        };
        let outcome = match fetched {
            Ok(update) => {
                let (id, serial) = (
                    update.svid.spiffe_id().clone(),
                    update.svid.serial().to_owned(),
                );
                store
                    .install(update.svid, update.bundles)
                    .map(|()| (id, serial))
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok((id, serial)) => {
                failures = 0;
                tracing::info!(spiffe_id = %id, serial, "SVID rotated");
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let current = store.current();
                let time_left = current.as_ref().map(|s| s.time_left(clock()).as_secs());
                let nearly_expired = current.as_ref().is_some_and(|s| {
                    let lifetime = s
                        .not_after()
                        .duration_since(s.not_before())
                        .unwrap_or_default();
                    s.time_left(clock()) < lifetime / 4
                });
                if nearly_expired {
                    tracing::error!(%error, failures, time_left_secs = ?time_left, "SVID refresh keeps failing and the SVID expires soon; traffic stops at expiry unless the SVID source comes back");
                } else {
                    tracing::warn!(%error, failures, time_left_secs = ?time_left, "SVID refresh failed; keeping the current SVID and retrying with backoff");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn refresh_at_half_life_within_jitter() {
        let policy = RotationPolicy::default();
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + HOUR;
        assert_eq!(
            policy.refresh_delay(nb, na, nb, 0.0),
            Duration::from_secs(1800)
        );
        assert_eq!(
            policy.refresh_delay(nb, na, nb, -1.0),
            Duration::from_secs(1440)
        );
        assert_eq!(
            policy.refresh_delay(nb, na, nb, 1.0),
            Duration::from_secs(2160)
        );
        // Measured from now, not from issuance.
        let later = nb + Duration::from_secs(600);
        assert_eq!(
            policy.refresh_delay(nb, na, later, 0.0),
            Duration::from_secs(1200)
        );
        // Past the refresh point: refresh now.
        assert_eq!(
            policy.refresh_delay(nb, na, nb + Duration::from_secs(3000), 0.0),
            Duration::ZERO
        );
        // Out-of-range jitter is clamped.
        assert_eq!(
            policy.refresh_delay(nb, na, nb, 7.0),
            Duration::from_secs(2160)
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RotationPolicy::default();
        let delays: Vec<u64> = (1..=9)
            .map(|n| policy.backoff_delay(n, 0.0).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(policy.backoff_delay(u32::MAX, 0.0), Duration::from_secs(60));
        assert_eq!(policy.backoff_delay(7, 1.0), Duration::from_secs(54));
    }

    #[test]
    fn nonsense_settings_are_made_safe() {
        let wild = RotationPolicy {
            refresh_fraction: f64::NAN,
            jitter_fraction: 7.0,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
        .sanitized();
        assert_eq!(wild.refresh_fraction, 0.5);
        assert_eq!(wild.jitter_fraction, 1.0);
        assert_eq!(wild.initial_backoff, Duration::from_millis(100));
        assert_eq!(wild.max_backoff, Duration::from_millis(100));
        let nb = SystemTime::UNIX_EPOCH;
        // Unsanitized nonsense still never panics.
        let raw = RotationPolicy {
            refresh_fraction: f64::NAN,
            jitter_fraction: f64::INFINITY,
            ..RotationPolicy::default()
        };
        let _ = raw.refresh_delay(nb, nb + HOUR, nb, f64::NAN);
        let _ = raw.backoff_delay(3, 1.0);
    }
}
