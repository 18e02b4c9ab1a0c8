//! Counts over the last hour, in one-minute buckets: what the status page shows of the
//! requests refused lately, and each destination's chart (`/metrics` has the totals
//! since start).

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Minutes kept: one hour.
const MINUTES: usize = 60;

/// `K` counters (indexed `0..K`) over the last hour. A count is dropped once its minute
/// is more than 59 minutes old, so a sum covers between 59 and 60 minutes.
pub struct LastHour<const K: usize> {
    buckets: Mutex<[(u64, [u64; K]); MINUTES]>,
}

impl<const K: usize> Default for LastHour<K> {
    fn default() -> Self {
        LastHour {
            buckets: Mutex::new([(0, [0; K]); MINUTES]),
        }
    }
}

impl<const K: usize> LastHour<K> {
    /// Counts one for counter `index` now (ignored when `index >= K`).
    pub fn count(&self, index: usize) {
        self.count_at(index, now_minute());
    }

    /// The sums of each counter over the last hour.
    pub fn sums(&self) -> [u64; K] {
        self.sums_at(now_minute())
    }

    /// Each counter per minute over the last hour, the oldest minute first (60 of them,
    /// the last one the minute under way).
    pub fn per_minute(&self) -> Vec<[u64; K]> {
        self.per_minute_at(now_minute())
    }

    fn per_minute_at(&self, minute: u64) -> Vec<[u64; K]> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        (0..MINUTES as u64)
            .rev()
            .map(|ago| {
                let at = minute.saturating_sub(ago);
                let bucket = &buckets[(at % MINUTES as u64) as usize];
                if bucket.0 == at && ago <= minute {
                    bucket.1
                } else {
                    [0; K]
                }
            })
            .collect()
    }

    fn count_at(&self, index: usize, minute: u64) {
        if index >= K {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = &mut buckets[(minute % MINUTES as u64) as usize];
        if bucket.0 != minute {
            *bucket = (minute, [0; K]);
        }
        bucket.1[index] += 1;
    }

    fn sums_at(&self, minute: u64) -> [u64; K] {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut sums = [0; K];
        for (at, counts) in buckets.iter() {
            if *at + (MINUTES as u64) > minute && *at <= minute {
                for (sum, n) in sums.iter_mut().zip(counts) {
                    *sum += n;
                }
            }
        }
        sums
    }
}

fn now_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::LastHour;

    #[test]
    fn counts_fall_out_after_an_hour() {
        let h = LastHour::<2>::default();
        let start = 29_000_000;
        h.count_at(0, start);
        h.count_at(0, start);
        h.count_at(1, start + 30);
        h.count_at(5, start + 30);
        assert_eq!(h.sums_at(start + 30), [2, 1]);
        assert_eq!(h.sums_at(start + 59), [2, 1]);
        assert_eq!(h.sums_at(start + 60), [0, 1], "the first minute is out");
        // The bucket is reused an hour later, not added to.
        h.count_at(0, start + 60);
        assert_eq!(h.sums_at(start + 60), [1, 1]);
        assert_eq!(h.sums_at(start + 200), [0, 0]);
    }

    #[test]
    fn per_minute_lists_the_hour_oldest_first() {
        let h = LastHour::<2>::default();
        let start = 29_000_000;
        h.count_at(0, start);
        h.count_at(1, start + 2);
        h.count_at(1, start + 2);
        let minutes = h.per_minute_at(start + 2);
        assert_eq!(minutes.len(), 60);
        assert_eq!(minutes[59], [0, 2], "the minute under way is last");
        assert_eq!(minutes[57], [1, 0]);
        assert_eq!(minutes.iter().map(|m| m[0] + m[1]).sum::<u64>(), 3);
        assert_eq!(
            h.per_minute_at(start + 61)[0],
            [0, 2],
            "59 minutes on, the oldest"
        );
        assert_eq!(h.per_minute_at(start + 62)[0], [0, 0], "an hour on, gone");
        assert!(h.per_minute_at(start + 120).iter().all(|m| *m == [0, 0]));
    }
}
