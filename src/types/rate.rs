//! A destination's rate limit: requests per second at most, with a burst, for every
//! instance together. The rule is GCRA's (the generic cell rate algorithm, ITU-T
//! I.371), which `governor` implements in memory and the PostgreSQL spool in its claims:
//! a request every `interval`, and up to `burst` at once after a quiet time, so that
//! no window of `w` seconds holds more than `burst + w / interval` requests.
//!
//! The interval is 1% longer than the rate's, so that the limit still holds at the
//! backend when requests reach it a few milliseconds late or early (network and
//! scheduling jitter): at 100/s, 10 ms of jitter never puts a 111th request in a second.

use std::num::NonZeroU32;
use std::time::Duration;

/// How much longer than the rate's the interval is (see the module's header).
const PACING: f64 = 1.01;

/// `rate_limit` and `rate_burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The time one request's share of the rate takes (1.01 s / `rate_limit`, see the
    /// module's header); never zero.
    pub interval: Duration,
    /// Requests that may go at once after a quiet time (`rate_burst`).
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// `per_second` requests per second (more than 0) with bursts of `burst`; `None`
    /// when the rate is not a positive finite number or its interval would round to 0
    /// (more than a billion per second).
    pub fn new(per_second: f64, burst: NonZeroU32) -> Option<RateLimit> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return None;
        }
        let interval = Duration::try_from_secs_f64(PACING / per_second).ok()?;
        (!interval.is_zero()).then_some(RateLimit { interval, burst })
    }

    /// The interval in microseconds (at least 1), as the PostgreSQL spool counts it.
    pub fn interval_micros(&self) -> i64 {
        self.interval.as_micros().clamp(1, i64::MAX as u128) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_the_inverse_of_the_rate() {
        let ten = NonZeroU32::new(10).unwrap();
        let r = RateLimit::new(100.0, ten).unwrap();
        assert_eq!(r.interval, Duration::from_micros(10_100));
        assert_eq!(r.interval_micros(), 10_100);
        assert_eq!(
            RateLimit::new(0.5, ten).unwrap().interval,
            Duration::from_millis(2_020)
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert!(RateLimit::new(bad, ten).is_none(), "{bad}");
        }
    }
}
