//! The controller's per-cluster error policy: exponential backoff with jitter and a cap,
//! reset on the first success (kube-rs keeps a per-key backoff growing across successes,
//! kube-rs issue #1916; here a success forgets every earlier failure).
//!
//! Pure: the jitter is a number in `[0, 1)` the caller draws, so tests replay exactly.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The delay after the first failure (before jitter).
    pub base: Duration,
    /// No delay is longer than this.
    pub cap: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(300),
        }
    }
}

/// The backoff state of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    policy: Policy,
    failures: u32,
    current: Duration,
}

impl Backoff {
    pub fn new(policy: Policy) -> Backoff {
        Backoff {
            policy,
            failures: 0,
            current: Duration::ZERO,
        }
    }

    /// One more consecutive failure: the delay before the next attempt. The nominal delay
    /// doubles from `base` up to `cap`; "equal jitter" keeps at least half of it, so the
    /// delay never collapses and two controllers that failed together drift apart.
    pub fn failure(&mut self, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let nominal = self.nominal();
        let j = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = nominal / 2;
        self.current = (half + half.mul_f64(j)).min(self.policy.cap);
        self.current
    }

    /// A success: the next failure starts again from `base`.
    pub fn success(&mut self) {
        self.failures = 0;
        self.current = Duration::ZERO;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay chosen after the last failure (zero after a success).
    pub fn current(&self) -> Duration {
        self.current
    }

    /// `base · 2^(failures-1)`, capped.
    fn nominal(&self) -> Duration {
        let shift = self.failures.saturating_sub(1).min(32);
        self.policy
            .base
            .checked_mul(1u32 << shift.min(31))
            .unwrap_or(self.policy.cap)
            .min(self.policy.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        }
    }

    #[test]
    fn doubles_up_to_the_cap_and_resets_on_success() {
        let mut b = Backoff::new(policy());
        let full: Vec<u64> = (0..8).map(|_| b.failure(0.999_999).as_secs()).collect();
        // nominal 2, 4, 8, 16, 32, 60, 60, 60 (jitter near 1 gives the nominal)
        assert_eq!(full, vec![1, 3, 7, 15, 31, 59, 59, 59]);
        assert_eq!(b.failures(), 8);
        b.success();
        assert_eq!(b.current(), Duration::ZERO);
        assert_eq!(
            b.failure(0.0),
            Duration::from_secs(1),
            "back to base/2 after a success"
        );
    }

    proptest! {
        #[test]
        fn within_half_and_whole_nominal_never_above_cap(
            jitters in proptest::collection::vec(proptest::num::f64::ANY, 1..80),
            base_ms in 1u64..100_000, cap_ms in 1u64..10_000_000,
        ) {
            let p = Policy { base: Duration::from_millis(base_ms), cap: Duration::from_millis(cap_ms.max(base_ms)) };
            let mut b = Backoff::new(p);
            let mut last_nominal = Duration::ZERO;
            for j in jitters {
                let d = b.failure(j);
                let nominal = b.nominal();
                prop_assert!(nominal >= last_nominal, "the nominal delay never shrinks while failing");
                prop_assert!(d <= p.cap);
                prop_assert!(d >= nominal / 2 && d <= nominal);
                last_nominal = nominal;
            }
        }
    }
}
