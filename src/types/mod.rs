//! Plain types that several stages of the data path share: ingest builds them, the
//! store keeps them, delivery and the operator's views read them. This module uses
//! nothing of the crate, so any module may use it without reaching back up the path.
//!
//! - [`dedup`]: dedup keys.
//! - [`state`]: delivery and event states.
//! - [`event`]: a new event, a stored one's fate, a due delivery, an attempt's outcome.
//! - [`rate`]: a destination's rate limit.
//! - [`availability`]: whether a destination is up or down, and how an attempt moves it.

pub mod availability;
pub mod dedup;
pub mod event;
pub mod rate;
pub mod state;

pub use availability::{Availability, Expiry, Signal};
pub use dedup::{DedupKey, DedupKeys};
pub use event::{
    AttemptReport, ConversationHold, DestinationKey, DueDelivery, NewDelivery, NewEvent, Outcome,
    Stored,
};
pub use rate::RateLimit;
pub use state::{DeliveryState, EventState};
