//! Delivery: a scheduler takes due events and sends each to the upstream with a
//! bounded number of attempts in flight; every outcome (delivered, retry at a later
//! time, dead) is recorded through the spool's writer.
//!
//! - [`upstream`]: the HTTP client and one attempt.
//! - [`backoff`]: when to try again.
//! - [`status`]: how the upstream is doing, for the status page.
//!
//! Events reach the scheduler two ways. Newly committed events come from the writer in
//! memory (the *fresh* queue), so a first attempt needs no read of the spool. Everything
//! else (the backlog at start, retries falling due, replays, and new events the fresh
//! queue had no room for) is found by a *scan* of the spool for pending, due events.
//! The scan alone would deliver everything; the fresh queue only makes it cheaper.
//!
//! After an outage (ten retryable failures in a row), the first answer from the
//! upstream makes every pending event due at once: the backlog goes as fast as the
//! upstream takes it, not as each event's backoff happens to run out.
//!
//! For a destination that keeps conversations in order (`order = "conversation"`), the
//! spool decides what may be taken (`spool::conversations`): every delivery comes from
//! a scan, none from the fresh queue, and a scan follows every attempt after which its
//! delivery no longer holds its conversation (delivered, dead, released): the next one
//! of that conversation may go. A delivery that keeps failing stops holding its
//! conversation `order_hold` after its first failed attempt; its first attempt after
//! that says so (a log line, a metric), and the record of that attempt releases it.
//!
//! An event is *claimed* from the moment it is taken (from either source) until its
//! outcome is committed, so it is never sent twice at once. A fresh event whose row
//! number is not above every row number a scan has claimed is skipped: that scan may
//! have taken it already, and if not, a later scan will. If xhubd stops between an
//! attempt and its record, the event is still pending on disk and is sent again after
//! the restart (at-least-once).

pub mod backoff;
pub mod fleet;
pub mod status;
pub mod upstream;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::metrics::{AttemptResult, Metrics};
use crate::spool::{now_ms, ClaimTerms, Outcome, Store};
use crate::types::{AttemptReport, DestinationKey, DueDelivery};
use backoff::RetryPolicy;
use status::UpstreamStatus;
use upstream::{Attempt, Upstream};

/// Due events fetched per scan (beyond those already claimed), and the most events
/// waiting in the scheduler for a free attempt slot.
const FETCH_BATCH: usize = 256;
/// Longest time between two scans, as a safety net (e.g. for a replay made by
/// `xhubd events replay` from another process).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// While every due event is already claimed, how soon to scan again, so that another
/// event's retry falling due meanwhile starts on time.
const BUSY_POLL: Duration = Duration::from_millis(100);

/// Everything an attempt needs.
pub(crate) struct Delivery {
    /// Where due deliveries are read and outcomes recorded.
    pub store: Store,
    /// The destination this scheduler delivers to (one scheduler per destination, so
    /// one that is down or slow holds up no other).
    pub destination: DestinationKey,
    /// The upstream client.
    pub upstream: Upstream,
    /// When to retry.
    pub policy: RetryPolicy,
    /// Attempts in flight at most (on a shared spool: by all instances together), and
    /// how long a taken delivery stays this instance's.
    pub terms: ClaimTerms,
    /// Set while the scheduler runs (for /readyz).
    pub running: Arc<AtomicBool>,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// The upstream's state, for the status page.
    pub status: Arc<UpstreamStatus>,
}

/// Retryable failures in a row (connection errors, timeouts, 408, 429, 5xx, whatever
/// the event) after which the upstream counts as down. When it answers again, every
/// pending event is made due at once (see [`Spool::retry_now`]).
const OUTAGE_FAILURES: u32 = 10;

/// What an attempt reports back to the scheduler when its outcome is recorded (or could
/// not be).
struct Done {
    /// The event's row number.
    seq: i64,
    /// When it falls due again, if it stays pending.
    due_again: Option<i64>,
    /// Whether the upstream answered (2xx or a refusal), rather than failing.
    answered: bool,
    /// Whether it no longer holds its conversations, if any (delivered, dead, or
    /// released): the next delivery of one of them may go.
    freed: bool,
}

/// The scheduler's view of the events it has taken.
#[derive(Default)]
struct Claims {
    /// Taken and not yet recorded: waiting in `ready` or being attempted.
    claimed: HashSet<i64>,
    /// Taken, waiting for an attempt slot.
    ready: VecDeque<DueDelivery>,
    /// The highest row number a scan has claimed; fresh events at or below it are
    /// left to scans.
    max_scanned: i64,
}

impl Claims {
    /// Takes a fresh event unless a scan may have taken it.
    fn offer_fresh(&mut self, event: DueDelivery) {
        if event.seq > self.max_scanned && self.claimed.insert(event.seq) {
            self.ready.push_back(event);
        }
    }

    /// Takes what a scan found, except events already claimed. Returns how many were new.
    fn offer_scanned(&mut self, events: Vec<DueDelivery>) -> usize {
        let mut taken = 0;
        for event in events {
            self.max_scanned = self.max_scanned.max(event.seq);
            if self.claimed.insert(event.seq) {
                self.ready.push_back(event);
                taken += 1;
            }
        }
        taken
    }
}

impl Delivery {
    /// Runs until `shutdown` is cancelled, taking newly committed events from `fresh`
    /// (the writer's hand-over) and the rest from scans of the spool, then waits up to
    /// `drain` for attempts in flight to finish and be recorded.
    pub async fn run(
        self,
        mut fresh: mpsc::Receiver<DueDelivery>,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let this = Arc::new(self);
        let mut wakeups = this.store.wakeups();
        this.running.store(true, Ordering::Relaxed);
        let permits = Arc::new(Semaphore::new(this.terms.concurrency));
        let sent = Arc::new(Notify::new());
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut claims = Claims::default();
        // Scan as soon as the ready queue is empty (at start: the backlog).
        let mut scan_now = true;
        let mut next_scan = TokioInstant::now();
        let mut failures_in_a_row: u32 = 0;
        let ordered = this.terms.order.is_some();
        while !shutdown.is_cancelled() {
            // Where taken deliveries count against the concurrency in the store, a scan
            // while this instance's attempts fill it could take nothing: the next
            // attempt to end makes room (and asks for a scan).
            let sending = this.terms.concurrency - permits.available_permits();
            let no_room = this.store.claims_hold_concurrency() && sending >= this.terms.concurrency;
            if claims.ready.is_empty() && !no_room && (scan_now || TokioInstant::now() >= next_scan)
            {
                scan_now = false;
                // Where conversations keep order, a scan that fills the queue walks
                // past every held delivery: ask for what the attempt slots take.
                let batch = if ordered {
                    this.terms.concurrency.min(FETCH_BATCH)
                } else {
                    FETCH_BATCH
                };
                let limit = claims.claimed.len() + batch;
                match this.fetch(limit, &claims.claimed, sending).await {
                    Ok(list) => {
                        let fetched = list.len();
                        let taken = claims.offer_scanned(list);
                        if fetched >= limit {
                            // There may be more: scan again once these are on their way.
                            scan_now = true;
                        } else if taken > 0 {
                            // Scan again once these are on their way (the next finds
                            // them claimed, or what fell due meanwhile).
                            next_scan = TokioInstant::now();
                        } else if fetched > 0 && !ordered {
                            next_scan = TokioInstant::now() + BUSY_POLL;
                        } else {
                            next_scan = TokioInstant::now() + self_wait(&this).await;
                        }
                    }
                    Err(e) => {
                        // While the spool is known to be down, its writer says so (every
                        // 5 s); each scan's failure would only repeat it.
                        if this.store.health().is_ready() {
                            error!(error = %e, "cannot read due events from the spool; retrying in 1s");
                        } else {
                            debug!(error = %e, "cannot read due events from the spool while it is down; retrying in 1s");
                        }
                        next_scan = TokioInstant::now() + IDLE_POLL;
                    }
                }
            }
            let have_ready = !claims.ready.is_empty();
            // A scan waits for the ready queue to empty; while one is due, fresh events
            // wait in their queue, so that under a load the upstream cannot keep up with,
            // retries and overflowed events still get their turn (oldest first).
            let scan_due = scan_now || TokioInstant::now() >= next_scan;
            let room = claims.ready.len() < FETCH_BATCH && !scan_due;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = done_rx.recv() => {
                    // With every other outcome already reported (one commit records
                    // many), so that one scan fills the room they all made.
                    let mut next = Some(done);
                    while let Some(done) = next {
                        claims.claimed.remove(&done.seq);
                        if let Some(at) = done.due_again {
                            next_scan = next_scan.min(instant_at(at));
                        }
                        if ordered && done.freed {
                            // The next delivery of its conversation may go now.
                            next_scan = TokioInstant::now();
                        }
                        if !done.answered {
                            failures_in_a_row = failures_in_a_row.saturating_add(1);
                        } else {
                            if failures_in_a_row >= OUTAGE_FAILURES {
                                info!(failures_in_a_row, "the upstream answers again: every pending event is due now");
                                tokio::spawn(retry_backlog_now(this.store.clone(), this.destination.clone()));
                            }
                            failures_in_a_row = 0;
                        }
                        next = done_rx.try_recv().ok();
                    }
                }
                permit = permits.clone().acquire_owned(), if have_ready => {
                    let (Ok(permit), Some(event)) = (permit, claims.ready.pop_front()) else { break };
                    tokio::spawn(this.clone().attempt(event, permit, done_tx.clone(), sent.clone()));
                }
                // Where conversations keep order, only a scan knows what may go.
                Some(event) = fresh.recv(), if room => if ordered {
                    scan_now = true;
                } else {
                    claims.offer_fresh(event);
                },
                Ok(()) = wakeups.changed() => scan_now = true,
                // An attempt ended: room for another claim where claims count.
                _ = sent.notified(), if this.store.claims_hold_concurrency() => scan_now = true,
                _ = tokio::time::sleep_until(next_scan), if !have_ready && !no_room => {}
            }
        }
        this.running.store(false, Ordering::Relaxed);
        // Events waiting for a slot were never sent: they stay pending on disk.
        for event in claims.ready.drain(..) {
            claims.claimed.remove(&event.seq);
        }
        let busy = &mut claims.claimed;
        let drained = tokio::time::timeout(drain, async {
            while !busy.is_empty() {
                match done_rx.recv().await {
                    Some(done) => {
                        busy.remove(&done.seq);
                    }
                    None => break,
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                in_flight = busy.len(),
                "delivery attempts still running at shutdown; those events stay pending and are sent again after restart"
            );
        }
    }

    async fn fetch(
        &self,
        limit: usize,
        held: &HashSet<i64>,
        sending: usize,
    ) -> anyhow::Result<Vec<DueDelivery>> {
        Ok(self
            .store
            .due(&self.destination, limit, self.terms, held, sending)
            .await?)
    }

    /// One attempt: send (then say so on `sent`), log, record the outcome, then report
    /// the event as no longer busy.
    async fn attempt(
        self: Arc<Self>,
        event: DueDelivery,
        permit: OwnedSemaphorePermit,
        done: mpsc::UnboundedSender<Done>,
        sent: Arc<Notify>,
    ) {
        let attempts = event.attempts + 1;
        let release_conversations = self.hold_ran_out(&event).await;
        let started = Instant::now();
        let (result, report) = match self.body_of(&event).await {
            Ok(body) => self.upstream.send(&event, attempts, body).await,
            Err(e) => {
                let error = format!("cannot read the event from the spool: {e}");
                let report = AttemptReport {
                    status: None,
                    detail: error.clone(),
                };
                (Attempt::Retryable(error), report)
            }
        };
        drop(permit);
        sent.notify_one();
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        match &result {
            Attempt::Delivered(_) => self.status.success(),
            Attempt::Retryable(e) | Attempt::Refused(e) => self.status.failure(e),
        }
        let answered = matches!(result, Attempt::Delivered(_) | Attempt::Refused(_));
        let outcome = match result {
            Attempt::Delivered(status) => {
                info!(event_id = %event.event_id, delivery_id = %event.id, destination = %event.destination, attempts, status = status.as_u16(), elapsed_ms, "delivered");
                Outcome::Delivered
            }
            Attempt::Retryable(error) => {
                let now = now_ms();
                match self.policy.next_attempt(event.retry_from, now, attempts) {
                    Some(next_attempt_at) => {
                        warn!(event_id = %event.event_id, delivery_id = %event.id, destination = %event.destination, attempts, error = %error, retry_in_ms = next_attempt_at - now, "delivery failed; retry scheduled");
                        Outcome::Retry {
                            next_attempt_at,
                            error,
                            release_conversations,
                        }
                    }
                    None => {
                        error!(event_id = %event.event_id, delivery_id = %event.id, destination = %event.destination, attempts, error = %error, "dead: --retry-for ran out");
                        Outcome::Dead {
                            error: format!("{error} (gave up: --retry-for ran out)"),
                        }
                    }
                }
            }
            Attempt::Refused(error) => {
                error!(event_id = %event.event_id, delivery_id = %event.id, destination = %event.destination, attempts, error = %error, "dead: the upstream refused the event");
                Outcome::Dead { error }
            }
        };
        let counted = match &outcome {
            Outcome::Delivered => AttemptResult::Delivered,
            Outcome::Retry { .. } => AttemptResult::Retry,
            Outcome::Dead { .. } => AttemptResult::Dead,
        };
        self.metrics
            .attempt(&self.destination, counted, elapsed.as_secs_f64());
        let due_again = match &outcome {
            Outcome::Retry {
                next_attempt_at, ..
            } => Some(*next_attempt_at),
            _ => None,
        };
        let freed = due_again.is_none() || release_conversations;
        let due_again = match self
            .store
            .record(event.seq, attempts, outcome, report)
            .await
        {
            Ok(()) => due_again,
            Err(e) => {
                warn!(event_id = %event.event_id, delivery_id = %event.id, destination = %event.destination, error = %e, "cannot record the delivery outcome; the event stays pending and will be sent again");
                tokio::time::sleep(IDLE_POLL).await;
                Some(now_ms())
            }
        };
        let _ = done.send(Done {
            seq: event.seq,
            due_again,
            answered,
            freed,
        });
    }

    /// Where conversations keep order: whether `event`, which failed before, still
    /// holds its conversations though its `order_hold` ran out (then its record
    /// releases them: they have not waited for it since then anyway). Says so, with a
    /// log line and a metric, once per delivery: the record of this attempt ends the
    /// hold whatever its outcome.
    async fn hold_ran_out(&self, event: &DueDelivery) -> bool {
        let Some(order_hold) = self.terms.order else {
            return false;
        };
        if event.attempts == 0 {
            return false;
        }
        let hold = match self.store.conversation_hold(event.seq).await {
            Ok(hold) => hold,
            Err(e) => {
                debug!(delivery_id = %event.id, error = %e, "cannot read what the delivery holds of its conversations; looked at again at its next attempt");
                return false;
            }
        };
        let Some(failed_at) = hold.failed_at.filter(|_| hold.keys > 0) else {
            return false;
        };
        let hold_ms = order_hold.as_millis().min(i64::MAX as u128) as i64;
        let now = now_ms();
        if failed_at.saturating_add(hold_ms) > now {
            return false;
        }
        // The keys are users' phone numbers and ids: their count only.
        warn!(
            event_id = %event.event_id,
            delivery_id = %event.id,
            destination = %event.destination,
            conversations = hold.keys,
            failing_for_ms = now - failed_at,
            attempts = event.attempts,
            "order_hold ran out: the delivery stops holding its conversation; later deliveries of it go ahead, and it is retried out of order"
        );
        self.metrics.conversation_hold_released(&self.destination);
        true
    }

    async fn body_of(&self, event: &DueDelivery) -> anyhow::Result<Bytes> {
        if let Some(body) = &event.body {
            return Ok(body.clone());
        }
        self.store
            .body(event.seq)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the event is no longer in the spool"))
    }
}

/// Makes the whole backlog due now, a chunk at a time, waking the scheduler after each.
async fn retry_backlog_now(store: Store, destination: DestinationKey) {
    match store.retry_all_now(&destination).await {
        Ok(total) => info!(
            destination = %destination,
            deliveries = total,
            "pending deliveries waiting for a retry are due now"
        ),
        Err(e) => {
            warn!(error = %e, "cannot bring the pending deliveries forward; they go as their retries fall due")
        }
    }
}

/// The tokio instant of a unix-ms time (now, if it is in the past).
fn instant_at(unix_ms: i64) -> TokioInstant {
    let ms = (unix_ms - now_ms()).max(0) as u64;
    TokioInstant::now() + Duration::from_millis(ms)
}

/// How long to sleep when a scan took nothing: until the next retry, at most
/// [`IDLE_POLL`]. Where claims hold the concurrency, one due already was held
/// elsewhere (another instance's claim, room taken by others): look again after
/// [`BUSY_POLL`]. Where conversations keep order, until the next retry due later.
async fn self_wait(this: &Delivery) -> Duration {
    if this.terms.order.is_some() {
        // What is due already may be held by its conversation: wait for a retry to
        // fall due. An attempt that ends here asks for a scan by itself; another
        // instance's, or an order_hold running out, is seen within IDLE_POLL.
        return match this.store.next_retry_at(&this.destination).await {
            Ok(Some(at)) => {
                let ms = (at - now_ms()).clamp(0, IDLE_POLL.as_millis() as i64);
                Duration::from_millis(ms as u64)
            }
            _ => IDLE_POLL,
        };
    }
    match this.store.next_due_at(&this.destination).await {
        Ok(Some(at)) if at <= now_ms() && this.store.claims_hold_concurrency() => BUSY_POLL,
        Ok(Some(at)) => {
            let ms = (at - now_ms()).clamp(0, IDLE_POLL.as_millis() as i64);
            Duration::from_millis(ms as u64)
        }
        _ => IDLE_POLL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64) -> DueDelivery {
        DueDelivery {
            seq,
            id: format!("d{seq}"),
            event_seq: seq,
            event_id: format!("e{seq}"),
            destination: DestinationKey::new("default", "default"),
            part: None,
            retry_from: 0,
            attempts: 0,
            signature: String::new(),
            signature_sha1: None,
            body: None,
        }
    }

    fn ready(claims: &Claims) -> Vec<i64> {
        claims.ready.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_fresh_event_a_scan_already_took_is_not_taken_again() {
        let mut claims = Claims::default();
        assert_eq!(claims.offer_scanned(vec![event(3), event(4)]), 2);
        // The writer's hand-over of 3 and 4 arrives after the scan took them.
        claims.offer_fresh(event(3));
        claims.offer_fresh(event(4));
        assert_eq!(ready(&claims), [3, 4]);
        // Even once they are sent and recorded (no longer claimed).
        claims.ready.clear();
        claims.claimed.clear();
        claims.offer_fresh(event(4));
        assert!(claims.ready.is_empty());
        // A later event is taken.
        claims.offer_fresh(event(5));
        assert_eq!(ready(&claims), [5]);
    }

    #[test]
    fn a_scan_skips_events_already_claimed_and_counts_the_new_ones() {
        let mut claims = Claims::default();
        claims.offer_fresh(event(7));
        claims.offer_fresh(event(8));
        assert_eq!(claims.offer_scanned(vec![event(7), event(8), event(9)]), 1);
        assert_eq!(ready(&claims), [7, 8, 9]);
        assert_eq!(claims.max_scanned, 9);
        // A retry found again while its attempt is still running is left alone.
        assert_eq!(claims.offer_scanned(vec![event(2)]), 1);
        assert_eq!(claims.offer_scanned(vec![event(2)]), 0);
        assert_eq!(ready(&claims), [7, 8, 9, 2]);
    }
}
