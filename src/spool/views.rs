//! What the operator's views show, whichever engine holds the spool: an event's summary
//! and detail (deliveries, attempts), the counts behind metrics and the status page,
//! what a replay did, and which events to list.

use serde::Serialize;

use crate::types::{DeliveryState, EventState};

/// One event, without its body.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    /// The public event id.
    pub id: String,
    /// When it was accepted (unix ms).
    pub received_at: i64,
    /// The route it came in on.
    pub route: String,
    /// Pending while any delivery is, else dead while any is, else delivered.
    pub state: EventState,
    /// Delivery attempts so far, to every destination.
    pub attempts: i64,
    /// Body size in bytes.
    pub size: i64,
    /// The notification's `object`.
    pub object: String,
    /// The first item's field.
    pub field: String,
    /// The last error of a delivery not (yet) delivered, if any.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending events, unix ms).
    pub next_attempt_at: Option<i64>,
    /// When it was delivered or given up (unix ms).
    pub finished_at: Option<i64>,
    /// The instance that accepted it (PostgreSQL spool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_by: Option<String>,
}

/// One event with its headers and body.
#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: EventSummary,
    /// The request headers as received (credentials removed).
    pub headers: serde_json::Value,
    /// The body, as text (lossy for invalid UTF-8, which a valid event never has).
    pub body: String,
    /// Its deliveries, each with its attempts, oldest first.
    pub deliveries: Vec<DeliveryDetail>,
}

/// One delivery of an event (to one destination, one part).
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetail {
    /// `X-Xhubd-Delivery-Id`.
    pub id: String,
    /// The route of its event.
    pub route: String,
    /// The destination's name (within the route).
    pub destination: String,
    /// Which part, of how many (`split`; 1 of 1 otherwise).
    pub part: i64,
    /// How many parts.
    pub parts: i64,
    /// Its state.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: i64,
    /// When the next attempt is due (pending, unix ms).
    pub next_attempt_at: Option<i64>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// The instance that holds it under a live lease (PostgreSQL spool, pending only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// Every attempt, oldest first.
    pub history: Vec<AttemptRecord>,
}

/// One attempt at a delivery.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    /// When it ended (unix ms).
    pub at: i64,
    /// The state it left the delivery in.
    pub result: DeliveryState,
    /// The HTTP status the destination answered, if it answered.
    pub status: Option<u16>,
    /// The error, or the first bytes of the answer.
    pub detail: String,
    /// The instance that made it (PostgreSQL spool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// Counts for the metrics and the status page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpoolStats {
    /// Deliveries waiting (one per event and destination).
    pub pending: i64,
    /// Deliveries done (kept for the dedup window).
    pub delivered: i64,
    /// Deliveries given up.
    pub dead: i64,
    /// Age of the oldest event with a pending delivery, in seconds (0 when none).
    pub oldest_pending_age_seconds: f64,
    /// Identities remembered.
    pub dedup_keys: i64,
    /// The same per destination that has deliveries not yet delivered.
    pub destinations: Vec<DestinationStats>,
    /// Pending deliveries each instance has taken under a live lease, by instance name
    /// (a shared PostgreSQL spool; empty on SQLite, where nothing is claimed).
    pub claims: Vec<InstanceClaims>,
}

/// What one instance holds of a shared spool's pending deliveries.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceClaims {
    /// Its `--instance-name`.
    pub instance: String,
    /// Pending deliveries it has taken whose lease runs.
    pub deliveries: i64,
}

/// A destination's backlog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationStats {
    /// The route's name.
    pub route: String,
    /// The destination's name.
    pub destination: String,
    /// Deliveries waiting.
    pub pending: i64,
    /// Deliveries given up.
    pub dead: i64,
    /// Age of its oldest pending delivery (since acceptance or replay), in seconds.
    pub oldest_pending_age_seconds: f64,
}

/// Which finished events a purge deletes (`xhubd events purge`); pending ones never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Every delivery delivered (`--delivered-before`).
    Delivered,
    /// None pending and at least one dead (`--dead-before`): given up, looked at, done
    /// with. Their identities stay remembered for the dedup window, as a delivered
    /// event's do.
    Dead,
}

impl Finished {
    /// The SQL condition on an event `e` (both engines speak it): none of its deliveries
    /// pending, and all delivered or one dead.
    pub fn condition(self) -> &'static str {
        match self {
            Finished::Delivered => {
                "NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.event_seq = e.seq AND o.state != 1)"
            }
            Finished::Dead => {
                "NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.event_seq = e.seq AND o.state = 0)
                 AND EXISTS (SELECT 1 FROM deliveries o WHERE o.event_seq = e.seq AND o.state = 2)"
            }
        }
    }

    /// How the command's answer names them: `delivered`, `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finished::Delivered => "delivered",
            Finished::Dead => "dead",
        }
    }
}

/// What a replay request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The event is pending again, with a fresh retry period.
    Replayed,
    /// It is already pending.
    AlreadyPending,
    /// No such event.
    NotFound,
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// With a delivery in this state (`Delivered`: delivered everywhere), or any.
    pub state: Option<EventState>,
    /// Of this route, or any.
    pub route: Option<String>,
    /// With a delivery to this destination (of `route` when given), or any.
    pub destination: Option<String>,
}

impl ListFilter {
    /// The filter with a destination given as `route/destination` (as logs and pages
    /// print it; names hold no `/`) split into its route and destination, unless it
    /// contradicts the route filter (then nothing matches, as asked).
    pub fn normalized(&self) -> ListFilter {
        match self.destination.as_deref().and_then(|d| d.split_once('/')) {
            Some((route, destination)) if self.route.as_deref().is_none_or(|r| r == route) => {
                ListFilter {
                    state: self.state,
                    route: Some(route.to_owned()),
                    destination: Some(destination.to_owned()),
                }
            }
            _ => self.clone(),
        }
    }
}

/// The condition on an event (`e`) that a list's state filter makes, either engine's
/// SQL: `deliveries` is the condition that picks the deliveries the destination filter
/// looks at, and `destination` the parameter holding that filter (NULL: none).
/// Delivered means every delivery delivered; pending and dead, any one.
pub(crate) fn state_clause(
    state: Option<EventState>,
    deliveries: &str,
    destination: &str,
) -> String {
    let any = |state: &str| {
        format!("e.seq IN (SELECT event_seq FROM deliveries WHERE {state}{deliveries})")
    };
    match state {
        None => format!("{} OR {destination} IS NULL", any("")),
        Some(EventState::Pending) => any("state = 0 AND "),
        Some(EventState::Dead) => any("state = 2 AND "),
        Some(EventState::Delivered) => format!(
            "NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.event_seq = e.seq AND o.state != 1)
             AND ({} OR {destination} IS NULL)",
            any("")
        ),
    }
}
