//! Conversation order in the spool (README "Order within a conversation"): what both
//! engines keep and ask so that the deliveries to a destination with `order =
//! "conversation"` that share a conversation go one at a time, in the order they were
//! accepted (their row numbers).
//!
//! Each such delivery has one row per conversation key in `conversations` (written with
//! the delivery, deleted with it): `(delivery_seq, key, destination, holding,
//! failed_at)`. `holding` is true while the delivery is pending and has not been
//! released; the record of its outcome clears it when it is delivered or dead, or when
//! delivery says its `order_hold` ran out; a replay sets it again (a trigger).
//! `failed_at` is its first failed attempt since it became pending (acceptance or
//! replay), unix ms, set by the record of that attempt.
//!
//! A pending delivery is *held* while an earlier one (lower `delivery_seq`) to the same
//! destination shares a key and still holds it: `holding`, and not failed, or failed
//! first less than `order_hold` ago. The partial index `conversations_holding
//! (destination, key, delivery_seq) WHERE holding` answers that with one probe per key,
//! however long the backlog: ended deliveries leave it.

/// The condition a scan of due deliveries adds for a destination that keeps order:
/// the delivery whose row number is the SQL expression `seq` is not held. `cutoff` is
/// the SQL parameter holding now less the destination's `order_hold` (unix ms): an
/// earlier delivery that failed first at or before it holds no more. Reads the same on
/// both engines (`holding` is a boolean in PostgreSQL, 0 or 1 in SQLite).
///
/// Both subqueries end in `LIMIT 1 OFFSET 0`, which keeps PostgreSQL from turning them
/// into joins: as joins it would hash every pair of rows of a conversation (quadratic
/// in its backlog); as they stand each is index probes per delivery the scan looks at.
pub fn not_held(seq: &str, cutoff: &str) -> String {
    format!(
        "NOT EXISTS (
             SELECT 1 FROM conversations mine
             WHERE mine.delivery_seq = {seq}
               AND EXISTS (
                   SELECT 1 FROM conversations earlier
                   WHERE earlier.destination = mine.destination AND earlier.key = mine.key
                     AND earlier.holding AND earlier.delivery_seq < mine.delivery_seq
                     AND (earlier.failed_at IS NULL OR earlier.failed_at > {cutoff})
                   ORDER BY earlier.delivery_seq LIMIT 1 OFFSET 0)
             LIMIT 1 OFFSET 0)"
    )
}

/// The condition a PostgreSQL claim adds to [`not_held`]: no other delivery of the
/// same destination that shares a conversation with the delivery `seq` is claimed under
/// a live lease (`now`: the SQL parameter holding now, unix ms; `destination`: the one
/// holding the destination). Row numbers are drawn when an instance's transaction
/// starts, and instances commit in any order, so a later message may be in flight
/// before an earlier one is even visible; this keeps the two from being sent at once.
/// Driven from the destination's few live claims (`deliveries_claimed`), so it costs
/// a few index probes whatever the backlog. (On SQLite one writer commits in row
/// order: [`not_held`] is enough.)
pub fn not_beside_one_in_flight(seq: &str, destination: &str, now: &str) -> String {
    format!(
        "NOT EXISTS (
             SELECT 1 FROM deliveries flying
             JOIN conversations theirs ON theirs.delivery_seq = flying.seq
             JOIN conversations mine ON mine.delivery_seq = {seq} AND mine.key = theirs.key
             WHERE flying.state = 0 AND flying.destination = {destination}
               AND flying.claimed_by IS NOT NULL AND flying.lease_until > {now}
               AND flying.seq <> {seq}
             LIMIT 1 OFFSET 0)"
    )
}

/// What a delivery still holds, for delivery to tell whether its `order_hold` ran out:
/// how many keys, and since when it fails. One parameter: the delivery's row number.
pub const HOLD: &str =
    "SELECT count(*), max(failed_at) FROM conversations WHERE delivery_seq = $1 AND holding";

/// When destination `$1` comes back up after an outage: its deliveries' first failures
/// are forgotten, so that `order_hold` counts from the next one (an outage, however
/// long, releases no conversation).
pub const RESTART_HOLDS: &str = "UPDATE conversations SET failed_at = NULL
     WHERE destination = $1 AND holding AND failed_at IS NOT NULL";

/// When the next pending delivery to destination `$1` falls due strictly after `$2`
/// (unix ms): for a destination that keeps order, those due already may be held, and
/// waiting for them would be a busy loop.
pub const NEXT_RETRY: &str = "SELECT min(next_attempt_at) FROM deliveries
     WHERE state = 0 AND destination = $1 AND next_attempt_at > $2";
