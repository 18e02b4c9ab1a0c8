//! Order within a conversation, as delivery sees it: the spool decides what may be
//! taken (`spool::conversations`); here, whether a delivery that keeps failing has held
//! its conversation for `order_hold` and its next record releases it (with the log
//! line and the metric that say so).

use tracing::{debug, warn};

use super::outage::Standing;
use super::Delivery;
use crate::spool::now_ms;
use crate::types::DueDelivery;

/// Where conversations keep order: whether `event`, which failed before, still
/// holds its conversations though its `order_hold` ran out (then its record
/// releases them: they have not waited for it since then anyway). Says so, with a
/// log line and a metric, once per delivery: the record of this attempt ends the
/// hold whatever its outcome. Never while the destination is down: an outage holds
/// every conversation for as long as it lasts (order_hold counts again from the
/// first failure once it is up: the spool forgets earlier ones when it comes up).
pub(super) async fn hold_ran_out(
    delivery: &Delivery,
    event: &DueDelivery,
    standing: &Standing,
) -> bool {
    let Some(order_hold) = delivery.terms.order else {
        return false;
    };
    if event.attempts == 0 || standing.availability.is_down() {
        return false;
    }
    let hold = match delivery.store.conversation_hold(event.seq).await {
        Ok(hold) => hold,
        Err(e) => {
            debug!(delivery_id = %event.id, error = %e, "cannot read what the delivery holds of its conversations; looked at again at its next attempt");
            return false;
        }
    };
    let Some(failed_at) = hold.failed_at.filter(|_| hold.keys > 0) else {
        return false;
    };
    let hold_ms = order_hold.as_millis().min(i64::MAX as u128) as i64;
    let now = now_ms();
    if failed_at.saturating_add(hold_ms) > now {
        return false;
    }
    // The keys are users' phone numbers and ids: their count only.
    warn!(
        event_id = %event.event_id,
        delivery_id = %event.id,
        destination = %event.destination,
        conversations = hold.keys,
        failing_for_ms = now - failed_at,
        attempts = event.attempts,
        "order_hold ran out: the delivery stops holding its conversation; later deliveries of it go ahead, and it is retried out of order"
    );
    delivery
        .metrics
        .conversation_hold_released(&delivery.destination);
    true
}
