//! The read side that feeds delivery on PostgreSQL: due deliveries are *claimed* for
//! this instance, with `FOR UPDATE SKIP LOCKED` and a lease, so that instances never
//! take the same delivery at once and a delivery taken by an instance that died is
//! taken by another once its lease has run out.
//!
//! A destination's concurrency holds for all instances together: claims to one
//! destination are serialised by an advisory lock, and an instance takes at most the
//! destination's concurrency less what other instances hold under a live lease.

use std::collections::HashSet;

use bytes::Bytes;
use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use super::connect::error_text;
use super::schema::LOCK_CLASS;
use crate::spool::conversations;
use crate::spool::{now_ms, ClaimTerms, SpoolError, INLINE_BODY_MAX};
use crate::types::{DestinationKey, DueDelivery};

/// What this instance has of a destination's deliveries.
pub(super) struct Mine<'a> {
    /// Taken and not yet recorded.
    pub held: &'a HashSet<i64>,
    /// Of those, being attempted now.
    pub sending: usize,
}

/// Takes up to `limit` due deliveries to `destination` for `instance`, oldest first,
/// within the room the destination's concurrency leaves: its concurrency less the
/// live claims of other instances and the attempts this instance is `sending`. A
/// delivery this instance claimed and no longer holds (its record failed, or the
/// instance restarted) is taken again at once; one another instance claimed, once its
/// lease has run out.
///
/// Why this holds the concurrency for the cluster: an instance's claims in the
/// database are never fewer than its attempts in flight (an attempt's claim goes only
/// with its record), and claims to one destination are made one at a time (an
/// advisory lock), each counting every other instance's claims; so the attempts of all
/// instances together never exceed it. An instance whose records lag behind holds more
/// claims than attempts, which only leaves the others less room for a while.
pub(super) async fn claim(
    pool: &Pool,
    instance: &str,
    destination: &DestinationKey,
    limit: usize,
    terms: ClaimTerms,
    mine: Mine<'_>,
) -> Result<Vec<DueDelivery>, SpoolError> {
    let held: Vec<i64> = mine.held.iter().copied().collect();
    let sending = mine.sending as i64;
    let client = connection(pool).await?;
    let now = now_ms();
    let lease_ms = terms.lease.as_millis().min(i64::MAX as u128 / 2) as i64;
    let lease_until = now + lease_ms;
    // What this instance holds is still its own: a lease half run out is renewed, so
    // an attempt whose record is slow to commit is not taken by another instance.
    let renew_before = now + lease_ms / 2;
    let limit = limit.min(terms.concurrency) as i64;
    let concurrency = terms.concurrency as i64;
    let lock = client.prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))");
    // A destination that keeps order takes no delivery its conversation holds ($11: now
    // less its order_hold); the lock above makes that hold across instances.
    let hold_cutoff = terms.hold_cutoff(now);
    let ordered = match hold_cutoff {
        Some(_) => format!("AND {}", conversations::not_held("deliveries.seq", "$11")),
        None => String::new(),
    };
    let claim_sql = format!(
        "WITH live AS (
             SELECT count(*) AS n FROM deliveries
             WHERE state = 0 AND destination = $1 AND claimed_by IS NOT NULL
               AND lease_until > $3 AND claimed_by <> $2),
         renewed AS (
             UPDATE deliveries SET lease_until = $6
             WHERE claimed_by = $2 AND state = 0 AND seq = ANY($8) AND lease_until < $10),
         picked AS (
             SELECT seq FROM deliveries
             WHERE state = 0 AND destination = $1 AND next_attempt_at <= $3
               AND (claimed_by IS NULL OR lease_until <= $3
                    OR (claimed_by = $2 AND seq <> ALL($8)))
               {ordered}
             ORDER BY next_attempt_at, seq
             LIMIT GREATEST(0, LEAST($4, $5::bigint - $9::bigint - (SELECT n FROM live)))
             FOR UPDATE SKIP LOCKED),
         claimed AS (
             UPDATE deliveries d SET claimed_by = $2, lease_until = $6
             WHERE d.seq = ANY(ARRAY(SELECT seq FROM picked))
             RETURNING d.*)
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
    let (lock, claim) = futures_util::future::try_join(lock, claim)
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
    ];
    if let Some(cutoff) = &hold_cutoff {
        params.push(cutoff);
    }
    // One transaction sent at once and run in this order, so the destination's lock is
    // held only while the server runs it, not for a round trip to here. Should a
    // statement fail, the rest fail too and COMMIT ends the transaction as a rollback.
    // A claim the database forgets in a crash only lets another instance send that
    // delivery again (at least once): not worth a wait for the disk each time.
    let (_, _, rows, _) = futures_util::try_join!(
        client.batch_execute("BEGIN; SET LOCAL synchronous_commit = off"),
        client.execute(&lock, &lock_params),
        client.query(&claim, &params[..]),
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
    rows.iter()
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
        .map_err(read_error)
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
