//! Whether a destination is up or down, as every instance on one spool sees it, and
//! how one attempt's result moves that state (issue "outages: probe, don't hammer").
//!
//! After [`DOWN_AFTER`] retryable failures in a row (connection errors, timeouts, 408,
//! 429, 5xx; failures of one delivery one after another count once, so that one
//! message the backend keeps refusing with a 5xx is not an outage), a destination is
//! *down*: one *probe* at a time, on a backoff, and no
//! other attempt. Any answer that is not retryable (2xx, or a 4xx that makes its
//! delivery dead) makes it *up* again. The state is stored in the spool, so that it
//! holds for every instance sharing it and across restarts; the transition is this
//! module's pure function, applied by the spool's writer with each outcome.

/// Retryable failures in a row after which a destination is down.
pub const DOWN_AFTER: i64 = 10;

/// A destination's stored state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Availability {
    /// Retryable failures in a row (by every instance), since the last answer; a
    /// delivery failing again right after its own failure is not counted again.
    pub failures: i64,
    /// The delivery (row number) whose failure was the last one counted.
    pub last_failed: Option<i64>,
    /// When it went down (unix ms); `None` while it is up.
    pub down_since: Option<i64>,
    /// While down: when the next probe may start (unix ms).
    pub next_probe_at: Option<i64>,
    /// While down: probes that failed since it went down.
    pub failed_probes: i64,
}

/// What one attempt says about its destination, recorded with the attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// The delivery attempted (its row number).
    pub delivery: i64,
    /// The destination answered (2xx, or a refusal): it is up.
    pub answered: bool,
    /// The attempt was the destination's probe (taken while it was down).
    pub probe: bool,
    /// When the next probe may start (unix ms), should this failure take the
    /// destination down or be a failed probe: the retry backoff after as many failed
    /// probes, from `retry_initial` to `retry_max_delay`.
    pub next_probe_at: i64,
    /// On a failed probe: the pending deliveries whose `retry_for` ran out while the
    /// destination was down become dead.
    pub expire: Option<Expiry>,
}

/// Pending deliveries a failed probe makes dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// Those whose retry period began (acceptance or replay, unix ms) at or before
    /// this: `now - retry_for`.
    pub retry_from_until: i64,
    /// Their last error: `destination down since <time>`.
    pub error: String,
}

impl Availability {
    /// Whether it is down.
    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// The state after an attempt that ended at `now` (unix ms) said `signal`. A
    /// failure that is not a probe while the destination is already down (an attempt
    /// that started before it went down) changes nothing but the count.
    pub fn after(self, signal: &Signal, now: i64) -> Availability {
        if signal.answered {
            return Availability::default();
        }
        let failures = if self.last_failed == Some(signal.delivery) {
            self.failures
        } else {
            self.failures.saturating_add(1)
        };
        let last_failed = Some(signal.delivery);
        match self.down_since {
            Some(_) if signal.probe => Availability {
                failures,
                last_failed,
                next_probe_at: Some(signal.next_probe_at),
                failed_probes: self.failed_probes.saturating_add(1),
                ..self
            },
            Some(_) => Availability {
                failures,
                last_failed,
                ..self
            },
            None if failures >= DOWN_AFTER => Availability {
                failures,
                last_failed,
                down_since: Some(now),
                next_probe_at: Some(signal.next_probe_at),
                failed_probes: 0,
            },
            None => Availability {
                failures,
                last_failed,
                ..self
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure of a delivery of its own each time (row numbers counting up).
    fn failed(probe: bool, next_probe_at: i64) -> Signal {
        static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
        Signal {
            delivery: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            answered: false,
            probe,
            next_probe_at,
            expire: None,
        }
    }

    #[test]
    fn ten_failures_in_a_row_take_it_down_and_an_answer_brings_it_up() {
        let mut state = Availability::default();
        for i in 1..DOWN_AFTER {
            state = state.after(&failed(false, 0), i);
            assert!(!state.is_down(), "down after {i} failures");
        }
        state = state.after(&failed(false, 5_000), 100);
        assert_eq!(state.down_since, Some(100));
        assert_eq!(state.next_probe_at, Some(5_000));
        // An attempt that started before: the count only.
        let late = state.after(&failed(false, 9_999), 200);
        assert_eq!(late.next_probe_at, Some(5_000));
        assert_eq!(late.failed_probes, 0);
        // A failed probe: the next one later.
        state = state.after(&failed(true, 7_000), 5_100);
        assert_eq!(state.down_since, Some(100));
        assert_eq!((state.next_probe_at, state.failed_probes), (Some(7_000), 1));
        let answered = Signal {
            answered: true,
            ..failed(true, 0)
        };
        assert_eq!(state.after(&answered, 7_100), Availability::default());
    }

    #[test]
    fn an_answer_between_failures_starts_the_count_again() {
        let answered = Signal {
            answered: true,
            ..failed(false, 0)
        };
        let mut state = Availability::default();
        for _ in 0..DOWN_AFTER - 1 {
            state = state.after(&failed(false, 0), 1);
        }
        state = state.after(&answered, 2);
        for _ in 0..DOWN_AFTER - 1 {
            state = state.after(&failed(false, 0), 3);
        }
        assert!(!state.is_down());
    }

    #[test]
    fn one_delivery_failing_again_and_again_is_not_an_outage() {
        let again = Signal {
            delivery: 7,
            ..failed(false, 0)
        };
        let mut state = Availability::default();
        for _ in 0..3 * DOWN_AFTER {
            state = state.after(&again, 1);
        }
        assert_eq!(state.failures, 1);
        assert!(!state.is_down());
        // Another delivery failing in between counts, and so does 7 again after it.
        for _ in 0..(DOWN_AFTER - 1) / 2 {
            state = state.after(&failed(false, 0), 2).after(&again, 2);
        }
        assert!(!state.is_down(), "{state:?}");
        state = state.after(&failed(false, 0), 3);
        assert!(state.is_down(), "{state:?}");
    }
}
