//! When to try again: exponential backoff with jitter, bounded by `--retry-for`.

use std::time::Duration;

/// The retry policy.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
    /// How long after acceptance attempts continue.
    pub retry_for: Duration,
}

impl RetryPolicy {
    /// The delay after the `attempts`-th failed attempt: `initial * 2^(attempts-1)`,
    /// capped at `max_delay`, then a random point in its upper half (jitter spreads a
    /// backlog's retries instead of sending them all at once).
    pub fn delay(&self, attempts: i64) -> Duration {
        let exponent = attempts.saturating_sub(1).clamp(0, 30) as u32;
        let base = self
            .initial
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// When to try again after a retryable failure at `now` (unix ms), or `None` when
    /// `--retry-for` after `since` (acceptance, or the last replay) has run out and the
    /// event becomes dead. The last attempt is made right at the deadline.
    pub fn next_attempt(&self, since: i64, now: i64, attempts: i64) -> Option<i64> {
        let deadline = since.saturating_add(millis(self.retry_for));
        if now >= deadline {
            return None;
        }
        Some(
            now.saturating_add(millis(self.delay(attempts)))
                .min(deadline),
        )
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            retry_for: Duration::from_secs(7 * 86400),
        }
    }

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        let p = policy();
        for _ in 0..200 {
            let first = p.delay(1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = p.delay(3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let late = p.delay(40);
            assert!(late >= Duration::from_secs(150) && late <= Duration::from_secs(300));
        }
    }

    #[test]
    fn stops_at_the_retry_deadline() {
        let p = RetryPolicy {
            retry_for: Duration::from_secs(10),
            ..policy()
        };
        let received = 1_000_000;
        let next = p.next_attempt(received, received + 9_900, 5).unwrap();
        assert_eq!(
            next,
            received + 10_000,
            "the last attempt is made at the deadline"
        );
        assert_eq!(p.next_attempt(received, received + 10_000, 6), None);
        let early = p.next_attempt(received, received + 100, 1).unwrap();
        assert!((received + 600..=received + 1_100).contains(&early));
    }
}
