//! The PostgreSQL engine: one database shared by several xhubd instances, with the
//! promises of the SQLite spool (`200` only after `COMMIT`, dedup atomic across
//! instances, every delivery made at least once by whichever instance is alive, `503`
//! while the database cannot commit).
//!
//! - [`connect`]: the URL, its password and TLS.
//! - [`schema`]: the tables, created or upgraded at start under an advisory lock.
//! - `writer`: this instance's writes, with group commit: one task for accepts (what
//!   `200` stands on), one for the outcomes of attempts.
//! - `accept`, `record`: what one commit of each runs, in a fixed number of statements.
//! - `statistics`: the planner's statistics, kept current while the spool grows.
//! - [`clock`]: the database's clock, which the spool's times follow.
//! - `claims`: due deliveries, claimed under a lease (`FOR UPDATE SKIP LOCKED`).
//! - `listen`: wake-ups from other instances (`LISTEN`/`NOTIFY`).
//! - [`inspect`]: the operator's views.

mod accept;
mod claims;
pub mod clock;
pub mod connect;
pub mod inspect;
mod listen;
mod record;
pub mod schema;
mod statistics;
mod writer;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::views::{EventDetail, EventSummary, ListFilter, Replay, SpoolStats};
use super::{
    conversations, Attempted, Command, Recorded, Spool, SpoolError, SpoolHealth, Take, Taken,
    WriterSettings,
};
use crate::types::{Availability, ConversationHold, DestinationKey, DueDelivery, NewEvent, Stored};
pub use connect::PgTarget;

/// Connections in the pool for claims and the operator's views.
const POOL_SIZE: usize = 4;

/// The PostgreSQL engine's handle.
#[derive(Clone)]
pub struct PgStore {
    writer: Spool,
    outcomes: Spool,
    pool: deadpool_postgres::Pool,
    instance: Arc<str>,
}

/// The writer and listener tasks behind a [`PgStore`].
pub struct PgRunning {
    writer: Spool,
    writer_task: JoinHandle<()>,
    outcomes: Spool,
    outcomes_task: JoinHandle<()>,
    stop_listening: CancellationToken,
    // Kept so that delivery's receiver of the (unused) hand-over never ends.
    _fresh: mpsc::Sender<DueDelivery>,
}

impl PgRunning {
    /// Commits what the writers have, stops them, then the listener.
    pub async fn stop(self) {
        let _ = self.writer.tx.send(Command::Close).await;
        let _ = self.writer_task.await;
        let _ = self.outcomes.tx.send(Command::Close).await;
        let _ = self.outcomes_task.await;
        self.stop_listening.cancel();
    }
}

/// The outcome of the first connection, which the start-up waits for: `Ok` once
/// connected with the schema current, or why the database refused (exit status 2).
pub type FirstConnection = oneshot::Receiver<Result<(), String>>;

impl PgStore {
    /// Starts the writer and the listener on `target` without waiting for the
    /// database: until it answers, events get `503` and health is down. The returned
    /// receiver says how the first connection went. Delivery's hand-over receiver is
    /// returned for symmetry with SQLite; on PostgreSQL every delivery is claimed.
    #[allow(clippy::type_complexity)]
    pub fn open(
        target: PgTarget,
        instance: &str,
        settings: WriterSettings,
    ) -> anyhow::Result<(
        PgStore,
        PgRunning,
        mpsc::Receiver<DueDelivery>,
        FirstConnection,
    )> {
        if target.tls_unchecked() {
            tracing::warn!(database = %target.describe(), "TLS to the PostgreSQL spool, if any, does not check the server's certificate (sslmode prefer or require without sslrootcert, as libpq): use sslmode=verify-full to be sure who you talk to");
        }
        let target = Arc::new(target);
        let (tx, rx) = mpsc::channel(writer::QUEUE_DEPTH);
        let wakeups = Arc::new(watch::Sender::new(0u64));
        let health = Arc::new(SpoolHealth {
            last_commit_ok: false.into(),
            writer_running: true.into(),
        });
        let spool = Spool {
            tx,
            wakeups: wakeups.clone(),
            health: health.clone(),
        };
        let (started_tx, started) = oneshot::channel();
        let window_ms = settings.dedup_window.as_millis().min(i64::MAX as u128) as i64;
        let context = |role, health: &Arc<SpoolHealth>| writer::WriterContext {
            role,
            target: target.clone(),
            window_ms,
            instance: instance.to_owned(),
            wakeups: wakeups.clone(),
            health: health.clone(),
        };
        let events_context = context(writer::Role::Events, &health);
        // The outcomes' writer keeps health flags of its own: readiness is the events
        // writer's to say.
        let (outcomes_tx, outcomes_rx) = mpsc::channel(writer::QUEUE_DEPTH);
        let outcomes = Spool {
            tx: outcomes_tx,
            wakeups: wakeups.clone(),
            health: Arc::new(SpoolHealth {
                last_commit_ok: false.into(),
                writer_running: true.into(),
            }),
        };
        let outcomes_task = tokio::spawn(writer::run(
            context(writer::Role::Outcomes, &outcomes.health),
            outcomes_rx,
            None,
        ));
        let writer_task = tokio::spawn(async move {
            writer::run(events_context, rx, Some(started_tx)).await;
            health
                .writer_running
                .store(false, std::sync::atomic::Ordering::Relaxed);
        });
        let stop_listening = CancellationToken::new();
        tokio::spawn(listen::run(target.clone(), wakeups, stop_listening.clone()));
        let (fresh_tx, fresh) = mpsc::channel(1);
        let store = PgStore {
            writer: spool.clone(),
            outcomes: outcomes.clone(),
            pool: target.pool(POOL_SIZE)?,
            instance: instance.into(),
        };
        Ok((
            store,
            PgRunning {
                writer: spool,
                writer_task,
                outcomes,
                outcomes_task,
                stop_listening,
                _fresh: fresh_tx,
            },
            fresh,
            started,
        ))
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// See [`crate::spool::Store::accept`].
    pub async fn accept(&self, event: NewEvent) -> Result<Stored, SpoolError> {
        self.writer.accept(event).await
    }

    /// See [`crate::spool::Store::record`].
    pub async fn record(&self, attempt: Attempted) -> Result<Recorded, SpoolError> {
        self.outcomes.record(attempt).await
    }

    /// See [`crate::spool::Store::availability`].
    pub async fn availability(
        &self,
        destination: &DestinationKey,
    ) -> Result<Availability, SpoolError> {
        claims::availability(&self.pool, &self.instance, destination).await
    }

    /// The writer's handle (requests that every engine's writer takes).
    pub(crate) fn writer(&self) -> &Spool {
        &self.writer
    }

    /// See [`crate::spool::Store::due`].
    pub async fn due(
        &self,
        destination: &DestinationKey,
        take: Take<'_>,
    ) -> Result<Taken, SpoolError> {
        claims::claim(&self.pool, &self.instance, destination, take).await
    }

    /// See [`crate::spool::Store::give_back`].
    pub async fn give_back(&self, unsent: &[i64]) -> Result<(), SpoolError> {
        let client = claims::connection(&self.pool).await?;
        claims::give_back(&client, &self.instance, unsent).await
    }

    /// See [`crate::spool::Store::release`].
    pub async fn release(
        &self,
        destination: &DestinationKey,
        unsent: &[i64],
    ) -> Result<(), SpoolError> {
        claims::release(&self.pool, &self.instance, destination, unsent).await
    }

    /// See [`crate::spool::Store::next_due_at`].
    pub async fn next_due_at(
        &self,
        destination: &DestinationKey,
    ) -> Result<Option<i64>, SpoolError> {
        claims::next_due_at(&self.pool, destination).await
    }

    /// See [`crate::spool::Store::next_retry_at`].
    pub async fn next_retry_at(
        &self,
        destination: &DestinationKey,
    ) -> Result<Option<i64>, SpoolError> {
        let c = self.client().await?;
        let now = crate::spool::now_ms();
        let stmt = c
            .prepare_cached(conversations::NEXT_RETRY)
            .await
            .map_err(claims::read_error)?;
        let row = c
            .query_one(&stmt, &[&destination.as_str(), &now])
            .await
            .map_err(claims::read_error)?;
        row.try_get(0).map_err(claims::read_error)
    }

    /// See [`crate::spool::Store::conversation_hold`].
    pub async fn conversation_hold(&self, seq: i64) -> Result<ConversationHold, SpoolError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(conversations::HOLD)
            .await
            .map_err(claims::read_error)?;
        let row = c
            .query_one(&stmt, &[&seq])
            .await
            .map_err(claims::read_error)?;
        Ok(ConversationHold {
            keys: row.try_get::<_, i64>(0).map_err(claims::read_error)? as usize,
            failed_at: row.try_get(1).map_err(claims::read_error)?,
        })
    }

    /// See [`crate::spool::Store::body`].
    pub async fn body(&self, seq: i64) -> Result<Option<Bytes>, SpoolError> {
        claims::body(&self.pool, seq).await
    }

    /// See [`crate::spool::Store::wakeups`].
    pub fn wakeups(&self) -> watch::Receiver<u64> {
        self.writer.wakeups.subscribe()
    }

    /// See [`crate::spool::Store::wake_delivery`].
    pub fn wake_delivery(&self) {
        self.writer.wakeups.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// See [`crate::spool::Store::health`].
    pub fn health(&self) -> &Arc<SpoolHealth> {
        &self.writer.health
    }

    /// See [`crate::spool::Store::stats`].
    pub async fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let c = self.client().await?;
        inspect::stats(&**c).await.map_err(claims::read_error)
    }

    /// See [`crate::spool::Store::list`].
    pub async fn list(
        &self,
        filter: ListFilter,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError> {
        let c = self.client().await?;
        inspect::list(&**c, &filter, limit)
            .await
            .map_err(claims::read_error)
    }

    /// See [`crate::spool::Store::show`].
    pub async fn show(&self, id: &str) -> Result<Option<EventDetail>, SpoolError> {
        let c = self.client().await?;
        inspect::show(&**c, id).await.map_err(claims::read_error)
    }

    /// See [`crate::spool::Store::replay`].
    pub async fn replay(&self, id: &str) -> Result<Replay, SpoolError> {
        let c = self.client().await?;
        inspect::replay(&**c, id).await.map_err(claims::read_error)
    }

    /// See [`crate::spool::Store::replay_delivery`].
    pub async fn replay_delivery(&self, id: &str) -> Result<Replay, SpoolError> {
        let c = self.client().await?;
        inspect::replay_delivery(&**c, id)
            .await
            .map_err(claims::read_error)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, SpoolError> {
        claims::connection(&self.pool).await
    }
}
