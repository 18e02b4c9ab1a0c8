//! Large bodies handed to delivery in memory, within a budget of bytes. A new event's
//! body up to [`INLINE_BODY_MAX`] always goes with its hand-over; a larger one (up to
//! [`LARGE_MAX`]) goes too while the large bodies handed over and still held anywhere
//! in delivery add up to at most [`BUDGET`], so its first attempt needs no read of the
//! spool. Beyond the budget, delivery reads the body when its attempt starts, as it does
//! for every body it finds by scanning the spool.
//!
//! A handed-over body gives its bytes back to the budget when its last reference is
//! dropped, whoever drops it: once its attempt has sent it, when its destination is down
//! (the delivery stays pending in the spool), or when it leaves the hand-over unsent.
//! While it waits in a queue for its turn it holds its share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::spool::INLINE_BODY_MAX;

/// Bytes of large bodies handed over and not yet dropped, at most: 8 MiB (128 bodies of
/// 64 KiB). Counted per delivery: an event with several destinations counts its body
/// once for each. A body is dropped once its attempt has sent it, or when its
/// destination is down (it stays in the spool).
pub const BUDGET: usize = 8 << 20;

/// The largest body handed over: 128 KiB. With 64 KiB bodies, handing them over saved
/// 8-18% of xhubd's CPU per event, for 9 MiB more at peak; with 300 KiB ones it saved
/// 4-11% but took the peak from 64 to 72 MiB (`bench/RESULTS.md`).
pub const LARGE_MAX: usize = 128 << 10;

/// The budget, shared by the writer and the bodies it handed over.
#[derive(Debug, Default, Clone)]
pub struct Budget(Arc<AtomicUsize>);

impl Budget {
    /// `body` to hand over with its delivery, or `None` when delivery is to read it
    /// from the spool (too large, or the budget is spent).
    pub fn hand_over(&self, body: Bytes) -> Option<Bytes> {
        let len = body.len();
        if len <= INLINE_BODY_MAX {
            return Some(body);
        }
        if len > LARGE_MAX {
            return None;
        }
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(len).filter(|total| *total <= BUDGET)
            })
            .ok()?;
        Some(Bytes::from_owner(Held {
            body,
            budget: self.clone(),
        }))
    }

    /// Bytes of large bodies handed over and still held.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// A large body handed over: gives its bytes back when dropped.
struct Held {
    body: Bytes,
    budget: Budget,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.0.fetch_sub(self.body.len(), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_always_go_large_ones_within_the_budget_until_dropped() {
        let budget = Budget::default();
        let small = Bytes::from(vec![1u8; INLINE_BODY_MAX]);
        assert!(budget.hand_over(small).is_some());
        assert_eq!(budget.used(), 0, "small bodies are not counted");
        assert!(budget
            .hand_over(Bytes::from(vec![0u8; LARGE_MAX + 1]))
            .is_none());
        for len in [INLINE_BODY_MAX + 1, LARGE_MAX] {
            let held = budget.hand_over(Bytes::from(vec![3u8; len]));
            assert_eq!(held.as_ref().map(Bytes::len), Some(len));
            assert_eq!(budget.used(), len, "counted");
            drop(held);
            assert_eq!(budget.used(), 0, "given back");
        }
        let large = Bytes::from(vec![2u8; 64 * 1024]);
        let mut held: Vec<Bytes> = std::iter::from_fn(|| budget.hand_over(large.clone())).collect();
        assert_eq!(held.len(), BUDGET / large.len());
        assert_eq!(budget.used(), BUDGET);
        assert_eq!(held[0], large, "the same bytes");
        let copy = held[0].clone();
        held.remove(0);
        assert!(
            budget.hand_over(large.clone()).is_none(),
            "a clone still holds it"
        );
        drop(copy);
        let again = budget.hand_over(large.clone());
        assert!(again.is_some(), "room again once dropped");
        held.clear();
        assert_eq!(budget.used(), large.len());
        drop(again);
        assert_eq!(budget.used(), 0);
    }
}
