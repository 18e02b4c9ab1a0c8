//! Whether each destination is up or down, on SQLite: its stored row, read by the
//! scheduler at start and changed by the writer with each outcome (see
//! [`crate::types::Availability`]), and the deliveries a failed probe makes dead.

use rusqlite::{params, Connection, OptionalExtension};

use crate::types::{Availability, DeliveryState, DestinationKey, Expiry};

/// The stored state of `destination` (up, when it has no row yet).
pub(super) fn load(
    conn: &Connection,
    destination: &DestinationKey,
) -> rusqlite::Result<Availability> {
    Ok(conn
        .prepare_cached(
            "SELECT failures, down_since, next_probe_at, failed_probes, last_failed
             FROM destinations WHERE destination = ?1",
        )?
        .query_row([destination.as_str()], |r| {
            Ok(Availability {
                failures: r.get(0)?,
                down_since: r.get(1)?,
                next_probe_at: r.get(2)?,
                failed_probes: r.get(3)?,
                last_failed: r.get(4)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Stores the state of `destination`.
pub(super) fn save(
    conn: &Connection,
    destination: &DestinationKey,
    state: &Availability,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO destinations (destination, failures, down_since, next_probe_at, failed_probes,
                                   last_failed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (destination) DO UPDATE SET failures = excluded.failures,
             down_since = excluded.down_since, next_probe_at = excluded.next_probe_at,
             failed_probes = excluded.failed_probes, last_failed = excluded.last_failed",
    )?
    .execute(params![
        destination.as_str(),
        state.failures,
        state.down_since,
        state.next_probe_at,
        state.failed_probes,
        state.last_failed
    ])?;
    Ok(())
}

/// Makes dead, at `now`, the pending deliveries to `destination` whose retry period
/// began at or before `expiry.retry_from_until`, except delivery `probe` (its own
/// outcome is being recorded); dead, they hold their conversations no more. Returns
/// how many.
pub(super) fn expire(
    conn: &Connection,
    destination: &DestinationKey,
    expiry: &Expiry,
    probe: i64,
    now: i64,
) -> rusqlite::Result<usize> {
    let n = conn
        .prepare_cached(
            "UPDATE deliveries SET state = ?1, finished_at = ?2, last_error = ?3
             WHERE state = 0 AND destination = ?4 AND retry_from <= ?5 AND seq <> ?6",
        )?
        .execute(params![
            DeliveryState::Dead.code(),
            now,
            expiry.error,
            destination.as_str(),
            expiry.retry_from_until,
            probe
        ])?;
    if n > 0 {
        conn.prepare_cached(
            "UPDATE conversations SET holding = 0
             WHERE holding AND destination = ?1 AND delivery_seq IN
                   (SELECT seq FROM deliveries
                    WHERE destination = ?1 AND state = ?2 AND finished_at = ?3)",
        )?
        .execute(params![
            destination.as_str(),
            DeliveryState::Dead.code(),
            now
        ])?;
    }
    Ok(n)
}
