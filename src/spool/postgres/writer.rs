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

use futures_util::future::try_join_all;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};
use tracing::{debug, error, info, warn};

use super::connect::{back_off, connection_lost, ConnectError, PgTarget};
use super::schema::{self, MigrateError, CHANNEL, LOCK_CLASS, PRUNE_LOCK};
use crate::spool::{
    now_ms, Command, NewEvent, Outcome, SpoolError, SpoolHealth, Stored, RETRY_NOW_CHUNK,
};
use crate::types::AttemptReport;

/// Most requests in one transaction.
const MAX_BATCH: usize = 1024;
/// Most requests waiting for the writer; senders wait beyond it (backpressure).
pub(super) const QUEUE_DEPTH: usize = 4096;
/// Rows deleted per pruning transaction.
const PRUNE_CHUNK: i64 = 1000;
/// How often an idle writer checks that the database can still commit.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How often the wait for an unreachable database is logged.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);
/// The longest pause between two connection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Times a batch is run when the database aborts it to resolve a conflict.
const CONFLICT_RUNS: usize = 4;

/// What the writer needs.
pub(super) struct WriterContext {
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

/// Runs the writer until a `Close` request or the end of the queue.
pub(super) async fn run(ctx: WriterContext, mut rx: mpsc::Receiver<Command>, started: Started) {
    let mut started = Some(started);
    let mut session: Option<Session> = None;
    let mut delay = Duration::from_millis(100);
    let mut waiting_since: Option<Instant> = None;
    let mut last_wait_log: Option<Instant> = None;
    let prune_every = (Duration::from_millis(ctx.window_ms as u64) / 4)
        .clamp(Duration::from_millis(200), Duration::from_secs(60));
    let mut last_prune = Instant::now();
    let mut prune_behind = false;
    loop {
        let Some(s) = session.as_mut() else {
            match Session::open(&ctx.target).await {
                Ok(s) => {
                    info!(database = %ctx.target.describe(), instance = %ctx.instance, "connected to the PostgreSQL spool");
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
                    if last_wait_log.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
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
        let first = tokio::select! {
            cmd = rx.recv() => cmd,
            _ = tokio::time::sleep(HEALTH_EVERY) => {
                if let Err(e) = s.check().await {
                    lost(&ctx, &mut session, &e);
                } else if prune_behind || last_prune.elapsed() >= prune_every {
                    prune_behind = s.prune(ctx.window_ms).await;
                    last_prune = Instant::now();
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
                    debug!(error = %e, "the database aborted a batch to resolve a conflict; running it again");
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
                let mut new_deliveries = false;
                for (cmd, applied) in batch.into_iter().zip(applied) {
                    new_deliveries |= answer(cmd, Ok(applied));
                }
                if new_deliveries {
                    ctx.wakeups.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(e) => {
                error!(error = %e, requests = size, "PostgreSQL commit failed; nothing of this batch was stored");
                let failure = SpoolError::Commit(e.to_string());
                for cmd in batch {
                    answer(cmd, Err(failure.clone()));
                }
                if connection_lost(&e) || e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) {
                    lost(&ctx, &mut session, &e);
                } else {
                    ctx.health.last_commit_ok.store(false, Ordering::Relaxed);
                }
            }
        }
        if let Some(s) = session.as_mut() {
            if prune_behind || last_prune.elapsed() >= prune_every {
                prune_behind = s.prune(ctx.window_ms).await;
                last_prune = Instant::now();
            }
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
    warn!(error = %e, "lost the PostgreSQL spool; reconnecting, events are answered 503 meanwhile");
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
    /// An outcome was recorded.
    Recorded,
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
        (Command::Record { reply, .. }, Ok(_)) => {
            let _ = reply.send(Ok(()));
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
        (Command::Record { reply, .. }, Err(e)) => {
            let _ = reply.send(Err(e));
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
    claim_key: Statement,
    claim_items: Statement,
    holder: Statement,
    undo_key: Statement,
    refresh_items: Statement,
    insert_event: Statement,
    insert_body: Statement,
    insert_delivery: Statement,
    insert_delivery_body: Statement,
    record: Statement,
    record_attempt: Statement,
    retry_now: Statement,
}

impl Session {
    /// Connects, creates or upgrades the schema, and prepares the statements.
    async fn open(target: &PgTarget) -> Result<Session, OpenError> {
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
            .map_err(|e| OpenError::Unreachable(e.to_string()))?;
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
            .map_err(|e| e.to_string())?;
        if row.get::<_, bool>(0) {
            return Err("the database is in recovery (a standby): it cannot commit".into());
        }
        Ok(())
    }

    /// Runs one transaction for the whole batch.
    async fn commit(
        &mut self,
        batch: &[Command],
        ctx: &WriterContext,
    ) -> Result<Vec<Applied>, tokio_postgres::Error> {
        let now = now_ms();
        let stmts = &self.stmts;
        let tx = self.client.transaction().await?;
        let accepts = batch
            .iter()
            .filter(|c| matches!(c, Command::Accept { .. }))
            .count() as i64;
        let mut seqs = if accepts > 0 {
            tx.query(&stmts.next_seqs, &[&accepts]).await?
        } else {
            Vec::new()
        }
        .into_iter()
        .map(|r| r.get::<_, i64>(0));
        let mut applied = Vec::with_capacity(batch.len());
        let mut notify = false;
        for cmd in batch {
            applied.push(match cmd {
                Command::Accept { event, .. } => {
                    let seq = seqs.next().unwrap_or_default();
                    let (stored, n) = accept_one(&tx, stmts, event, seq, now, ctx).await?;
                    notify |= n > 0;
                    Applied::Accepted(stored, n)
                }
                Command::Record {
                    seq,
                    attempts,
                    outcome,
                    report,
                    ..
                } => {
                    record_one(
                        &tx,
                        stmts,
                        *seq,
                        *attempts,
                        outcome,
                        report,
                        now,
                        &ctx.instance,
                    )
                    .await?;
                    Applied::Recorded
                }
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

    /// Prunes one chunk of identities and delivered events older than the window,
    /// when no other instance is pruning. Returns true when there may be more.
    async fn prune(&mut self, window_ms: i64) -> bool {
        let cutoff = now_ms().saturating_sub(window_ms);
        let step = async {
            let tx = self.client.transaction().await?;
            let mine: bool = tx
                .query_one(
                    "SELECT pg_try_advisory_xact_lock($1, $2)",
                    &[&LOCK_CLASS, &PRUNE_LOCK],
                )
                .await?
                .get(0);
            if !mine {
                return Ok::<_, tokio_postgres::Error>((0, 0));
            }
            let keys = tx
                .execute(
                    "DELETE FROM dedup WHERE key IN
                       (SELECT key FROM dedup WHERE seen_at < $1 LIMIT $2)",
                    &[&cutoff, &PRUNE_CHUNK],
                )
                .await?;
            let events = tx
                .execute(
                    "DELETE FROM events WHERE seq IN
                       (SELECT e.seq FROM events e WHERE e.received_at < $1
                        AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.event_seq = e.seq
                                        AND (o.state != 1 OR o.finished_at >= $1))
                        LIMIT $2)",
                    &[&cutoff, &PRUNE_CHUNK],
                )
                .await?;
            tx.commit().await?;
            Ok((keys, events))
        };
        match step.await {
            Ok((keys, events)) => {
                if keys + events > 0 {
                    info!(
                        dedup_keys = keys,
                        delivered_events = events,
                        "pruned entries older than the dedup window"
                    );
                }
                keys == PRUNE_CHUNK as u64 || events == PRUNE_CHUNK as u64
            }
            Err(e) => {
                warn!(error = %e, "pruning the spool failed; will try again later");
                false
            }
        }
    }
}

impl Statements {
    async fn prepare(c: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            next_seqs: c
                .prepare(
                    "SELECT nextval(pg_get_serial_sequence('events', 'seq'))
                     FROM generate_series(1, $1::bigint)",
                )
                .await?,
            claim_key: c
                .prepare(
                    "INSERT INTO dedup AS d (key, event_seq, seen_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET event_seq = EXCLUDED.event_seq,
                                                     seen_at = EXCLUDED.seen_at
                     WHERE d.seen_at < $4
                     RETURNING d.key",
                )
                .await?,
            claim_items: c
                .prepare(
                    "INSERT INTO dedup AS d (key, event_seq, seen_at)
                     SELECT k, $2, $3 FROM unnest($1::bytea[]) AS k
                     ON CONFLICT (key) DO UPDATE SET event_seq = EXCLUDED.event_seq,
                                                     seen_at = EXCLUDED.seen_at
                     WHERE d.seen_at < $4
                     RETURNING d.key",
                )
                .await?,
            holder: c
                .prepare(
                    "SELECT d.event_seq, e.id FROM dedup d LEFT JOIN events e ON e.seq = d.event_seq
                     WHERE d.key = $1",
                )
                .await?,
            undo_key: c
                .prepare("DELETE FROM dedup WHERE key = $1 AND event_seq = $2")
                .await?,
            refresh_items: c
                .prepare("UPDATE dedup SET event_seq = $2, seen_at = $3 WHERE key = ANY($1::bytea[])")
                .await?,
            insert_event: c
                .prepare(
                    "INSERT INTO events (seq, id, received_at, size, object, field, headers,
                                         signature, signature_sha1, route, accepted_by)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .await?,
            insert_body: c
                .prepare("INSERT INTO bodies (seq, body) VALUES ($1, $2)")
                .await?,
            insert_delivery: c
                .prepare(
                    "INSERT INTO deliveries (id, event_seq, destination, part, parts, split, state,
                                             next_attempt_at, retry_from, signature, signature_sha1)
                     VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7, $8, $9)
                     RETURNING seq",
                )
                .await?,
            insert_delivery_body: c
                .prepare("INSERT INTO delivery_bodies (seq, body) VALUES ($1, $2)")
                .await?,
            record: c
                .prepare(
                    "UPDATE deliveries SET state = $2, attempts = $3, next_attempt_at = $4,
                                           last_error = $5, finished_at = $6,
                                           claimed_by = NULL, lease_until = NULL
                     WHERE seq = $1 AND state = 0",
                )
                .await?,
            record_attempt: c
                .prepare(
                    "INSERT INTO attempts (delivery_seq, attempt, at, result, status, detail, instance)
                     SELECT $1, $2, $3, $4, $5, $6, $7
                     WHERE EXISTS (SELECT 1 FROM deliveries WHERE seq = $1)
                     ON CONFLICT (delivery_seq, attempt) DO UPDATE
                       SET at = EXCLUDED.at, result = EXCLUDED.result, status = EXCLUDED.status,
                           detail = EXCLUDED.detail, instance = EXCLUDED.instance",
                )
                .await?,
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

/// Checks one event's identities and stores it if it is new, with its deliveries.
/// Returns what happened and how many deliveries were stored.
async fn accept_one(
    tx: &Transaction<'_>,
    stmts: &Statements,
    event: &NewEvent,
    seq: i64,
    now: i64,
    ctx: &WriterContext,
) -> Result<(Stored, usize), tokio_postgres::Error> {
    let cutoff = now.saturating_sub(ctx.window_ms);
    let body_key = &event.keys.body.as_bytes()[..];
    let holder_of = |key: Vec<u8>| async move {
        let row = tx.query_opt(&stmts.holder, &[&key]).await?;
        Ok::<_, tokio_postgres::Error>(row.map_or_else(
            || "#?".to_owned(),
            |r| {
                let id: Option<String> = r.get(1);
                id.unwrap_or_else(|| format!("#{}", r.get::<_, i64>(0)))
            },
        ))
    };
    if tx
        .query_opt(&stmts.claim_key, &[&body_key, &seq, &now, &cutoff])
        .await?
        .is_none()
    {
        return Ok((Stored::Duplicate(holder_of(body_key.to_vec()).await?), 0));
    }
    if let Some(items) = &event.keys.items {
        // Sorted, so two instances take a body's keys in the same order.
        let mut keys: Vec<Vec<u8>> = items.iter().map(|k| k.as_bytes().to_vec()).collect();
        keys.sort();
        keys.dedup();
        let taken: Vec<Vec<u8>> = tx
            .query(&stmts.claim_items, &[&keys, &seq, &now, &cutoff])
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        if taken.is_empty() && !keys.is_empty() {
            // Every item was seen: a retry. The body key goes as if pruned.
            tx.execute(&stmts.undo_key, &[&body_key, &seq]).await?;
            return Ok((Stored::Duplicate(holder_of(keys[0].clone()).await?), 0));
        }
        let seen: Vec<&Vec<u8>> = keys.iter().filter(|k| !taken.contains(k)).collect();
        if !seen.is_empty() {
            tx.execute(&stmts.refresh_items, &[&seen, &seq, &now])
                .await?;
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let size = event.body.len() as i64;
    tx.execute(
        &stmts.insert_event,
        &[
            &seq,
            &id,
            &now,
            &size,
            &event.object,
            &event.field,
            &event.headers,
            &event.signature,
            &event.signature_sha1,
            &event.route,
            &ctx.instance,
        ],
    )
    .await?;
    let body = &event.body[..];
    let body_params: [&(dyn ToSql + Sync); 2] = [&seq, &body];
    let body_insert = tx.execute(&stmts.insert_body, &body_params);
    let deliveries = event.deliveries.iter().map(|planned| async move {
        let (part, parts) = planned.part.unwrap_or((1, 1));
        let (part, parts) = (i64::from(part), i64::from(parts));
        let delivery_id = uuid::Uuid::now_v7().to_string();
        let row = tx
            .query_one(
                &stmts.insert_delivery,
                &[
                    &delivery_id,
                    &seq,
                    &planned.destination.as_str(),
                    &part,
                    &parts,
                    &planned.part.is_some(),
                    &now,
                    &planned.signature,
                    &planned.signature_sha1,
                ],
            )
            .await?;
        if let Some(own) = &planned.body {
            let delivery_seq: i64 = row.get(0);
            let own = &own[..];
            tx.execute(&stmts.insert_delivery_body, &[&delivery_seq, &own])
                .await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    });
    let (_, stored) = futures_util::future::try_join(body_insert, try_join_all(deliveries)).await?;
    Ok((Stored::New(id), stored.len()))
}

/// Records an attempt at delivery `seq`: its outcome (which also releases the claim)
/// and its line in the history, with the instance that made it.
#[allow(clippy::too_many_arguments)]
async fn record_one(
    tx: &Transaction<'_>,
    stmts: &Statements,
    seq: i64,
    attempts: i64,
    outcome: &Outcome,
    report: &AttemptReport,
    now: i64,
    instance: &str,
) -> Result<(), tokio_postgres::Error> {
    let (next_attempt_at, error, finished_at) = match outcome {
        Outcome::Delivered => (now, None, Some(now)),
        Outcome::Retry {
            next_attempt_at,
            error,
        } => (*next_attempt_at, Some(error), None),
        Outcome::Dead { error } => (now, Some(error), Some(now)),
    };
    let state = outcome.state().code();
    let status = report.status.map(i64::from);
    let update_params: [&(dyn ToSql + Sync); 6] = [
        &seq,
        &state,
        &attempts,
        &next_attempt_at,
        &error,
        &finished_at,
    ];
    let history_params: [&(dyn ToSql + Sync); 7] = [
        &seq,
        &attempts,
        &now,
        &state,
        &status,
        &report.detail,
        &instance,
    ];
    let update = tx.execute(&stmts.record, &update_params);
    let history = tx.execute(&stmts.record_attempt, &history_params);
    futures_util::future::try_join(update, history).await?;
    Ok(())
}
