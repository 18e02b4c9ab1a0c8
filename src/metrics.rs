//! Prometheus metrics (`GET /metrics` on the admin listener), with prometheus-client.
//! Counters and histograms are updated as requests and deliveries happen; the spool's
//! gauges (depth by state, oldest pending event, dedup keys) are read at scrape time, as
//! are readiness and the status page's verdict.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::last_hour::LastHour;
use crate::spool::views::SpoolStats;
use crate::types::DestinationKey;

/// What happened to one request on the webhook listener.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Verification challenge answered.
    Verified,
    /// Verification refused (wrong token or mode) or malformed.
    ChallengeRefused,
    /// No, malformed or wrong signature.
    SignatureRefused,
    /// Body over the limit.
    TooLarge,
    /// Not a JSON object.
    BadJson,
    /// The body did not arrive whole: the client went away, sent a broken body, or was
    /// too slow (`--body-timeout`).
    IncompleteBody,
    /// Meta's retry of an event already accepted.
    Duplicate,
    /// A new event, committed.
    Accepted,
    /// The spool could not commit (503).
    SpoolError,
    /// The client certificate subject check failed (403).
    ClientRefused,
    /// Any other method (405).
    MethodNotAllowed,
    /// No route has the path (404).
    UnknownPath,
}

impl RequestOutcome {
    /// Every outcome, in the order README lists them.
    pub const ALL: [RequestOutcome; 12] = [
        RequestOutcome::Verified,
        RequestOutcome::ChallengeRefused,
        RequestOutcome::SignatureRefused,
        RequestOutcome::TooLarge,
        RequestOutcome::BadJson,
        RequestOutcome::IncompleteBody,
        RequestOutcome::Duplicate,
        RequestOutcome::Accepted,
        RequestOutcome::SpoolError,
        RequestOutcome::ClientRefused,
        RequestOutcome::MethodNotAllowed,
        RequestOutcome::UnknownPath,
    ];

    /// Whether the request was refused (answered neither `200` nor the challenge).
    pub fn refused(self) -> bool {
        !matches!(
            self,
            RequestOutcome::Verified | RequestOutcome::Duplicate | RequestOutcome::Accepted
        )
    }

    /// The HTTP status(es) it is answered with (DESIGN.md's table of answers), for the
    /// status page.
    pub fn answer(self) -> &'static str {
        match self {
            RequestOutcome::Verified | RequestOutcome::Duplicate | RequestOutcome::Accepted => {
                "200"
            }
            RequestOutcome::ChallengeRefused => "400, 403",
            RequestOutcome::SignatureRefused => "401",
            RequestOutcome::TooLarge => "413",
            RequestOutcome::BadJson => "400",
            RequestOutcome::IncompleteBody => "400, 408",
            RequestOutcome::SpoolError => "503",
            RequestOutcome::ClientRefused => "403",
            RequestOutcome::MethodNotAllowed => "405",
            RequestOutcome::UnknownPath => "404",
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Verified => "verified",
            RequestOutcome::ChallengeRefused => "challenge_refused",
            RequestOutcome::SignatureRefused => "signature_refused",
            RequestOutcome::TooLarge => "too_large",
            RequestOutcome::BadJson => "bad_json",
            RequestOutcome::IncompleteBody => "incomplete_body",
            RequestOutcome::Duplicate => "duplicate",
            RequestOutcome::Accepted => "accepted",
            RequestOutcome::SpoolError => "spool_error",
            RequestOutcome::ClientRefused => "client_refused",
            RequestOutcome::MethodNotAllowed => "method_not_allowed",
            RequestOutcome::UnknownPath => "unknown_path",
        }
    }
}

impl EncodeLabelValue for RequestOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The result of one delivery attempt.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AttemptResult {
    /// 2xx.
    Delivered,
    /// Failed; another attempt is scheduled.
    Retry,
    /// Failed for good.
    Dead,
}

impl EncodeLabelValue for AttemptResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            AttemptResult::Delivered => "delivered",
            AttemptResult::Retry => "retry",
            AttemptResult::Dead => "dead",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: RequestOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    route: String,
    destination: String,
    result: AttemptResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    route: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    /// Not `instance`: Prometheus gives that name to the target it scrapes.
    holder: String,
}

/// Every metric xhubd exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<OutcomeLabels, Counter>,
    ack_seconds: Histogram,
    attempts: Family<ResultLabels, Counter>,
    delivery_seconds: Family<DestinationLabels, Histogram>,
    backlog: Family<DestinationLabels, Gauge>,
    dead: Family<DestinationLabels, Gauge>,
    oldest_pending: Family<DestinationLabels, Gauge<f64, AtomicU64>>,
    holds_released: Family<DestinationLabels, Counter>,
    spool_events: Family<StateLabels, Gauge>,
    oldest_pending_seconds: Gauge<f64, AtomicU64>,
    dedup_keys: Gauge,
    clock_offset: Gauge<f64, AtomicU64>,
    claimed: Family<InstanceLabels, Gauge>,
    up: Family<DestinationLabels, Gauge>,
    rate_limited: Family<DestinationLabels, Counter>,
    unrouted: Family<RouteLabels, Counter>,
    needs_attention: Gauge,
    ready: Gauge,
    last_hour: LastHour<{ RequestOutcome::ALL.len() }>,
    flows: Mutex<HashMap<DestinationKey, Arc<LastHour<{ Flow::ALL.len() }>>>>,
}

/// What a destination's chart counts per minute (this instance's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Deliveries to it stored with an accepted event.
    Accepted,
    /// Attempts it answered 2xx.
    Delivered,
    /// Attempts that failed (to be retried, or dead).
    Failed,
}

impl Flow {
    /// Every flow, in the order of [`Metrics::flows_last_hour`]'s counts.
    pub const ALL: [Flow; 3] = [Flow::Accepted, Flow::Delivered, Flow::Failed];

    /// Its name on the page.
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Accepted => "accepted",
            Flow::Delivered => "delivered",
            Flow::Failed => "failed",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("xhubd");
        let requests = Family::<OutcomeLabels, Counter>::default();
        // Every outcome reads 0 from the start, so that `increase()` sees its first one.
        for outcome in RequestOutcome::ALL {
            let _ = requests.get_or_create(&OutcomeLabels { outcome });
        }
        registry.register(
            "requests",
            "Requests on the webhook listener, by outcome",
            requests.clone(),
        );
        let ack_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        registry.register(
            "ack_duration_seconds",
            "Time from a signed POST's arrival to its answer (accepted or duplicate), including the durable commit",
            ack_seconds.clone(),
        );
        let attempts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts, by route, destination and result",
            attempts.clone(),
        );
        let delivery_seconds = Family::<DestinationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "delivery_duration_seconds",
            "Duration of one delivery attempt, by route and destination",
            delivery_seconds.clone(),
        );
        let backlog = Family::<DestinationLabels, Gauge>::default();
        registry.register(
            "destination_backlog",
            "Deliveries waiting, by route and destination",
            backlog.clone(),
        );
        let dead = Family::<DestinationLabels, Gauge>::default();
        registry.register(
            "destination_dead",
            "Dead deliveries, by route and destination",
            dead.clone(),
        );
        let oldest_pending = Family::<DestinationLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "destination_oldest_pending_age_seconds",
            "Age of a destination's oldest pending delivery (since acceptance or replay)",
            oldest_pending.clone(),
        );
        let holds_released = Family::<DestinationLabels, Counter>::default();
        registry.register(
            "conversation_holds_released",
            "Deliveries to a destination that keeps conversations in order that stopped holding their conversation because order_hold ran out while they kept failing",
            holds_released.clone(),
        );
        let spool_events = Family::<StateLabels, Gauge>::default();
        registry.register(
            "spool_events",
            "Deliveries in the spool, by state (one per event and destination that takes it)",
            spool_events.clone(),
        );
        let oldest_pending_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_pending_age_seconds",
            "Age of the oldest event not yet delivered (0 when none is pending)",
            oldest_pending_seconds.clone(),
        );
        let dedup_keys = Gauge::default();
        registry.register(
            "dedup_keys",
            "Event identities remembered to drop Meta's retries",
            dedup_keys.clone(),
        );
        let clock_offset = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "spool_clock_offset_seconds",
            "The spool's clock less this machine's wall clock: on PostgreSQL the database's clock (read every 15 s), which leases, retries and the dedup window follow (positive: this machine's clock is behind); 0 on SQLite",
            clock_offset.clone(),
        );
        let claimed = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "spool_claimed",
            "Pending deliveries each instance sharing the spool has taken under a live lease",
            claimed.clone(),
        );
        let up = Family::<DestinationLabels, Gauge>::default();
        registry.register(
            "destination_up",
            "1 while a destination is up, 0 while it is down (10 retryable failures in a row: one probe at a time until it answers), as every instance on the spool sees it",
            up.clone(),
        );
        let rate_limited = Family::<DestinationLabels, Counter>::default();
        registry.register(
            "destination_rate_limited_waits",
            "Times a destination's rate limit held requests back (one request waiting, or a claim on a shared spool taking fewer than it could)",
            rate_limited.clone(),
        );
        let unrouted = Family::<RouteLabels, Counter>::default();
        registry.register(
            "items_unrouted",
            "Items of accepted events that no destination of their route takes (stored, delivered nowhere)",
            unrouted.clone(),
        );
        let needs_attention = Gauge::default();
        registry.register(
            "needs_attention",
            "1 when something needs the operator's attention (dead deliveries, a destination failing, delivery behind, pending deliveries for a destination not in this instance's configuration), as the status page's top line says; else 0",
            needs_attention.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when xhubd is ready (the spool's last commit succeeded and delivery runs), as /readyz answers 200; else 0",
            ready.clone(),
        );
        Metrics {
            last_hour: LastHour::default(),
            flows: Mutex::default(),
            needs_attention,
            ready,
            unrouted,
            registry: Mutex::new(registry),
            requests,
            ack_seconds,
            attempts,
            delivery_seconds,
            backlog,
            dead,
            oldest_pending,
            holds_released,
            spool_events,
            oldest_pending_seconds,
            dedup_keys,
            clock_offset,
            claimed,
            up,
            rate_limited,
        }
    }

    /// Counts one request outcome.
    pub fn request(&self, outcome: RequestOutcome) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.last_hour.count(outcome as usize);
    }

    /// Each outcome with its count over the last hour (those never seen left out), in
    /// [`RequestOutcome::ALL`]'s order: what the status page shows.
    pub fn requests_last_hour(&self) -> Vec<(RequestOutcome, u64)> {
        let sums = self.last_hour.sums();
        RequestOutcome::ALL
            .into_iter()
            .map(|o| (o, sums[o as usize]))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Counts `items` of an accepted event on `route` that no destination takes.
    pub fn unrouted(&self, route: &str, items: usize) {
        self.unrouted
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .inc_by(items as u64);
    }

    /// Records the time to acknowledge an event.
    pub fn ack(&self, seconds: f64) {
        self.ack_seconds.observe(seconds);
    }

    /// Counts deliveries to `destination` in its chart.
    pub fn flow(&self, destination: &DestinationKey, flow: Flow, n: u64) {
        let counts = self
            .flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(destination.clone())
            .or_default()
            .clone();
        for _ in 0..n {
            counts.count(flow as usize);
        }
    }

    /// `destination`'s accepted, delivered and failed deliveries per minute over the
    /// last hour, the oldest minute first (60 of them), in [`Flow::ALL`]'s order.
    pub fn flows_last_hour(&self, destination: &DestinationKey) -> Vec<[u64; 3]> {
        let counts = self
            .flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(destination)
            .cloned();
        match counts {
            Some(c) => c.per_minute(),
            None => vec![[0; 3]; 60],
        }
    }

    /// Counts one delivery attempt to `destination` and its duration (and in its chart).
    pub fn attempt(&self, destination: &DestinationKey, result: AttemptResult, seconds: f64) {
        let flow = match result {
            AttemptResult::Delivered => Flow::Delivered,
            _ => Flow::Failed,
        };
        self.flow(destination, flow, 1);
        let (route, destination) = (
            destination.route().to_owned(),
            destination.destination().to_owned(),
        );
        self.attempts
            .get_or_create(&ResultLabels {
                route: route.clone(),
                destination: destination.clone(),
                result,
            })
            .inc();
        self.delivery_seconds
            .get_or_create(&DestinationLabels { route, destination })
            .observe(seconds);
    }

    /// Counts a time `destination`'s rate limit held requests back.
    pub fn rate_limited(&self, destination: &DestinationKey) {
        self.rate_limited
            .get_or_create(&DestinationLabels {
                route: destination.route().to_owned(),
                destination: destination.destination().to_owned(),
            })
            .inc();
    }

    /// Counts a delivery to `destination` that stopped holding its conversation
    /// (its `order_hold` ran out).
    pub fn conversation_hold_released(&self, destination: &DestinationKey) {
        self.holds_released
            .get_or_create(&DestinationLabels {
                route: destination.route().to_owned(),
                destination: destination.destination().to_owned(),
            })
            .inc();
    }

    /// The text exposition, with the spool's gauges set from `stats`,
    /// `xhubd_needs_attention` from the status page's verdict (`all_well`) and
    /// `xhubd_ready` from `/readyz`'s (`ready`). Every destination in `configured` (with
    /// whether it is up) has its per-destination gauges, 0 when the spool holds nothing
    /// for it, so that an alert can tell zero from absent.
    pub fn render(
        &self,
        stats: &SpoolStats,
        configured: &[(DestinationKey, bool)],
        all_well: bool,
        ready: bool,
    ) -> String {
        self.needs_attention.set(i64::from(!all_well));
        self.ready.set(i64::from(ready));
        for (state, count) in [
            ("pending", stats.pending),
            ("delivered", stats.delivered),
            ("dead", stats.dead),
        ] {
            self.spool_events
                .get_or_create(&StateLabels { state })
                .set(count);
        }
        self.oldest_pending_seconds
            .set(stats.oldest_pending_age_seconds);
        self.dedup_keys.set(stats.dedup_keys);
        self.clock_offset
            .set(crate::spool::clock::offset_ms() as f64 / 1000.0);
        // An instance that holds nothing any more reads as absent, not as its last count.
        self.claimed.clear();
        for c in &stats.claims {
            self.claimed
                .get_or_create(&InstanceLabels {
                    holder: c.instance.clone(),
                })
                .set(c.deliveries);
        }
        // Destinations with nothing waiting read 0, not their last value.
        self.backlog.clear();
        self.dead.clear();
        self.oldest_pending.clear();
        self.up.clear();
        for (key, up) in configured {
            let labels = DestinationLabels {
                route: key.route().to_owned(),
                destination: key.destination().to_owned(),
            };
            self.up.get_or_create(&labels).set(i64::from(*up));
            let _ = self.rate_limited.get_or_create(&labels);
            self.backlog.get_or_create(&labels).set(0);
            self.dead.get_or_create(&labels).set(0);
            self.oldest_pending.get_or_create(&labels).set(0.0);
            // Created, not counted: reads 0 before the first release.
            let _ = self.holds_released.get_or_create(&labels);
            // Created, not counted: the route's series reads 0 before its first.
            let _ = self.unrouted.get_or_create(&RouteLabels {
                route: key.route().to_owned(),
            });
        }
        for d in &stats.destinations {
            let labels = DestinationLabels {
                route: d.route.clone(),
                destination: d.destination.clone(),
            };
            self.backlog.get_or_create(&labels).set(d.pending);
            self.dead.get_or_create(&labels).set(d.dead);
            self.oldest_pending
                .get_or_create(&labels)
                .set(d.oldest_pending_age_seconds);
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# the metrics could not be encoded");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::RequestOutcome;

    /// The last hour's counters are indexed by the discriminant.
    #[test]
    fn all_is_in_declaration_order() {
        for (i, outcome) in RequestOutcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "{}", outcome.as_str());
        }
    }
}
