//! The writer thread. It owns the only writing connection and takes requests from a
//! bounded queue; whatever has queued up while the previous commit was syncing goes
//! into the next transaction (group commit), so one fsync covers many events.
//! De-duplication checks and inserts happen inside that transaction, in arrival order,
//! so two copies of one event are never both stored. New identities go to the recent
//! ones (`recent`), which each batch also merges, a slice at a time, into the table
//! ordered by key; each batch also takes a slice of pruning's work (`prune`) while
//! something is older than the dedup window.
//!
//! Once a commit is on disk, each new event is also handed to delivery in memory (the
//! *fresh* queue), so its first attempt needs no read of the spool. That queue is
//! bounded: when it is full the event is left to delivery's scan of the spool, which
//! finds every pending event; nothing depends on the hand-over.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, warn};

use super::availability;
use super::handed::Budget;
use super::prune::{Added, Pruning};
use super::recent::Recent;
use crate::spool::{
    conversations, now_ms, Command, NewEvent, Outcome, Recorded, Spool, SpoolError, SpoolHealth,
    Stored, WriterSettings, RETRY_NOW_CHUNK,
};
use crate::types::{
    AttemptReport, Availability, DedupKey, DeliveryState, DestinationKey, DueDelivery, NewDelivery,
};

/// Most requests in one transaction.
const MAX_BATCH: usize = 1024;
/// Most requests waiting for the writer; senders wait beyond it (backpressure).
const QUEUE_DEPTH: usize = 4096;
/// Log frames (pages) after which a commit also checkpoints: about 32 MiB of log.
const WAL_CHECKPOINT_FRAMES: u32 = 8192;
/// Bytes of log file kept once the log starts over.
const WAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;
/// The writer's page cache, in KiB: the dedup table's leaves are looked up (and merged
/// into) at random, and each one missing from the cache is a read from the file.
const CACHE_KIB: u32 = 8 * 1024;

/// Events handed to delivery in memory and not yet taken, at most. Bodies over
/// [`crate::spool::INLINE_BODY_MAX`] go with them only within
/// [`super::handed::BUDGET`] (else delivery reads them when it sends them), so the
/// queue holds at most 16 MiB of bodies.
const FRESH_DEPTH: usize = 512;

/// The running writer: the handle to send it work, and its thread.
pub struct Writer {
    /// Handle for request handlers and delivery.
    pub spool: Spool,
    /// Deliveries of newly committed events, in commit order, for delivery to take (once).
    pub fresh: Option<mpsc::Receiver<DueDelivery>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread on an open connection.
    /// Fails when the recent identities cannot be read back from the spool.
    pub fn start(conn: Connection, settings: WriterSettings) -> std::io::Result<Writer> {
        let recent = Recent::load(&conn, prune_every(&settings)).map_err(|e| {
            std::io::Error::other(format!("cannot read the recent identities: {e}"))
        })?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (fresh_tx, fresh) = mpsc::channel(FRESH_DEPTH);
        let wakeups = Arc::new(watch::Sender::new(0u64));
        let health = Arc::new(SpoolHealth {
            last_commit_ok: true.into(),
            writer_running: true.into(),
        });
        let spool = Spool {
            tx,
            wakeups: wakeups.clone(),
            health: health.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                run(conn, rx, &fresh_tx, settings, recent, &wakeups, &health);
                health.writer_running.store(false, Ordering::Relaxed);
            })?;
        Ok(Writer {
            spool,
            fresh: Some(fresh),
            thread: Some(thread),
        })
    }

    /// Asks the writer to commit what it has and stop, and waits for it. Requests sent
    /// afterwards fail with [`SpoolError::Closed`] (answered 503, never 200).
    pub async fn stop(mut self) {
        let _ = self.spool.tx.send(Command::Close).await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// How often a pruning cycle starts (and recent identities are merged, at the latest):
/// a quarter of the dedup window, from 200 ms to 60 s.
fn prune_every(settings: &WriterSettings) -> Duration {
    (settings.dedup_window / 4).clamp(Duration::from_millis(200), Duration::from_secs(60))
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    fresh: &mpsc::Sender<DueDelivery>,
    settings: WriterSettings,
    recent: Recent,
    wakeups: &watch::Sender<u64>,
    health: &SpoolHealth,
) {
    let window_ms = settings.dedup_window.as_millis().min(i64::MAX as u128) as i64;
    let mut window = Window {
        ms: window_ms,
        recent,
        pruning: Pruning::new(window_ms, prune_every(&settings)),
    };
    // The checkpointer copies the log back on its own connection. Under steady load it
    // never catches up with the newest frames, and a log is only started over once it is
    // fully copied: past WAL_CHECKPOINT_FRAMES the writer copies the (short) rest itself,
    // so the log stays bounded.
    if let Err(e) = conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_FRAMES}; PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};
         PRAGMA cache_size = -{CACHE_KIB};"
    )) {
        warn!(error = %e, "cannot set the log's checkpoint limits and cache size; using SQLite's defaults");
    }
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let budget = Budget::default();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let closing = batch.iter().any(|c| matches!(c, Command::Close));
        let size = batch.len();
        let started = Instant::now();
        let handed_over = commit_batch(&mut conn, &mut batch, health, fresh, &budget, &mut window);
        debug!(
            size,
            micros = started.elapsed().as_micros() as u64,
            "committed a batch"
        );
        if !handed_over {
            // Some new event is only in the spool: delivery must look there.
            wakeups.send_modify(|n| *n = n.wrapping_add(1));
        }
        if closing {
            break;
        }
    }
    // Whatever is still queued gets no reply: its senders see Closed (503).
    rx.close();
    debug!("spool writer stopped");
}

/// What the writer keeps of the dedup window from one batch to the next.
struct Window {
    /// `--dedup-window`, in ms.
    ms: i64,
    /// The identities accepted lately, not yet merged into `dedup`.
    recent: Recent,
    /// Deleting what is older than the window.
    pruning: Pruning,
}

/// What one request did inside the transaction, for its answer once committed.
enum Applied {
    /// Stored or recognised, with the new event's deliveries (none for a duplicate).
    Accepted(Stored, Vec<Inserted>),
    /// A delivery outcome was recorded, with what it did to its destination.
    Recorded(Recorded),
    /// This many pending events were made due now.
    MadeDue(usize),
    /// Nothing to do (closing).
    Nothing,
}

/// Runs one transaction for the whole batch (with a slice of the recent identities'
/// merge, and one of pruning's), hands the new events to delivery and answers every
/// request. Returns false when a new event could not be handed over.
fn commit_batch(
    conn: &mut Connection,
    batch: &mut Vec<Command>,
    health: &SpoolHealth,
    fresh: &mpsc::Sender<DueDelivery>,
    budget: &Budget,
    window: &mut Window,
) -> bool {
    let now = now_ms();
    let result = (|| -> rusqlite::Result<Vec<Applied>> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(batch.len());
        // Each destination's state, read once per batch (as stored, and as the batch's
        // outcomes move it on), written once if it changed: an answer while the
        // destination is at rest writes nothing.
        let mut states: HashMap<DestinationKey, (Availability, Availability)> = HashMap::new();
        let mut added = Added::default();
        for cmd in batch.iter() {
            results.push(match cmd {
                Command::Accept { event, .. } => {
                    let (stored, delivery) =
                        accept_one(&tx, event, now, window.ms, &mut window.recent)?;
                    if let Stored::New(_) = stored {
                        added.events += 1;
                        added.identities += event.keys.all().count();
                    }
                    Applied::Accepted(stored, delivery)
                }
                Command::Record {
                    seq,
                    destination,
                    attempts,
                    outcome,
                    report,
                    signal,
                    ..
                } => {
                    record_one(&tx, *seq, *attempts, outcome, report, now)?;
                    let (stored, before) = match states.get(destination) {
                        Some(state) => *state,
                        None => {
                            let stored = availability::load(&tx, destination)?;
                            (stored, stored)
                        }
                    };
                    let after = before.after(signal, now);
                    states.insert(destination.clone(), (stored, after));
                    let expired = match &signal.expire {
                        Some(expiry) if signal.probe && after.is_down() => {
                            availability::expire(&tx, destination, expiry, *seq, now)?
                        }
                        _ => 0,
                    };
                    let came_up = before.is_down() && !after.is_down();
                    if came_up {
                        tx.prepare_cached(conversations::RESTART_HOLDS)?
                            .execute([destination.as_str()])?;
                    }
                    Applied::Recorded(Recorded {
                        availability: after,
                        came_up,
                        expired,
                    })
                }
                Command::RetryNow { destination, .. } => Applied::MadeDue(
                    tx.prepare_cached(
                        "UPDATE deliveries SET next_attempt_at = ?1 WHERE seq IN
                           (SELECT seq FROM deliveries
                            WHERE state = 0 AND destination = ?3 AND next_attempt_at > ?1
                            ORDER BY next_attempt_at LIMIT ?2)",
                    )?
                    .execute(params![
                        now,
                        RETRY_NOW_CHUNK as i64,
                        destination.as_str()
                    ])?,
                ),
                Command::Close => Applied::Nothing,
            });
        }
        for (destination, (stored, state)) in &states {
            if state != stored {
                availability::save(&tx, destination, state)?;
            }
        }
        window.recent.merge_slice(&tx)?;
        window.pruning.slice(&mut tx, added, now);
        tx.commit()?;
        Ok(results)
    })();
    match result {
        Ok(results) => {
            health.last_commit_ok.store(true, Ordering::Relaxed);
            window.recent.committed();
            window.pruning.committed();
            let mut handed_over = true;
            for (cmd, applied) in batch.drain(..).zip(results) {
                match (cmd, applied) {
                    (Command::Accept { reply, event }, Applied::Accepted(stored, deliveries)) => {
                        if let Stored::New(id) = &stored {
                            for delivery in deliveries {
                                handed_over &= hand_over(fresh, budget, &event, id, delivery, now);
                            }
                        }
                        let _ = reply.send(Ok(stored));
                    }
                    (Command::Record { reply, .. }, Applied::Recorded(recorded)) => {
                        let _ = reply.send(Ok(recorded));
                    }
                    (Command::Record { reply, .. }, _) => {
                        let _ = reply.send(Err(SpoolError::Commit("internal".into())));
                    }
                    (Command::RetryNow { reply, .. }, Applied::MadeDue(n)) => {
                        let _ = reply.send(Ok(n));
                    }
                    (Command::Accept { reply, .. }, _) => {
                        let _ = reply.send(Err(SpoolError::Commit("internal".into())));
                    }
                    (Command::RetryNow { reply, .. }, _) => {
                        let _ = reply.send(Err(SpoolError::Commit("internal".into())));
                    }
                    (Command::Close, _) => {}
                }
            }
            handed_over
        }
        Err(e) => {
            health.last_commit_ok.store(false, Ordering::Relaxed);
            window.recent.roll_back();
            window.pruning.roll_back();
            error!(error = %e, requests = batch.len(), "spool commit failed; nothing of this batch was stored");
            let failure = SpoolError::Commit(e.to_string());
            for cmd in batch.drain(..) {
                match cmd {
                    Command::Accept { reply, .. } => {
                        let _ = reply.send(Err(failure.clone()));
                    }
                    Command::Record { reply, .. } => {
                        let _ = reply.send(Err(failure.clone()));
                    }
                    Command::RetryNow { reply, .. } => {
                        let _ = reply.send(Err(failure.clone()));
                    }
                    Command::Close => {}
                }
            }
            true
        }
    }
}

/// A delivery inserted with a new event: its row number and id, and what it sends.
struct Inserted {
    seq: i64,
    id: String,
    event_seq: i64,
    planned: NewDelivery,
}

/// Gives a newly committed event's delivery to delivery, if its queue has room. Returns
/// false when it has none (the delivery is then found by delivery's scan of the spool).
fn hand_over(
    fresh: &mpsc::Sender<DueDelivery>,
    budget: &Budget,
    event: &NewEvent,
    event_id: &str,
    delivery: Inserted,
    now: i64,
) -> bool {
    let planned = delivery.planned;
    let body = planned.body.unwrap_or_else(|| event.body.clone());
    let due = DueDelivery {
        seq: delivery.seq,
        id: delivery.id,
        event_seq: delivery.event_seq,
        event_id: event_id.to_owned(),
        destination: planned.destination,
        part: planned.part,
        retry_from: now,
        attempts: 0,
        signature: planned
            .signature
            .clone()
            .unwrap_or_else(|| event.signature.clone()),
        signature_sha1: match planned.signature {
            Some(_) => planned.signature_sha1,
            None => event.signature_sha1.clone(),
        },
        body: budget.hand_over(body),
    };
    match fresh.try_send(due) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => false,
        // Delivery has stopped: it scans the spool when it starts again.
        Err(mpsc::error::TrySendError::Closed(_)) => true,
    }
}

/// Checks one event against the remembered identities (the recent ones in memory, then
/// the table) and stores it if it is new, with one delivery per destination. Returns
/// what happened and, for a new event, its deliveries.
fn accept_one(
    tx: &Transaction<'_>,
    event: &NewEvent,
    now: i64,
    window_ms: i64,
    recent: &mut Recent,
) -> rusqlite::Result<(Stored, Vec<Inserted>)> {
    let cutoff = now.saturating_sub(window_ms);
    let mut event_id = tx.prepare_cached("SELECT id FROM events WHERE seq = ?1")?;
    let mut lookup = tx.prepare_cached(
        "SELECT d.event_seq, e.id FROM dedup d LEFT JOIN events e ON e.seq = d.event_seq
         WHERE d.key = ?1 AND d.seen_at >= ?2",
    )?;
    // A duplicate is reported with its event's id, or `#seq` once that event is pruned.
    let mut seen = |key: &DedupKey| -> rusqlite::Result<Option<String>> {
        if let Some(sighting) = recent.get(key).filter(|s| s.seen_at >= cutoff) {
            let seq = sighting.event_seq;
            let id: Option<String> = event_id.query_row([seq], |r| r.get(0)).optional()?;
            return Ok(Some(id.unwrap_or_else(|| format!("#{seq}"))));
        }
        lookup
            .query_row(params![&key.as_bytes()[..], cutoff], |r| {
                let seq: i64 = r.get(0)?;
                let id: Option<String> = r.get(1)?;
                Ok(id.unwrap_or_else(|| format!("#{seq}")))
            })
            .optional()
    };
    if let Some(id) = seen(&event.keys.body)? {
        return Ok((Stored::Duplicate(id), Vec::new()));
    }
    if let Some(items) = &event.keys.items {
        let mut first_seen = None;
        let mut all_seen = true;
        for key in items {
            match seen(key)? {
                Some(id) => {
                    first_seen.get_or_insert(id);
                }
                None => {
                    all_seen = false;
                    break;
                }
            }
        }
        if let (true, Some(id)) = (all_seen, first_seen) {
            return Ok((Stored::Duplicate(id), Vec::new()));
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    tx.prepare_cached(
        "INSERT INTO events (id, received_at, size, object, field, headers, signature,
                             signature_sha1, route)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        id,
        now,
        event.body.len() as i64,
        event.object,
        event.field,
        event.headers,
        event.signature,
        event.signature_sha1,
        event.route,
    ])?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached("INSERT INTO bodies (seq, body) VALUES (?1, ?2)")?
        .execute(params![seq, &event.body[..]])?;
    for key in event.keys.all() {
        recent.remember(tx, key, seq, now)?;
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO deliveries (id, event_seq, destination, part, parts, split, state,
                                 next_attempt_at, retry_from, signature, signature_sha1)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)",
    )?;
    let mut own_body =
        tx.prepare_cached("INSERT INTO delivery_bodies (seq, body) VALUES (?1, ?2)")?;
    let mut conversation = tx.prepare_cached(
        "INSERT OR IGNORE INTO conversations (delivery_seq, key, destination) VALUES (?1, ?2, ?3)",
    )?;
    let mut deliveries = Vec::with_capacity(event.deliveries.len());
    for planned in &event.deliveries {
        let delivery_id = uuid::Uuid::now_v7().to_string();
        let (part, parts) = planned.part.unwrap_or((1, 1));
        insert.execute(params![
            delivery_id,
            seq,
            planned.destination.as_str(),
            part,
            parts,
            planned.part.is_some(),
            DeliveryState::Pending.code(),
            now,
            planned.signature,
            planned.signature_sha1,
        ])?;
        let delivery_seq = tx.last_insert_rowid();
        if let Some(body) = &planned.body {
            own_body.execute(params![delivery_seq, &body[..]])?;
        }
        for key in &planned.conversations {
            conversation.execute(params![delivery_seq, key, planned.destination.as_str()])?;
        }
        deliveries.push(Inserted {
            seq: delivery_seq,
            id: delivery_id,
            event_seq: seq,
            planned: planned.clone(),
        });
    }
    Ok((Stored::New(id), deliveries))
}

/// Records an attempt at delivery `seq`: its outcome, and the attempt in its history.
fn record_one(
    tx: &Transaction<'_>,
    seq: i64,
    attempts: i64,
    outcome: &Outcome,
    report: &AttemptReport,
    now: i64,
) -> rusqlite::Result<()> {
    let (next_attempt_at, error, finished_at, release) = match outcome {
        Outcome::Delivered => (now, None, Some(now), true),
        Outcome::Retry {
            next_attempt_at,
            error,
            release_conversations,
        } => (*next_attempt_at, Some(error), None, *release_conversations),
        Outcome::Dead { error } => (now, Some(error), Some(now), true),
    };
    let updated = tx
        .prepare_cached(
            "UPDATE deliveries SET state = ?2, attempts = ?3, next_attempt_at = ?4, last_error = ?5,
                               finished_at = ?6
         WHERE seq = ?1 AND state = 0",
        )?
        .execute(params![
            seq,
            outcome.state().code(),
            attempts,
            next_attempt_at,
            error,
            finished_at
        ])?;
    if updated > 0 {
        // Its conversations (if its destination keeps order): a failure starts its
        // hold's clock; delivered, dead or released, it holds them no more.
        if matches!(outcome, Outcome::Retry { .. }) {
            tx.prepare_cached(
                "UPDATE conversations SET failed_at = ?2 WHERE delivery_seq = ?1 AND failed_at IS NULL",
            )?
            .execute(params![seq, now])?;
        }
        if release {
            tx.prepare_cached(
                "UPDATE conversations SET holding = 0 WHERE delivery_seq = ?1 AND holding",
            )?
            .execute([seq])?;
        }
    }
    tx.prepare_cached(
        "INSERT OR REPLACE INTO attempts (delivery_seq, attempt, at, result, status, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        seq,
        attempts,
        now,
        outcome.state().code(),
        report.status,
        report.detail
    ])?;
    Ok(())
}
