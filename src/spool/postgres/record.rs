//! The outcomes of a batch of attempts on PostgreSQL, in two statements whatever its
//! size: one `UPDATE` of the deliveries (which also releases their claims, and updates
//! their conversations' holds) and one `INSERT` of their lines in the history, with the
//! instance that made each attempt.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

use crate::types::{AttemptReport, Outcome};

/// The statements of a batch of outcomes, prepared once per connection.
pub(super) struct RecordStatements {
    update: Statement,
    history: Statement,
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
}

/// Records `attempted` at `now` (unix ms) by `instance`, inside `tx`. Of two outcomes
/// for one delivery's same attempt in a batch (which only a lease run out can make),
/// the later stands.
pub(super) async fn record_batch(
    tx: &Transaction<'_>,
    s: &RecordStatements,
    attempted: &[Attempted<'_>],
    now: i64,
    instance: &str,
) -> Result<(), tokio_postgres::Error> {
    if attempted.is_empty() {
        return Ok(());
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
    let update = tx.execute(&s.update, &update_params);
    let history = tx.execute(&s.history, &history_params);
    futures_util::future::try_join(update, history).await?;
    Ok(())
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
