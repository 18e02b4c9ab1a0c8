//! The storage seam: everything ingest, delivery and the admin listener ask of the
//! spool, on one cloneable handle, whichever engine is behind it (SQLite for one
//! machine, PostgreSQL for several). Callers never see the engine: each call below is
//! answered by the engine's own implementation.
//!
//! Writes return once committed; reads run off the async threads (SQLite) or on a
//! pooled connection (PostgreSQL).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::postgres::{PgRunning, PgStore};
use super::sqlite::{SqliteRunning, SqliteStore};
use super::views::{EventDetail, EventSummary, ListFilter, Replay, SpoolStats};
use super::{Attempted, Recorded, SpoolError, SpoolHealth, Take, Taken, RETRY_NOW_CHUNK};
use crate::types::{Availability, ConversationHold, DestinationKey, NewEvent, Stored};

/// The handle every stage uses.
#[derive(Clone)]
pub enum Store {
    /// A spool file in the state directory.
    Sqlite(SqliteStore),
    /// A PostgreSQL database several instances may share.
    Postgres(PgStore),
}

/// What runs behind a [`Store`] and must be stopped, in order, at shutdown.
pub enum Running {
    /// SQLite's writer thread and checkpointer.
    Sqlite(SqliteRunning),
    /// PostgreSQL's writer and listener tasks.
    Postgres(PgRunning),
}

impl Running {
    /// Commits what the writer has, then stops everything behind the store.
    pub async fn stop(self) {
        match self {
            Running::Sqlite(r) => r.stop().await,
            Running::Postgres(r) => r.stop().await,
        }
    }
}

/// Calls the same method on whichever engine is behind the store.
macro_rules! engine {
    (await $self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*),
            Store::Postgres(s) => s.$method($($arg),*),
        }
    };
}

impl Store {
    /// Stores an event (or recognises a retry) with its deliveries and dedup keys, in
    /// one transaction; returns once it is committed.
    pub async fn accept(&self, event: NewEvent) -> Result<Stored, SpoolError> {
        engine!(await self.accept(event))
    }

    /// Records an attempt: its outcome and its line in the history (the delivery is no
    /// longer taken), and what it says about its destination (up or down, see
    /// [`crate::types::Availability`]); answers with the destination's state after it.
    pub async fn record(&self, attempt: Attempted) -> Result<Recorded, SpoolError> {
        engine!(await self.record(attempt))
    }

    /// A destination's stored state (up, or down since when).
    pub async fn availability(
        &self,
        destination: &DestinationKey,
    ) -> Result<Availability, SpoolError> {
        engine!(await self.availability(destination))
    }

    /// Makes every pending delivery to `destination` due now (it answers again after an
    /// outage), a chunk per transaction; returns how many were waiting for later.
    pub async fn retry_all_now(&self, destination: &DestinationKey) -> Result<usize, SpoolError> {
        let mut total = 0;
        loop {
            let n = engine!(self.writer())
                .retry_now(destination.clone())
                .await?;
            total += n;
            self.wake_delivery();
            if n < RETRY_NOW_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Takes up to `take.limit` pending deliveries to `destination` due now, oldest
    /// first, on `take.terms`, besides those the caller holds (taken and not yet
    /// recorded), while `take.sending` of its attempts are in flight. On SQLite the
    /// caller skips what it holds; on PostgreSQL they are claimed for this instance under
    /// a lease, never come again while held, and at most what is left of its share of
    /// the destination's concurrency, plus `take.ahead`, are taken, within the rate
    /// budget of every instance together; while the destination is down, only its probe.
    pub async fn due(
        &self,
        destination: &DestinationKey,
        take: Take<'_>,
    ) -> Result<Taken, SpoolError> {
        engine!(await self.due(destination, take))
    }

    /// When the next pending delivery to `destination` falls due strictly after now
    /// (unix ms), if any: for a destination that keeps order, where those due already
    /// may be held by their conversations.
    pub async fn next_retry_at(
        &self,
        destination: &DestinationKey,
    ) -> Result<Option<i64>, SpoolError> {
        engine!(await self.next_retry_at(destination))
    }

    /// What pending delivery `seq` (to a destination that keeps order) still holds of
    /// its conversations, and since when it fails.
    pub async fn conversation_hold(&self, seq: i64) -> Result<ConversationHold, SpoolError> {
        engine!(await self.conversation_hold(seq))
    }

    /// Whether deliveries taken count against their destination's concurrency in the
    /// store itself (PostgreSQL: claims under a lease, shared by every instance), so
    /// that each attempt that ends makes room for another claim.
    pub fn claims_hold_concurrency(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Gives back what this instance holds of `destination` once its attempts have
    /// ended (at shutdown): its share of the concurrency, and the deliveries in
    /// `unsent` it took and did not send; so that the other instances need not wait
    /// for the leases to run out. Nothing to give back on SQLite, whose one scheduler
    /// holds nothing in the spool.
    pub async fn release(
        &self,
        destination: &DestinationKey,
        unsent: &[i64],
    ) -> Result<(), SpoolError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.release(destination, unsent).await,
        }
    }

    /// Gives back the deliveries in `unsent`, taken by this instance and not sent (the
    /// destination went down meanwhile): they stay pending, and any instance may take
    /// them at once. Nothing to give back on SQLite.
    pub async fn give_back(&self, unsent: &[i64]) -> Result<(), SpoolError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.give_back(unsent).await,
        }
    }

    /// When the next pending delivery to `destination` falls due (unix ms), if any.
    pub async fn next_due_at(
        &self,
        destination: &DestinationKey,
    ) -> Result<Option<i64>, SpoolError> {
        engine!(await self.next_due_at(destination))
    }

    /// The body delivery `seq` sends, if it is still stored.
    pub async fn body(&self, seq: i64) -> Result<Option<Bytes>, SpoolError> {
        engine!(await self.body(seq))
    }

    /// A watch that changes whenever deliveries may have become due that were not
    /// handed over (a commit whose hand-over was full, a replay, a backlog brought
    /// forward, another instance's news): each destination's scheduler keeps one.
    pub fn wakeups(&self) -> watch::Receiver<u64> {
        engine!(self.wakeups())
    }

    /// Wakes every destination's scheduler.
    pub fn wake_delivery(&self) {
        engine!(self.wake_delivery())
    }

    /// The writer's health flags.
    pub fn health(&self) -> &Arc<SpoolHealth> {
        engine!(self.health())
    }

    /// Which engine, for logs and pages: `sqlite`, or `postgresql (instance NAME)`.
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(_) => "sqlite".to_owned(),
            Store::Postgres(s) => format!("postgresql (instance {})", s.instance()),
        }
    }

    /// The counts behind the metrics and the status page.
    pub async fn stats(&self) -> Result<SpoolStats, SpoolError> {
        engine!(await self.stats())
    }

    /// The newest events `filter` lets through, newest first.
    pub async fn list(
        &self,
        filter: ListFilter,
        limit: usize,
    ) -> Result<Vec<EventSummary>, SpoolError> {
        engine!(await self.list(filter, limit))
    }

    /// Makes one delivery pending again, and wakes delivery.
    pub async fn replay_delivery(&self, id: &str) -> Result<Replay, SpoolError> {
        let replay = engine!(await self.replay_delivery(id))?;
        self.woken_by(&replay);
        Ok(replay)
    }

    /// One event with its headers, body, deliveries and their attempts.
    pub async fn show(&self, id: &str) -> Result<Option<EventDetail>, SpoolError> {
        engine!(await self.show(id))
    }

    /// Makes the dead (or delivered) deliveries of an event pending again, and wakes
    /// delivery.
    pub async fn replay(&self, id: &str) -> Result<Replay, SpoolError> {
        let replay = engine!(await self.replay(id))?;
        self.woken_by(&replay);
        Ok(replay)
    }

    /// Wakes delivery when a replay made something pending. (On PostgreSQL the replay
    /// also notifies the other instances.)
    fn woken_by(&self, replay: &Replay) {
        if *replay == Replay::Replayed {
            self.wake_delivery();
        }
    }
}
