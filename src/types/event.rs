//! What ingest hands the store (a new event), and what the store hands delivery (a due
//! delivery) and takes back (an attempt's outcome).

use super::dedup::DedupKeys;
use super::state::DeliveryState;

/// A new event to store, as ingest built it.
#[derive(Debug)]
pub struct NewEvent {
    /// The route it came in on.
    pub route: String,
    /// What goes where: one delivery per destination and part (none: stored, delivered
    /// nowhere). Decided now, so a later reload or secret rotation never changes it.
    pub deliveries: Vec<NewDelivery>,
    /// The raw body, byte for byte as received.
    pub body: bytes::Bytes,
    /// Meta's `X-Hub-Signature-256` value, forwarded unchanged.
    pub signature: String,
    /// Meta's SHA-1 `X-Hub-Signature` value, when it sent one: never checked, only
    /// forwarded unchanged for backends that still check it.
    pub signature_sha1: Option<String>,
    /// What identifies it for dedup.
    pub keys: DedupKeys,
    /// The notification's `object` (for operators), or empty.
    pub object: String,
    /// The first item's field (`changes[].field`, `messaging`, a Threads topic), or empty.
    pub field: String,
    /// The request headers as a JSON object (credentials removed), for operators.
    pub headers: String,
}

/// One delivery of a new event: where it goes, and what it sends when that is not
/// Meta's body and signatures as they came.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The destination.
    pub destination: DestinationKey,
    /// `Some((i, n))` for part `i` of `n` of a destination that splits (`X-Xhubd-Part`).
    pub part: Option<(u32, u32)>,
    /// The bytes to send, when not the event's own (narrowed, or one item).
    pub body: Option<bytes::Bytes>,
    /// The `X-Hub-Signature-256` to send, when not Meta's (re-signed).
    pub signature: Option<String>,
    /// The `X-Hub-Signature` to send with a re-signed body (when Meta sent one).
    pub signature_sha1: Option<String>,
    /// The conversations it belongs to, for a destination with `order =
    /// "conversation"` (`whatsapp:<id>`, `messenger:<id>`, `entry:<id>`, ...; see
    /// `webhook::conversation`), each once; empty otherwise. It is not sent before the
    /// earlier pending deliveries to its destination that share one of them.
    pub conversations: Vec<String>,
}

/// What the store did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Committed as a new event with this id.
    New(String),
    /// A retry of the event with this id; nothing stored.
    Duplicate(String),
}

/// A delivery that is due: what one attempt needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The delivery's row number (its key in the store).
    pub seq: i64,
    /// `X-Xhubd-Delivery-Id`: the same on every attempt at this delivery.
    pub id: String,
    /// The event's row number.
    pub event_seq: i64,
    /// `X-Xhubd-Event-Id`: the event's id, the same for every destination and part.
    pub event_id: String,
    /// The destination it goes to.
    pub destination: DestinationKey,
    /// `Some((i, n))`: part `i` of `n` (`X-Xhubd-Part`), for a destination that splits.
    pub part: Option<(u32, u32)>,
    /// When its retry period began (unix ms): acceptance, or the last replay.
    pub retry_from: i64,
    /// Attempts made so far.
    pub attempts: i64,
    /// The `X-Hub-Signature-256` value to send.
    pub signature: String,
    /// The SHA-1 `X-Hub-Signature` value to send, when there is one.
    pub signature_sha1: Option<String>,
    /// The body, when small enough to come with the list or with the writer's hand-over
    /// (else read when sent); taken out of the delivery when its attempt sends it.
    pub body: Option<bytes::Bytes>,
}

/// What a pending delivery to a destination that keeps order still holds (see
/// `spool::conversations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationHold {
    /// How many conversation keys it holds.
    pub keys: usize,
    /// Its first failed attempt since it became pending (unix ms), if any: its hold
    /// ends `order_hold` after it.
    pub failed_at: Option<i64>,
}

/// What one attempt got, for the attempt history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    /// The HTTP status the destination answered, if it answered.
    pub status: Option<u16>,
    /// The error (no answer), or the first bytes of the answer's body.
    pub detail: String,
}

/// The outcome of a delivery attempt, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination answered 2xx.
    Delivered,
    /// Try again at `next_attempt_at` (unix ms).
    Retry {
        /// When.
        next_attempt_at: i64,
        /// What went wrong this time.
        error: String,
        /// It stops holding its conversations (its destination keeps order, and its
        /// `order_hold` ran out): later deliveries of them go on without it.
        release_conversations: bool,
    },
    /// Given up.
    Dead {
        /// Why.
        error: String,
    },
}

impl Outcome {
    /// The state the delivery is in after it.
    pub fn state(&self) -> DeliveryState {
        match self {
            Outcome::Delivered => DeliveryState::Delivered,
            Outcome::Retry { .. } => DeliveryState::Pending,
            Outcome::Dead { .. } => DeliveryState::Dead,
        }
    }
}

/// Which backend a delivery goes to: a destination of a route. Destination names are
/// unique within their route only, so the store keeps both, as `route/destination`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestinationKey(String);

impl DestinationKey {
    /// The key of destination `destination` of route `route` (names hold no `/`).
    pub fn new(route: &str, destination: &str) -> DestinationKey {
        DestinationKey(format!("{route}/{destination}"))
    }

    /// A key as stored.
    pub fn from_stored(text: String) -> DestinationKey {
        DestinationKey(text)
    }

    /// The stored form, `route/destination`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The route's name.
    pub fn route(&self) -> &str {
        self.0.split_once('/').map_or("", |(route, _)| route)
    }

    /// The destination's name.
    pub fn destination(&self) -> &str {
        self.0.split_once('/').map_or(self.0.as_str(), |(_, d)| d)
    }
}

impl std::fmt::Display for DestinationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}
