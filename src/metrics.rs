//! Prometheus metrics (`GET /metrics` on the admin listener), with prometheus-client.
//! Counters and histograms are updated as requests and deliveries happen; the spool's
//! gauges (depth by state, oldest pending event, dedup keys) are read at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

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
    claimed: Family<InstanceLabels, Gauge>,
    unrouted: Family<RouteLabels, Counter>,
    needs_attention: Gauge,
    last_hour: LastHour<{ RequestOutcome::ALL.len() }>,
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
        let claimed = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "spool_claimed",
            "Pending deliveries each instance sharing the spool has taken under a live lease",
            claimed.clone(),
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
            "1 when something needs the operator's attention (dead deliveries, a destination failing, delivery behind), as the status page's top line says; else 0",
            needs_attention.clone(),
        );
        Metrics {
            last_hour: LastHour::default(),
            needs_attention,
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
            claimed,
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

    /// Counts one delivery attempt to `destination` and its duration.
    pub fn attempt(&self, destination: &DestinationKey, result: AttemptResult, seconds: f64) {
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

    /// The text exposition, with the spool's gauges set from `stats`, and
    /// `xhubd_needs_attention` from the status page's verdict (`all_well`). Every
    /// destination in `configured` has its per-destination gauges, 0 when the spool holds
    /// nothing for it, so that an alert can tell zero from absent.
    pub fn render(
        &self,
        stats: &SpoolStats,
        configured: &[DestinationKey],
        all_well: bool,
    ) -> String {
        self.needs_attention.set(i64::from(!all_well));
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
        for key in configured {
            let labels = DestinationLabels {
                route: key.route().to_owned(),
                destination: key.destination().to_owned(),
            };
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
