//! The durable spool: every accepted event is committed before xhubd answers 200.
//! One writer owns all writes and commits many events per transaction (group commit);
//! readers feed delivery.
//!
//! - [`store`]: the seam every other stage uses: accept, due deliveries, outcomes,
//!   replay, the operator's views. Behind it, one of two engines:
//! - [`sqlite`]: one machine (the default): a file in the state directory;
//! - [`postgres`]: several machines sharing one PostgreSQL database, with deliveries
//!   claimed under a lease.
//! - [`views`]: what the operator's views show, whichever the engine.
//! - [`conversations`]: conversation order, as both engines keep and ask it.
//! - [`clock`]: the spool's clock, which is the database's on PostgreSQL.
//! - [`copy`]: a stopped SQLite spool's pending and dead events and its dedup memory,
//!   copied into a PostgreSQL spool (`xhubd spool copy`).

pub mod clock;
pub mod conversations;
pub mod copy;
pub mod postgres;
pub mod sqlite;
pub mod store;
pub mod views;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use crate::types::{
    AttemptReport, Availability, DedupKeys, DestinationKey, DueDelivery, NewEvent, Outcome,
    RateLimit, Signal, Stored,
};
pub use clock::now_ms;
pub use store::{Running, Store};

/// Bodies up to this size come with the due list (and with the writer's hand-over of
/// new events); larger ones are read when their attempt starts, so that events waiting
/// for an attempt hold at most a few MiB (256 waiting: 4 MiB). SQLite's hand-over also
/// carries larger bodies, up to 8 MiB of them in all (`sqlite::handed`).
pub const INLINE_BODY_MAX: usize = 16 * 1024;

/// Most pending deliveries one retry-now request makes due, in one transaction, so that
/// a large backlog never holds a writer long.
pub const RETRY_NOW_CHUNK: usize = 4096;

/// What every engine's writer needs to know.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// How long identities are remembered, and delivered events kept.
    pub dedup_window: Duration,
}

/// The terms on which delivery takes due deliveries to one destination. SQLite has
/// one taker and ignores them; on PostgreSQL they hold for every instance together.
#[derive(Debug, Clone, Copy)]
pub struct ClaimTerms {
    /// Deliveries taken and not yet recorded, at most, by all instances together (the
    /// destination's concurrency).
    pub concurrency: usize,
    /// How long a taken delivery stays this instance's: the destination's timeout plus
    /// a margin. Once it runs out, another instance may take it.
    pub lease: Duration,
    /// Requests per second at most, by all instances together (PostgreSQL: each
    /// delivery taken spends the budget; SQLite's one taker paces its own attempts).
    pub rate: Option<RateLimit>,
    /// `Some(order_hold)` when the destination keeps conversations in order (on both
    /// engines): a delivery is not taken while an earlier pending one shares a
    /// conversation and holds it, which a delivery that keeps failing does until
    /// `order_hold` after its first failed attempt ([`conversations`]).
    pub order: Option<Duration>,
}

/// On a shared spool, how long after the claim that took it (or last renewed it) a
/// delivery may still start its attempt. A claim renews the leases of what the instance
/// holds once they have run this long, so that an attempt started within it ends, at
/// the destination's timeout, before its lease: the lease's margin over the timeout
/// must be at least twice this (it is 10 s: 6 s are left for reading a body, the
/// record's commit, and two instances' readings of the database's clock differing by
/// their round trips: [`clock`]).
pub const CLAIM_START_WINDOW: Duration = Duration::from_secs(2);

impl ClaimTerms {
    /// How many deliveries a scheduler takes ahead of its attempts, besides its slots
    /// (see [`Take::ahead`]): on a shared spool, as many as the concurrency for a
    /// destination with neither a rate limit nor an order; none otherwise (a rate
    /// budget is spent when a delivery is taken, which should then go at once, and a
    /// conversation's next delivery waits for the one before to end).
    pub fn ahead(&self, shared: bool) -> usize {
        if shared && self.rate.is_none() && self.order.is_none() {
            self.concurrency
        } else {
            0
        }
    }

    /// For a destination that keeps order, the time (unix ms) at or before which a
    /// first failure no longer holds a conversation at `now`.
    pub fn hold_cutoff(&self, now: i64) -> Option<i64> {
        self.order
            .map(|hold| now.saturating_sub(hold.as_millis().min(i64::MAX as u128) as i64))
    }
}

/// What a scheduler asks for when it takes due deliveries to its destination.
#[derive(Debug, Clone, Copy)]
pub struct Take<'a> {
    /// Deliveries at most.
    pub limit: usize,
    /// The destination's terms.
    pub terms: ClaimTerms,
    /// What the caller holds: taken and not yet recorded.
    pub held: &'a HashSet<i64>,
    /// Of those, being attempted now.
    pub sending: usize,
    /// Of those, waiting for their attempt.
    pub waiting: usize,
    /// How many deliveries the caller may hold waiting beyond the slots it sends in, so
    /// that an attempt that ends is followed at once, not after a claim (PostgreSQL;
    /// [`ClaimTerms::ahead`]). Zero: take no more than the slots left.
    pub ahead: usize,
    /// The destination is down as far as the caller knows: take only its probe, the
    /// pending delivery whose retry comes first, whether due or not, with no
    /// conversation's hold running out (on PostgreSQL the stored state decides, and
    /// only while no instance holds one).
    pub probe: bool,
}

/// What a scheduler took.
#[derive(Debug, Default)]
pub struct Taken {
    /// The deliveries, oldest first.
    pub deliveries: Vec<DueDelivery>,
    /// The destination's stored state as the taking saw it, where other instances
    /// change it (PostgreSQL); `None` on SQLite, whose one scheduler learns every
    /// change from its own records (and a read when one would take it down or up).
    pub availability: Option<Availability>,
    /// When the rate budget has room for another request (unix ms), when it held the
    /// taking back (PostgreSQL).
    pub rate_limited_until: Option<i64>,
    /// How many attempts the caller may have in flight until its next claim: its share
    /// of the destination's concurrency (PostgreSQL; never fewer than `take.sending`).
    /// `None` on SQLite, whose one scheduler has all of it.
    pub slots: Option<usize>,
}

/// One attempt to record: its outcome, its line in the history, and what it says
/// about its destination.
#[derive(Debug, Clone)]
pub struct Attempted {
    /// The delivery's row number.
    pub seq: i64,
    /// Its destination.
    pub destination: DestinationKey,
    /// Its attempts so far, this one included.
    pub attempts: i64,
    /// What becomes of the delivery.
    pub outcome: Outcome,
    /// The attempt's line in the history.
    pub report: AttemptReport,
    /// Whether the destination answered, and whether this was its probe.
    pub signal: Signal,
}

/// What recording an attempt did to its destination, once committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The destination's state after the commit.
    pub availability: Availability,
    /// This attempt brought the destination back up (it was down).
    pub came_up: bool,
    /// Pending deliveries this failed probe made dead (their `retry_for` ran out while
    /// the destination was down).
    pub expired: usize,
}

/// The spool could not commit, or be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The database refused or could not take the transaction (disk full, read-only,
    /// I/O error, unreachable, failing over): nothing of it was stored.
    #[error("the spool could not commit: {0}")]
    Commit(String),
    /// The writer has stopped (shutting down).
    #[error("the spool is shutting down")]
    Closed,
    /// A read failed.
    #[error("the spool could not be read: {0}")]
    Read(String),
}

/// A request to the writer.
#[derive(Debug)]
pub(crate) enum Command {
    Accept {
        event: NewEvent,
        reply: oneshot::Sender<Result<Stored, SpoolError>>,
    },
    Record {
        seq: i64,
        destination: DestinationKey,
        attempts: i64,
        outcome: Outcome,
        report: AttemptReport,
        signal: Signal,
        reply: oneshot::Sender<Result<Recorded, SpoolError>>,
    },
    /// Makes up to [`RETRY_NOW_CHUNK`] pending events due now (the upstream
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

    /// Records the outcome of an attempt at delivery `seq` to `destination`
    /// (`attempts` is the new count), the attempt in its history, and what it says
    /// about the destination.
    pub async fn record(&self, attempt: Attempted) -> Result<Recorded, SpoolError> {
        self.ask(|reply| Command::Record {
            seq: attempt.seq,
            destination: attempt.destination,
            attempts: attempt.attempts,
            outcome: attempt.outcome,
            report: attempt.report,
            signal: attempt.signal,
            reply,
        })
        .await
    }

    /// Brings the next attempts of `destination`'s pending deliveries forward to now,
    /// the earliest first, at most [`RETRY_NOW_CHUNK`] per call; returns how
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
