//! Pruning: identities older than `--dedup-window` are forgotten, and events delivered
//! (to every destination, or to none) longer ago than it are deleted with their bodies,
//! deliveries and attempts, so the spool does not grow without bound. An event with a
//! pending or dead delivery is never deleted.
//!
//! Pruning goes in *cycles*: one starts every quarter of the window (from 200 ms to
//! 60 s) and runs until nothing older than the window is left to delete. A cycle works
//! a slice at a time, each in a batch's own transaction, sized by what the batch
//! stored: twice its events and twice its identities, at least [`SLICE_MIN`] and at
//! most [`SLICE_MAX`] of each. Deleting an event costs about as much as storing it, so
//! a cycle's work is spread over the batches that arrive, each holding its requests a
//! little longer, and shares their commits: a cycle of separate transactions of a
//! thousand rows each held the requests queued behind one for 25-35 ms and paid a
//! commit of its own. A slice twice what its batch stored keeps ahead of what ages
//! meanwhile; should one kind still be left over once a cycle has run as long as the
//! interval, the kind already done starts its pass again, so neither waits on the
//! other.
//!
//! Events are scanned in the order they were received, `(received_at, seq)`, from where
//! the cycle's last slice stopped: the kept ones (pending, dead) that lie among the old
//! ones are passed over once per pass, not once per slice. A slice that fails is undone
//! on its own (a savepoint), logged, and ends the cycle, and the batch goes on (unless
//! SQLite ended the whole transaction, which then fails as any batch would). Progress,
//! and the cycle's log line, count only once the batch has committed
//! ([`Pruning::committed`]).

use std::time::{Duration, Instant};

use rusqlite::{params, Connection, Transaction};
use tracing::{info, warn};

/// Rows of each kind (identities; events) a slice deletes, at least.
const SLICE_MIN: usize = 64;
/// Rows of each kind a slice deletes, at most.
const SLICE_MAX: usize = 1024;
/// Events scanned per slice, at most, as a multiple of its events (kept ones count).
const SCAN_FACTOR: usize = 4;

/// What a batch stored: what its slice of pruning is sized by.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Added {
    /// New events.
    pub events: usize,
    /// Identities remembered with them.
    pub identities: usize,
}

impl Added {
    fn slice(n: usize) -> usize {
        n.saturating_mul(2).clamp(SLICE_MIN, SLICE_MAX)
    }
}

/// Where a cycle stands: how far its scan of events has gone, and what it deleted.
#[derive(Debug, Clone, Copy)]
struct Cycle {
    /// When it started, or last started a pass again.
    started: Instant,
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

/// Where the scan of events starts a pass.
const SCAN_FROM: (i64, i64) = (i64::MIN, i64::MIN);

impl Cycle {
    fn start() -> Cycle {
        Cycle {
            started: Instant::now(),
            scanned_to: SCAN_FROM,
            keys_done: false,
            events_done: false,
            keys: 0,
            events: 0,
        }
    }

    fn done(&self) -> bool {
        self.keys_done && self.events_done
    }
}

/// What the open batch's slice did, to stand once the batch commits.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The cycle as the slice leaves it (`None`: ended).
    cycle: Option<Cycle>,
    /// It started a cycle: the next one is due an interval after.
    started: bool,
    /// It ended a cycle, which deleted this much (identities, events).
    ended: Option<(usize, usize)>,
}

/// The writer's pruning: when the next cycle starts, and the one under way.
pub(super) struct Pruning {
    window_ms: i64,
    every: Duration,
    last_start: Instant,
    /// As committed.
    cycle: Option<Cycle>,
    /// As the open batch leaves it, once that commits.
    pending: Option<Pending>,
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

    /// Prunes one slice inside the batch's transaction `tx`, sized by what the batch
    /// `added`, at `now` (ms since the Unix epoch), when a cycle is under way or due.
    /// Errors are logged and undone here: the batch goes on.
    pub(super) fn slice(&mut self, tx: &mut Transaction<'_>, added: Added, now: i64) {
        let (mut cycle, started) = match self.cycle {
            Some(cycle) => (cycle, false),
            None if self.last_start.elapsed() >= self.every => (Cycle::start(), true),
            None => return,
        };
        if cycle.started.elapsed() >= self.every && (cycle.keys_done || cycle.events_done) {
            // One kind lags: the other starts its pass again rather than wait.
            cycle.started = Instant::now();
            cycle.keys_done = false;
            if cycle.events_done {
                cycle.events_done = false;
                cycle.scanned_to = SCAN_FROM;
            }
        }
        let limits = (Added::slice(added.identities), Added::slice(added.events));
        let cutoff = now.saturating_sub(self.window_ms);
        let step = (|| -> rusqlite::Result<Cycle> {
            let sp = tx.savepoint()?;
            let cycle = prune_slice(&sp, cycle, cutoff, limits)?;
            sp.commit()?;
            Ok(cycle)
        })();
        self.pending = Some(match step {
            Ok(cycle) if cycle.done() => Pending {
                cycle: None,
                started,
                ended: Some((cycle.keys, cycle.events)),
            },
            Ok(cycle) => Pending {
                cycle: Some(cycle),
                started,
                ended: None,
            },
            Err(e) => {
                warn!(error = %e, "pruning the spool failed; will try again later");
                Pending {
                    cycle: None,
                    started,
                    ended: None,
                }
            }
        });
    }

    /// The batch committed: its slice's progress stands.
    pub(super) fn committed(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        self.cycle = pending.cycle;
        if pending.started {
            self.last_start = Instant::now();
        }
        if let Some((keys, events)) = pending.ended.filter(|(k, e)| k + e > 0) {
            info!(
                dedup_keys = keys,
                delivered_events = events,
                "pruned entries older than the dedup window"
            );
        }
    }

    /// The batch was rolled back: its slice is done again with the next one.
    pub(super) fn roll_back(&mut self) {
        self.pending = None;
    }
}

/// Deletes up to `limits.0` identities seen before `cutoff`, and up to `limits.1`
/// events delivered before it among the next `limits.1 * SCAN_FACTOR` received before
/// it, after where `cycle` stopped. Returns the cycle moved on.
fn prune_slice(
    conn: &Connection,
    mut cycle: Cycle,
    cutoff: i64,
    (key_limit, event_limit): (usize, usize),
) -> rusqlite::Result<Cycle> {
    if !cycle.keys_done {
        let keys = conn
            .prepare_cached(
                "DELETE FROM dedup WHERE key IN
                   (SELECT key FROM dedup WHERE seen_at / 1000 <= ?1 / 1000 AND seen_at < ?1
                    LIMIT ?2)",
            )?
            .execute(params![cutoff, key_limit as i64])?;
        cycle.keys += keys;
        cycle.keys_done = keys < key_limit;
    }
    if !cycle.events_done {
        let scan = event_limit * SCAN_FACTOR;
        let (after_at, after_seq) = cycle.scanned_to;
        // An event goes once every delivery of it was delivered before the cutoff; one
        // with none (no destination took it) goes too. The range and its order are
        // those of the index events_received (received_at, then the row's seq).
        let scanned: Vec<(i64, i64, bool)> = conn
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
        let mut delete = conn.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
        let mut deleted = 0;
        let mut taken = 0;
        for &(at, seq, kept) in &scanned {
            if deleted == event_limit {
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

    /// `n` events from `seq` on, received at `at` and `step` ms apart, each with its body
    /// and one delivery in `state(seq)` (0 pending, 1 delivered, 2 dead) finished when
    /// received.
    fn add_events_with(
        conn: &Connection,
        seq: i64,
        n: i64,
        at: i64,
        step: i64,
        state: impl Fn(i64) -> i64,
    ) {
        for s in seq..seq + n {
            let received = at + (s - seq) * step;
            conn.execute(
                "INSERT INTO events (seq, id, received_at, size, signature)
                 VALUES (?1, 'e' || ?1, ?2, 2, 's')",
                params![s, received],
            )
            .unwrap();
            conn.execute("INSERT INTO bodies (seq, body) VALUES (?1, x'7b7d')", [s])
                .unwrap();
            let state = state(s);
            conn.execute(
                "INSERT INTO deliveries (id, event_seq, destination, state, next_attempt_at,
                                         retry_from, finished_at)
                 VALUES ('d' || ?1, ?1, 'default/default', ?2, ?3, ?3,
                         CASE WHEN ?2 = 0 THEN NULL ELSE ?3 END)",
                params![s, state, received],
            )
            .unwrap();
        }
    }

    /// `n` events from `seq` on, received at `at` and 1 ms apart, all in `state`.
    fn add_events(conn: &Connection, seq: i64, n: i64, at: i64, state: i64) {
        add_events_with(conn, seq, n, at, 1, |_| state);
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

    /// What a batch of `n` new events with one identity each adds.
    fn stored(n: usize) -> Added {
        Added {
            events: n,
            identities: n,
        }
    }

    /// One batch that stored `n` events (with one identity each) and prunes, committed.
    fn batch(conn: &mut Connection, pruning: &mut Pruning, n: usize) {
        let mut tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        pruning.slice(&mut tx, stored(n), NOW);
        tx.commit().unwrap();
        pruning.committed();
    }

    /// Pruning whose cycles are always due.
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
        // A batch that stored one event takes the least slice: 64 of each.
        assert_eq!(count(&conn, "dedup"), 400 - 64);
        assert_eq!(count(&conn, "events"), 350 - 64);
        // One that stored 50 takes twice that: 100 of each.
        batch(&mut conn, &mut p, 50);
        assert_eq!(count(&conn, "dedup"), 400 - 164);
        assert_eq!(count(&conn, "events"), 350 - 164);
        for _ in 0..2 {
            assert!(
                p.cycle.is_some(),
                "the cycle goes on while old rows are left"
            );
            batch(&mut conn, &mut p, 1);
        }
        assert_eq!(count(&conn, "events"), 350 - 292);
        batch(&mut conn, &mut p, 1);
        assert!(p.cycle.is_none(), "the cycle ends once nothing old is left");
        assert_eq!(count(&conn, "dedup"), 100);
        assert_eq!(count(&conn, "events"), 50);
        // An event goes with its body and deliveries.
        assert_eq!(count(&conn, "bodies"), 50);
        assert_eq!(count(&conn, "deliveries"), 50);
        // A slice never takes more than SLICE_MAX of each.
        add_identities(&conn, 5000, 2000, OLD);
        batch(&mut conn, &mut p, 1500);
        assert_eq!(count(&conn, "dedup"), 100 + 2000 - SLICE_MAX as i64);
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
        conn.execute(
            "UPDATE deliveries SET state = 1, finished_at = ?1 WHERE event_seq = 700",
            [OLD],
        )
        .unwrap();
        for _ in 0..4 {
            batch(&mut conn, &mut p, 1);
        }
        assert_eq!(count(&conn, "events"), 999);
        assert!(p.cycle.is_none());
    }

    #[test]
    fn a_slice_can_stop_among_events_received_in_the_same_millisecond() {
        let mut conn = spool();
        // A batch's events share their time: 300 of them, every other one dead.
        add_events_with(
            &conn,
            1,
            300,
            OLD,
            0,
            |seq| if seq % 2 == 0 { 1 } else { 2 },
        );
        let mut p = pruning();
        batch(&mut conn, &mut p, 1);
        assert_eq!(count(&conn, "events"), 300 - 64);
        batch(&mut conn, &mut p, 1);
        batch(&mut conn, &mut p, 1);
        assert_eq!(count(&conn, "deliveries WHERE state = 1"), 0);
        assert_eq!(count(&conn, "deliveries WHERE state = 2"), 150);
        assert!(p.cycle.is_none());
    }

    #[test]
    fn a_kind_done_starts_its_pass_again_while_the_other_lags() {
        let mut conn = spool();
        add_identities(&conn, 0, 1000, OLD);
        add_events(&conn, 1, 10, OLD, 1);
        let mut p = pruning();
        batch(&mut conn, &mut p, 1);
        assert_eq!(count(&conn, "events"), 0);
        assert_eq!(count(&conn, "dedup"), 1000 - 64);
        // Events delivered since, older than the window: not left until the
        // identities are done.
        add_events(&conn, 11, 5, OLD + 100, 1);
        batch(&mut conn, &mut p, 1);
        assert_eq!(count(&conn, "events"), 0);
        assert_eq!(count(&conn, "dedup"), 1000 - 128);
    }

    #[test]
    fn a_batch_rolled_back_leaves_pruning_where_it_was() {
        let mut conn = spool();
        add_identities(&conn, 0, 100, OLD);
        add_events(&conn, 1, 100, OLD, 1);
        let every = Duration::from_secs(3600);
        let mut p = Pruning::new(WINDOW, every);
        p.last_start = Instant::now() - every;
        {
            let mut tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            p.slice(&mut tx, stored(1), NOW);
            tx.rollback().unwrap();
            p.roll_back();
        }
        assert_eq!(count(&conn, "dedup"), 100);
        assert_eq!(count(&conn, "events"), 100);
        assert!(p.cycle.is_none());
        // The cycle is still due: the next batch starts it again, and it goes on.
        batch(&mut conn, &mut p, 1);
        batch(&mut conn, &mut p, 1);
        assert_eq!(count(&conn, "dedup"), 0);
        assert_eq!(count(&conn, "events"), 0);
        assert!(p.cycle.is_none());
        // Once one has started, the next is due an interval later.
        add_identities(&conn, 1000, 10, OLD);
        batch(&mut conn, &mut p, 1);
        assert_eq!(count(&conn, "dedup"), 10);
    }
}
