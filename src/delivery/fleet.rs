//! One delivery scheduler per destination, started, stopped and replaced as the
//! configuration says (at start, and at each reload), and the hand-over of new
//! deliveries from the spool's writer to the scheduler of their destination.
//!
//! A destination removed by a reload stops taking deliveries: its pending ones stay on
//! disk and resume if it comes back. One whose settings changed is stopped and started
//! again with the new ones (attempts in flight finish first, within the drain time).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::backoff::RetryPolicy;
use super::status::{UpstreamSnapshot, UpstreamStatus};
use super::upstream::Upstream;
use super::Delivery;
use crate::config::redacted_url;
use crate::config::routes::{Destination, Order, Route};
use crate::metrics::Metrics;
use crate::spool::{ClaimTerms, Store, CLAIM_START_WINDOW};
use crate::types::{DestinationKey, DueDelivery};

/// New deliveries waiting for one destination's scheduler in memory, at most.
const FRESH_PER_DESTINATION: usize = 512;
/// On a shared spool, how much longer than the destination's timeout a taken delivery
/// (and a share of the concurrency) stays this instance's: time to start an attempt
/// after the claim ([`CLAIM_START_WINDOW`]), and to record the outcome. Past it, another
/// instance takes the delivery (an instance that died holds nothing for longer).
const LEASE_MARGIN: Duration = Duration::from_secs(10);
// A delivery taken ahead starts within the window; its attempt must end inside its lease.
const _: () = assert!(LEASE_MARGIN.as_secs() >= 2 * CLAIM_START_WINDOW.as_secs());

/// One running scheduler.
struct Scheduler {
    destination: Destination,
    stop: CancellationToken,
    task: JoinHandle<()>,
    running: Arc<AtomicBool>,
    status: Arc<UpstreamStatus>,
}

/// What the status page shows of a destination.
#[derive(Debug, Clone)]
pub struct DestinationView {
    /// `route/destination`.
    pub key: DestinationKey,
    /// Its URL, password removed.
    pub url: String,
    /// How its last attempts went.
    pub status: UpstreamSnapshot,
}

/// The schedulers.
pub(crate) struct Fleet {
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    drain: Duration,
    handovers: Arc<Mutex<HashMap<DestinationKey, mpsc::Sender<DueDelivery>>>>,
    schedulers: Mutex<BTreeMap<DestinationKey, Scheduler>>,
    stopped: Mutex<Vec<JoinHandle<()>>>,
}

impl Fleet {
    /// A fleet with no scheduler yet; `fresh` is the writer's hand-over of new
    /// deliveries, dispatched here to each destination's scheduler.
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        mut fresh: mpsc::Receiver<DueDelivery>,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> Fleet {
        let handovers: Arc<Mutex<HashMap<DestinationKey, mpsc::Sender<DueDelivery>>>> =
            Arc::default();
        let dispatch = handovers.clone();
        let wake = store.clone();
        let stop = shutdown.clone();
        let dispatcher = tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = fresh.recv() => match next {
                        Some(delivery) => delivery,
                        None => break,
                    },
                };
                let taken = dispatch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&delivery.destination)
                    .is_some_and(|tx| tx.try_send(delivery).is_ok());
                if !taken {
                    // Full, or a destination not configured now: the spool has it.
                    wake.wake_delivery();
                }
            }
        });
        Fleet {
            store,
            metrics,
            shutdown,
            drain,
            handovers,
            schedulers: Mutex::default(),
            stopped: Mutex::new(vec![dispatcher]),
        }
    }

    /// Makes the running schedulers those of `routes`: starts new destinations, stops
    /// removed ones, restarts changed ones. Fails (starting nothing) when a
    /// destination's client cannot be built.
    pub fn apply(&self, routes: &[Route]) -> anyhow::Result<()> {
        let mut wanted = BTreeMap::new();
        for route in routes {
            for destination in &route.destinations {
                wanted.insert(
                    DestinationKey::new(&route.name, &destination.name),
                    destination.clone(),
                );
            }
        }
        let mut clients = BTreeMap::new();
        {
            let running = self.schedulers.lock().unwrap_or_else(|p| p.into_inner());
            for (key, destination) in &wanted {
                let unchanged = running
                    .get(key)
                    .is_some_and(|s| same_delivery(&s.destination, destination));
                if !unchanged {
                    let client = Upstream::new(
                        &destination.url,
                        destination.timeout,
                        destination.concurrency,
                        destination.headers.clone(),
                        destination.tls.as_ref().map(|t| t.client_config()),
                    )
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "route {:?}: destination {:?}: {e:#}",
                            key.route(),
                            key.destination()
                        )
                    })?;
                    clients.insert(key.clone(), client);
                }
            }
        }
        let mut running = self.schedulers.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<DestinationKey> = running
            .keys()
            .filter(|k| !wanted.contains_key(*k) || clients.contains_key(*k))
            .cloned()
            .collect();
        // A destination restarted with new settings: its new scheduler starts only once
        // the old one has finished its attempts in flight, so no delivery is sent twice
        // at once.
        let mut previous = HashMap::new();
        for key in gone {
            if let Some(old) = running.remove(&key) {
                self.handovers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                old.stop.cancel();
                if wanted.contains_key(&key) {
                    previous.insert(key, old.task);
                } else {
                    info!(destination = %key, "destination removed: its pending deliveries stay on disk");
                    self.stopped
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(old.task);
                }
            }
        }
        for (key, upstream) in clients {
            let Some(destination) = wanted.get(&key).cloned() else {
                continue;
            };
            let (tx, rx) = mpsc::channel(FRESH_PER_DESTINATION);
            let running_flag = Arc::new(AtomicBool::new(false));
            let status = Arc::new(UpstreamStatus::default());
            let stop = self.shutdown.child_token();
            let delivery = Delivery {
                store: self.store.clone(),
                destination: key.clone(),
                upstream,
                policy: RetryPolicy {
                    initial: destination.retry_initial,
                    max_delay: destination.retry_max_delay,
                    retry_for: destination.retry_for,
                },
                terms: ClaimTerms {
                    concurrency: destination.concurrency,
                    lease: destination.timeout + LEASE_MARGIN,
                    rate: destination.rate,
                    order: (destination.order == Order::Conversation)
                        .then_some(destination.order_hold),
                },
                running: running_flag.clone(),
                metrics: self.metrics.clone(),
                status: status.clone(),
            };
            let before = previous.remove(&key);
            let drain = self.drain;
            let stopping = stop.clone();
            let task = tokio::spawn(async move {
                if let Some(before) = before {
                    let _ = before.await;
                }
                delivery.run(rx, stopping, drain).await;
            });
            self.handovers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), tx);
            running.insert(
                key,
                Scheduler {
                    destination,
                    stop,
                    task,
                    running: running_flag,
                    status,
                },
            );
        }
        // Deliveries of a destination (re)started are found by its first scan.
        self.store.wake_delivery();
        Ok(())
    }

    /// Whether every scheduler runs (for /readyz).
    pub fn all_running(&self) -> bool {
        self.schedulers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .all(|s| s.running.load(Ordering::Relaxed))
    }

    /// Each destination, for the status page.
    pub fn views(&self) -> Vec<DestinationView> {
        self.schedulers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(key, s)| DestinationView {
                key: key.clone(),
                url: redacted_url(&s.destination.url),
                status: s.status.snapshot(),
            })
            .collect()
    }

    /// Waits for every scheduler (the shutdown token was cancelled) and the dispatcher.
    pub async fn join(&self) {
        let mut tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.stopped.lock().unwrap_or_else(|p| p.into_inner()));
        tasks.extend(
            std::mem::take(&mut *self.schedulers.lock().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .map(|s| s.task),
        );
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Whether two settings of a destination deliver the same way (what its scheduler
/// uses; `match`, `split` and signing are decided at acceptance). TLS settings are the
/// same when they name the same files holding the same bytes.
fn same_delivery(a: &Destination, b: &Destination) -> bool {
    a.url == b.url
        && a.concurrency == b.concurrency
        && a.timeout == b.timeout
        && a.retry_for == b.retry_for
        && a.retry_initial == b.retry_initial
        && a.retry_max_delay == b.retry_max_delay
        && a.order == b.order
        && a.order_hold == b.order_hold
        && a.headers == b.headers
        && a.tls == b.tls
        && a.rate == b.rate
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routes::{default_route, Defaults};
    use crate::secret::Secret;

    #[test]
    fn a_change_of_order_order_hold_or_rate_restarts_the_scheduler() {
        let second = Duration::from_secs(1);
        let defaults = Defaults {
            concurrency: 1,
            timeout: second,
            retry_for: second,
            retry_initial: second,
            retry_max_delay: second,
            order: Order::None,
            order_hold: second,
            rate: None,
        };
        let url = url::Url::parse("http://127.0.0.1:1/").unwrap();
        let route = default_route(
            Secret::new("t"),
            vec![Secret::new("s")],
            url,
            None,
            defaults,
        );
        let before = route.destinations[0].clone();
        assert!(same_delivery(&before, &before.clone()));
        let ordered = Destination {
            order: Order::Conversation,
            ..before.clone()
        };
        assert!(!same_delivery(&before, &ordered));
        let longer = Destination {
            order_hold: second * 2,
            ..ordered.clone()
        };
        assert!(!same_delivery(&ordered, &longer));
        let limited = Destination {
            rate: crate::types::RateLimit::new(5.0, std::num::NonZeroU32::MIN),
            ..before.clone()
        };
        assert!(!same_delivery(&before, &limited));
    }
}
