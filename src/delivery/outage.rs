//! A destination that is down (see [`crate::types::Availability`]): what an attempt
//! says about it (answered, failed, was the probe, when the next probe starts, what a
//! failed probe makes dead), the log lines when it goes down and comes back up, and
//! the backlog released at once when it does.

use tracing::{debug, info, warn};

use super::backoff::RetryPolicy;
use super::status::UpstreamStatus;
use crate::spool::Store;
use crate::time::rfc3339;
use crate::types::{Availability, DestinationKey, Expiry, Signal};

/// What an attempt knows of its destination when it starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Standing {
    /// It is the destination's probe (taken while the destination was down).
    pub probe: bool,
    /// The destination's state when it was taken.
    pub availability: Availability,
}

/// Takes in the destination's stored state (from a claim, a read of the spool, or a
/// record whose copy [`take_in`] kept): the status page's copy, and a log line when it
/// went down or came back up (both, when it came back up and went down again since).
pub(super) fn learn(
    destination: &DestinationKey,
    status: &UpstreamStatus,
    mine: &mut Availability,
    stored: Availability,
) {
    match (mine.down_since, stored.down_since) {
        (Some(before), Some(since)) if before != since => {
            info!(
                destination = %destination,
                down_since = %rfc3339(before),
                "destination up again: its pending deliveries are due now"
            );
            warn!(
                destination = %destination,
                down_since = %rfc3339(since),
                failures = stored.failures,
                "destination down after retryable failures in a row: new deliveries are stored and not tried, one probe at a time until it answers"
            );
        }
        (None, Some(since)) => warn!(
            destination = %destination,
            down_since = %rfc3339(since),
            failures = stored.failures,
            "destination down after retryable failures in a row: new deliveries are stored and not tried, one probe at a time until it answers"
        ),
        (Some(since), None) => info!(
            destination = %destination,
            down_since = %rfc3339(since),
            "destination up again: its pending deliveries are due now"
        ),
        _ => {}
    }
    *mine = stored;
    status.availability(&stored);
}

/// Takes in the destination's state as one attempt's record left it, when it is the
/// same outage as `mine` (or both are up). Outcomes come back in no set order, so a copy
/// that would take the destination down or up, or that is of another outage, may be
/// older than `mine`: it is returned instead, for the caller to [`settle`] against the
/// spool once the outcomes in hand are taken in.
pub(super) fn take_in(
    destination: &DestinationKey,
    status: &UpstreamStatus,
    mine: &mut Availability,
    copy: Availability,
) -> Option<Availability> {
    if copy.down_since == mine.down_since {
        learn(destination, status, mine, copy);
        None
    } else {
        Some(copy)
    }
}

/// Takes in `stored`, the destination's state read from the spool after the records
/// whose outcomes were taken in (so never older than they are), when `turned`, one of
/// their copies, would have taken it down or up. An outage that `turned` saw begin and
/// that is over in `stored` is logged too, so that every outage has both of its lines.
pub(super) fn settle(
    destination: &DestinationKey,
    status: &UpstreamStatus,
    mine: &mut Availability,
    turned: Availability,
    stored: Availability,
) {
    if mine.down_since.is_none() && turned.down_since.is_some() && !stored.is_down() {
        learn(destination, status, mine, turned);
    }
    learn(destination, status, mine, stored);
}

/// What an attempt that ended at `now` says about its destination: whether it
/// answered, whether it was the probe; should it take the destination down or be a
/// failed probe, when the next probe starts (the retry backoff after as many failed
/// probes); a failed probe also makes dead what ran out of `retry_for` meanwhile.
pub(super) fn signal(
    policy: &RetryPolicy,
    standing: &Standing,
    delivery: i64,
    answered: bool,
    now: i64,
) -> Signal {
    let failed_probes = if standing.probe {
        standing.availability.failed_probes + 1
    } else {
        0
    };
    let delay = policy.delay(failed_probes + 1);
    let next_probe_at = now.saturating_add(delay.as_millis().min(i64::MAX as u128) as i64);
    let expire = match standing.availability.down_since {
        Some(since) if standing.probe && !answered => Some(Expiry {
            retry_from_until: now
                .saturating_sub(policy.retry_for.as_millis().min(i64::MAX as u128) as i64),
            error: format!("destination down since {}", rfc3339(since)),
        }),
        _ => None,
    };
    Signal {
        delivery,
        answered,
        probe: standing.probe,
        next_probe_at,
        expire,
    }
}

/// Makes the whole backlog due now, a chunk at a time, waking the scheduler after each.
pub(super) async fn retry_backlog_now(store: Store, destination: DestinationKey) {
    match store.retry_all_now(&destination).await {
        Ok(0) => debug!(destination = %destination, "no pending delivery was waiting for a retry"),
        Ok(total) => info!(
            destination = %destination,
            deliveries = total,
            "pending deliveries waiting for a retry are due now"
        ),
        Err(e) => {
            warn!(error = %e, "cannot bring the pending deliveries forward; they go as their retries fall due")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(since: i64, failures: i64) -> Availability {
        Availability {
            failures,
            last_failed: Some(failures),
            down_since: Some(since),
            next_probe_at: Some(since + 500),
            failed_probes: 0,
        }
    }

    fn failing(failures: i64) -> Availability {
        Availability {
            failures,
            last_failed: Some(failures),
            ..Availability::default()
        }
    }

    fn key() -> DestinationKey {
        DestinationKey::new("default", "default")
    }

    #[test]
    fn a_copy_older_than_the_turn_down_does_not_bring_the_destination_back_up() {
        let status = UpstreamStatus::default();
        let mut mine = failing(8);
        // The tenth failure's copy comes back before the ninth's.
        let turned = take_in(&key(), &status, &mut mine, down(1_000, 10));
        assert_eq!(turned, Some(down(1_000, 10)));
        assert_eq!(take_in(&key(), &status, &mut mine, failing(9)), None);
        assert!(!mine.is_down(), "not turned by a copy alone");
        settle(&key(), &status, &mut mine, down(1_000, 10), down(1_000, 10));
        assert_eq!(mine.down_since, Some(1_000));
        assert_eq!(status.snapshot().down_since, Some(1_000));
        // And the ninth's copy, later still, is checked rather than taken.
        assert_eq!(
            take_in(&key(), &status, &mut mine, failing(9)),
            Some(failing(9))
        );
        settle(&key(), &status, &mut mine, failing(9), down(1_000, 10));
        assert_eq!(mine.down_since, Some(1_000));
    }

    #[test]
    fn a_copy_of_an_earlier_outage_is_checked_against_the_spool() {
        let status = UpstreamStatus::default();
        let mut mine = down(2_000, 10);
        let turned = take_in(&key(), &status, &mut mine, down(1_000, 12));
        assert_eq!(turned, Some(down(1_000, 12)));
        assert_eq!(mine.down_since, Some(2_000));
        settle(&key(), &status, &mut mine, down(1_000, 12), down(2_000, 11));
        assert_eq!(mine.down_since, Some(2_000));
        assert_eq!(status.snapshot().down_since, Some(2_000));
    }

    #[test]
    fn copies_of_the_same_outage_and_a_real_turn_up_are_taken_in() {
        let status = UpstreamStatus::default();
        let mut mine = down(1_000, 10);
        let probed = Availability {
            failed_probes: 1,
            ..down(1_000, 10)
        };
        assert_eq!(take_in(&key(), &status, &mut mine, probed), None);
        assert_eq!(mine.failed_probes, 1);
        // The probe answered: the spool says up, and so does the loop.
        let turned = take_in(&key(), &status, &mut mine, Availability::default());
        assert_eq!(turned, Some(Availability::default()));
        settle(
            &key(),
            &status,
            &mut mine,
            Availability::default(),
            Availability::default(),
        );
        assert!(!mine.is_down());
        assert_eq!(status.snapshot().down_since, None);
    }

    #[test]
    fn an_outage_over_by_the_time_the_spool_is_read_leaves_the_destination_up() {
        let status = UpstreamStatus::default();
        let mut mine = failing(9);
        let turned = take_in(&key(), &status, &mut mine, down(1_000, 10));
        settle(
            &key(),
            &status,
            &mut mine,
            turned.unwrap_or_default(),
            Availability::default(),
        );
        assert!(!mine.is_down());
        assert_eq!(mine, Availability::default());
    }
}
