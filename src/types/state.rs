//! The states of deliveries and events, with their stored codes and their names.

/// The state of one delivery (an event to one destination), as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting for (another) attempt.
    Pending,
    /// The destination answered 2xx.
    Delivered,
    /// Given up: kept, listed and replayable.
    Dead,
}

impl DeliveryState {
    /// Every state, in the order operators see them.
    pub const ALL: [DeliveryState; 3] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Dead,
    ];

    /// The stored code (`deliveries.state`).
    pub const fn code(self) -> i64 {
        match self {
            DeliveryState::Pending => 0,
            DeliveryState::Delivered => 1,
            DeliveryState::Dead => 2,
        }
    }

    /// The state of a stored code; `None` for a code no release writes.
    pub fn from_code(code: i64) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The name operators see (`pending`, `delivered`, `dead`).
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    /// The state of a name operators type.
    pub fn parse(name: &str) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl serde::Serialize for DeliveryState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The state of an event, from its deliveries: pending while any is pending, else dead
/// while any is dead, else delivered.
pub type EventState = DeliveryState;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_codes_and_names() {
        for state in DeliveryState::ALL {
            assert_eq!(DeliveryState::from_code(state.code()), Some(state));
            assert_eq!(DeliveryState::parse(state.as_str()), Some(state));
            assert_eq!(state.to_string(), state.as_str());
        }
        // Codes as layouts 1 to 4 stored them in events.state.
        assert_eq!(DeliveryState::Pending.code(), 0);
        assert_eq!(DeliveryState::Delivered.code(), 1);
        assert_eq!(DeliveryState::Dead.code(), 2);
        assert_eq!(DeliveryState::from_code(7), None);
        assert_eq!(DeliveryState::parse("gone"), None);
    }
}
