//! Pruning: identities older than `--dedup-window` are forgotten, and events delivered
//! (to every destination, or to none) longer ago than it are deleted with their bodies,
//! deliveries and attempts, so the spool does not grow without bound. An event with a
//! pending or dead delivery is never deleted.
//!
//! Pruning goes in *cycles*: one starts every quarter of the window (from 200 ms to
//! 60 s) and runs until nothing older than the window is left to delete. A cycle works
//! a slice at a time, each in a batch's own transaction, sized by the batch: at least
//! [`SLICE_MIN`], twice the batch's requests, at most [`SLICE_MAX`] rows of each kind.
//! Deleting an event costs about as much as storing it, so a cycle's work is spread
//! over the batches that arrive, each holding its requests a little longer, and shares
//! their commits: a cycle of separate transactions of a thousand rows each held the
//! requests queued behind one for 25-35 ms and paid a commit of its own.
//!
//! Events are scanned in the order they were received, from where the cycle's last
//! slice stopped: the kept ones (pending, dead) that lie among the old ones are passed
//! over once per cycle, not once per slice. A slice that fails (the disk full, say) is
//! undone on its own (a savepoint), logged, and ends the cycle; the batch commits.
//! Progress counts only once its batch has committed ([`Pruning::committed`]).

use std::time::{Duration, Instant};

use rusqlite::{params, Connection, Transaction};
use tracing::{info, warn};

/// Rows of each kind (identities; events scanned) a slice takes, at least.
const SLICE_MIN: usize = 64;
/// Rows of each kind a slice takes, at most.
const SLICE_MAX: usize = 256;
/// Events scanned per slice, at most, as a multiple of the slice (kept events count).
const SCAN_FACTOR: usize = 4;

/// Where a cycle stands: how far its scan of events has gone, and what it deleted.
#[derive(Debug, Clone, Copy)]
struct Cycle {
    /// The last event scanned: `(received_at, seq)`; the scan goes on after it.
    scanned_to: (i64, i64),
    /// No identity older than the window was left at the last slice.
    keys_done: bool,
    /// No event older than the window was left to scan at the last slice.
    events_done: bool,
    /// Identities forgotten in this cycle.
    keys: usize,
    /// Events deleted in this cycle.
    events: usize,
}

impl Cycle {
    fn start() -> Cycle {
        Cycle {
            scanned_to: (i64::MIN, i64::MIN),
            keys_done: false,
            events_done: false,
            keys: 0,
            events: 0,
        }
    }
}

/// The writer's pruning: when the next cycle starts, and the one under way.
pub(super) struct Pruning {
    window_ms: i64,
    every: Duration,
    last_start: Instant,
    /// As committed.
    cycle: Option<Cycle>,
    /// As the open batch leaves it, once that commits.
    pending: Option<Option<Cycle>>,
}

impl Pruning {
    /// Pruning for a window of `window_ms` (ms), a cycle starting every `every`; the
    /// first one `every` after now.
    pub(super) fn new(window_ms: i64, every: Duration) -> Pruning {
        Pruning {
            window_ms,
            every,
            last_start: Instant::now(),
            cycle: None,
            pending: None,
        }
    }

    /// Prunes one slice inside the batch's transaction `tx`, sized by `requests` (the
    /// batch's), at `now` (ms since the Unix epoch), when a cycle is under way or due.
    /// Errors are logged and undone here: the batch goes on.
    pub(super) fn slice(&mut self, tx: &mut Transaction<'_>, requests: usize, now: i64) {
        let cycle = match self.cycle {
            Some(cycle) => cycle,
            None if self.last_start.elapsed() >= self.every => {
                self.last_start = Instant::now();
                Cycle::start()
            }
            None => return,
        };
        let limit = requests.clamp(SLICE_MIN, SLICE_MAX);
        let cutoff = now.saturating_sub(self.window_ms);
        let step = (|| -> rusqlite::Result<Cycle> {
            let sp = tx.savepoint()?;
            let cycle = prune_slice(&sp, cycle, cutoff, limit)?;
            sp.commit()?;
            Ok(cycle)
        })();
        self.pending = Some(match step {
            Ok(cycle) if cycle.keys_done && cycle.events_done => {
                if cycle.keys + cycle.events > 0 {
                    info!(
                        dedup_keys = cycle.keys,
                        delivered_events = cycle.events,
                        "pruned entries older than the dedup window"
                    );
                }
                None
            }
            Ok(cycle) => Some(cycle),
            Err(e) => {
                warn!(error = %e, "pruning the spool failed; will try again later");
                None
            }
        });
    }

    /// The batch committed: its slice's progress stands.
    pub(super) fn committed(&mut self) {
        if let Some(cycle) = self.pending.take() {
            self.cycle = cycle;
        }
    }

    /// The batch was rolled back: its slice is done again with the next one.
    pub(super) fn roll_back(&mut self) {
        self.pending = None;
    }
}

/// Deletes up to `limit` identities seen before `cutoff` and the events delivered
/// before it among the next `limit * SCAN_FACTOR` received before it, after where
/// `cycle` stopped. Returns the cycle moved on.
fn prune_slice(
    tx: &Connection,
    mut cycle: Cycle,
    cutoff: i64,
    limit: usize,
) -> rusqlite::Result<Cycle> {
    if !cycle.keys_done {
        let keys = tx
            .prepare_cached(
                "DELETE FROM dedup WHERE key IN
                   (SELECT key FROM dedup WHERE seen_at / 1000 <= ?1 / 1000 AND seen_at < ?1
                    LIMIT ?2)",
            )?
            .execute(params![cutoff, limit as i64])?;
        cycle.keys += keys;
        cycle.keys_done = keys < limit;
    }
    if !cycle.events_done {
        let scan = limit * SCAN_FACTOR;
        let (after_at, after_seq) = cycle.scanned_to;
        // An event goes once every delivery of it was delivered before the cutoff; one
        // with none (no destination took it) goes too.
        let scanned: Vec<(i64, i64, bool)> = tx
            .prepare_cached(
                "SELECT e.received_at, e.seq,
                        EXISTS (SELECT 1 FROM deliveries o WHERE o.event_seq = e.seq
                                AND (o.state != 1 OR o.finished_at >= ?3))
                 FROM events e
                 WHERE e.received_at >= ?1 AND (e.received_at > ?1 OR e.seq > ?2)
                   AND e.received_at < ?3
                 ORDER BY e.received_at, e.seq LIMIT ?4",
            )?
            .query_map(params![after_at, after_seq, cutoff, scan as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut delete = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
        let mut deleted = 0;
        let mut taken = 0;
        for &(at, seq, kept) in &scanned {
            if deleted == limit {
                break;
            }
            if !kept {
                deleted += delete.execute([seq])?;
            }
            cycle.scanned_to = (at, seq);
            taken += 1;
        }
        cycle.events += deleted;
        cycle.events_done = taken == scanned.len() && scanned.len() < scan;
    }
    Ok(cycle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::TransactionBehavior;

    /// The slices' clock (ms since the Unix epoch) and the window.
    const NOW: i64 = 10_000_000;
    const WINDOW: i64 = 1_000;
    /// Long before the window.
    const OLD: i64 = NOW - 500_000;

    fn spool() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::schema::SCHEMA).unwrap();
        conn
    }

    /// `n` events from `seq` on, received at `at` and 1 ms apart, each with its body and
    /// one delivery in `state` (0 pending, 1 delivered, 2 dead) finished when received.
    fn add_events(conn: &Connection, seq: i64, n: i64, at: i64, state: i64) {
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
             INSERT INTO events (seq, id, received_at, size, signature)
             SELECT ?1 + i, 'e' || (?1 + i), ?3 + i, 2, 's' FROM n",
            params![seq, n, at],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO bodies (seq, body) SELECT seq, x'7b7d' FROM events
             WHERE seq >= ?1 AND seq < ?1 + ?2",
            params![seq, n],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO deliveries (id, event_seq, destination, state, next_attempt_at,
                                     retry_from, finished_at)
             SELECT 'd' || seq, seq, 'default/default', ?3, received_at, received_at,
                    CASE WHEN ?3 = 0 THEN NULL ELSE received_at END
             FROM events WHERE seq >= ?1 AND seq < ?1 + ?2",
            params![seq, n, state],
        )
        .unwrap();
    }

    /// `n` identities seen at `at`, keys from `from` on.
    fn add_identities(conn: &Connection, from: i64, n: i64, at: i64) {
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
             INSERT INTO dedup (key, event_seq, seen_at)
             SELECT CAST(printf('%016d', ?1 + i) AS BLOB), ?1 + i, ?3 FROM n",
            params![from, n, at],
        )
        .unwrap();
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// One batch of `requests` that only prunes, committed.
    fn batch(conn: &mut Connection, pruning: &mut Pruning, requests: usize) {
        let mut tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        pruning.slice(&mut tx, requests, NOW);
        tx.commit().unwrap();
        pruning.committed();
    }

    fn pruning() -> Pruning {
        Pruning::new(WINDOW, Duration::ZERO)
    }

    #[test]
    fn a_cycle_deletes_what_is_older_than_the_window_a_slice_per_batch() {
        let mut conn = spool();
        add_identities(&conn, 0, 300, OLD);
        add_identities(&conn, 1000, 100, NOW - 10);
        add_events(&conn, 1, 300, OLD, 1);
        // Delivered within the window: kept.
        add_events(&conn, 1001, 50, NOW - 100, 1);
        let mut p = pruning();
        batch(&mut conn, &mut p, 1);
        // A batch of one request takes the least slice: 64 of each.
        assert_eq!(count(&conn, "dedup"), 400 - 64);
        assert_eq!(count(&conn, "events"), 350 - 64);
        // A batch of 100 requests takes 100 of each.
        batch(&mut conn, &mut p, 100);
        assert_eq!(count(&conn, "dedup"), 400 - 164);
        assert_eq!(count(&conn, "events"), 350 - 164);
        for _ in 0..2 {
            assert!(
                p.cycle.is_some(),
                "the cycle goes on while old rows are left"
            );
            batch(&mut conn, &mut p, 64);
        }
        assert_eq!(count(&conn, "events"), 350 - 292);
        batch(&mut conn, &mut p, 64);
        assert!(p.cycle.is_none(), "the cycle ends once nothing old is left");
        assert_eq!(count(&conn, "dedup"), 100);
        assert_eq!(count(&conn, "events"), 50);
        // An event goes with its body and deliveries.
        assert_eq!(count(&conn, "bodies"), 50);
        assert_eq!(count(&conn, "deliveries"), 50);
        // A slice never takes more than SLICE_MAX of each.
        add_identities(&conn, 5000, 600, OLD);
        batch(&mut conn, &mut p, 1024);
        assert_eq!(count(&conn, "dedup"), 100 + 600 - SLICE_MAX as i64);
    }

    #[test]
    fn kept_events_are_passed_over_once_a_cycle() {
        let mut conn = spool();
        // 1,000 old events kept (dead or pending), then 10 old ones delivered.
        add_events(&conn, 1, 500, OLD, 2);
        add_events(&conn, 501, 500, OLD + 500, 0);
        add_events(&conn, 1001, 10, OLD + 1000, 1);
        let mut p = pruning();
        // Each slice of 64 scans 256 events, from where the last one stopped: the
        // fourth reaches the delivered ones, and the end.
        for _ in 0..3 {
            batch(&mut conn, &mut p, 1);
            assert_eq!(count(&conn, "events"), 1010);
            assert!(p.cycle.is_some());
        }
        batch(&mut conn, &mut p, 1);
        assert_eq!(count(&conn, "events"), 1000);
        assert!(p.cycle.is_none());
        assert_eq!(
            count(&conn, "deliveries WHERE state = 2"),
            500,
            "dead deliveries are never pruned"
        );
        assert_eq!(count(&conn, "deliveries WHERE state = 0"), 500);
        // The next cycle scans them once more (one may have been delivered since).
        conn.execute("UPDATE deliveries SET state = 1 WHERE event_seq = 700", [])
            .unwrap();
        for _ in 0..4 {
            batch(&mut conn, &mut p, 1);
        }
        assert_eq!(count(&conn, "events"), 999);
        assert!(p.cycle.is_none());
    }

    #[test]
    fn a_batch_rolled_back_leaves_pruning_where_it_was() {
        let mut conn = spool();
        add_identities(&conn, 0, 100, OLD);
        add_events(&conn, 1, 100, OLD, 1);
        let mut p = pruning();
        {
            let mut tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            p.slice(&mut tx, 1, NOW);
            tx.rollback().unwrap();
            p.roll_back();
        }
        assert_eq!(count(&conn, "dedup"), 100);
        assert_eq!(count(&conn, "events"), 100);
        assert!(p.cycle.is_none());
        batch(&mut conn, &mut p, 1);
        batch(&mut conn, &mut p, 1);
        assert_eq!(count(&conn, "dedup"), 0);
        assert_eq!(count(&conn, "events"), 0);
        assert!(p.cycle.is_none());
    }
}
