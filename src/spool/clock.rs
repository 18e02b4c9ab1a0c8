//! The spool's clock: the unix milliseconds in which every time the spool keeps is
//! written and compared (arrival, next attempt, leases, rate budgets, outages, the
//! dedup window).
//!
//! With SQLite it is this machine's clock. On a PostgreSQL spool, instances on several
//! machines compare times the others wrote: a lease written by a machine whose clock is
//! a minute behind reads as run out on the others, and the delivery it covers would be
//! made twice. So there the spool's clock is the database's: a reading of the database's
//! clock (`postgres::clock`, at each connection and then every few seconds) is tied to
//! this machine's `CLOCK_BOOTTIME` (monotonic, and counting the time the machine was
//! suspended, which `CLOCK_MONOTONIC` and [`std::time::Instant`] do not), and
//! [`now_ms`] counts on from it. A jump of this machine's wall clock (NTP setting it
//! right, an operator's `date`) or a suspend then moves nothing; that clock's own
//! slewing is caught by the next reading.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::time::{clock_gettime, ClockId};

/// Whether a reading of the database's clock has been taken (never on SQLite).
static ANCHORED: AtomicBool = AtomicBool::new(false);
/// The database's clock less [`boottime_ms`], in ms, at the last reading.
static DATABASE_LESS_BOOTTIME_MS: AtomicI64 = AtomicI64::new(0);

/// The spool's clock: milliseconds since the Unix epoch. The database's, counted on
/// from its last reading, once there is one; this machine's until then.
pub fn now_ms() -> i64 {
    if ANCHORED.load(Ordering::Acquire) {
        boottime_ms().saturating_add(DATABASE_LESS_BOOTTIME_MS.load(Ordering::Relaxed))
    } else {
        system_ms()
    }
}

/// This machine's wall clock: milliseconds since the Unix epoch (0 before 1970).
pub fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This machine's `CLOCK_BOOTTIME`: milliseconds since it booted, suspends included;
/// never set back.
pub fn boottime_ms() -> i64 {
    let t = clock_gettime(ClockId::Boottime);
    (t.tv_sec as i64)
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec as i64 / 1_000_000)
}

/// The spool's clock less this machine's wall clock, in milliseconds: positive when this
/// machine's clock is behind the database's; 0 on SQLite.
pub fn offset_ms() -> i64 {
    if ANCHORED.load(Ordering::Acquire) {
        now_ms() - system_ms()
    } else {
        0
    }
}

/// How far this machine's wall clock is from the spool's, given [`offset_ms`], as the
/// log and the status page say it: `90.0 s behind`, `1.5 s ahead of` (to a tenth).
pub fn off_by(offset_ms: i64) -> String {
    let side = if offset_ms > 0 { "behind" } else { "ahead of" };
    format!("{:.1} s {side}", offset_ms.abs() as f64 / 1000.0)
}

/// Takes a reading of the database's clock: it read `database_ms` at `boottime_ms`
/// ([`boottime_ms`]'s scale). [`now_ms`] counts on from it.
pub(crate) fn anchor(database_ms: i64, boottime_ms: i64) {
    DATABASE_LESS_BOOTTIME_MS.store(database_ms - boottime_ms, Ordering::Relaxed);
    ANCHORED.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::{anchor, boottime_ms, now_ms, offset_ms, system_ms};

    #[test]
    fn the_machine_s_clock_until_a_reading_then_the_reading_counted_on() {
        // The anchor is the process's, and other tests read the clock: this one reads
        // the database's clock as this machine's (an offset of 0), so they see no change.
        assert_eq!(offset_ms(), 0, "no reading yet");
        assert!((now_ms() - system_ms()).abs() <= 1);
        anchor(system_ms(), boottime_ms());
        let offset = offset_ms();
        assert!(offset.abs() <= 10, "{offset}");
        let before = now_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let counted = now_ms() - before;
        assert!((20..1_000).contains(&counted), "{counted}");
    }
}
