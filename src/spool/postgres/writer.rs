//! The PostgreSQL writer: one task with its own connection takes the requests of this
//! instance (accept, record, retry-now) and commits whatever has queued up in one
//! transaction (group commit), as the SQLite writer does. Requests are answered only
//! after `COMMIT` returned, so a `200` always stands on a committed transaction.
//!
//! De-duplication is decided by the database, atomically across instances: an event's
//! identities are inserted with `INSERT … ON CONFLICT`, so when two instances take two
//! copies at once, the second waits on the unique key until the first commits and then
//! sees it. A transaction the database aborts to break a deadlock between two
//! instances' batches is run again.
//!
//! While the database is unreachable, requests fail at once (answered `503`), the
//! health flag is down (`/readyz` 503), and the writer reconnects with a backoff; a
//! commit whose connection broke is never answered `200` (Meta sends it again, and the
//! dedup memory recognises it if it did commit).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use tracing::{debug, error, info, warn};

use super::accept::{accept_batch, AcceptStatements, AcceptTerms};
use super::clock::ClockWatch;
use super::connect::{back_off, connection_lost, error_text, ConnectError, PgTarget};
use super::record::{record_batch, Attempted, RecordStatements};
use super::schema::{self, MigrateError, CHANNEL, LOCK_CLASS, PRUNE_LOCK};
use super::statistics::Growth;
use crate::spool::{
    now_ms, Command, NewEvent, Recorded, SpoolError, SpoolHealth, Stored, RETRY_NOW_CHUNK,
};

/// Most requests in one transaction.
const MAX_BATCH: usize = 1024;
/// Most requests waiting for the writer; senders wait beyond it (backpressure).
pub(super) const QUEUE_DEPTH: usize = 4096;
/// Identities deleted, and events scanned, per pruning transaction.
const PRUNE_CHUNK: i64 = 250;
/// How often an idle writer checks that the database can still commit.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How often the wait for an unreachable database is logged.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);
/// The longest pause between two connection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Times a batch is run when the database aborts it to resolve a conflict.
const CONFLICT_RUNS: usize = 4;

/// What a writer task takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Accepts and retry-now requests: its commits are what `200` stands on. It also
    /// reports the spool's health, signals the first connection, and prunes.
    Events,
    /// Outcomes of attempts only, on a connection of their own, so that delivery's next
    /// claim never waits behind a large batch of accepts. Nothing answered `200` waits
    /// on these commits.
    Outcomes,
}

/// What the writer needs.
pub(super) struct WriterContext {
    /// What it takes.
    pub role: Role,
    /// The database.
    pub target: Arc<PgTarget>,
    /// How long identities are remembered, and delivered events kept (ms).
    pub window_ms: i64,
    /// This instance's name, kept with what it accepts and attempts.
    pub instance: String,
    /// Wakes this instance's schedulers.
    pub wakeups: Arc<watch::Sender<u64>>,
    /// Health flags.
    pub health: Arc<SpoolHealth>,
}

/// The first connection's fate, for the start-up: connected and at the current schema,
/// or refused (an error that waiting does not fix).
pub(super) type Started = oneshot::Sender<Result<(), String>>;

/// Runs the writer until a `Close` request or the end of the queue. `started` (the
/// events writer's) hears how the first connection went; a writer without one never
/// gives up on the database.
pub(super) async fn run(
    ctx: WriterContext,
    mut rx: mpsc::Receiver<Command>,
    started: Option<Started>,
) {
    let mut started = started;
    let events = ctx.role == Role::Events;
    let mut session: Option<Session> = None;
    let mut delay = Duration::from_millis(100);
    let mut waiting_since: Option<Instant> = None;
    let mut last_wait_log: Option<Instant> = None;
    // Only the events writer prunes.
    let mut pruning = events.then(|| PruneSchedule::new(ctx.window_ms));
    let mut growth = Growth::new();
    // Only the events writer measures the database's clock.
    let mut clock = events.then(ClockWatch::default);
    loop {
        let Some(s) = session.as_mut() else {
            match Session::open(&ctx.target, clock.as_mut()).await {
                Ok(s) => {
                    if events {
                        info!(database = %ctx.target.describe(), instance = %ctx.instance, "connected to the PostgreSQL spool");
                    }
                    session = Some(s);
                    delay = Duration::from_millis(100);
                    waiting_since = None;
                    ctx.health.last_commit_ok.store(true, Ordering::Relaxed);
                    if let Some(tx) = started.take() {
                        let _ = tx.send(Ok(()));
                    }
                    // Deliveries may have waited for the database: look again.
                    ctx.wakeups.send_modify(|n| *n = n.wrapping_add(1));
                }
                Err(e) => {
                    ctx.health.last_commit_ok.store(false, Ordering::Relaxed);
                    if let (Some(_), OpenError::Refused(reason)) = (&started, &e) {
                        if let Some(tx) = started.take() {
                            let _ = tx.send(Err(reason.clone()));
                        }
                        break;
                    }
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if events && last_wait_log.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
                        last_wait_log = Some(Instant::now());
                        warn!(database = %ctx.target.describe(), error = %e, waiting_s = since.elapsed().as_secs(), "waiting for the PostgreSQL spool; events are answered 503 meanwhile");
                    }
                    if fail_queued(&mut rx) {
                        break;
                    }
                    back_off(&mut delay, RECONNECT_MAX).await;
                }
            }
            continue;
        };
        if let Some(clock) = clock.as_mut() {
            clock.keep(&s.client).await;
        }
        let first = tokio::select! {
            cmd = rx.recv() => cmd,
            _ = tokio::time::sleep(HEALTH_EVERY) => {
                if let Err(e) = s.check().await {
                    lost(&ctx, &mut session, &e);
                } else if let Some(pruning) = pruning.as_mut() {
                    pruning.step(s).await;
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let closing = batch.iter().any(|c| matches!(c, Command::Close));
        let size = batch.len();
        let begun = Instant::now();
        let mut result = s.commit(&batch, &ctx).await;
        for _ in 1..CONFLICT_RUNS {
            match &result {
                Err(e) if retryable(e) => {
                    debug!(error = %error_text(e), "the database aborted a batch to resolve a conflict; running it again");
                    result = s.commit(&batch, &ctx).await;
                }
                _ => break,
            }
        }
        debug!(
            size,
            micros = begun.elapsed().as_micros() as u64,
            "committed a batch"
        );
        match result {
            Ok(applied) => {
                ctx.health.last_commit_ok.store(true, Ordering::Relaxed);
                let stored = applied
                    .iter()
                    .filter(|a| matches!(a, Applied::Accepted(Stored::New(_), _)))
                    .count();
                if stored > 0 {
                    growth.grew(stored, &ctx.target);
                }
                let mut new_deliveries = false;
                for (cmd, applied) in batch.into_iter().zip(applied) {
                    new_deliveries |= answer(cmd, Ok(applied));
                }
                if new_deliveries {
                    ctx.wakeups.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(e) => {
                let text = error_text(&e);
                error!(error = %text, requests = size, "spool commit failed; nothing of this batch was stored");
                let failure = SpoolError::Commit(text);
                for cmd in batch {
                    answer(cmd, Err(failure.clone()));
                }
                if connection_lost(&e) || e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) {
                    lost(&ctx, &mut session, &error_text(&e));
                } else {
                    ctx.health.last_commit_ok.store(false, Ordering::Relaxed);
                }
            }
        }
        if let (Some(s), Some(pruning)) = (session.as_mut(), pruning.as_mut()) {
            pruning.step(s).await;
        }
        if closing {
            break;
        }
    }
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        answer(cmd, Err(SpoolError::Closed));
    }
    debug!("PostgreSQL spool writer stopped");
}

/// Drops the session after a lost connection (or a database that can no longer
/// commit): the health flag goes down and the next turn reconnects.
fn lost(ctx: &WriterContext, session: &mut Option<Session>, e: &dyn std::fmt::Display) {
    match ctx.role {
        Role::Events => {
            warn!(error = %e, "lost the PostgreSQL spool; reconnecting, events are answered 503 meanwhile")
        }
        Role::Outcomes => {
            warn!(error = %e, "lost the PostgreSQL spool's connection for outcomes; reconnecting, attempts wait for their record meanwhile")
        }
    }
    ctx.health.last_commit_ok.store(false, Ordering::Relaxed);
    *session = None;
}

/// Whether the database aborted a transaction that may well pass when run again: a
/// deadlock between two instances' batches, a serialization failure, or a row deleted
/// under a record by another instance.
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::FOREIGN_KEY_VIOLATION
    )
}

/// Answers every request waiting while the database is unreachable (they become
/// `503`s now rather than after a timeout). Returns true when a `Close` was among them.
fn fail_queued(rx: &mut mpsc::Receiver<Command>) -> bool {
    let mut closing = false;
    while let Ok(cmd) = rx.try_recv() {
        closing |= matches!(cmd, Command::Close);
        answer(
            cmd,
            Err(SpoolError::Commit(
                "the PostgreSQL spool is unreachable".into(),
            )),
        );
    }
    closing
}

/// What one request did inside the transaction, for its answer once committed.
enum Applied {
    /// Stored (with this many deliveries) or recognised.
    Accepted(Stored, usize),
    /// An outcome was recorded, with what it did to its destination.
    Recorded(Recorded),
    /// This many pending deliveries were made due now.
    MadeDue(usize),
    /// Nothing to do (closing).
    Nothing,
}

/// Answers one request. Returns true when it stored deliveries to look for.
fn answer(cmd: Command, result: Result<Applied, SpoolError>) -> bool {
    match (cmd, result) {
        (Command::Accept { reply, .. }, Ok(Applied::Accepted(stored, n))) => {
            let _ = reply.send(Ok(stored));
            n > 0
        }
        (Command::Record { reply, .. }, Ok(Applied::Recorded(recorded))) => {
            let _ = reply.send(Ok(recorded));
            false
        }
        (Command::RetryNow { reply, .. }, Ok(Applied::MadeDue(n))) => {
            let _ = reply.send(Ok(n));
            false
        }
        (Command::Accept { reply, .. }, r) => {
            let _ = reply.send(Err(r
                .err()
                .unwrap_or(SpoolError::Commit("internal".into()))));
            false
        }
        (Command::Record { reply, .. }, r) => {
            let _ = reply.send(Err(r
                .err()
                .unwrap_or(SpoolError::Commit("internal".into()))));
            false
        }
        (Command::RetryNow { reply, .. }, r) => {
            let _ = reply.send(Err(r
                .err()
                .unwrap_or(SpoolError::Commit("internal".into()))));
            false
        }
        (Command::Close, _) => false,
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// Waiting does not help (authentication, a newer schema, ...).
    #[error("{0}")]
    Refused(String),
    /// It may come back.
    #[error("{0}")]
    Unreachable(String),
}

/// The writer's connection with its statements prepared.
struct Session {
    client: Client,
    stmts: Statements,
}

/// The statements of the write path, prepared once per connection.
struct Statements {
    next_seqs: Statement,
    accept: AcceptStatements,
    record: RecordStatements,
    retry_now: Statement,
}

impl Session {
    /// Connects, creates or upgrades the schema, prepares the statements and, with a
    /// `clock` (the events writer's), reads the database's clock: a connection whose
    /// clock cannot be read is not used, so nothing is written or claimed by another.
    async fn open(target: &PgTarget, clock: Option<&mut ClockWatch>) -> Result<Session, OpenError> {
        let mut client = target.connect().await.map_err(|e| match e {
            ConnectError::Refused(r) => OpenError::Refused(r),
            ConnectError::Unreachable(r) => OpenError::Unreachable(r),
        })?;
        match schema::migrate(&mut client).await {
            Ok(_) => {}
            Err(MigrateError::Newer(v)) => {
                return Err(OpenError::Refused(MigrateError::Newer(v).to_string()))
            }
            Err(e @ MigrateError::Database(_)) => {
                return Err(OpenError::Unreachable(e.to_string()))
            }
        }
        let stmts = Statements::prepare(&client)
            .await
            .map_err(|e| OpenError::Unreachable(error_text(&e)))?;
        if let Some(clock) = clock {
            clock.read(&client).await.map_err(|e| {
                OpenError::Unreachable(format!("cannot read the database's clock: {e}"))
            })?;
        }
        Ok(Session { client, stmts })
    }

    /// Whether the database still takes writes: an error when the connection is
    /// gone or the server is in recovery (a standby, or an old primary after a
    /// failover), so the writer reconnects, perhaps to the new primary.
    async fn check(&mut self) -> Result<(), String> {
        let row = self
            .client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| error_text(&e))?;
        if row.get::<_, bool>(0) {
            return Err("the database is in recovery (a standby): it cannot commit".into());
        }
        Ok(())
    }

    /// Runs one transaction for the whole batch: its accepts, then its outcomes, then
    /// its retry-now requests, each kind in a fixed number of statements.
    async fn commit(
        &mut self,
        batch: &[Command],
        ctx: &WriterContext,
    ) -> Result<Vec<Applied>, tokio_postgres::Error> {
        let now = now_ms();
        let stmts = &self.stmts;
        let tx = self.client.transaction().await?;
        let events: Vec<&NewEvent> = batch
            .iter()
            .filter_map(|c| match c {
                Command::Accept { event, .. } => Some(event),
                _ => None,
            })
            .collect();
        let mut accepted = if events.is_empty() {
            // Outcomes and retry-now alone: a crash of the database may forget the last
            // of them, and those deliveries are made again (at least once). Nothing
            // answered 200 waits on this commit, so it need not wait for the disk.
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await?;
            Vec::new()
        } else {
            let seqs = schema::next_seqs(&tx, &stmts.next_seqs, "events", events.len()).await?;
            let terms = AcceptTerms {
                now,
                cutoff: now.saturating_sub(ctx.window_ms),
                instance: &ctx.instance,
            };
            accept_batch(&tx, &stmts.accept, &events, &seqs, &terms).await?
        }
        .into_iter();
        let attempted: Vec<Attempted> = batch
            .iter()
            .filter_map(|c| match c {
                Command::Record {
                    seq,
                    destination,
                    attempts,
                    outcome,
                    report,
                    signal,
                    ..
                } => Some(Attempted {
                    seq: *seq,
                    attempts: *attempts,
                    outcome,
                    report,
                    destination,
                    signal,
                }),
                _ => None,
            })
            .collect();
        let mut recorded = record_batch(&tx, &stmts.record, &attempted, now, &ctx.instance)
            .await?
            .into_iter();
        let mut applied = Vec::with_capacity(batch.len());
        let mut notify = false;
        for cmd in batch {
            applied.push(match cmd {
                Command::Accept { .. } => match accepted.next() {
                    Some((stored, n)) => {
                        notify |= n > 0;
                        Applied::Accepted(stored, n)
                    }
                    None => Applied::Nothing,
                },
                Command::Record { .. } => match recorded.next() {
                    Some(r) => Applied::Recorded(r),
                    None => Applied::Nothing,
                },
                Command::RetryNow { destination, .. } => {
                    let n = tx
                        .execute(
                            &stmts.retry_now,
                            &[&now, &(RETRY_NOW_CHUNK as i64), &destination.as_str()],
                        )
                        .await? as usize;
                    notify |= n > 0;
                    Applied::MadeDue(n)
                }
                Command::Close => Applied::Nothing,
            });
        }
        if notify {
            tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Prunes one chunk of a pruning cycle, when no other instance is pruning: up to
    /// [`PRUNE_CHUNK`] identities older than the window, and the events delivered
    /// before it among the next [`PRUNE_CHUNK`] received before it, after where the
    /// cycle's scan stopped (events kept for a pending or dead delivery are passed over
    /// once a cycle, not once a chunk). Returns the cycle while there may be more.
    async fn prune(&mut self, window_ms: i64, mut cycle: PruneCycle) -> Option<PruneCycle> {
        let cutoff = now_ms().saturating_sub(window_ms);
        let (after_at, after_seq) = cycle.scanned_to;
        let step = async {
            let tx = self.client.transaction().await?;
            // What a crash forgets of a chunk is pruned again by a later one: no need to
            // wait for the database's disk, with the writer waiting behind.
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await?;
            let mine: bool = tx
                .query_one(
                    "SELECT pg_try_advisory_xact_lock($1, $2)",
                    &[&LOCK_CLASS, &PRUNE_LOCK],
                )
                .await?
                .get(0);
            if !mine {
                return Ok::<_, tokio_postgres::Error>(None);
            }
            let keys = tx
                .execute(
                    "DELETE FROM dedup WHERE key IN
                       (SELECT key FROM dedup WHERE seen_at < $1 LIMIT $2)",
                    &[&cutoff, &PRUNE_CHUNK],
                )
                .await?;
            // The range is an index condition on events_received; PostgreSQL 13 and later
            // also take the order within it from the index (an incremental sort by seq
            // within a millisecond), 12 sorts what is left of the range.
            let row = tx
                .query_one(
                    "WITH scanned AS (
                         SELECT e.seq, e.received_at,
                                NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.event_seq = e.seq
                                            AND (o.state != 1 OR o.finished_at >= $1)) AS done
                         FROM events e
                         WHERE e.received_at < $1 AND e.received_at >= $3
                           AND (e.received_at > $3 OR e.seq > $4)
                         ORDER BY e.received_at, e.seq LIMIT $2),
                     deleted AS (
                         DELETE FROM events WHERE seq IN (SELECT seq FROM scanned WHERE done)
                         RETURNING 1),
                     last AS (
                         SELECT received_at, seq FROM scanned
                         ORDER BY received_at DESC, seq DESC LIMIT 1)
                     SELECT (SELECT count(*) FROM deleted), (SELECT count(*) FROM scanned),
                            (SELECT received_at FROM last), (SELECT seq FROM last)",
                    &[&cutoff, &PRUNE_CHUNK, &after_at, &after_seq],
                )
                .await?;
            tx.commit().await?;
            let (events, scanned): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            let last: (Option<i64>, Option<i64>) = (row.try_get(2)?, row.try_get(3)?);
            Ok(Some((keys, events as u64, scanned, last)))
        };
        match step.await {
            Ok(Some((keys, events, scanned, last))) => {
                cycle.keys += keys;
                cycle.events += events;
                if let (Some(at), Some(seq)) = last {
                    cycle.scanned_to = (at, seq);
                }
                if keys == PRUNE_CHUNK as u64 || scanned == PRUNE_CHUNK {
                    return Some(cycle);
                }
                if cycle.keys + cycle.events > 0 {
                    info!(
                        dedup_keys = cycle.keys,
                        delivered_events = cycle.events,
                        "pruned entries older than the dedup window"
                    );
                }
                None
            }
            // Another instance is pruning.
            Ok(None) => None,
            Err(e) => {
                warn!(error = %error_text(&e), "pruning the spool failed; will try again later");
                None
            }
        }
    }
}

/// When the writer prunes: a cycle starts every quarter of the window (from 200 ms to
/// 60 s), and while one is under way, a chunk of it runs after each batch (or idle
/// check).
struct PruneSchedule {
    window_ms: i64,
    every: Duration,
    last: Instant,
    cycle: Option<PruneCycle>,
}

impl PruneSchedule {
    fn new(window_ms: i64) -> PruneSchedule {
        PruneSchedule {
            window_ms,
            every: (Duration::from_millis(window_ms as u64) / 4)
                .clamp(Duration::from_millis(200), Duration::from_secs(60)),
            last: Instant::now(),
            cycle: None,
        }
    }

    /// Runs the next chunk on `s`, when a cycle is under way or due.
    async fn step(&mut self, s: &mut Session) {
        if self.cycle.is_none() && self.last.elapsed() < self.every {
            return;
        }
        let cycle = self.cycle.take().unwrap_or_default();
        self.cycle = s.prune(self.window_ms, cycle).await;
        self.last = Instant::now();
    }
}

/// A pruning cycle under way: where its scan of events stopped (`received_at`, `seq`),
/// and what it deleted so far.
struct PruneCycle {
    scanned_to: (i64, i64),
    keys: u64,
    events: u64,
}

impl Default for PruneCycle {
    fn default() -> PruneCycle {
        PruneCycle {
            scanned_to: (i64::MIN, i64::MIN),
            keys: 0,
            events: 0,
        }
    }
}

impl Statements {
    async fn prepare(c: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            next_seqs: c.prepare(schema::NEXT_SEQS).await?,
            accept: AcceptStatements::prepare(c).await?,
            record: RecordStatements::prepare(c).await?,
            retry_now: c
                .prepare(
                    "UPDATE deliveries SET next_attempt_at = $1 WHERE seq IN
                       (SELECT seq FROM deliveries
                        WHERE state = 0 AND destination = $3 AND next_attempt_at > $1
                        ORDER BY next_attempt_at LIMIT $2)",
                )
                .await?,
        })
    }
}
