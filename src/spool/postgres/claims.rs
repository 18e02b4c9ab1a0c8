//! The read side that feeds delivery on PostgreSQL: due deliveries are *claimed* for
//! this instance, with `FOR UPDATE SKIP LOCKED` and a lease, so that instances never
//! take the same delivery at once and a delivery taken by an instance that died is
//! taken by another once its lease has run out.
//!
//! A destination's concurrency holds for all instances together: claims to one
//! destination are serialised by an advisory lock, and each claim sets how many of its
//! *slots* (`delivery_slots`) the instance holds under a lease, never more than the
//! concurrency less the other instances' live slots. An instance sends in no more
//! attempts at once than it holds slots; it may hold deliveries *ahead*, claimed and
//! waiting, so that an attempt that ends is followed at once rather than after a claim
//! (a round trip to the database, and a wait for a core on a busy one).

use bytes::Bytes;
use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use super::connect::error_text;
use super::schema::LOCK_CLASS;
use crate::spool::{
    conversations, now_ms, SpoolError, Take, Taken, CLAIM_START_WINDOW, INLINE_BODY_MAX,
};
use crate::types::{Availability, DestinationKey, DueDelivery};

/// Takes up to `take.limit` due deliveries to `destination` for `instance`, oldest
/// first, and within its rate budget. What is *free* for it: what the concurrency
/// leaves of the other instances' live slots, but no more than a fair share (the
/// concurrency over the instances claiming to the destination under a live lease,
/// rounded up), so that instances that all claim share the destination. It takes what
/// is free, less what it sends (`take.sending`) and what waits (`take.waiting`), plus
/// `take.ahead`, but no more ahead than is free (what it takes ahead, another instance
/// with free slots cannot take). Its share, stored and returned (`Taken::slots`): what
/// is free, but no more than it uses (what it sends, what waits, and what it takes),
/// and never fewer than it sends. A delivery this instance claimed and no longer holds
/// (its record failed, or the instance restarted) is taken again at once; one another instance claimed, once its lease has run out. While the
/// destination is down (its stored state, whatever `take.probe` says), only its probe
/// is taken: one delivery, whether due or not (the one whose retry comes first, so
/// that probes go round the pending deliveries rather than repeat one the backend keeps
/// refusing), once the next probe is due and no instance holds any of its
/// deliveries; with `take.probe` no conversation's hold runs out.
///
/// Why this holds the concurrency for the cluster: an instance's slots in the database
/// are never fewer than its attempts in flight (the scheduler starts an attempt only
/// while it sends in fewer than its share, within [`CLAIM_START_WINDOW`] of its last
/// claim; while a claim runs, only while it sends in fewer than `take.sending`, which
/// the share that claim stores is never below; and after a claim that failed, as if it
/// had stored `take.sending`), and claims to one destination are made one at a time
/// (an advisory lock), each counting every other instance's live slots; so the attempts of all instances
/// together never exceed it. Slots, not claims, are counted: a delivery stays claimed
/// until its outcome commits, and what waits ahead is claimed too. An attempt outlives
/// neither its claim's lease nor its slot's: a claim renews both once they have run for
/// the window, and the lease's margin over the timeout is twice the window.
///
/// The rate limit holds the same way: each claim spends the destination's budget
/// (GCRA: `rate_budgets.tat`, see [`crate::types::RateLimit`]) for every delivery it
/// takes, under the same lock, and takes no more than the budget allows now; each
/// taken delivery is sent at once.
pub(super) async fn claim(
    pool: &Pool,
    instance: &str,
    destination: &DestinationKey,
    take: Take<'_>,
) -> Result<Taken, SpoolError> {
    let terms = take.terms;
    let held: Vec<i64> = take.held.iter().copied().collect();
    let sending = take.sending as i64;
    let waiting = take.waiting as i64;
    let ahead = if take.probe { 0 } else { take.ahead as i64 };
    let client = connection(pool).await?;
    let now = now_ms();
    let now_us = now.saturating_mul(1000);
    let lease_ms = terms.lease.as_millis().min(i64::MAX as u128 / 2) as i64;
    let lease_until = now + lease_ms;
    // What this instance holds is still its own: a lease (of a delivery, or of its
    // slots) that has run for the start window is renewed, so that an attempt started
    // within the window, or whose record is slow to commit, is not taken over.
    let window_ms = CLAIM_START_WINDOW.as_millis() as i64;
    let renew_before = lease_until.saturating_sub(window_ms);
    let limit = take.limit.min(terms.concurrency + take.ahead) as i64;
    let concurrency = terms.concurrency as i64;
    let (interval_us, burst) = match terms.rate {
        Some(rate) => (rate.interval_micros(), i64::from(rate.burst.get())),
        None => (0, 0),
    };
    let lock = client.prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))");
    // A destination that keeps order takes no delivery its conversation holds ($16: now
    // less its order_hold); the lock above makes that hold across instances.
    // While it is down no hold runs out (an outage releases no conversation).
    let hold_cutoff = terms
        .hold_cutoff(now)
        .map(|c| if take.probe { i64::MIN } else { c });
    let ordered = match hold_cutoff {
        Some(_) => format!(
            "AND {} AND {}",
            conversations::not_held("deliveries.seq", "$16"),
            conversations::not_beside_one_in_flight("deliveries.seq", "$1", "$3")
        ),
        None => String::new(),
    };
    let claim_sql = format!(
        "WITH st AS (
             SELECT down_since, next_probe_at FROM destinations WHERE destination = $1),
         live AS (
             SELECT count(*) AS n FROM deliveries
             WHERE state = 0 AND destination = $1 AND claimed_by IS NOT NULL
               AND lease_until > $3 AND claimed_by <> $2),
         free AS (
             SELECT LEAST(GREATEST(0, $5::bigint - COALESCE(sum(slots), 0)),
                          ceil($5::numeric / (count(*) + 1)))::bigint AS n
             FROM delivery_slots
             WHERE destination = $1 AND holder <> $2 AND lease_until > $3),
         renewed AS (
             UPDATE deliveries SET lease_until = $6
             WHERE claimed_by = $2 AND state = 0 AND seq = ANY($8) AND lease_until < $10),
         budget AS (
             SELECT GREATEST(COALESCE((SELECT tat FROM rate_budgets WHERE destination = $1), 0),
                             $11::bigint) AS base),
         room AS (
             SELECT CASE
                      WHEN (SELECT down_since FROM st) IS NULL
                        THEN LEAST($4, (SELECT n FROM free) - $9::bigint - $14::bigint
                                       + LEAST($15::bigint, (SELECT n FROM free)))
                      WHEN COALESCE((SELECT next_probe_at FROM st), 0) <= $3
                           AND (SELECT n FROM live) = 0 AND cardinality($8::bigint[]) = 0
                        THEN 1
                      ELSE 0 END AS n,
                    CASE WHEN (SELECT down_since FROM st) IS NULL THEN $3
                         ELSE 9223372036854775807 END AS due_until,
                    CASE WHEN $12::bigint > 0
                        THEN $13::bigint - ceil(((SELECT base FROM budget) - $11::bigint)::numeric
                                                / $12::bigint)::bigint
                        ELSE $4 END AS budget),
         picked AS (
             SELECT seq FROM deliveries
             WHERE state = 0 AND destination = $1
               AND next_attempt_at <= (SELECT due_until FROM room)
               AND (claimed_by IS NULL OR lease_until <= $3
                    OR (claimed_by = $2 AND seq <> ALL($8)))
               {ordered}
             ORDER BY next_attempt_at, seq
             LIMIT GREATEST(0, LEAST((SELECT n FROM room), (SELECT budget FROM room)))
             FOR UPDATE SKIP LOCKED),
         claimed AS (
             UPDATE deliveries d SET claimed_by = $2, lease_until = $6
             WHERE d.seq = ANY(ARRAY(SELECT seq FROM picked))
             RETURNING d.*),
         expired AS (
             DELETE FROM delivery_slots
             WHERE destination = $1 AND holder <> $2 AND lease_until <= $3),
         slotted AS (
             INSERT INTO delivery_slots (destination, holder, slots, lease_until)
             VALUES ($1, $2,
                     GREATEST($9::bigint, LEAST((SELECT n FROM free),
                                                $9::bigint + $14::bigint
                                                + (SELECT count(*) FROM claimed))),
                     $6)
             ON CONFLICT (destination, holder)
             DO UPDATE SET slots = EXCLUDED.slots, lease_until = EXCLUDED.lease_until
             WHERE delivery_slots.slots <> EXCLUDED.slots
                OR delivery_slots.lease_until < $10),
         spent AS (
             INSERT INTO rate_budgets (destination, tat)
             SELECT $1, (SELECT base FROM budget) + (SELECT count(*) FROM claimed) * $12::bigint
             WHERE $12::bigint > 0
             ON CONFLICT (destination) DO UPDATE SET tat = EXCLUDED.tat)
         SELECT c.seq, c.id, e.seq, e.id, c.retry_from, c.attempts,
                COALESCE(c.signature, e.signature),
                CASE WHEN c.signature IS NULL THEN e.signature_sha1 ELSE c.signature_sha1 END,
                CASE WHEN e.size <= $7
                     THEN COALESCE((SELECT o.body FROM delivery_bodies o WHERE o.seq = c.seq),
                                   (SELECT b.body FROM bodies b WHERE b.seq = e.seq)) END,
                c.split, c.part, c.parts
         FROM claimed c JOIN events e ON e.seq = c.event_seq
         ORDER BY c.next_attempt_at, c.seq",
    );
    let claim = client.prepare_cached(&claim_sql);
    let state = client.prepare_cached(STATE);
    let (lock, claim, state) = futures_util::future::try_join3(lock, claim, state)
        .await
        .map_err(read_error)?;
    let key = destination.as_str();
    let lock_params: [&(dyn ToSql + Sync); 2] = [&LOCK_CLASS, &key];
    let inline = INLINE_BODY_MAX as i64;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &key,
        &instance,
        &now,
        &limit,
        &concurrency,
        &lease_until,
        &inline,
        &held,
        &sending,
        &renew_before,
        &now_us,
        &interval_us,
        &burst,
        &waiting,
        &ahead,
    ];
    if let Some(cutoff) = &hold_cutoff {
        params.push(cutoff);
    }
    let state_params: [&(dyn ToSql + Sync); 2] = [&key, &instance];
    // One transaction sent at once and run in this order, so the destination's lock is
    // held only while the server runs it, not for a round trip to here. Should a
    // statement fail, the rest fail too and COMMIT ends the transaction as a rollback.
    // A claim the database forgets in a crash only lets another instance send that
    // delivery again (at least once): not worth a wait for the disk each time.
    let (_, _, rows, after, _) = futures_util::try_join!(
        client.batch_execute("BEGIN; SET LOCAL synchronous_commit = off"),
        client.execute(&lock, &lock_params),
        client.query(&claim, &params[..]),
        client.query_one(&state, &state_params),
        client.batch_execute("COMMIT"),
    )
    .map_err(|e| {
        // Should a request have failed before it was sent (COMMIT with it), end the
        // transaction here: the connection goes back to the pool.
        if !client.is_closed() {
            tokio::spawn(async move {
                let _ = client.batch_execute("ROLLBACK").await;
            });
        }
        read_error(e)
    })?;
    let deliveries = rows
        .iter()
        .map(|r| {
            let split: bool = r.try_get(9)?;
            let part = if split {
                let (i, n): (i64, i64) = (r.try_get(10)?, r.try_get(11)?);
                Some((i as u32, n as u32))
            } else {
                None
            };
            Ok(DueDelivery {
                seq: r.try_get(0)?,
                id: r.try_get(1)?,
                event_seq: r.try_get(2)?,
                event_id: r.try_get(3)?,
                destination: destination.clone(),
                part,
                retry_from: r.try_get(4)?,
                attempts: r.try_get(5)?,
                signature: r.try_get(6)?,
                signature_sha1: r.try_get(7)?,
                body: r.try_get::<_, Option<Vec<u8>>>(8)?.map(Bytes::from),
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(read_error)?;
    let availability = availability_of(&after).map_err(read_error)?;
    let tat: Option<i64> = after.try_get(4).map_err(read_error)?;
    // The budget has room for one more once `tat - (burst - 1) * interval` is past.
    let rate_limited_until = match (tat, terms.rate) {
        (Some(tat), Some(_)) => {
            let room_at = tat - (burst - 1) * interval_us;
            (room_at > now_us).then(|| (room_at + 999) / 1000)
        }
        _ => None,
    };
    // The row is there: the claim wrote it. Were it not, the attempts in flight.
    let slots: Option<i64> = after.try_get(5).map_err(read_error)?;
    let slots = slots.map_or(take.sending, |n| n.max(0) as usize);
    Ok(Taken {
        deliveries,
        availability: Some(availability),
        rate_limited_until,
        slots: Some(slots),
    })
}

/// Gives back what `instance` holds of `destination` once its attempts have ended
/// (at shutdown): its slots (its row in `delivery_slots`), and the claims of `unsent`,
/// deliveries it took and did not send; so that the other instances need not wait
/// for the leases to run out.
pub(super) async fn release(
    pool: &Pool,
    instance: &str,
    destination: &DestinationKey,
    unsent: &[i64],
) -> Result<(), SpoolError> {
    let client = connection(pool).await?;
    let key = destination.as_str();
    let slot_params: [&(dyn ToSql + Sync); 2] = [&key, &instance];
    let slots = client.execute(
        "DELETE FROM delivery_slots WHERE destination = $1 AND holder = $2",
        &slot_params,
    );
    let claims = give_back(&client, instance, unsent);
    futures_util::try_join!(async { slots.await.map_err(read_error) }, claims)?;
    Ok(())
}

/// Gives back the claims `instance` holds of the deliveries in `unsent` (taken, not
/// sent, still pending): any instance may take them at once.
pub(super) async fn give_back(
    client: &deadpool_postgres::Object,
    instance: &str,
    unsent: &[i64],
) -> Result<(), SpoolError> {
    client
        .execute(
            "UPDATE deliveries SET claimed_by = NULL, lease_until = NULL
             WHERE seq = ANY($1) AND claimed_by = $2 AND state = 0",
            &[&unsent, &instance],
        )
        .await
        .map_err(read_error)?;
    Ok(())
}

/// A destination's stored state, its rate budget, and the slots instance `$2` holds,
/// in that order (one row; nulls while it has none).
const STATE: &str =
    "SELECT d.failures, d.down_since, d.next_probe_at, d.failed_probes, r.tat, s.slots
     FROM (VALUES ($1::text)) AS k(destination)
     LEFT JOIN destinations d ON d.destination = k.destination
     LEFT JOIN rate_budgets r ON r.destination = k.destination
     LEFT JOIN delivery_slots s ON s.destination = k.destination AND s.holder = $2";

/// The state in a row of [`STATE`] (up, when the destination has no row yet).
fn availability_of(row: &tokio_postgres::Row) -> Result<Availability, tokio_postgres::Error> {
    Ok(Availability {
        failures: row.try_get::<_, Option<i64>>(0)?.unwrap_or(0),
        down_since: row.try_get(1)?,
        next_probe_at: row.try_get(2)?,
        failed_probes: row.try_get::<_, Option<i64>>(3)?.unwrap_or(0),
        // Only the writer moves the state on: a claim never needs it.
        last_failed: None,
    })
}

/// A destination's stored state (up or down).
pub(super) async fn availability(
    pool: &Pool,
    instance: &str,
    destination: &DestinationKey,
) -> Result<Availability, SpoolError> {
    let client = connection(pool).await?;
    let stmt = client.prepare_cached(STATE).await.map_err(read_error)?;
    let row = client
        .query_one(&stmt, &[&destination.as_str(), &instance])
        .await
        .map_err(read_error)?;
    availability_of(&row).map_err(read_error)
}

/// When the next pending delivery to `destination` may be taken (unix ms): when the
/// first one nobody holds falls due, or when the first lease runs out (a delivery
/// this instance holds is taken again by the scan that follows its attempt). Both
/// are the first entry of an index.
pub(super) async fn next_due_at(
    pool: &Pool,
    destination: &DestinationKey,
) -> Result<Option<i64>, SpoolError> {
    let client = connection(pool).await?;
    let stmt = client
        .prepare_cached(
            "SELECT LEAST(
                 (SELECT next_attempt_at FROM deliveries
                  WHERE state = 0 AND destination = $1 AND claimed_by IS NULL
                  ORDER BY next_attempt_at, seq LIMIT 1),
                 (SELECT min(lease_until) FROM deliveries
                  WHERE state = 0 AND destination = $1 AND claimed_by IS NOT NULL))",
        )
        .await
        .map_err(read_error)?;
    let row = client
        .query_one(&stmt, &[&destination.as_str()])
        .await
        .map_err(read_error)?;
    row.try_get(0).map_err(read_error)
}

/// The body delivery `seq` sends: its own (narrowed, split), else its event's.
pub(super) async fn body(pool: &Pool, seq: i64) -> Result<Option<Bytes>, SpoolError> {
    let client = connection(pool).await?;
    let stmt = client
        .prepare_cached(
            "SELECT COALESCE((SELECT o.body FROM delivery_bodies o WHERE o.seq = d.seq),
                             (SELECT b.body FROM bodies b WHERE b.seq = d.event_seq))
             FROM deliveries d WHERE d.seq = $1",
        )
        .await
        .map_err(read_error)?;
    let row = client.query_opt(&stmt, &[&seq]).await.map_err(read_error)?;
    Ok(row
        .and_then(|r| r.get::<_, Option<Vec<u8>>>(0))
        .map(Bytes::from))
}

/// A pooled connection, waited for at most 10 s (all of them busy, or the database
/// not answering).
pub(super) async fn connection(pool: &Pool) -> Result<deadpool_postgres::Object, SpoolError> {
    tokio::time::timeout(std::time::Duration::from_secs(10), pool.get())
        .await
        .map_err(|_| SpoolError::Read("timed out waiting for a PostgreSQL connection".into()))?
        .map_err(read_error)
}

/// A read that failed (the pool could not connect, or the statement failed).
pub(super) fn read_error<E: std::error::Error + 'static>(e: E) -> SpoolError {
    SpoolError::Read(error_text(&e))
}
