//! The operator's view of the spool: list and show events (each with the state its
//! deliveries add up to, and their attempt history), replay dead deliveries, purge old
//! delivered events, and the figures behind the metrics. Used by the admin listener and by
//! `xhubd events`, on a connection of their own: safe while the daemon runs (WAL; writes
//! wait for the writer's transaction through the busy timeout).

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::spool::now_ms;
use crate::spool::views::{
    state_clause, AttemptRecord, DeliveryDetail, DestinationStats, EventDetail, EventSummary,
    Finished, ListFilter, Replay, SpoolStats,
};
use crate::types::{DeliveryState, DestinationKey, EventState};

/// An event's summary: its columns and what its deliveries add up to (`d` joined on
/// `e`, grouped by event).
const SUMMARY_SELECT: &str = "
    SELECT e.id, e.received_at,
           CASE WHEN SUM(d.state = 0) > 0 THEN 0 WHEN SUM(d.state = 2) > 0 THEN 2 ELSE 1 END,
           COALESCE(SUM(d.attempts), 0), e.size, e.object, e.field,
           MAX(CASE WHEN d.state != 1 THEN d.last_error END),
           MIN(CASE WHEN d.state = 0 THEN d.next_attempt_at END),
           CASE WHEN SUM(d.state = 0) > 0 THEN NULL ELSE MAX(d.finished_at) END,
           e.seq, e.headers, e.route
    FROM events e LEFT JOIN deliveries d ON d.event_seq = e.seq";

fn summary(row: &Row<'_>) -> rusqlite::Result<EventSummary> {
    let code: i64 = row.get(2)?;
    Ok(EventSummary {
        id: row.get(0)?,
        received_at: row.get(1)?,
        route: row.get(12)?,
        state: EventState::from_code(code).unwrap_or(EventState::Pending),
        attempts: row.get(3)?,
        size: row.get(4)?,
        object: row.get(5)?,
        field: row.get(6)?,
        last_error: row.get(7)?,
        next_attempt_at: row.get(8)?,
        finished_at: row.get(9)?,
        accepted_by: None,
    })
}

/// The newest events that `filter` lets through, newest first. The destination may be
/// given as `route/destination`, as logs and pages print it (names hold no `/`).
pub fn list(
    conn: &Connection,
    filter: &ListFilter,
    limit: usize,
) -> rusqlite::Result<Vec<EventSummary>> {
    let filter = &filter.normalized();
    // The deliveries the destination filter looks at (`route/destination` keys).
    let destination_clause = match (&filter.route, &filter.destination) {
        // Always true; it names ?3 so every statement takes the same parameters.
        (_, None) => "?3 IS NULL",
        (Some(_), Some(_)) => "destination = ?2 || '/' || ?3",
        (None, Some(_)) => "substr(destination, instr(destination, '/') + 1) = ?3",
    };
    let state_clause = state_clause(filter.state, destination_clause, "?3");
    let sql = format!(
        "{SUMMARY_SELECT} WHERE ({state_clause}) AND (?2 IS NULL OR e.route = ?2)
         GROUP BY e.seq ORDER BY e.seq DESC LIMIT ?1"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![limit as i64, filter.route, filter.destination],
        summary,
    )?;
    rows.collect()
}

/// One event with headers, body and deliveries.
pub fn show(conn: &Connection, id: &str) -> rusqlite::Result<Option<EventDetail>> {
    let sql = format!("{SUMMARY_SELECT} WHERE e.id = ?1 GROUP BY e.seq");
    let found = conn
        .prepare_cached(&sql)?
        .query_row([id], |row| {
            let headers: String = row.get(11)?;
            Ok((summary(row)?, row.get::<_, i64>(10)?, headers))
        })
        .optional()?;
    let Some((summary, seq, headers)) = found else {
        return Ok(None);
    };
    let body: Vec<u8> = conn
        .prepare_cached("SELECT body FROM bodies WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))
        .optional()?
        .unwrap_or_default();
    Ok(Some(EventDetail {
        summary,
        headers: serde_json::from_str(&headers).unwrap_or(serde_json::Value::Null),
        body: String::from_utf8_lossy(&body).into_owned(),
        deliveries: deliveries(conn, seq)?,
    }))
}

/// The deliveries of event `seq`, with their attempts.
fn deliveries(conn: &Connection, seq: i64) -> rusqlite::Result<Vec<DeliveryDetail>> {
    let mut list: Vec<(i64, DeliveryDetail)> = conn
        .prepare_cached(
            "SELECT seq, id, destination, part, parts, state, attempts, next_attempt_at, last_error
             FROM deliveries WHERE event_seq = ?1 ORDER BY seq",
        )?
        .query_map([seq], |r| {
            let state = DeliveryState::from_code(r.get(5)?).unwrap_or(DeliveryState::Pending);
            let key = DestinationKey::from_stored(r.get(2)?);
            Ok((
                r.get(0)?,
                DeliveryDetail {
                    id: r.get(1)?,
                    route: key.route().to_owned(),
                    destination: key.destination().to_owned(),
                    part: r.get(3)?,
                    parts: r.get(4)?,
                    state,
                    attempts: r.get(6)?,
                    next_attempt_at: (state == DeliveryState::Pending)
                        .then(|| r.get(7))
                        .transpose()?,
                    last_error: r.get(8)?,
                    claimed_by: None,
                    history: Vec::new(),
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut attempts = conn.prepare_cached(
        "SELECT at, result, status, detail FROM attempts WHERE delivery_seq = ?1 ORDER BY attempt",
    )?;
    for (delivery_seq, delivery) in &mut list {
        delivery.history = attempts
            .query_map([*delivery_seq], |r| {
                Ok(AttemptRecord {
                    at: r.get(0)?,
                    result: DeliveryState::from_code(r.get(1)?).unwrap_or(DeliveryState::Pending),
                    status: r.get(2)?,
                    detail: r.get(3)?,
                    instance: None,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(list.into_iter().map(|(_, d)| d).collect())
}

/// Makes one delivery (by its `X-Xhubd-Delivery-Id`) pending again, due now, with a
/// fresh retry period, if it is dead or delivered.
pub fn replay_delivery(conn: &Connection, id: &str) -> rusqlite::Result<Replay> {
    let now = now_ms();
    let changed = conn.execute(
        "UPDATE deliveries SET state = 0, next_attempt_at = ?2, retry_from = ?2, finished_at = NULL
         WHERE id = ?1 AND state != 0",
        params![id, now],
    )?;
    if changed > 0 {
        return Ok(Replay::Replayed);
    }
    let exists: Option<i64> = conn
        .query_row("SELECT seq FROM deliveries WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(if exists.is_some() {
        Replay::AlreadyPending
    } else {
        Replay::NotFound
    })
}

/// Makes the dead (or delivered) deliveries of an event pending again, due now, with a
/// fresh retry period.
pub fn replay(conn: &Connection, id: &str) -> rusqlite::Result<Replay> {
    let now = now_ms();
    let changed = conn.execute(
        "UPDATE deliveries SET state = 0, next_attempt_at = ?2, retry_from = ?2, finished_at = NULL
         WHERE event_seq = (SELECT seq FROM events WHERE id = ?1) AND state != 0",
        params![id, now],
    )?;
    if changed > 0 {
        return Ok(Replay::Replayed);
    }
    let exists: Option<i64> = conn
        .query_row("SELECT seq FROM events WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    Ok(if exists.is_some() {
        Replay::AlreadyPending
    } else {
        Replay::NotFound
    })
}

/// Rows a bulk change touches per transaction. Another process (the operator's
/// command) holds the spool's write lock for one chunk at a time, a few milliseconds, so
/// the daemon's writer never waits long for it.
pub const BULK_CHUNK: i64 = 2000;

/// Runs `chunk` (one statement changing at most [`BULK_CHUNK`] rows) until it
/// changes fewer rows than that. After each chunk it pauses at least as long as the
/// chunk took, so a writer waiting for the lock always gets it.
fn in_chunks(mut chunk: impl FnMut() -> rusqlite::Result<usize>) -> rusqlite::Result<usize> {
    let mut total = 0;
    loop {
        let started = std::time::Instant::now();
        let n = chunk()?;
        total += n;
        if (n as i64) < BULK_CHUNK {
            return Ok(total);
        }
        std::thread::sleep(started.elapsed().max(std::time::Duration::from_millis(1)));
    }
}

/// Replays every delivery dead when it starts, in chunks, oldest first; returns how
/// many. One that dies again while it runs is not replayed twice.
pub fn replay_all_dead(conn: &Connection) -> rusqlite::Result<usize> {
    let now = now_ms();
    let last: i64 = conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM deliveries WHERE state = 2",
        [],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(
        "UPDATE deliveries SET state = 0, next_attempt_at = ?1, retry_from = ?1, finished_at = NULL
         WHERE seq IN (SELECT seq FROM deliveries WHERE state = 2 AND seq > ?3 AND seq <= ?4
                       ORDER BY seq LIMIT ?2)
         RETURNING seq",
    )?;
    let mut after = 0i64;
    in_chunks(|| {
        let replayed: Vec<i64> = stmt
            .query_map(params![now, BULK_CHUNK, after, last], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        after = replayed.iter().copied().max().unwrap_or(last);
        Ok(replayed.len())
    })
}

/// Deletes the `which` events accepted before `cutoff` (unix ms), in chunks; returns how
/// many. An event with a pending delivery is never purged; the identities of purged
/// events stay until the dedup window ends, so Meta's retries of them are still dropped.
pub fn purge_before(conn: &Connection, which: Finished, cutoff: i64) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare(&format!(
        "DELETE FROM events WHERE seq IN
           (SELECT e.seq FROM events e WHERE e.received_at < ?1 AND {} LIMIT ?2)",
        which.condition()
    ))?;
    in_chunks(|| stmt.execute(params![cutoff, BULK_CHUNK]))
}

/// The counts behind the metrics and the status page.
pub fn stats(conn: &Connection) -> rusqlite::Result<SpoolStats> {
    let count = |sql: &str| {
        conn.prepare_cached(sql)?
            .query_row([], |r| r.get::<_, i64>(0))
    };
    let oldest: Option<i64> = conn
        .prepare_cached(
            "SELECT received_at FROM events
             WHERE seq = (SELECT MIN(event_seq) FROM deliveries WHERE state = 0)",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    let now = now_ms();
    let destinations = conn
        .prepare_cached(
            "SELECT destination, SUM(state = 0), SUM(state = 2),
                    MIN(CASE WHEN state = 0 THEN retry_from END)
             FROM deliveries WHERE state != 1 GROUP BY destination ORDER BY destination",
        )?
        .query_map([], |r| {
            let key = DestinationKey::from_stored(r.get(0)?);
            let oldest: Option<i64> = r.get(3)?;
            Ok(DestinationStats {
                route: key.route().to_owned(),
                destination: key.destination().to_owned(),
                pending: r.get(1)?,
                dead: r.get(2)?,
                oldest_pending_age_seconds: oldest
                    .map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(SpoolStats {
        destinations,
        pending: count("SELECT COUNT(*) FROM deliveries WHERE state = 0")?,
        delivered: count("SELECT COUNT(*) FROM deliveries WHERE state = 1")?,
        dead: count("SELECT COUNT(*) FROM deliveries WHERE state = 2")?,
        oldest_pending_age_seconds: oldest.map_or(0.0, |t| ((now_ms() - t).max(0) as f64) / 1000.0),
        // The recent identities not merged yet count once, whatever their sightings.
        dedup_keys: count(
            "SELECT (SELECT COUNT(*) FROM dedup)
                  + (SELECT COUNT(DISTINCT key) FROM dedup_recent r
                     WHERE NOT EXISTS (SELECT 1 FROM dedup d WHERE d.key = r.key))",
        )?,
        claims: Vec::new(),
    })
}
