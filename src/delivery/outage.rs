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

/// Takes in the destination's stored state (from a record or a claim): the status
/// page's copy, and a log line when it went down or came back up.
pub(super) fn learn(
    destination: &DestinationKey,
    status: &UpstreamStatus,
    mine: &mut Availability,
    stored: Availability,
) {
    match (mine.down_since, stored.down_since) {
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
