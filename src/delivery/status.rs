//! How a destination is doing, as the status page and the metrics show it: the last
//! success, the last failure and its error, how many attempts in a row have failed,
//! whether it is down (since when, when the next probe starts, whether one is under
//! way), and when its rate limit last held a request back.

use std::sync::Mutex;

use serde::Serialize;

use crate::spool::now_ms;
use crate::types::Availability;

/// How long after a request was last held back by the rate limit the destination still
/// shows as *rate limited* (ms).
const RATE_LIMITED_SHOWN_MS: i64 = 2_000;

/// A snapshot of a destination's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpstreamSnapshot {
    /// When an attempt last succeeded (unix ms).
    pub last_success_at: Option<i64>,
    /// When an attempt last failed (unix ms).
    pub last_failure_at: Option<i64>,
    /// The last failure's error.
    pub last_error: Option<String>,
    /// Failed attempts of this instance since its last success.
    pub consecutive_failures: u64,
    /// When it went down (unix ms), for every instance on the spool; `None`: up.
    pub down_since: Option<i64>,
    /// While down: when the next probe may start (unix ms).
    pub next_probe_at: Option<i64>,
    /// A probe of this instance is under way.
    pub probing: bool,
    /// When the rate limit last held a request back (unix ms).
    pub rate_limited_at: Option<i64>,
}

/// What the page says a destination is doing, in the order it looks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Down, and this instance probes it now.
    Probing,
    /// Down: one probe at a time, on a backoff.
    Down,
    /// Up, and its rate limit held a request back in the last 2 s.
    RateLimited,
    /// Up.
    Up,
}

impl Condition {
    /// The word on the page (`up`, `down`, `probing`, `rate limited`).
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Probing => "probing",
            Condition::Down => "down",
            Condition::RateLimited => "rate limited",
            Condition::Up => "up",
        }
    }
}

impl UpstreamSnapshot {
    /// What it is doing at `now` (unix ms).
    pub fn condition(&self, now: i64) -> Condition {
        match (self.down_since, self.probing) {
            (Some(_), true) => Condition::Probing,
            (Some(_), false) => Condition::Down,
            (None, _)
                if self
                    .rate_limited_at
                    .is_some_and(|at| now - at < RATE_LIMITED_SHOWN_MS) =>
            {
                Condition::RateLimited
            }
            (None, _) => Condition::Up,
        }
    }
}

/// The shared, updated record.
#[derive(Debug, Default)]
pub struct UpstreamStatus(Mutex<UpstreamSnapshot>);

impl UpstreamStatus {
    fn update(&self, f: impl FnOnce(&mut UpstreamSnapshot)) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    /// Records a 2xx.
    pub fn success(&self) {
        self.update(|s| {
            s.last_success_at = Some(now_ms());
            s.consecutive_failures = 0;
        });
    }

    /// Records a failed attempt.
    pub fn failure(&self, error: &str) {
        self.update(|s| {
            s.last_failure_at = Some(now_ms());
            s.last_error = Some(error.to_owned());
            s.consecutive_failures += 1;
        });
    }

    /// Records the destination's stored state (up, or down since when).
    pub fn availability(&self, state: &Availability) {
        self.update(|s| {
            s.down_since = state.down_since;
            s.next_probe_at = state.next_probe_at;
        });
    }

    /// Records whether a probe of this instance is under way.
    pub fn probing(&self, probing: bool) {
        self.update(|s| s.probing = probing);
    }

    /// Records that the rate limit held a request back now.
    pub fn rate_limited(&self) {
        self.update(|s| s.rate_limited_at = Some(now_ms()));
    }

    /// The current state.
    pub fn snapshot(&self) -> UpstreamSnapshot {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_says_down_before_rate_limited() {
        let mut s = UpstreamSnapshot {
            rate_limited_at: Some(1_000),
            ..UpstreamSnapshot::default()
        };
        assert_eq!(s.condition(2_000), Condition::RateLimited);
        assert_eq!(s.condition(3_001), Condition::Up);
        s.down_since = Some(500);
        assert_eq!(s.condition(2_000), Condition::Down);
        s.probing = true;
        assert_eq!(s.condition(2_000), Condition::Probing);
    }
}
