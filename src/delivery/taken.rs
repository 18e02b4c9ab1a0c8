//! The scheduler's view of the deliveries it has taken: which are claimed (waiting for
//! an attempt slot or being attempted), and which fresh hand-overs a scan may already
//! have taken (so that none is sent twice at once).

use std::collections::{HashSet, VecDeque};

use crate::types::DueDelivery;

/// The scheduler's view of the events it has taken.
#[derive(Default)]
pub(super) struct Claims {
    /// Taken and not yet recorded: waiting in `ready` or being attempted.
    pub claimed: HashSet<i64>,
    /// Taken, waiting for an attempt slot.
    pub ready: VecDeque<DueDelivery>,
    /// The highest row number a scan has claimed; fresh events at or below it are
    /// left to scans.
    pub max_scanned: i64,
}

impl Claims {
    /// Takes a fresh event unless a scan may have taken it.
    pub fn offer_fresh(&mut self, event: DueDelivery) {
        if event.seq > self.max_scanned && self.claimed.insert(event.seq) {
            self.ready.push_back(event);
        }
    }

    /// Takes what a scan found, except events already claimed. Returns how many were new.
    pub fn offer_scanned(&mut self, events: Vec<DueDelivery>) -> usize {
        let mut taken = 0;
        for event in events {
            self.max_scanned = self.max_scanned.max(event.seq);
            if self.claimed.insert(event.seq) {
                self.ready.push_back(event);
                taken += 1;
            }
        }
        taken
    }

    /// Drops what waits for an attempt slot, but for the deliveries in `keep` (the
    /// destination's probes), and returns their row numbers: no longer claimed here, so
    /// that a later scan may take them again.
    pub fn drop_waiting(&mut self, keep: &HashSet<i64>) -> Vec<i64> {
        let mut dropped = Vec::new();
        let claimed = &mut self.claimed;
        self.ready.retain(|event| {
            let keep = keep.contains(&event.seq) || !claimed.remove(&event.seq);
            if !keep {
                dropped.push(event.seq);
            }
            keep
        });
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DestinationKey;

    fn event(seq: i64) -> DueDelivery {
        DueDelivery {
            seq,
            id: format!("d{seq}"),
            event_seq: seq,
            event_id: format!("e{seq}"),
            destination: DestinationKey::new("default", "default"),
            part: None,
            retry_from: 0,
            attempts: 0,
            signature: String::new(),
            signature_sha1: None,
            body: None,
        }
    }

    fn ready(claims: &Claims) -> Vec<i64> {
        claims.ready.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_fresh_event_a_scan_already_took_is_not_taken_again() {
        let mut claims = Claims::default();
        assert_eq!(claims.offer_scanned(vec![event(3), event(4)]), 2);
        // The writer's hand-over of 3 and 4 arrives after the scan took them.
        claims.offer_fresh(event(3));
        claims.offer_fresh(event(4));
        assert_eq!(ready(&claims), [3, 4]);
        // Even once they are sent and recorded (no longer claimed).
        claims.ready.clear();
        claims.claimed.clear();
        claims.offer_fresh(event(4));
        assert!(claims.ready.is_empty());
        // A later event is taken.
        claims.offer_fresh(event(5));
        assert_eq!(ready(&claims), [5]);
    }

    #[test]
    fn a_scan_skips_events_already_claimed_and_counts_the_new_ones() {
        let mut claims = Claims::default();
        claims.offer_fresh(event(7));
        claims.offer_fresh(event(8));
        assert_eq!(claims.offer_scanned(vec![event(7), event(8), event(9)]), 1);
        assert_eq!(ready(&claims), [7, 8, 9]);
        assert_eq!(claims.max_scanned, 9);
        // A retry found again while its attempt is still running is left alone.
        assert_eq!(claims.offer_scanned(vec![event(2)]), 1);
        assert_eq!(claims.offer_scanned(vec![event(2)]), 0);
        assert_eq!(ready(&claims), [7, 8, 9, 2]);
    }

    #[test]
    fn dropping_what_waits_keeps_the_probes_and_forgets_the_rest() {
        let mut claims = Claims::default();
        claims.offer_scanned(vec![event(1), event(2), event(3)]);
        // 4 is being attempted: not waiting, stays claimed.
        claims.claimed.insert(4);
        let probes = HashSet::from([2]);
        assert_eq!(claims.drop_waiting(&probes), [1, 3]);
        assert_eq!(ready(&claims), [2]);
        assert_eq!(claims.claimed, HashSet::from([2, 4]));
        // A later scan may take the dropped ones again.
        assert_eq!(claims.offer_scanned(vec![event(1)]), 1);
    }
}
