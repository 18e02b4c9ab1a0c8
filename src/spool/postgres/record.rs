//! The outcomes of a batch of attempts on PostgreSQL, in a few statements whatever its
//! size: one `UPDATE` of the deliveries (which also releases their claims, and updates
//! their conversations' holds), one
//! `INSERT` of their lines in the history, with the instance that made each attempt,
//! and the state of their destinations (up or down, for every instance): their rows
//! are locked, moved on by each outcome in turn ([`Availability::after`]) and written
//! back, all in the batch's transaction.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

use crate::spool::{conversations, Recorded};
use crate::types::{AttemptReport, Availability, DeliveryState, DestinationKey, Outcome, Signal};

/// The statements of a batch of outcomes, prepared once per connection.
pub(super) struct RecordStatements {
    update: Statement,
    history: Statement,
    add_destinations: Statement,
    lock_destinations: Statement,
    save_destinations: Statement,
    expire: Statement,
    restart_holds: Statement,
}

impl RecordStatements {
    /// Prepares them on `c`.
    pub(super) async fn prepare(c: &Client) -> Result<RecordStatements, tokio_postgres::Error> {
        Ok(RecordStatements {
            // A delivery no longer pending (delivered or dead, by this instance or one
            // whose lease had run out), or taken since by another instance, is left as
            // it is: the other instance's claim stands. Of those updated, the
            // conversations (destinations that keep order, spool::conversations): a
            // failure starts the hold's clock; delivered, dead or released ($8), the
            // delivery holds them no more.
            update: c
                .prepare(
                    "WITH updated AS (
                         UPDATE deliveries d SET state = v.st, attempts = v.a, next_attempt_at = v.n,
                                                 last_error = v.err, finished_at = v.fin,
                                                 claimed_by = NULL, lease_until = NULL
                         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                                     $5::text[], $6::bigint[], $8::bool[])
                              AS v(s, st, a, n, err, fin, rel)
                         WHERE d.seq = v.s AND d.state = 0
                           AND (d.claimed_by = $7 OR d.claimed_by IS NULL)
                         RETURNING d.seq, d.state, v.rel)
                     UPDATE conversations c
                     SET holding = c.holding AND u.state = 0 AND NOT u.rel,
                         failed_at = CASE WHEN u.state = 0 THEN coalesce(c.failed_at, $9)
                                          ELSE c.failed_at END
                     FROM updated u
                     WHERE c.delivery_seq = u.seq
                       AND ((c.holding AND (u.state <> 0 OR u.rel))
                            OR (u.state = 0 AND c.failed_at IS NULL))",
                )
                .await?,
            // A delivery purged meanwhile gets no history.
            history: c
                .prepare(
                    "INSERT INTO attempts (delivery_seq, attempt, at, result, status, detail, instance)
                     SELECT v.s, v.a, $3, v.r, v.st, v.dt, $7
                     FROM unnest($1::bigint[], $2::bigint[], $4::bigint[], $5::bigint[], $6::text[])
                          AS v(s, a, r, st, dt)
                     WHERE EXISTS (SELECT 1 FROM deliveries WHERE seq = v.s)
                     ON CONFLICT (delivery_seq, attempt) DO UPDATE
                       SET at = EXCLUDED.at, result = EXCLUDED.result, status = EXCLUDED.status,
                           detail = EXCLUDED.detail, instance = EXCLUDED.instance",
                )
                .await?,
            // Rows for destinations new to the spool that a failure may change, then the
            // rows the batch may change locked in one order (instances recording at once
            // never deadlock on them): those of destinations with a failure in the batch
            // ($2), and those not at rest (failures counted, or down). A destination
            // that only answered and is at rest stays as it is, unlocked: the common
            // case costs no lock that other instances' outcomes would wait for.
            add_destinations: c
                .prepare(
                    "INSERT INTO destinations (destination)
                     SELECT d FROM unnest($1::text[]) AS d ORDER BY d
                     ON CONFLICT (destination) DO NOTHING",
                )
                .await?,
            lock_destinations: c
                .prepare(
                    "SELECT destination, failures, down_since, next_probe_at, failed_probes,
                            last_failed
                     FROM destinations
                     WHERE destination = ANY($1::text[])
                       AND (destination = ANY($2::text[]) OR failures <> 0
                            OR down_since IS NOT NULL)
                     ORDER BY destination FOR UPDATE",
                )
                .await?,
            save_destinations: c
                .prepare(
                    "UPDATE destinations t SET failures = v.f, down_since = v.ds,
                                               next_probe_at = v.np, failed_probes = v.fp,
                                               last_failed = v.lf
                     FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                                 $6::bigint[])
                          AS v(d, f, ds, np, fp, lf)
                     WHERE t.destination = v.d",
                )
                .await?,
            // What a failed probe makes dead: no instance holds them (only the probe is
            // taken while a destination is down, and it is being recorded). Dead, they
            // hold their conversations no more.
            expire: c
                .prepare(
                    "WITH expired AS (
                         UPDATE deliveries SET state = $1, finished_at = $2, last_error = $3,
                                               claimed_by = NULL, lease_until = NULL
                         WHERE state = 0 AND destination = $4 AND retry_from <= $5 AND seq <> $6
                           AND (claimed_by IS NULL OR lease_until <= $2)
                         RETURNING seq),
                     released AS (
                         UPDATE conversations c SET holding = false
                         FROM expired x WHERE c.delivery_seq = x.seq AND c.holding)
                     SELECT count(*) FROM expired",
                )
                .await?,
            restart_holds: c.prepare(conversations::RESTART_HOLDS).await?,
        })
    }
}

/// One attempt's outcome, as the writer received it.
pub(super) struct Attempted<'a> {
    /// The delivery's row number.
    pub seq: i64,
    /// Its attempts so far, this one included.
    pub attempts: i64,
    /// What to make of it.
    pub outcome: &'a Outcome,
    /// The attempt's line in the history.
    pub report: &'a AttemptReport,
    /// Its destination.
    pub destination: &'a DestinationKey,
    /// What it says about its destination.
    pub signal: &'a Signal,
}

/// Records `attempted` at `now` (unix ms) by `instance`, inside `tx`, and answers
/// what each did to its destination, in the same order. Of two outcomes for one
/// delivery's same attempt in a batch (which only a lease run out can make), the later
/// stands.
pub(super) async fn record_batch(
    tx: &Transaction<'_>,
    s: &RecordStatements,
    attempted: &[Attempted<'_>],
    now: i64,
    instance: &str,
) -> Result<Vec<Recorded>, tokio_postgres::Error> {
    if attempted.is_empty() {
        return Ok(Vec::new());
    }
    let mut last: HashMap<(i64, i64), usize> = HashMap::new();
    for (i, a) in attempted.iter().enumerate() {
        last.insert((a.seq, a.attempts), i);
    }
    let mut order: Vec<usize> = last.into_values().collect();
    order.sort_unstable();
    let mut c = Columns::default();
    for a in order.iter().map(|&i| &attempted[i]) {
        let (next_attempt_at, error, finished_at, release) = match a.outcome {
            Outcome::Delivered => (now, None, Some(now), false),
            Outcome::Retry {
                next_attempt_at,
                error,
                release_conversations,
            } => (
                *next_attempt_at,
                Some(error.as_str()),
                None,
                *release_conversations,
            ),
            Outcome::Dead { error } => (now, Some(error.as_str()), Some(now), false),
        };
        c.seq.push(a.seq);
        c.state.push(a.outcome.state().code());
        c.attempts.push(a.attempts);
        c.next_attempt_at.push(next_attempt_at);
        c.error.push(error);
        c.finished_at.push(finished_at);
        c.release.push(release);
        c.status.push(a.report.status.map(i64::from));
        c.detail.push(&a.report.detail);
    }
    let update_params: [&(dyn ToSql + Sync); 9] = [
        &c.seq,
        &c.state,
        &c.attempts,
        &c.next_attempt_at,
        &c.error,
        &c.finished_at,
        &instance,
        &c.release,
        &now,
    ];
    let history_params: [&(dyn ToSql + Sync); 7] = [
        &c.seq,
        &c.attempts,
        &now,
        &c.state,
        &c.status,
        &c.detail,
        &instance,
    ];
    let names: Vec<&str> = attempted
        .iter()
        .map(|a| a.destination.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let failing: Vec<&str> = attempted
        .iter()
        .filter(|a| !a.signal.answered)
        .map(|a| a.destination.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let add_params: [&(dyn ToSql + Sync); 1] = [&failing];
    let lock_params: [&(dyn ToSql + Sync); 2] = [&names, &failing];
    let (_, locked, _, _) = futures_util::try_join!(
        tx.execute(&s.add_destinations, &add_params),
        tx.query(&s.lock_destinations, &lock_params),
        tx.execute(&s.update, &update_params),
        tx.execute(&s.history, &history_params),
    )?;
    // Those not locked are at rest: up, no failure counted.
    let mut states: HashMap<String, Availability> = HashMap::new();
    for row in locked {
        states.insert(
            row.try_get(0)?,
            Availability {
                failures: row.try_get(1)?,
                down_since: row.try_get(2)?,
                next_probe_at: row.try_get(3)?,
                failed_probes: row.try_get(4)?,
                last_failed: row.try_get(5)?,
            },
        );
    }
    let stored = states.clone();
    let mut recorded = Vec::with_capacity(attempted.len());
    for a in attempted {
        let key = a.destination.as_str();
        let before = states.get(key).copied().unwrap_or_default();
        let after = before.after(a.signal, now);
        states.insert(key.to_owned(), after);
        let expired = match &a.signal.expire {
            Some(expiry) if a.signal.probe && after.is_down() => {
                let params: [&(dyn ToSql + Sync); 6] = [
                    &DeliveryState::Dead.code(),
                    &now,
                    &expiry.error,
                    &key,
                    &expiry.retry_from_until,
                    &a.seq,
                ];
                let n: i64 = tx.query_one(&s.expire, &params).await?.try_get(0)?;
                n as usize
            }
            _ => 0,
        };
        let came_up = before.is_down() && !after.is_down();
        if came_up {
            tx.execute(&s.restart_holds, &[&key]).await?;
        }
        recorded.push(Recorded {
            availability: after,
            came_up,
            expired,
        });
    }
    let mut v = StateColumns::default();
    let changed = states
        .iter()
        .filter(|(name, state)| stored.get(*name).copied().unwrap_or_default() != **state);
    for (name, state) in changed {
        v.destination.push(name.as_str());
        v.failures.push(state.failures);
        v.down_since.push(state.down_since);
        v.next_probe_at.push(state.next_probe_at);
        v.failed_probes.push(state.failed_probes);
        v.last_failed.push(state.last_failed);
    }
    let save_params: [&(dyn ToSql + Sync); 6] = [
        &v.destination,
        &v.failures,
        &v.down_since,
        &v.next_probe_at,
        &v.failed_probes,
        &v.last_failed,
    ];
    tx.execute(&s.save_destinations, &save_params).await?;
    Ok(recorded)
}

/// The destinations' states to write back, one array per column.
#[derive(Default)]
struct StateColumns<'a> {
    destination: Vec<&'a str>,
    failures: Vec<i64>,
    down_since: Vec<Option<i64>>,
    next_probe_at: Vec<Option<i64>>,
    failed_probes: Vec<i64>,
    last_failed: Vec<Option<i64>>,
}

/// The columns of a batch of outcomes, one array per column.
#[derive(Default)]
struct Columns<'a> {
    seq: Vec<i64>,
    state: Vec<i64>,
    attempts: Vec<i64>,
    next_attempt_at: Vec<i64>,
    error: Vec<Option<&'a str>>,
    finished_at: Vec<Option<i64>>,
    release: Vec<bool>,
    status: Vec<Option<i64>>,
    detail: Vec<&'a str>,
}
