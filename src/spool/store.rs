//! The storage seam: everything ingest, delivery and the admin listener ask of the
//! spool, on one cloneable handle. Behind it, private to the spool: the writer thread
//! with group commit, its in-memory hand-over of new deliveries, the checkpointer, and
//! the read connections. A second engine (a shared database) is another implementation
//! of these calls, not a change to their callers.
//!
//! Writes go to the writer and return once committed; reads run on a connection of
//! their own, off the async threads.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::Connection;
use tokio::sync::{mpsc, watch};

use super::checkpoint::Checkpointer;
use super::inspect::{self, EventDetail, EventSummary, ListFilter, Replay, SpoolStats};
use super::queue::Queue;
use super::schema::{self, Rekey};
use super::writer::{Writer, WriterSettings, RETRY_NOW_CHUNK};
use super::{now_ms, Spool, SpoolError, SpoolHealth};
use crate::types::{AttemptReport, DestinationKey, DueDelivery, NewEvent, Outcome, Stored};

/// The handle every stage uses.
#[derive(Clone)]
pub struct Store {
    writer: Spool,
    queue: Queue,
    /// The operator's views (list, show, replay, stats), apart from delivery's reads.
    views: Arc<Mutex<Connection>>,
}

/// What runs behind a [`Store`] and must be stopped, in order, at shutdown.
pub struct Running {
    writer: Writer,
    checkpointer: Checkpointer,
}

impl Running {
    /// Commits what the writer has, stops it, then the checkpointer.
    pub async fn stop(self) {
        self.writer.stop().await;
        drop(self.checkpointer);
    }
}

impl Store {
    /// Opens (creating or upgrading, with `rekey` for the dedup keys) the spool in
    /// `state_dir` and starts the writer and the checkpointer. Also returns the queue of
    /// new deliveries the writer hands over in memory, for delivery to take.
    pub fn open(
        state_dir: &Path,
        settings: WriterSettings,
        rekey: Rekey<'_>,
    ) -> anyhow::Result<(Store, Running, mpsc::Receiver<DueDelivery>)> {
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
        let store = Store {
            writer: writer.spool.clone(),
            queue,
            views: Arc::new(Mutex::new(views)),
        };
        Ok((
            store,
            Running {
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

    /// Records an attempt at delivery `seq` (`attempts` is the new count): its outcome
    /// and its line in the history.
    pub async fn record(
        &self,
        seq: i64,
        attempts: i64,
        outcome: Outcome,
        report: AttemptReport,
    ) -> Result<(), SpoolError> {
        self.writer.record(seq, attempts, outcome, report).await
    }

    /// Makes every pending delivery to `destination` due now (it answers again after an
    /// outage), a chunk per transaction; returns how many were waiting for later.
    pub async fn retry_all_now(&self, destination: &DestinationKey) -> Result<usize, SpoolError> {
        let mut total = 0;
        loop {
            let n = self.writer.retry_now(destination.clone()).await?;
            total += n;
            self.wake_delivery();
            if n < RETRY_NOW_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Up to `limit` pending deliveries to `destination` due now, oldest first.
    pub async fn due(
        &self,
        destination: &DestinationKey,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, SpoolError> {
        let queue = self.queue.clone();
        let destination = destination.clone();
        blocking(move || queue.due(&destination, now_ms(), limit)).await
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

    /// Makes one delivery pending again, and wakes delivery.
    pub async fn replay_delivery(&self, id: &str) -> Result<Replay, SpoolError> {
        let id = id.to_owned();
        let replay = self.view(move |c| inspect::replay_delivery(c, &id)).await?;
        if replay == Replay::Replayed {
            self.wake_delivery();
        }
        Ok(replay)
    }

    /// One event with its headers, body, deliveries and their attempts.
    pub async fn show(&self, id: &str) -> Result<Option<EventDetail>, SpoolError> {
        let id = id.to_owned();
        self.view(move |c| inspect::show(c, &id)).await
    }

    /// Makes the dead (or delivered) deliveries of an event pending again, and wakes
    /// delivery.
    pub async fn replay(&self, id: &str) -> Result<Replay, SpoolError> {
        let id = id.to_owned();
        let replay = self.view(move |c| inspect::replay(c, &id)).await?;
        if replay == Replay::Replayed {
            self.wake_delivery();
        }
        Ok(replay)
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
