//! The spool's clock: the unix milliseconds in which every time the spool keeps is
//! written and compared (arrival, next attempt, leases, rate budgets, outages, the
//! dedup window).
//!
//! With SQLite it is this machine's clock. On a PostgreSQL spool, instances on several
//! machines compare times the others wrote: a lease written by a machine whose clock is
//! a minute behind reads as run out on the others, and the delivery it covers would be
//! made twice. So there the spool's clock is the database's: the writer measures how far
//! the database's clock is from this machine's (`postgres::clock`), at each connection and
//! every minute, and [`now_ms`] adds that offset. Instances then agree to within their
//! round trip to the database, whatever their own clocks say.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The spool's clock less this machine's, in milliseconds, as last measured (0 until
/// then, and always on SQLite).
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// The spool's clock: milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    system_ms().saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// This machine's clock: milliseconds since the Unix epoch (0 before 1970).
pub fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The spool's clock less this machine's, in milliseconds: positive when this machine's
/// clock is behind the database's.
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}

/// Sets the offset [`now_ms`] adds (the database's clock less this machine's, ms).
pub fn set_offset_ms(ms: i64) {
    OFFSET_MS.store(ms, Ordering::Relaxed);
}
