//! Health, as opposed to readiness: whether something needs the operator's attention.
//! xhubd can be ready (it takes and stores events) while events die or a backend is
//! down; the status page's top line and `xhubd_needs_attention` say so, with the reasons.

use crate::delivery::fleet::DestinationView;
use crate::spool::views::SpoolStats;
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
                "{} dead {noun}: replay once the backend is fixed",
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
        if stats.oldest_pending_age_seconds > BEHIND_AFTER_SECONDS {
            reasons.push(format!(
                "delivery behind: the oldest pending event waits for {:.0} min",
                stats.oldest_pending_age_seconds / 60.0
            ));
        }
        Verdict { reasons }
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
}
