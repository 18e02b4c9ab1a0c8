//! The operator's view of the spool: list and show events, replay dead ones, purge old
//! delivered ones, and the figures behind the metrics. Used by the admin listener and by
//! `xhubd events`, on a connection of their own: safe while the daemon runs (WAL; writes
//! wait for the writer's transaction through the busy timeout).

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::now_ms;
use super::schema::state;

/// One event, without its body.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    /// The public event id.
    pub id: String,
    /// When it was accepted (unix ms).
    pub received_at: i64,
    /// `pending`, `delivered` or `dead`.
    pub state: &'static str,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// Body size in bytes.
    pub size: i64,
    /// The notification's `object`.
    pub object: String,
    /// The first item's field.
    pub field: String,
    /// The last delivery error, if any.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending events, unix ms).
    pub next_attempt_at: Option<i64>,
    /// When it was delivered or given up (unix ms).
    pub finished_at: Option<i64>,
}

/// One event with its headers and body.
#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: EventSummary,
    /// The request headers as received (credentials removed).
    pub headers: serde_json::Value,
    /// The body, as text (lossy for invalid UTF-8, which a valid event never has).
    pub body: String,
}

/// Counts for the metrics and the status page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpoolStats {
    /// Events waiting for delivery.
    pub pending: i64,
    /// Events delivered (kept for the dedup window).
    pub delivered: i64,
    /// Events given up.
    pub dead: i64,
    /// Age of the oldest pending event, in seconds (0 when none).
    pub oldest_pending_age_seconds: f64,
    /// Identities remembered.
    pub dedup_keys: i64,
}

/// What a replay request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The event is pending again, with a fresh retry period.
    Replayed,
    /// It is already pending.
    AlreadyPending,
    /// No such event.
    NotFound,
}

const SUMMARY_COLUMNS: &str =
    "id, received_at, state, attempts, size, object, field, last_error, next_attempt_at, finished_at";

fn summary(row: &Row<'_>) -> rusqlite::Result<EventSummary> {
    let st: i64 = row.get(2)?;
    Ok(EventSummary {
        id: row.get(0)?,
        received_at: row.get(1)?,
        state: state::name(st),
        attempts: row.get(3)?,
        size: row.get(4)?,
        object: row.get(5)?,
        field: row.get(6)?,
        last_error: row.get(7)?,
        next_attempt_at: if st == state::PENDING {
            Some(row.get(8)?)
        } else {
            None
        },
        finished_at: row.get(9)?,
    })
}

/// Parses a state name.
pub fn parse_state(name: &str) -> Option<i64> {
    match name {
        "pending" => Some(state::PENDING),
        "delivered" => Some(state::DELIVERED),
        "dead" => Some(state::DEAD),
        _ => None,
    }
}

/// The newest events (in one state, or all), newest first.
pub fn list(
    conn: &Connection,
    state_filter: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<EventSummary>> {
    let limit = limit as i64;
    match state_filter {
        Some(st) => {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM events WHERE state = ?1 ORDER BY seq DESC LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![st, limit], summary)?;
            rows.collect()
        }
        None => {
            let sql = format!("SELECT {SUMMARY_COLUMNS} FROM events ORDER BY seq DESC LIMIT ?1");
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![limit], summary)?;
            rows.collect()
        }
    }
}

/// One event with headers and body.
pub fn show(conn: &Connection, id: &str) -> rusqlite::Result<Option<EventDetail>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS}, headers, (SELECT body FROM bodies WHERE bodies.seq = events.seq)
         FROM events WHERE id = ?1"
    );
    conn.prepare_cached(&sql)?
        .query_row([id], |row| {
            let headers: String = row.get(10)?;
            let body: Vec<u8> = row.get::<_, Option<Vec<u8>>>(11)?.unwrap_or_default();
            Ok(EventDetail {
                summary: summary(row)?,
                headers: serde_json::from_str(&headers).unwrap_or(serde_json::Value::Null),
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        })
        .optional()
}

/// Makes a dead (or delivered) event pending again, due now, with a fresh `--retry-for`.
pub fn replay(conn: &Connection, id: &str) -> rusqlite::Result<Replay> {
    let now = now_ms();
    let changed = conn.execute(
        "UPDATE events SET state = 0, next_attempt_at = ?2, retry_from = ?2, finished_at = NULL
         WHERE id = ?1 AND state != 0",
        params![id, now],
    )?;
    if changed == 1 {
        return Ok(Replay::Replayed);
    }
    let exists: Option<i64> = conn
        .query_row("SELECT state FROM events WHERE id = ?1", [id], |r| r.get(0))
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

/// Replays every dead event, in chunks; returns how many.
pub fn replay_all_dead(conn: &Connection) -> rusqlite::Result<usize> {
    let now = now_ms();
    let mut stmt = conn.prepare(
        "UPDATE events SET state = 0, next_attempt_at = ?1, retry_from = ?1, finished_at = NULL
         WHERE seq IN (SELECT seq FROM events WHERE state = 2 LIMIT ?2)",
    )?;
    in_chunks(|| stmt.execute(params![now, BULK_CHUNK]))
}

/// Deletes delivered events accepted before `cutoff` (unix ms), in chunks; returns how
/// many. Pending and dead events are never purged; the dedup keys of purged events stay
/// until the window ends, so Meta's retries of them are still dropped.
pub fn purge_delivered_before(conn: &Connection, cutoff: i64) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare(
        "DELETE FROM events WHERE seq IN
           (SELECT seq FROM events WHERE state = 1 AND received_at < ?1 LIMIT ?2)",
    )?;
    in_chunks(|| stmt.execute(params![cutoff, BULK_CHUNK]))
}

/// The counts behind the metrics and the status page.
pub fn stats(conn: &Connection) -> rusqlite::Result<SpoolStats> {
    let count = |sql: &str| {
        conn.prepare_cached(sql)?
            .query_row([], |r| r.get::<_, i64>(0))
    };
    let oldest: Option<i64> = conn
        .prepare_cached("SELECT MIN(received_at) FROM events WHERE state = 0")?
        .query_row([], |r| r.get(0))?;
    Ok(SpoolStats {
        pending: count("SELECT COUNT(*) FROM events WHERE state = 0")?,
        delivered: count("SELECT COUNT(*) FROM events WHERE state = 1")?,
        dead: count("SELECT COUNT(*) FROM events WHERE state = 2")?,
        oldest_pending_age_seconds: oldest.map_or(0.0, |t| ((now_ms() - t).max(0) as f64) / 1000.0),
        dedup_keys: count("SELECT COUNT(*) FROM dedup")?,
    })
}
