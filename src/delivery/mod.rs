//! Delivery: a scheduler takes due events and sends each to the upstream with a
//! bounded number of attempts in flight; every outcome (delivered, retry at a later
//! time, dead) is recorded through the spool's writer.
//!
//! - [`upstream`]: the HTTP client and one attempt.
//! - [`backoff`]: when to try again.
//! - [`status`]: how the upstream is doing, for the status page.
//! - `taken`: what the scheduler has taken; `outage`: a destination that is down;
//!   `order`: a conversation's hold running out.
//! - [`fleet`]: one scheduler per destination, as the configuration says.
//!
//! Events reach the scheduler two ways. Newly committed events come from the writer in
//! memory (the *fresh* queue), so a first attempt needs no read of the spool. Everything
//! else (the backlog at start, retries falling due, replays, and new events the fresh
//! queue had no room for) is found by a *scan* of the spool for pending, due events.
//! The scan alone would deliver everything; the fresh queue only makes it cheaper.
//!
//! Outages: after ten retryable failures in a row (see [`crate::types::Availability`],
//! stored in the spool so that it holds for every instance), the destination is
//! *down*: new deliveries are stored and not tried, and one *probe* at a time (the
//! pending delivery whose retry comes first) goes on a backoff from `retry_initial` to
//! `retry_max_delay`. A failed probe stands for every pending delivery: those whose
//! `retry_for` ran out while it was down become dead then, with the last error
//! `destination down since <time>`. The first answer (2xx, or a refusal) brings it up,
//! and makes every pending delivery due at once: the backlog goes as fast as the
//! destination (and its rate limit) takes it, not as each backoff happens to run out.
//!
//! Rate limit: on SQLite, the one scheduler waits for `governor`'s limiter before
//! each attempt; on a shared spool, every claim spends the destination's budget in the
//! database, so the limit holds for every instance together, and the scheduler claims
//! again when the budget has room.
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
mod order;
mod outage;
pub mod status;
mod taken;
pub mod upstream;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::metrics::{AttemptResult, Metrics};
use crate::spool::{
    now_ms, Attempted, ClaimTerms, Outcome, Recorded, SpoolError, Store, Take, Taken,
    CLAIM_START_WINDOW,
};
use crate::time::rfc3339;
use crate::types::{AttemptReport, Availability, DestinationKey, DueDelivery};
use backoff::RetryPolicy;
use outage::Standing;
use status::UpstreamStatus;
use taken::Claims;
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

/// What an attempt reports back to the scheduler when its outcome is recorded (or could
/// not be).
struct Done {
    /// The event's row number.
    seq: i64,
    /// When it falls due again, if it stays pending.
    due_again: Option<i64>,
    /// What the record did to the destination (none: it could not be recorded).
    recorded: Option<Recorded>,
    /// Whether it no longer holds its conversations, if any (delivered, dead, or
    /// released): the next delivery of one of them may go.
    freed: bool,
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
        let shared = self.store.claims_hold_concurrency();
        // One scheduler takes from a SQLite spool: it paces its own attempts. On a
        // shared spool the claims spend the budget of every instance together.
        let limiter: Option<DefaultDirectRateLimiter> = match self.terms.rate {
            Some(rate) if !shared => Quota::with_period(rate.interval)
                .map(|q| RateLimiter::direct(q.allow_burst(rate.burst))),
            _ => None,
        };
        // While the limiter holds the next attempt back: when it may start. The wait is
        // here, not in the attempt, so that a stop or the destination going down ends it
        // with the delivery unsent.
        let mut rate_wait: Option<TokioInstant> = None;
        let this = Arc::new(self);
        let mut wakeups = this.store.wakeups();
        // Running from here (for /readyz): the state is read before the first scan.
        this.running.store(true, Ordering::Relaxed);
        // A shared spool's database may not answer yet (or have no tables yet) at start:
        // its state is read once it does, which the first connection's wakeup says.
        while shared && !this.store.health().is_ready() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Ok(()) = wakeups.changed() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
        let read = if shutdown.is_cancelled() {
            // Stopped before the database answered: nothing to read, nothing to say.
            Ok(Availability::default())
        } else {
            this.store.availability(&this.destination).await
        };
        let mut availability = match read {
            Ok(a) => a,
            Err(e) => {
                warn!(destination = %this.destination, error = %e, "cannot read whether the destination is down; taking it as up");
                Availability::default()
            }
        };
        this.status.availability(&availability);
        if let Some(since) = availability.down_since {
            warn!(destination = %this.destination, down_since = %rfc3339(since), "the destination is down: one probe at a time until it answers");
        }
        let permits = Arc::new(Semaphore::new(this.terms.concurrency));
        let sent = Arc::new(Notify::new());
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut claims = Claims::default();
        // Deliveries taken as the destination's probe.
        let mut probes: HashSet<i64> = HashSet::new();
        // Scan as soon as the ready queue is empty (at start: the backlog).
        let mut scan_now = true;
        let mut next_scan = TokioInstant::now();
        let ordered = this.terms.order.is_some();
        // On a shared spool: how many deliveries wait ahead of the attempts (see
        // `ClaimTerms::ahead`), the share of the concurrency the last claim left this
        // instance, and when that claim started: an attempt starts only within
        // CLAIM_START_WINDOW of it, inside the leases it set.
        let ahead = this.terms.ahead(shared);
        let mut slots = this.terms.concurrency;
        let mut claimed_at: Option<TokioInstant> = None;
        // Taking ahead, a claim runs beside the attempts, which go on starting from
        // what waits while it does; its result is taken in at the top of the loop.
        let mut claiming: Option<(Scan, JoinHandle<Result<Taken, SpoolError>>)> = None;
        let mut claimed: Option<(Scan, Result<Taken, SpoolError>)> = None;
        // Outcomes taken in so far: a claim's copy of the state is older than those
        // taken in while it ran, possibly.
        let mut outcomes_taken: u64 = 0;
        while !shutdown.is_cancelled() {
            if let Some((scan, result)) = claimed.take() {
                match result {
                    Ok(mut taken) => {
                        if let Some(share) = taken.slots {
                            slots = share;
                            claimed_at = Some(scan.started);
                        }
                        let mut stored = taken.availability;
                        if stored.is_some_and(|s| s.is_down() != availability.is_down())
                            && outcomes_taken != scan.outcomes_taken
                        {
                            // Outcomes taken in while the claim ran may be newer than its
                            // copy: read the state again, after their commits (if that
                            // fails, keep what they said).
                            stored = this.store.availability(&this.destination).await.ok();
                        }
                        if let Some(stored) = stored {
                            outage::learn(
                                &this.destination,
                                &this.status,
                                &mut availability,
                                stored,
                            );
                        }
                        if availability.is_down() && !scan.probe {
                            // It went down while the claim ran: what it took, and what
                            // waits from before, stays pending, untried.
                            let mut unsent: Vec<i64> =
                                taken.deliveries.drain(..).map(|d| d.seq).collect();
                            unsent.extend(claims.drop_waiting(&probes));
                            give_back(&this, unsent).await;
                        }
                        let fetched = taken.deliveries.len();
                        if availability.is_down() {
                            probes.extend(taken.deliveries.iter().map(|d| d.seq));
                        }
                        let taken_now = claims.offer_scanned(taken.deliveries);
                        if availability.is_down() {
                            // The probe's outcome (or the next look) decides what follows.
                            next_scan = TokioInstant::now() + IDLE_POLL;
                        } else if fetched >= scan.limit {
                            // There may be more: scan again once these are on their way.
                            scan_now = true;
                        } else if taken_now > 0 {
                            // Scan again once these are on their way (the next finds
                            // them claimed, or what fell due meanwhile).
                            next_scan = TokioInstant::now();
                        } else if fetched > 0 && !ordered {
                            next_scan = TokioInstant::now() + BUSY_POLL;
                        } else {
                            next_scan = TokioInstant::now() + self_wait(&this).await;
                        }
                        if let Some(until) = taken.rate_limited_until {
                            // The budget of every instance is spent: claim again when it
                            // has room.
                            this.metrics.rate_limited(&this.destination);
                            this.status.rate_limited();
                            scan_now = false;
                            next_scan = next_scan.max(instant_at(until));
                        }
                        if shared && !claims.ready.is_empty() {
                            // Renew what waits before it may no longer start.
                            next_scan = next_scan.min(scan.started + CLAIM_START_WINDOW / 2);
                        }
                    }
                    Err(e) => {
                        // The claim may have committed a smaller share than the last
                        // before its answer was lost: no more than it counted go out.
                        slots = slots.min(scan.sending);
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
            let down = availability.is_down();
            let probe_at = instant_at(availability.next_probe_at.unwrap_or(0));
            // Where this instance's share of the concurrency is counted in the store and
            // nothing is taken ahead, a scan while its attempts fill the concurrency could
            // take nothing: the next attempt to end makes room (and asks for a scan).
            let sending = this.terms.concurrency - permits.available_permits();
            let no_room = shared && ahead == 0 && sending >= this.terms.concurrency;
            let claim_fresh = claimed_at.is_some_and(|at| at.elapsed() < CLAIM_START_WINDOW);
            // Taking ahead: claim again once what waits is down to half of what may
            // wait, or once the last claim is half the window old and something waits
            // (the claim renews its leases).
            let low = if ahead > 0 {
                claims.ready.len() * 2 <= ahead
            } else {
                claims.ready.is_empty()
            };
            let renew = shared
                && !claims.ready.is_empty()
                && claimed_at.is_none_or(|at| at.elapsed() >= CLAIM_START_WINDOW / 2);
            let scan_time = TokioInstant::now() >= next_scan;
            // Taking ahead, what waits and has a slot goes out before the next claim
            // starts: while that claim runs, no more attempts are in flight than when it
            // started (see `share` below).
            let could_start =
                ahead > 0 && !down && !claims.ready.is_empty() && sending < slots && claim_fresh;
            let may_scan = claiming.is_none()
                && if down {
                    // Down: its probe once due and nothing else is out; on a shared spool
                    // also now and then, to learn that another instance's probe got an
                    // answer.
                    claims.claimed.is_empty()
                        && (TokioInstant::now() >= probe_at || (shared && scan_time))
                } else {
                    (low || renew) && !no_room && !could_start && (scan_now || scan_time)
                };
            if may_scan {
                scan_now = false;
                // Where conversations keep order, a scan that fills the queue walks
                // past every held delivery: ask for what the attempt slots take.
                let batch = if ordered {
                    this.terms.concurrency.min(FETCH_BATCH)
                } else {
                    FETCH_BATCH
                };
                let limit = claims.claimed.len() + batch;
                let scan = Scan {
                    started: TokioInstant::now(),
                    limit,
                    probe: down,
                    outcomes_taken,
                    sending,
                };
                let waiting = claims.ready.len();
                let (store, destination) = (this.store.clone(), this.destination.clone());
                let (held, terms) = (claims.claimed.clone(), this.terms);
                let claim = async move {
                    let take = Take {
                        limit,
                        terms,
                        held: &held,
                        sending,
                        waiting,
                        ahead,
                        probe: scan.probe,
                    };
                    store.due(&destination, take).await
                };
                if ahead > 0 {
                    claiming = Some((scan, tokio::spawn(claim)));
                } else {
                    claimed = Some((scan, claim.await));
                    continue;
                }
            }
            let have_ready = !claims.ready.is_empty();
            // A scan waits for the ready queue to empty; while one is due, fresh events
            // wait in their queue, so that under a load the upstream cannot keep up with,
            // retries and overflowed events still get their turn (oldest first). While
            // the destination is down they are dropped from it: they stay in the spool,
            // untried.
            let scan_due = scan_now || TokioInstant::now() >= next_scan;
            let room = claims.ready.len() < FETCH_BATCH && !scan_due && !down;
            // On a shared spool, an attempt needs a slot of this instance's share, and
            // a claim recent enough that the attempt ends inside its leases.
            // While it is down only probes wait, taken when no instance held anything:
            // a probe needs no slot.
            // While a claim runs beside the attempts, an attempt that ends may be
            // followed, but no more go out than when it started: the share it stores
            // may be smaller than the last, never smaller than those.
            let share = match &claiming {
                Some((scan, _)) => slots.min(scan.sending),
                None => slots,
            };
            let slot_open = !shared || ((sending < share || down) && claim_fresh);
            let wake_at = if down && claims.claimed.is_empty() {
                if shared {
                    next_scan.min(probe_at)
                } else {
                    probe_at
                }
            } else if down {
                // Nothing to take before what is out ends (an outcome wakes the loop).
                TokioInstant::now() + IDLE_POLL
            } else if have_ready && !slot_open {
                // Every slot is sending: an attempt that ends wakes the loop; else the
                // claim that renews what waits.
                let renew_at = claimed_at.map_or(next_scan, |at| at + CLAIM_START_WINDOW / 2);
                next_scan.max(renew_at)
            } else {
                next_scan
            };
            // While a claim runs, its result wakes the loop.
            let sleeping = claiming.is_none() && (!have_ready || !slot_open) && (down || !no_room);
            let rate_open = rate_wait.is_none_or(|at| TokioInstant::now() >= at);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                joined = async {
                    match claiming.as_mut() {
                        Some((_, task)) => task.await,
                        None => std::future::pending().await,
                    }
                }, if claiming.is_some() => {
                    if let Some((scan, _)) = claiming.take() {
                        let result = joined.unwrap_or_else(|e| {
                            Err(SpoolError::Read(format!("the claim's task ended: {e}")))
                        });
                        claimed = Some((scan, result));
                    }
                }
                Some(done) = done_rx.recv() => {
                    // With every other outcome already reported (one commit records
                    // many), so that one scan fills the room they all made.
                    let mut next = Some(done);
                    // Outcomes come back in no set order, each with the destination's
                    // state as its own record left it, so one recorded before another
                    // may arrive after it. A copy that would take the destination down
                    // or up is checked against the spool after this batch: the read
                    // follows every commit reported here, so it is never older than
                    // they are (if it fails, the latest such copy is taken).
                    let mut turned = None;
                    while let Some(done) = next {
                        outcomes_taken += 1;
                        claims.claimed.remove(&done.seq);
                        probes.remove(&done.seq);
                        if let Some(at) = done.due_again {
                            next_scan = next_scan.min(instant_at(at));
                        }
                        if ordered && done.freed {
                            // The next delivery of its conversation may go now.
                            next_scan = TokioInstant::now();
                        }
                        if let Some(recorded) = done.recorded {
                            if let Some(copy) = outage::take_in(&this.destination, &this.status, &mut availability, recorded.availability) {
                                turned = Some(copy);
                            }
                            if recorded.came_up {
                                tokio::spawn(outage::retry_backlog_now(this.store.clone(), this.destination.clone()));
                            }
                        }
                        next = done_rx.try_recv().ok();
                    }
                    if let Some(turned) = turned {
                        match this.store.availability(&this.destination).await {
                            Ok(stored) => outage::settle(&this.destination, &this.status, &mut availability, turned, stored),
                            Err(e) => {
                                if this.store.health().is_ready() {
                                    warn!(destination = %this.destination, error = %e, down = turned.is_down(), "cannot read the destination's stored state; going by the latest outcome's copy of it, which may be out of date");
                                } else {
                                    debug!(destination = %this.destination, error = %e, down = turned.is_down(), "cannot read the destination's stored state while the spool is down; going by the latest outcome's copy of it");
                                }
                                outage::learn(&this.destination, &this.status, &mut availability, turned);
                            }
                        }
                    }
                    if availability.is_down() {
                        // Taken before it went down, not yet sent: they stay pending,
                        // untried, like the rest, and (on a shared spool) free for
                        // another instance's probe.
                        let unsent = claims.drop_waiting(&probes);
                        give_back(&this, unsent).await;
                    }
                    this.status.probing(!probes.is_empty());
                }
                permit = permits.clone().acquire_owned(), if have_ready && rate_open && slot_open => {
                    let Ok(permit) = permit else { break };
                    rate_wait = None;
                    if let Some(Err(not_until)) = limiter.as_ref().map(|l| l.check()) {
                        // The permit goes back; the event waits at the head of the queue.
                        drop(permit);
                        this.metrics.rate_limited(&this.destination);
                        this.status.rate_limited();
                        let wait = not_until.wait_time_from(DefaultClock::default().now());
                        rate_wait = Some(TokioInstant::now() + wait);
                        continue;
                    }
                    let Some(event) = claims.ready.pop_front() else { continue };
                    let standing = Standing {
                        probe: probes.contains(&event.seq),
                        availability,
                    };
                    if standing.probe {
                        this.status.probing(true);
                    }
                    tokio::spawn(this.clone().attempt(event, standing, permit, done_tx.clone(), sent.clone()));
                }
                // Where conversations keep order, only a scan knows what may go.
                // Down: new deliveries stay pending in the spool, untried, and the scan
                // that follows its coming back up finds them; what the hand-over holds in
                // memory (large bodies among it) is dropped, not kept for the outage.
                Some(event) = fresh.recv(), if room || down => if down {
                    drop(event);
                } else if ordered {
                    scan_now = true;
                } else {
                    claims.offer_fresh(event);
                },
                Ok(()) = wakeups.changed() => scan_now = true,
                // An attempt ended: on a shared spool, a slot for another claim.
                _ = sent.notified(), if shared => scan_now = true,
                _ = tokio::time::sleep_until(wake_at), if sleeping => {}
                _ = tokio::time::sleep_until(rate_wait.unwrap_or(wake_at)), if have_ready && !rate_open => {}
            }
        }
        this.running.store(false, Ordering::Relaxed);
        // Events waiting for a slot were never sent: they stay pending on disk.
        let mut unsent = Vec::new();
        // A claim still running takes what nobody will send: give that back too.
        let running_claim = claiming.take().map(|(_, task)| task);
        let last_claim = claimed.take().map(|(_, result)| result);
        let last_taken = match (running_claim, last_claim) {
            (Some(task), _) => task.await.ok().and_then(Result::ok),
            (None, Some(result)) => result.ok(),
            (None, None) => None,
        };
        unsent.extend(
            last_taken
                .iter()
                .flat_map(|t| t.deliveries.iter().map(|d| d.seq)),
        );
        for event in claims.ready.drain(..) {
            claims.claimed.remove(&event.seq);
            unsent.push(event.seq);
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
            // The slots stay taken until their lease runs out: attempts may be out.
            give_back(&this, unsent).await;
        } else if let Err(e) = this.store.release(&this.destination, &unsent).await {
            // Other instances get them once the leases run out.
            warn!(destination = %this.destination, error = %e, "cannot give back this instance's share of the destination's concurrency and the deliveries it took and did not send; the other instances get them when the leases run out");
        }
    }

    /// One attempt: send (then say so on `sent`),
    /// log, record the outcome and what it says of the destination, then report the
    /// event as no longer busy.
    async fn attempt(
        self: Arc<Self>,
        mut event: DueDelivery,
        standing: Standing,
        permit: OwnedSemaphorePermit,
        done: mpsc::UnboundedSender<Done>,
        sent: Arc<Notify>,
    ) {
        let attempts = event.attempts + 1;
        let release_conversations = order::hold_ran_out(&self, &event, &standing).await;
        let started = Instant::now();
        let (result, report) = match self.body_of(&mut event).await {
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
        let now = now_ms();
        let signal = outage::signal(&self.policy, &standing, event.seq, answered, now);
        let outcome = match result {
            Attempt::Delivered(status) => {
                info!(event_id = %event.event_id, delivery_id = %event.id, destination = %event.destination, attempts, status = status.as_u16(), elapsed_ms, probe = standing.probe, "delivered");
                Outcome::Delivered
            }
            Attempt::Retryable(error) => {
                match self.policy.next_attempt(event.retry_from, now, attempts) {
                    Some(next_attempt_at) => {
                        if standing.probe {
                            warn!(event_id = %event.event_id, delivery_id = %event.id, destination = %event.destination, attempts, error = %error, next_probe_in_ms = signal.next_probe_at - now, "probe failed: the destination stays down");
                        } else {
                            warn!(event_id = %event.event_id, delivery_id = %event.id, destination = %event.destination, attempts, error = %error, retry_in_ms = next_attempt_at - now, "delivery failed; retry scheduled");
                        }
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
        let attempted = Attempted {
            seq: event.seq,
            destination: event.destination.clone(),
            attempts,
            outcome,
            report,
            signal,
        };
        let (due_again, recorded) = match self.store.record(attempted).await {
            Ok(recorded) => {
                if recorded.expired > 0 {
                    error!(destination = %event.destination, deliveries = recorded.expired, down_since = %recorded.availability.down_since.map(rfc3339).unwrap_or_default(), "dead: their --retry-for ran out while the destination was down");
                }
                (due_again, Some(recorded))
            }
            Err(e) => {
                warn!(event_id = %event.event_id, delivery_id = %event.id, destination = %event.destination, error = %e, "cannot record the delivery outcome; the event stays pending and will be sent again");
                tokio::time::sleep(IDLE_POLL).await;
                (Some(now_ms()), None)
            }
        };
        let _ = done.send(Done {
            seq: event.seq,
            due_again,
            recorded,
            freed,
        });
    }

    /// The body to send: the one that came with the delivery, taken out of it (so that
    /// a body handed over in memory is released once sent, not once recorded), else
    /// read from the spool.
    async fn body_of(&self, event: &mut DueDelivery) -> anyhow::Result<Bytes> {
        if let Some(body) = event.body.take() {
            return Ok(body);
        }
        self.store
            .body(event.seq)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the event is no longer in the spool"))
    }
}

/// A scan of the spool for due deliveries, as it was asked for.
#[derive(Debug, Clone, Copy)]
struct Scan {
    /// When it started: the leases it sets run from then.
    started: TokioInstant,
    /// The most deliveries it asked for.
    limit: usize,
    /// It asked for the destination's probe.
    probe: bool,
    /// The outcomes the scheduler had taken in when it started.
    outcomes_taken: u64,
    /// The attempts in flight when it started: the fewest slots it keeps for this
    /// instance. Until its result is in, no more than these are in flight, so that the
    /// share it stores is never below them (another instance claims what is left).
    sending: usize,
}

/// Gives back the claims of deliveries taken and not sent (on a shared spool), so that
/// no instance waits for their leases to run out; if that fails, it does.
async fn give_back(this: &Delivery, unsent: Vec<i64>) {
    if unsent.is_empty() {
        return;
    }
    if let Err(e) = this.store.give_back(&unsent).await {
        warn!(destination = %this.destination, deliveries = unsent.len(), error = %e, "cannot give back deliveries taken and not sent; the other instances take them when their leases run out");
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
