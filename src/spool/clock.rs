//! The spool's clock: the unix milliseconds in which every time the spool keeps is
//! written and compared (arrival, next attempt, leases, rate budgets, outages, the
//! dedup window).
//!
//! With SQLite it is this machine's clock. On a PostgreSQL spool, instances on several
//! machines compare times the others wrote: a lease written by a machine whose clock is
//! a minute behind reads as run out on the others, and the delivery it covers would be
//! made twice. So there the spool's clock is the database's: a reading of the database's
//! clock (`postgres::clock`, at each connection and then every few seconds) is tied to
//! this machine's monotonic clock, and [`now_ms`] counts on from it. A jump of this
//! machine's wall clock (NTP setting it right, an operator's `date`) then moves nothing;
//! the monotonic clock's own slewing is caught by the next reading.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Whether a reading of the database's clock has been taken (never on SQLite).
static ANCHORED: AtomicBool = AtomicBool::new(false);
/// The database's clock less [`monotonic_ms`], in ms, at the last reading.
static DATABASE_LESS_MONOTONIC_MS: AtomicI64 = AtomicI64::new(0);

/// The spool's clock: milliseconds since the Unix epoch. The database's, counted on
/// from its last reading, once there is one; this machine's until then.
pub fn now_ms() -> i64 {
    if ANCHORED.load(Ordering::Acquire) {
        monotonic_ms().saturating_add(DATABASE_LESS_MONOTONIC_MS.load(Ordering::Relaxed))
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

/// This machine's monotonic clock: milliseconds since the first call.
pub fn monotonic_ms() -> i64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as i64
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

/// Takes a reading of the database's clock: it read `database_ms` at `monotonic_ms`
/// ([`monotonic_ms`]'s scale). [`now_ms`] counts on from it.
pub(crate) fn anchor(database_ms: i64, monotonic_ms: i64) {
    DATABASE_LESS_MONOTONIC_MS.store(database_ms - monotonic_ms, Ordering::Relaxed);
    ANCHORED.store(true, Ordering::Release);
}
