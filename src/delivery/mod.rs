//! Delivery: a scheduler takes due events from the spool and sends each to the upstream
//! with a bounded number of attempts in flight; every outcome (delivered, retry at a
//! later time, dead) is recorded through the spool's writer.
//!
//! - [`upstream`]: the HTTP client and one attempt.
//! - [`backoff`]: when to try again.
//! - [`status`]: how the upstream is doing, for the status page.
//!
//! An event stays *busy* from the start of its attempt until its outcome is committed,
//! so it is never sent twice at once; if xhubd stops in between, the event is still
//! pending on disk and is sent again after the restart (at-least-once).

pub mod backoff;
pub mod status;
pub mod upstream;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::metrics::{AttemptResult, Metrics};
use crate::spool::queue::{DueEvent, Queue};
use crate::spool::{now_ms, Outcome, Spool};
use backoff::RetryPolicy;
use status::UpstreamStatus;
use upstream::{Attempt, Upstream};

/// Due events fetched per query (beyond those already busy).
const FETCH_BATCH: usize = 256;
/// Longest sleep when nothing is due, as a safety net for missed wake-ups.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// While every due event already has an attempt running, how often to look again, so
/// that another event's retry falling due meanwhile starts on time.
const BUSY_POLL: Duration = Duration::from_millis(100);

/// Everything an attempt needs.
pub struct Delivery {
    /// Where outcomes are recorded.
    pub spool: Spool,
    /// Where due events are read.
    pub queue: Queue,
    /// The upstream client.
    pub upstream: Upstream,
    /// When to retry.
    pub policy: RetryPolicy,
    /// Attempts in flight at most.
    pub concurrency: usize,
    /// Set while the scheduler runs (for /readyz).
    pub running: Arc<AtomicBool>,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// The upstream's state, for the status page.
    pub status: Arc<UpstreamStatus>,
}

impl Delivery {
    /// Runs until `shutdown` is cancelled, then waits up to `drain` for attempts in
    /// flight to finish and be recorded.
    pub async fn run(self, shutdown: CancellationToken, drain: Duration) {
        let this = Arc::new(self);
        this.running.store(true, Ordering::Relaxed);
        let permits = Arc::new(Semaphore::new(this.concurrency));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<i64>();
        let mut busy: HashSet<i64> = HashSet::new();
        let mut ready: VecDeque<DueEvent> = VecDeque::new();
        while !shutdown.is_cancelled() {
            let mut only_busy_due = false;
            let mut read_failed = false;
            if ready.is_empty() {
                match this.fetch(busy.len() + FETCH_BATCH).await {
                    Ok(list) => {
                        let fetched = list.len();
                        ready.extend(list.into_iter().filter(|e| !busy.contains(&e.seq)));
                        only_busy_due = fetched > 0 && ready.is_empty();
                    }
                    Err(e) => {
                        error!(error = %e, "cannot read due events from the spool; retrying in 1s");
                        read_failed = true;
                    }
                }
            }
            if !ready.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    Some(seq) = done_rx.recv() => { busy.remove(&seq); }
                    permit = permits.clone().acquire_owned() => {
                        let (Ok(permit), Some(event)) = (permit, ready.pop_front()) else { break };
                        busy.insert(event.seq);
                        tokio::spawn(this.clone().attempt(event, permit, done_tx.clone()));
                    }
                }
                continue;
            }
            let wait = if read_failed {
                IDLE_POLL
            } else if only_busy_due {
                BUSY_POLL
            } else {
                self_wait(&this).await
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(seq) = done_rx.recv() => { busy.remove(&seq); }
                _ = this.spool.new_events.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        this.running.store(false, Ordering::Relaxed);
        let drained = tokio::time::timeout(drain, async {
            while !busy.is_empty() {
                match done_rx.recv().await {
                    Some(seq) => {
                        busy.remove(&seq);
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

    async fn fetch(&self, limit: usize) -> anyhow::Result<Vec<DueEvent>> {
        let queue = self.queue.clone();
        Ok(tokio::task::spawn_blocking(move || queue.due(now_ms(), limit)).await??)
    }

    /// One attempt: send, log, record the outcome, then report the event as no longer busy.
    async fn attempt(
        self: Arc<Self>,
        event: DueEvent,
        permit: OwnedSemaphorePermit,
        done: mpsc::UnboundedSender<i64>,
    ) {
        let attempts = event.attempts + 1;
        let started = Instant::now();
        let result = match self.body_of(&event).await {
            Ok(body) => {
                self.upstream
                    .send(&event.id, &event.signature, attempts, body)
                    .await
            }
            Err(e) => Attempt::Retryable(format!("cannot read the event from the spool: {e}")),
        };
        drop(permit);
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        match &result {
            Attempt::Delivered(_) => self.status.success(),
            Attempt::Retryable(e) | Attempt::Refused(e) => self.status.failure(e),
        }
        let outcome = match result {
            Attempt::Delivered(status) => {
                info!(event_id = %event.id, attempts, status = status.as_u16(), elapsed_ms, "delivered");
                Outcome::Delivered
            }
            Attempt::Retryable(error) => {
                let now = now_ms();
                match self.policy.next_attempt(event.retry_from, now, attempts) {
                    Some(next_attempt_at) => {
                        warn!(event_id = %event.id, attempts, error = %error, retry_in_ms = next_attempt_at - now, "delivery failed; retry scheduled");
                        Outcome::Retry {
                            next_attempt_at,
                            error,
                        }
                    }
                    None => {
                        error!(event_id = %event.id, attempts, error = %error, "dead: --retry-for ran out");
                        Outcome::Dead {
                            error: format!("{error} (gave up: --retry-for ran out)"),
                        }
                    }
                }
            }
            Attempt::Refused(error) => {
                error!(event_id = %event.id, attempts, error = %error, "dead: the upstream refused the event");
                Outcome::Dead { error }
            }
        };
        let counted = match &outcome {
            Outcome::Delivered => AttemptResult::Delivered,
            Outcome::Retry { .. } => AttemptResult::Retry,
            Outcome::Dead { .. } => AttemptResult::Dead,
        };
        self.metrics.attempt(counted, elapsed.as_secs_f64());
        if let Err(e) = self.spool.record(event.seq, attempts, outcome).await {
            warn!(event_id = %event.id, error = %e, "cannot record the delivery outcome; the event stays pending and will be sent again");
            tokio::time::sleep(IDLE_POLL).await;
        }
        let _ = done.send(event.seq);
    }

    async fn body_of(&self, event: &DueEvent) -> anyhow::Result<Bytes> {
        if let Some(body) = &event.body {
            return Ok(body.clone());
        }
        let queue = self.queue.clone();
        let seq = event.seq;
        tokio::task::spawn_blocking(move || queue.body(seq))
            .await??
            .ok_or_else(|| anyhow::anyhow!("the event is no longer in the spool"))
    }
}

/// How long to sleep when nothing is due: until the next retry, at most [`IDLE_POLL`].
async fn self_wait(this: &Delivery) -> Duration {
    let queue = this.queue.clone();
    let next = tokio::task::spawn_blocking(move || queue.next_due_at()).await;
    match next {
        Ok(Ok(Some(at))) => {
            let ms = (at - now_ms()).clamp(0, IDLE_POLL.as_millis() as i64);
            Duration::from_millis(ms as u64)
        }
        _ => IDLE_POLL,
    }
}
