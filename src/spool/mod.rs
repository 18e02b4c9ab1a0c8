//! The durable spool: every accepted event is committed to SQLite before xhubd answers
//! 200. One writer thread owns all writes and commits many events per transaction
//! (group commit); readers feed delivery.
//!
//! - [`store`]: the seam every other stage uses: accept, due deliveries, outcomes,
//!   replay, the operator's views. What follows is behind it.
//! - [`schema`]: opening the database and its tables; `migrate`: upgrading an older
//!   layout.
//! - `writer`: the writer thread: accept (dedup check + insert, atomically) and
//!   delivery outcomes, batched into one transaction; `checkpoint`: copying the log
//!   back.
//! - `queue`: the read side used by delivery (due deliveries, bodies).
//! - [`inspect`]: the operator's view: list, show, replay, purge, counts (also used by
//!   `xhubd events` on a connection of its own).

mod checkpoint;
pub mod inspect;
mod migrate;
mod queue;
pub mod schema;
pub mod store;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

pub use crate::types::{AttemptReport, DedupKeys, DestinationKey, NewEvent, Outcome, Stored};
pub use store::{Running, Store};
pub use writer::WriterSettings;

/// The spool could not commit, or be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// SQLite refused the transaction (disk full, read-only, I/O error).
    #[error("the spool could not commit: {0}")]
    Commit(String),
    /// The writer has stopped (shutting down).
    #[error("the spool is shutting down")]
    Closed,
    /// A read failed.
    #[error("the spool could not be read: {0}")]
    Read(String),
}

/// A request to the writer thread.
#[derive(Debug)]
pub(crate) enum Command {
    Accept {
        event: NewEvent,
        reply: oneshot::Sender<Result<Stored, SpoolError>>,
    },
    Record {
        seq: i64,
        attempts: i64,
        outcome: Outcome,
        report: AttemptReport,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    /// Makes up to [`writer::RETRY_NOW_CHUNK`] pending events due now (the upstream
    /// answers again).
    RetryNow {
        destination: DestinationKey,
        reply: oneshot::Sender<Result<usize, SpoolError>>,
    },
    /// Commit what is queued before this, then stop.
    Close,
}

/// Health flags the admin listener reports.
#[derive(Debug)]
pub struct SpoolHealth {
    /// The last commit succeeded.
    pub last_commit_ok: AtomicBool,
    /// The writer thread is running.
    pub writer_running: AtomicBool,
}

impl SpoolHealth {
    /// Whether the spool can take events now.
    pub fn is_ready(&self) -> bool {
        self.writer_running.load(Ordering::Relaxed) && self.last_commit_ok.load(Ordering::Relaxed)
    }
}

/// A cheap, cloneable handle to the writer thread (behind [`Store`]).
#[derive(Clone, Debug)]
pub(crate) struct Spool {
    tx: mpsc::Sender<Command>,
    /// Counts up whenever deliveries may have become due that delivery has not been
    /// handed (a commit whose hand-over was full, a replay, a backlog brought forward):
    /// every destination's scheduler watches it.
    pub wakeups: Arc<watch::Sender<u64>>,
    /// Health flags.
    pub health: Arc<SpoolHealth>,
}

impl Spool {
    /// Stores an event (or recognises a retry). Returns only once the transaction is
    /// on disk.
    pub async fn accept(&self, event: NewEvent) -> Result<Stored, SpoolError> {
        self.ask(|reply| Command::Accept { event, reply }).await
    }

    /// Records the outcome of an attempt at delivery `seq` (`attempts` is the new
    /// count), and the attempt in its history.
    pub async fn record(
        &self,
        seq: i64,
        attempts: i64,
        outcome: Outcome,
        report: AttemptReport,
    ) -> Result<(), SpoolError> {
        self.ask(|reply| Command::Record {
            seq,
            attempts,
            outcome,
            report,
            reply,
        })
        .await
    }

    /// Brings the next attempts of `destination`'s pending deliveries forward to now,
    /// the earliest first, at most [`writer::RETRY_NOW_CHUNK`] per call; returns how
    /// many were waiting for a later time. Used when a destination answers again after
    /// an outage, so its backlog goes at once instead of as each backoff runs out.
    pub async fn retry_now(&self, destination: DestinationKey) -> Result<usize, SpoolError> {
        self.ask(|reply| Command::RetryNow { destination, reply })
            .await
    }

    /// Sends the writer one request and waits for its answer (after the commit).
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, SpoolError>>) -> Command,
    ) -> Result<T, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(request(reply))
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
