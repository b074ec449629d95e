//! One retry schedule for everything that retries against the control
//! plane or a renewal: capped exponential backoff, each delay shortened by
//! a random part of itself so a fleet that failed together does not retry
//! together. `[rotation]` sets it.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first retry's delay; doubles each further failure.
    pub base: Duration,
    /// Delays never exceed this.
    pub cap: Duration,
    /// Each delay is shortened by up to this fraction of itself.
    pub jitter: f64,
}

impl Backoff {
    /// The delay before retry number `failures` (1 for the first retry),
    /// `sample` in [0, 1] picking how much jitter takes off.
    pub fn delay(&self, failures: u32, sample: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exponent).min(self.cap);
        let sample = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let factor = 1.0 - self.jitter * sample;
        if factor.is_finite() && (0.0..=1.0).contains(&factor) {
            full.mul_f64(factor)
        } else {
            full
        }
    }

    /// The delay before retry number `failures`, jittered at random.
    pub fn next_delay(&self, failures: u32) -> Duration {
        self.delay(failures, rand::rng().random_range(0.0..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_jitter_only_shortens() {
        let b = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            jitter: 0.1,
        };
        let delays: Vec<u64> = (1..=7).map(|n| b.delay(n, 0.0).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(30));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(1800));
        assert_eq!(b.delay(2, f64::NAN), Duration::from_secs(2));
        for n in 1..40 {
            let d = b.next_delay(n);
            let full = b.delay(n, 0.0);
            assert!(
                d <= full && d >= full.mul_f64(0.9),
                "{n}: {d:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn nonsense_jitter_never_lengthens_or_panics() {
        let b = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(4),
            jitter: 7.0,
        };
        assert_eq!(b.delay(1, 1.0), Duration::from_secs(1));
        let b = Backoff {
            jitter: f64::NAN,
            ..b
        };
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(4));
    }
}
