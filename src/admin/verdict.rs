//! Health, as opposed to readiness: whether something needs the operator's attention.
//! xhubd can be ready (it takes and stores events) while events die or a backend is
//! down; the status page's top line and `xhubd_needs_attention` say so, with the reasons.

use crate::delivery::fleet::DestinationView;
use crate::spool::views::{DestinationStats, SpoolStats};
use crate::time::rfc3339;

/// Failed attempts in a row after which a destination is reported failing.
pub const FAILING_AFTER: u64 = 3;
/// Age of the oldest pending delivery after which delivery is reported behind, in
/// seconds (the shipped alert's 15 minutes).
pub const BEHIND_AFTER_SECONDS: f64 = 15.0 * 60.0;

/// The verdict: all well, or the reasons it is not.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// What needs attention; empty when all is well.
    pub reasons: Vec<String>,
    /// The spool's destinations with pending deliveries that this instance's
    /// configuration does not have: removed (by a reload or a restart) while deliveries
    /// waited for them, or, on a shared spool, added by another instance's configuration.
    pub removed: Vec<DestinationStats>,
}

impl Verdict {
    /// The verdict on `stats` and the destinations' recent attempts.
    pub fn of(stats: &SpoolStats, destinations: &[DestinationView]) -> Verdict {
        let mut reasons = Vec::new();
        if stats.dead > 0 {
            let noun = if stats.dead == 1 {
                "delivery"
            } else {
                "deliveries"
            };
            reasons.push(format!(
                "{} dead {noun}: replay once the backend is fixed, or purge what you are done with (xhubd events purge --dead-before)",
                stats.dead
            ));
        }
        for d in destinations {
            if let Some(since) = d.status.down_since {
                reasons.push(format!(
                    "destination {} down since {}: one probe at a time until it answers",
                    d.key,
                    rfc3339(since)
                ));
            } else if d.status.consecutive_failures >= FAILING_AFTER {
                reasons.push(format!(
                    "destination {} failing: {} attempts in a row",
                    d.key, d.status.consecutive_failures
                ));
            }
        }
        let removed: Vec<DestinationStats> = stats
            .destinations
            .iter()
            .filter(|b| {
                b.pending > 0
                    && !destinations
                        .iter()
                        .any(|d| d.key.route() == b.route && d.key.destination() == b.destination)
            })
            .cloned()
            .collect();
        for b in &removed {
            let (noun, pronoun) = if b.pending == 1 {
                ("delivery waits", "it is")
            } else {
                ("deliveries wait", "they are")
            };
            reasons.push(format!(
                "{} pending {noun} for {}/{}, which this instance's configuration does not have: {pronoun} delivered once it is configured again",
                b.pending, b.route, b.destination
            ));
        }
        if stats.oldest_pending_age_seconds > BEHIND_AFTER_SECONDS {
            reasons.push(format!(
                "delivery behind: the oldest pending event waits for {:.0} min",
                stats.oldest_pending_age_seconds / 60.0
            ));
        }
        Verdict { reasons, removed }
    }

    /// Whether all is well.
    pub fn all_well(&self) -> bool {
        self.reasons.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::status::UpstreamSnapshot;
    use crate::types::DestinationKey;

    #[test]
    fn dead_deliveries_failing_destinations_and_old_backlogs_need_attention() {
        let calm = SpoolStats::default();
        assert!(Verdict::of(&calm, &[]).all_well());
        let dead = SpoolStats {
            dead: 2,
            oldest_pending_age_seconds: 3600.0,
            ..SpoolStats::default()
        };
        let failing = DestinationView {
            key: DestinationKey::new("wa", "bot"),
            url: "http://x/".into(),
            status: UpstreamSnapshot {
                consecutive_failures: 3,
                ..UpstreamSnapshot::default()
            },
        };
        let v = Verdict::of(&dead, &[failing]);
        assert_eq!(v.reasons.len(), 3, "{v:?}");
        assert!(v.reasons[1].contains("wa/bot"));
    }

    #[test]
    fn pending_deliveries_for_a_destination_no_longer_configured_need_attention() {
        let configured = DestinationView {
            key: DestinationKey::new("wa", "bot"),
            url: "http://x/".into(),
            status: UpstreamSnapshot::default(),
        };
        let backlog = |destination: &str, pending| DestinationStats {
            route: "wa".into(),
            destination: destination.into(),
            pending,
            dead: 1,
            oldest_pending_age_seconds: 1.0,
        };
        let stats = SpoolStats {
            pending: 9,
            destinations: vec![backlog("bot", 7), backlog("old", 2), backlog("gone", 0)],
            ..SpoolStats::default()
        };
        let v = Verdict::of(&stats, std::slice::from_ref(&configured));
        assert_eq!(v.reasons.len(), 1, "{v:?}");
        assert_eq!(v.removed.len(), 1, "{v:?}");
        assert!(
            v.reasons[0].starts_with(
                "2 pending deliveries wait for wa/old, which this instance's configuration does not have"
            ),
            "{v:?}"
        );
        assert!(Verdict::of(&SpoolStats::default(), &[configured]).all_well());
    }
}
