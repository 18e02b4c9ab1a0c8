//! The operator's view of a PostgreSQL spool: the same list, show, replay and counts as
//! SQLite's (`spool::sqlite::inspect`), plus which instance accepted an event, holds a
//! delivery, and made each attempt. Used by the admin listener and by `xhubd events`.

use tokio_postgres::{GenericClient, Row};

use crate::spool::now_ms;
use crate::spool::views::{
    state_clause, AttemptRecord, DeliveryDetail, DestinationStats, EventDetail, EventSummary,
    Finished, InstanceClaims, ListFilter, Replay, SpoolStats,
};
use crate::types::{DeliveryState, DestinationKey, EventState};

/// An event's summary: its columns and what its deliveries add up to.
const SUMMARY_SELECT: &str = "
    SELECT e.id, e.received_at,
           CASE WHEN count(*) FILTER (WHERE d.state = 0) > 0 THEN 0
                WHEN count(*) FILTER (WHERE d.state = 2) > 0 THEN 2 ELSE 1 END::bigint,
           COALESCE(SUM(d.attempts), 0)::bigint, e.size, e.object, e.field,
           MAX(CASE WHEN d.state != 1 THEN d.last_error END),
           MIN(CASE WHEN d.state = 0 THEN d.next_attempt_at END),
           CASE WHEN count(*) FILTER (WHERE d.state = 0) > 0 THEN NULL ELSE MAX(d.finished_at) END,
           e.seq, e.headers, e.route, e.accepted_by
    FROM events e LEFT JOIN deliveries d ON d.event_seq = e.seq";

fn summary(row: &Row) -> Result<EventSummary, tokio_postgres::Error> {
    let code: i64 = row.try_get(2)?;
    let accepted_by: String = row.try_get(13)?;
    Ok(EventSummary {
        id: row.try_get(0)?,
        received_at: row.try_get(1)?,
        route: row.try_get(12)?,
        state: EventState::from_code(code).unwrap_or(EventState::Pending),
        attempts: row.try_get(3)?,
        size: row.try_get(4)?,
        object: row.try_get(5)?,
        field: row.try_get(6)?,
        last_error: row.try_get(7)?,
        next_attempt_at: row.try_get(8)?,
        finished_at: row.try_get(9)?,
        accepted_by: Some(accepted_by).filter(|s| !s.is_empty()),
    })
}

/// The newest events that `filter` lets through, newest first (`route/destination`
/// accepted for the destination, as in SQLite).
pub async fn list(
    c: &impl GenericClient,
    filter: &ListFilter,
    limit: usize,
) -> Result<Vec<EventSummary>, tokio_postgres::Error> {
    let filter = filter.normalized();
    let destination_clause = match (&filter.route, &filter.destination) {
        (_, None) => "$3::text IS NULL",
        (Some(_), Some(_)) => "destination = $2::text || '/' || $3::text",
        (None, Some(_)) => "split_part(destination, '/', 2) = $3::text",
    };
    let state_clause = state_clause(filter.state, destination_clause, "$3::text");
    let sql = format!(
        "{SUMMARY_SELECT} WHERE ({state_clause}) AND ($2::text IS NULL OR e.route = $2::text)
         GROUP BY e.seq ORDER BY e.seq DESC LIMIT $1"
    );
    let rows = c
        .query(&sql, &[&(limit as i64), &filter.route, &filter.destination])
        .await?;
    rows.iter().map(summary).collect()
}

/// One event with headers, body and deliveries.
pub async fn show(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<EventDetail>, tokio_postgres::Error> {
    let sql = format!("{SUMMARY_SELECT} WHERE e.id = $1 GROUP BY e.seq");
    let Some(row) = c.query_opt(&sql, &[&id]).await? else {
        return Ok(None);
    };
    let seq: i64 = row.try_get(10)?;
    let headers: String = row.try_get(11)?;
    let body: Vec<u8> = c
        .query_opt("SELECT body FROM bodies WHERE seq = $1", &[&seq])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or_default();
    Ok(Some(EventDetail {
        summary: summary(&row)?,
        headers: serde_json::from_str(&headers).unwrap_or(serde_json::Value::Null),
        body: String::from_utf8_lossy(&body).into_owned(),
        deliveries: deliveries(c, seq).await?,
    }))
}

/// The deliveries of event `seq`, with their attempts and who holds them.
async fn deliveries(
    c: &impl GenericClient,
    seq: i64,
) -> Result<Vec<DeliveryDetail>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT seq, id, destination, part, parts, state, attempts, next_attempt_at,
                    last_error, claimed_by, lease_until
             FROM deliveries WHERE event_seq = $1 ORDER BY seq",
            &[&seq],
        )
        .await?;
    let now = now_ms();
    let mut list = Vec::with_capacity(rows.len());
    for r in rows {
        let state = DeliveryState::from_code(r.try_get(5)?).unwrap_or(DeliveryState::Pending);
        let key = DestinationKey::from_stored(r.try_get(2)?);
        let lease_until: Option<i64> = r.try_get(10)?;
        let claimed_by: Option<String> = r.try_get(9)?;
        let delivery_seq: i64 = r.try_get(0)?;
        let history = c
            .query(
                "SELECT at, result, status, detail, instance FROM attempts
                 WHERE delivery_seq = $1 ORDER BY attempt",
                &[&delivery_seq],
            )
            .await?
            .iter()
            .map(|a| {
                let instance: String = a.try_get(4)?;
                Ok(AttemptRecord {
                    at: a.try_get(0)?,
                    result: DeliveryState::from_code(a.try_get(1)?)
                        .unwrap_or(DeliveryState::Pending),
                    status: a
                        .try_get::<_, Option<i64>>(2)?
                        .and_then(|s| u16::try_from(s).ok()),
                    detail: a.try_get(3)?,
                    instance: Some(instance).filter(|s| !s.is_empty()),
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()?;
        list.push(DeliveryDetail {
            id: r.try_get(1)?,
            route: key.route().to_owned(),
            destination: key.destination().to_owned(),
            part: r.try_get(3)?,
            parts: r.try_get(4)?,
            state,
            attempts: r.try_get(6)?,
            next_attempt_at: (state == DeliveryState::Pending)
                .then(|| r.try_get(7))
                .transpose()?,
            last_error: r.try_get(8)?,
            claimed_by: claimed_by.filter(|_| {
                state == DeliveryState::Pending && lease_until.is_some_and(|t| t > now)
            }),
            history,
        });
    }
    Ok(list)
}

/// Makes one delivery (by its `X-Xhubd-Delivery-Id`) pending again, due now, with a
/// fresh retry period, if it is dead or delivered.
pub async fn replay_delivery(
    c: &impl GenericClient,
    id: &str,
) -> Result<Replay, tokio_postgres::Error> {
    replay_where(c, "id = $1", "SELECT 1 FROM deliveries WHERE id = $1", id).await
}

/// Makes the dead (or delivered) deliveries of an event pending again, due now, with a
/// fresh retry period.
pub async fn replay(c: &impl GenericClient, id: &str) -> Result<Replay, tokio_postgres::Error> {
    replay_where(
        c,
        "event_seq = (SELECT seq FROM events WHERE id = $1)",
        "SELECT 1 FROM events WHERE id = $1",
        id,
    )
    .await
}

/// Makes the deliveries `which` selects by `id` ($1) pending again when they are not,
/// and tells every instance; `exists` (by `id`) tells one already pending from one
/// that is not there.
async fn replay_where(
    c: &impl GenericClient,
    which: &str,
    exists: &str,
    id: &str,
) -> Result<Replay, tokio_postgres::Error> {
    let changed = c
        .execute(
            &format!(
                "UPDATE deliveries SET state = 0, next_attempt_at = $2, retry_from = $2,
                                       finished_at = NULL, claimed_by = NULL, lease_until = NULL
                 WHERE {which} AND state != 0"
            ),
            &[&id, &now_ms()],
        )
        .await?;
    if changed > 0 {
        notify(c).await?;
        return Ok(Replay::Replayed);
    }
    Ok(match c.query_opt(exists, &[&id]).await? {
        Some(_) => Replay::AlreadyPending,
        None => Replay::NotFound,
    })
}

/// Tells every instance that deliveries may have become due.
async fn notify(c: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    c.execute("SELECT pg_notify($1, '')", &[&super::schema::CHANNEL])
        .await
        .map(drop)
}

/// The counts behind the metrics and the status page.
pub async fn stats(c: &impl GenericClient) -> Result<SpoolStats, tokio_postgres::Error> {
    let now = now_ms();
    let totals = c
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 1),
                    count(*) FILTER (WHERE state = 2),
                    (SELECT received_at FROM events
                     WHERE seq = (SELECT MIN(event_seq) FROM deliveries WHERE state = 0)),
                    (SELECT count(*) FROM dedup)
             FROM deliveries",
            &[],
        )
        .await?;
    let age = |t: Option<i64>| t.map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0);
    let destinations = c
        .query(
            "SELECT destination, count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 2),
                    MIN(CASE WHEN state = 0 THEN retry_from END)
             FROM deliveries WHERE state != 1 GROUP BY destination ORDER BY destination",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let key = DestinationKey::from_stored(r.try_get(0)?);
            Ok(DestinationStats {
                route: key.route().to_owned(),
                destination: key.destination().to_owned(),
                pending: r.try_get(1)?,
                dead: r.try_get(2)?,
                oldest_pending_age_seconds: age(r.try_get(3)?),
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let claims = c
        .query(
            "SELECT claimed_by, count(*) FROM deliveries
             WHERE state = 0 AND claimed_by IS NOT NULL AND lease_until > $1
             GROUP BY claimed_by ORDER BY claimed_by",
            &[&now],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(InstanceClaims {
                instance: r.try_get(0)?,
                deliveries: r.try_get(1)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok(SpoolStats {
        pending: totals.try_get(0)?,
        delivered: totals.try_get(1)?,
        dead: totals.try_get(2)?,
        oldest_pending_age_seconds: age(totals.try_get(3)?),
        dedup_keys: totals.try_get(4)?,
        destinations,
        claims,
    })
}

/// Rows a bulk change touches per transaction (as SQLite's `BULK_CHUNK`).
const BULK_CHUNK: i64 = 2000;

/// Replays every delivery dead when it starts, in chunks, oldest first; returns how
/// many. One that dies again meanwhile is not replayed twice.
pub async fn replay_all_dead(c: &impl GenericClient) -> Result<usize, tokio_postgres::Error> {
    let now = now_ms();
    let last: i64 = c
        .query_one(
            "SELECT COALESCE(MAX(seq), 0) FROM deliveries WHERE state = 2",
            &[],
        )
        .await?
        .try_get(0)?;
    let (mut after, mut total) = (0i64, 0usize);
    loop {
        let rows = c
            .query(
                "UPDATE deliveries SET state = 0, next_attempt_at = $1, retry_from = $1,
                                       finished_at = NULL, claimed_by = NULL, lease_until = NULL
                 WHERE seq IN (SELECT seq FROM deliveries WHERE state = 2 AND seq > $3 AND seq <= $4
                               ORDER BY seq LIMIT $2)
                 RETURNING seq",
                &[&now, &BULK_CHUNK, &after, &last],
            )
            .await?;
        total += rows.len();
        after = rows
            .iter()
            .filter_map(|r| r.try_get::<_, i64>(0).ok())
            .max()
            .unwrap_or(last);
        if (rows.len() as i64) < BULK_CHUNK {
            break;
        }
    }
    if total > 0 {
        notify(c).await?;
    }
    Ok(total)
}

/// Deletes the `which` events accepted before `cutoff` (unix ms), in chunks; returns how
/// many. An event with a pending delivery is never purged; the identities of purged
/// events stay until the dedup window ends, so Meta's retries of them are still dropped.
pub async fn purge_before(
    c: &impl GenericClient,
    which: Finished,
    cutoff: i64,
) -> Result<usize, tokio_postgres::Error> {
    let sql = format!(
        "DELETE FROM events WHERE seq IN
           (SELECT e.seq FROM events e WHERE e.received_at < $1 AND {} LIMIT $2)",
        which.condition()
    );
    let mut total = 0;
    loop {
        let n = c.execute(&sql, &[&cutoff, &BULK_CHUNK]).await? as usize;
        total += n;
        if (n as i64) < BULK_CHUNK {
            return Ok(total);
        }
    }
}
