//! The SQLite engine (one machine, the default): a spool file in the state directory,
//! committed with WAL and `synchronous=FULL`.
//!
//! - `writer`: the writer thread: accept (dedup check + insert, atomically) and
//!   delivery outcomes, batched into one transaction (group commit), with its in-memory
//!   hand-over of new deliveries (`handed`: large bodies in it, within a budget);
//!   `recent`: new identities until merged into `dedup`; `prune`: deleting what is
//!   older than the dedup window, a slice per batch; `checkpoint`: copying the log back.
//! - [`schema`]: opening the database and its tables; `migrate`: upgrading an older
//!   layout.
//! - `queue`: the read side used by delivery (due deliveries, bodies);
//!   `availability`: whether each destination is up or down.
//! - [`inspect`]: the operator's view: list, show, replay, purge, counts (also used by
//!   `xhubd events` on a connection of its own).
//!
//! Writes go to the writer and return once committed; reads run on a connection of
//! their own, off the async threads.

mod availability;
mod checkpoint;
mod handed;
pub mod inspect;
mod migrate;
mod prune;
mod queue;
mod recent;
pub mod schema;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::Connection;
use tokio::sync::{mpsc, watch};

use super::views::{EventDetail, EventSummary, ListFilter, Replay, SpoolStats};
use super::{
    now_ms, Attempted, Recorded, Spool, SpoolError, SpoolHealth, Take, Taken, WriterSettings,
};
use crate::types::{Availability, ConversationHold, DestinationKey, DueDelivery, NewEvent, Stored};
use checkpoint::Checkpointer;
use queue::Queue;
use schema::Rekey;
use writer::Writer;

/// The SQLite engine's handle.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Spool,
    queue: Queue,
    /// The operator's views (list, show, replay, stats), apart from delivery's reads.
    views: Arc<Mutex<Connection>>,
}

/// What runs behind a [`SqliteStore`] and must be stopped, in order, at shutdown.
pub struct SqliteRunning {
    writer: Writer,
    checkpointer: Checkpointer,
}

impl SqliteRunning {
    /// Commits what the writer has, stops it, then the checkpointer.
    pub async fn stop(self) {
        self.writer.stop().await;
        drop(self.checkpointer);
    }
}

impl SqliteStore {
    /// Opens (creating or upgrading, with `rekey` for the dedup keys) the spool in
    /// `state_dir` and starts the writer and the checkpointer. Also returns the queue of
    /// new deliveries the writer hands over in memory, for delivery to take.
    pub fn open(
        state_dir: &Path,
        settings: WriterSettings,
        rekey: Rekey<'_>,
    ) -> anyhow::Result<(SqliteStore, SqliteRunning, mpsc::Receiver<DueDelivery>)> {
        let conn = schema::open(state_dir, rekey)?;
        let queue = Queue::open(state_dir)?;
        let views = schema::connect(state_dir, schema::Access::ReadWrite)?;
        let checkpointer = Checkpointer::start(state_dir)?;
        let mut writer = Writer::start(conn, settings)
            .map_err(|e| anyhow::anyhow!("cannot start the spool writer: {e}"))?;
        let fresh = writer
            .fresh
            .take()
            .ok_or_else(|| anyhow::anyhow!("the spool writer's hand-over was already taken"))?;
        let store = SqliteStore {
            writer: writer.spool.clone(),
            queue,
            views: Arc::new(Mutex::new(views)),
        };
        Ok((
            store,
            SqliteRunning {
                writer,
                checkpointer,
            },
            fresh,
        ))
    }

    /// Stores an event (or recognises a retry) with its deliveries and dedup keys, in
    /// one transaction; returns once it is on disk.
    pub async fn accept(&self, event: NewEvent) -> Result<Stored, SpoolError> {
        self.writer.accept(event).await
    }

    /// See [`crate::spool::Store::record`].
    pub async fn record(&self, attempt: Attempted) -> Result<Recorded, SpoolError> {
        self.writer.record(attempt).await
    }

    /// See [`crate::spool::Store::availability`].
    pub async fn availability(
        &self,
        destination: &DestinationKey,
    ) -> Result<Availability, SpoolError> {
        let queue = self.queue.clone();
        let destination = destination.clone();
        blocking(move || queue.availability(&destination)).await
    }

    /// The writer's handle (requests that every engine's writer takes).
    pub(crate) fn writer(&self) -> &Spool {
        &self.writer
    }

    /// Up to `take.limit` pending deliveries to `destination` due now, the earliest due
    /// first; for a probe, one, whether due or not (the one whose retry comes first, so
    /// that probes go round the pending deliveries rather than repeat one the backend
    /// keeps refusing), and no conversation's hold runs out while it is down. Where the destination
    /// keeps order, none held by an earlier delivery of its conversation. One taker: of
    /// the terms of a claim only the order applies, and the scheduler paces its own
    /// attempts.
    pub async fn due(
        &self,
        destination: &DestinationKey,
        take: Take<'_>,
    ) -> Result<Taken, SpoolError> {
        let queue = self.queue.clone();
        let destination = destination.clone();
        let (probe, terms) = (take.probe, take.terms);
        let limit = if probe { 1 } else { take.limit };
        let deliveries = blocking(move || {
            let now = now_ms();
            let until = (!probe).then_some(now);
            let cutoff = terms
                .hold_cutoff(now)
                .map(|c| if probe { i64::MIN } else { c });
            queue.due(&destination, until, limit, cutoff)
        })
        .await?;
        Ok(Taken {
            deliveries,
            ..Taken::default()
        })
    }

    /// See [`crate::spool::Store::next_retry_at`].
    pub async fn next_retry_at(
        &self,
        destination: &DestinationKey,
    ) -> Result<Option<i64>, SpoolError> {
        let queue = self.queue.clone();
        let destination = destination.clone();
        blocking(move || queue.next_retry_at(&destination, now_ms())).await
    }

    /// See [`crate::spool::Store::conversation_hold`].
    pub async fn conversation_hold(&self, seq: i64) -> Result<ConversationHold, SpoolError> {
        let queue = self.queue.clone();
        blocking(move || queue.hold(seq)).await
    }

    /// When the next pending delivery to `destination` falls due (unix ms), if any.
    pub async fn next_due_at(
        &self,
        destination: &DestinationKey,
    ) -> Result<Option<i64>, SpoolError> {
        let queue = self.queue.clone();
        let destination = destination.clone();
        blocking(move || queue.next_due_at(&destination)).await
    }

    /// The body delivery `seq` sends, if it is still stored.
    pub async fn body(&self, seq: i64) -> Result<Option<Bytes>, SpoolError> {
        let queue = self.queue.clone();
        blocking(move || queue.body(seq)).await
    }

    /// A watch that changes whenever deliveries may have become due that were not
    /// handed over (a commit whose hand-over was full, a replay, a backlog brought
    /// forward): each destination's scheduler keeps one.
    pub fn wakeups(&self) -> watch::Receiver<u64> {
        self.writer.wakeups.subscribe()
    }

    /// Wakes every destination's scheduler.
    pub fn wake_delivery(&self) {
        self.writer.wakeups.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The writer's health flags.
    pub fn health(&self) -> &Arc<SpoolHealth> {
        &self.writer.health
    }

    /// The counts behind the metrics and the status page.
    pub async fn stats(&self) -> Result<SpoolStats, SpoolError> {
        self.view(inspect::stats).await
    }

    /// The newest events `filter` lets through, newest first.
    pub async fn list(
        &self,
        filter: ListFilter,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError> {
        self.view(move |c| inspect::list(c, &filter, limit)).await
    }

    /// Makes one delivery pending again.
    pub async fn replay_delivery(&self, id: &str) -> Result<Replay, SpoolError> {
        let id = id.to_owned();
        self.view(move |c| inspect::replay_delivery(c, &id)).await
    }

    /// One event with its headers, body, deliveries and their attempts.
    pub async fn show(&self, id: &str) -> Result<Option<EventDetail>, SpoolError> {
        let id = id.to_owned();
        self.view(move |c| inspect::show(c, &id)).await
    }

    /// Makes the dead (or delivered) deliveries of an event pending again.
    pub async fn replay(&self, id: &str) -> Result<Replay, SpoolError> {
        let id = id.to_owned();
        self.view(move |c| inspect::replay(c, &id)).await
    }

    /// Runs `f` on the views' connection, off the async threads.
    async fn view<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let views = self.views.clone();
        blocking(move || {
            let conn = views.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
    }
}

/// Runs a read off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, SpoolError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(SpoolError::Read(e.to_string())),
        Err(e) => Err(SpoolError::Read(e.to_string())),
    }
}
