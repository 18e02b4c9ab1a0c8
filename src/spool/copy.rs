//! `xhubd spool copy`: what a stopped SQLite spool still owes, copied into a PostgreSQL
//! spool, for moving from one machine to several.
//!
//! Copied: every event with a pending or dead delivery, with its body, those
//! deliveries (their own narrowed or split bodies, signatures, parts, attempts count,
//! backoff, retry period and last error, conversation keys) and their attempt history;
//! and the whole dedup memory, so that Meta's retries of events the old machine
//! delivered are still recognised. Not copied: delivered deliveries, and events all of whose deliveries
//! were delivered (nothing is left to send; their dedup keys are copied).
//!
//! Everything goes in one PostgreSQL transaction, so an interrupted copy leaves nothing
//! behind and can be run again; and a copy run again copies nothing twice: an event is
//! known by its `id` (unique in both engines) and comes with its deliveries and their
//! attempts, or not at all; a dedup key is known by itself, and keeps the newer of its
//! two `seen_at`. PostgreSQL numbers the rows it receives (`seq`), and the copied
//! deliveries, attempts and dedup keys are renumbered to match. A dedup key whose event
//! is not copied points at that event's old number negated (`-seq`, never a row of
//! PostgreSQL, whose numbers are positive): a retry recognised by it names `#-seq`.
//!
//! Pending deliveries arrive unclaimed and due when they were due, so whichever
//! instance runs takes them; copied events and attempts name where they came from
//! (`accepted_by` and `instance`, e.g. `copied from web1`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use anyhow::Context;
use rusqlite::Connection;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

use super::postgres::schema::{self, CHANNEL, COPY_LOCK, LOCK_CLASS};
use crate::types::DeliveryState;

/// Most events read and written together.
const EVENTS_PER_CHUNK: usize = 500;
/// About the most bytes of bodies read and written together: a chunk of large events
/// holds fewer of them.
const BYTES_PER_CHUNK: i64 = 16 << 20;
/// Most dedup keys read and written together.
const KEYS_PER_CHUNK: usize = 5000;

/// What a copy did: rows copied, and rows found already there.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Events copied.
    pub events: u64,
    /// Pending deliveries copied.
    pub pending: u64,
    /// Dead deliveries copied.
    pub dead: u64,
    /// Lines of attempt history copied.
    pub attempts: u64,
    /// Dedup keys copied (new, or newer than the one there).
    pub dedup_keys: u64,
    /// Events already there (with their deliveries): left as they are.
    pub events_there: u64,
    /// Dedup keys already there, as new as the copy's or newer.
    pub dedup_keys_there: u64,
}

impl fmt::Display for Copied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copied {} event(s), {} deliveries ({} pending, {} dead), {} attempt(s), {} dedup key(s); already there: {} event(s), {} dedup key(s)",
            self.events,
            self.pending + self.dead,
            self.pending,
            self.dead,
            self.attempts,
            self.dedup_keys,
            self.events_there,
            self.dedup_keys_there
        )
    }
}

/// Copies what `sqlite` (a spool at this build's layout, which nothing writes
/// meanwhile) owes into `pg` (at this build's schema), in one transaction. `origin`
/// names where the copied events and attempts come from.
pub async fn copy(sqlite: &Connection, pg: &mut Client, origin: &str) -> anyhow::Result<Copied> {
    let tx = pg.transaction().await.context(WRITE)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &COPY_LOCK],
    )
    .await
    .context(WRITE)?;
    let s = Statements::prepare(&tx).await.context(WRITE)?;
    let mut copied = Copied::default();
    // Old event numbers to new ones, for the events copied or found.
    let mut renumbered = HashMap::new();
    let owed = owed(sqlite).context(READ)?;
    for chunk in chunks(&owed) {
        let rows = read_chunk(sqlite, chunk).context(READ)?;
        write_chunk(&tx, &s, rows, origin, &mut renumbered, &mut copied)
            .await
            .context(WRITE)?;
    }
    copy_dedup(sqlite, &tx, &s, &renumbered, &mut copied).await?;
    if copied.pending > 0 {
        tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])
            .await
            .context(WRITE)?;
    }
    tx.commit().await.context(WRITE)?;
    Ok(copied)
}

/// The context of an error reading the SQLite spool.
const READ: &str = "cannot read the SQLite spool";
/// The context of an error writing the PostgreSQL spool: the transaction is rolled
/// back.
const WRITE: &str = "cannot write the PostgreSQL spool (nothing of this copy was kept)";

/// The number a copied dedup key points at: its event's new number when that event is
/// in PostgreSQL, else the old number negated.
fn dedup_event(old: i64, renumbered: &HashMap<i64, i64>) -> i64 {
    renumbered.get(&old).copied().unwrap_or(-old)
}

/// The events with a pending or dead delivery: (seq, body size), in order.
fn owed(c: &Connection) -> rusqlite::Result<Vec<(i64, i64)>> {
    let mut stmt = c.prepare(
        "SELECT seq, size FROM events
         WHERE seq IN (SELECT event_seq FROM deliveries WHERE state IN (?1, ?2))
         ORDER BY seq",
    )?;
    let rows = stmt.query_map(OWED_STATES, |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The delivery states copied.
const OWED_STATES: [i64; 2] = [DeliveryState::Pending.code(), DeliveryState::Dead.code()];

/// `owed` cut into chunks of at most [`EVENTS_PER_CHUNK`] events and about
/// [`BYTES_PER_CHUNK`] of bodies (an event larger than that alone).
fn chunks(owed: &[(i64, i64)]) -> Vec<&[(i64, i64)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, size)) in owed.iter().enumerate() {
        let full = i - start == EVENTS_PER_CHUNK || bytes + size > BYTES_PER_CHUNK;
        if i > start && full {
            out.push(&owed[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < owed.len() {
        out.push(&owed[start..]);
    }
    out
}

/// An event as stored in SQLite.
struct EventRow {
    seq: i64,
    id: String,
    received_at: i64,
    route: String,
    size: i64,
    object: String,
    field: String,
    headers: String,
    signature: String,
    signature_sha1: Option<String>,
    body: Vec<u8>,
}

/// A pending or dead delivery as stored in SQLite, with its own body if it has one.
struct DeliveryRow {
    seq: i64,
    id: String,
    event_seq: i64,
    destination: String,
    part: i64,
    parts: i64,
    split: bool,
    state: i64,
    attempts: i64,
    next_attempt_at: i64,
    retry_from: i64,
    finished_at: Option<i64>,
    last_error: Option<String>,
    signature: Option<String>,
    signature_sha1: Option<String>,
    body: Option<Vec<u8>>,
}

/// A line of a delivery's attempt history.
struct AttemptRow {
    delivery_seq: i64,
    attempt: i64,
    at: i64,
    result: i64,
    status: Option<i64>,
    detail: String,
}

/// A conversation key of a delivery (destinations that keep order), with its hold.
struct ConversationRow {
    delivery_seq: i64,
    key: String,
    destination: String,
    holding: bool,
    failed_at: Option<i64>,
}

/// The rows of one chunk of events.
struct Chunk {
    events: Vec<EventRow>,
    deliveries: Vec<DeliveryRow>,
    attempts: Vec<AttemptRow>,
    conversations: Vec<ConversationRow>,
}

/// Reads the events of `chunk`, their pending and dead deliveries and their attempts.
fn read_chunk(c: &Connection, chunk: &[(i64, i64)]) -> anyhow::Result<Chunk> {
    let seqs: Vec<i64> = chunk.iter().map(|(seq, _)| *seq).collect();
    let seqs = serde_json::to_string(&seqs)?;
    let mut stmt = c.prepare_cached(
        "SELECT e.seq, e.id, e.received_at, e.route, e.size, e.object, e.field, e.headers,
                e.signature, e.signature_sha1, b.body
         FROM events e LEFT JOIN bodies b ON b.seq = e.seq
         WHERE e.seq IN (SELECT value FROM json_each(?1)) ORDER BY e.seq",
    )?;
    let mut events = Vec::with_capacity(chunk.len());
    let mut rows = stmt.query([&seqs])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(1)?;
        let body: Option<Vec<u8>> = r.get(10)?;
        let body = body.ok_or_else(|| anyhow::anyhow!("event {id} has no body in the spool"))?;
        events.push(EventRow {
            seq: r.get(0)?,
            id,
            received_at: r.get(2)?,
            route: r.get(3)?,
            size: r.get(4)?,
            object: r.get(5)?,
            field: r.get(6)?,
            headers: r.get(7)?,
            signature: r.get(8)?,
            signature_sha1: r.get(9)?,
            body,
        });
    }
    let mut stmt = c.prepare_cached(
        "SELECT d.seq, d.id, d.event_seq, d.destination, d.part, d.parts, d.split, d.state,
                d.attempts, d.next_attempt_at, d.retry_from, d.finished_at, d.last_error,
                d.signature, d.signature_sha1, b.body
         FROM deliveries d LEFT JOIN delivery_bodies b ON b.seq = d.seq
         WHERE d.event_seq IN (SELECT value FROM json_each(?1)) AND d.state IN (?2, ?3)
         ORDER BY d.seq",
    )?;
    let deliveries = stmt
        .query_map(
            rusqlite::params![seqs, OWED_STATES[0], OWED_STATES[1]],
            |r| {
                Ok(DeliveryRow {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    event_seq: r.get(2)?,
                    destination: r.get(3)?,
                    part: r.get(4)?,
                    parts: r.get(5)?,
                    split: r.get::<_, i64>(6)? != 0,
                    state: r.get(7)?,
                    attempts: r.get(8)?,
                    next_attempt_at: r.get(9)?,
                    retry_from: r.get(10)?,
                    finished_at: r.get(11)?,
                    last_error: r.get(12)?,
                    signature: r.get(13)?,
                    signature_sha1: r.get(14)?,
                    body: r.get(15)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = c.prepare_cached(
        "SELECT a.delivery_seq, a.attempt, a.at, a.result, a.status, a.detail
         FROM attempts a JOIN deliveries d ON d.seq = a.delivery_seq
         WHERE d.event_seq IN (SELECT value FROM json_each(?1)) AND d.state IN (?2, ?3)
         ORDER BY a.delivery_seq, a.attempt",
    )?;
    let attempts = stmt
        .query_map(
            rusqlite::params![seqs, OWED_STATES[0], OWED_STATES[1]],
            |r| {
                Ok(AttemptRow {
                    delivery_seq: r.get(0)?,
                    attempt: r.get(1)?,
                    at: r.get(2)?,
                    result: r.get(3)?,
                    status: r.get(4)?,
                    detail: r.get(5)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = c.prepare_cached(
        "SELECT k.delivery_seq, k.key, k.destination, k.holding, k.failed_at
         FROM conversations k JOIN deliveries d ON d.seq = k.delivery_seq
         WHERE d.event_seq IN (SELECT value FROM json_each(?1)) AND d.state IN (?2, ?3)
         ORDER BY k.delivery_seq, k.key",
    )?;
    let conversations = stmt
        .query_map(
            rusqlite::params![seqs, OWED_STATES[0], OWED_STATES[1]],
            |r| {
                Ok(ConversationRow {
                    delivery_seq: r.get(0)?,
                    key: r.get(1)?,
                    destination: r.get(2)?,
                    holding: r.get(3)?,
                    failed_at: r.get(4)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Chunk {
        events,
        deliveries,
        attempts,
        conversations,
    })
}

/// The statements of a copy, prepared once in its transaction.
struct Statements {
    existing: Statement,
    next_seqs: Statement,
    insert_events: Statement,
    insert_bodies: Statement,
    insert_deliveries: Statement,
    insert_delivery_bodies: Statement,
    insert_attempts: Statement,
    insert_conversations: Statement,
    insert_dedup: Statement,
}

impl Statements {
    async fn prepare(tx: &Transaction<'_>) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            existing: tx
                .prepare("SELECT id, seq FROM events WHERE id = ANY($1::text[])")
                .await?,
            next_seqs: tx.prepare(schema::NEXT_SEQS).await?,
            insert_events: tx
                .prepare(
                    "INSERT INTO events (seq, id, received_at, route, size, object, field,
                                         headers, signature, signature_sha1, accepted_by)
                     SELECT v.*, $11::text
                     FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[],
                                 $5::bigint[], $6::text[], $7::text[], $8::text[],
                                 $9::text[], $10::text[]) AS v",
                )
                .await?,
            insert_bodies: tx
                .prepare(
                    "INSERT INTO bodies (seq, body)
                     SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                )
                .await?,
            insert_deliveries: tx
                .prepare(
                    "INSERT INTO deliveries (seq, id, event_seq, destination, part, parts,
                                             split, state, attempts, next_attempt_at,
                                             retry_from, finished_at, last_error, signature,
                                             signature_sha1)
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[],
                                          $5::bigint[], $6::bigint[], $7::bool[],
                                          $8::bigint[], $9::bigint[], $10::bigint[],
                                          $11::bigint[], $12::bigint[], $13::text[],
                                          $14::text[], $15::text[])",
                )
                .await?,
            insert_delivery_bodies: tx
                .prepare(
                    "INSERT INTO delivery_bodies (seq, body)
                     SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                )
                .await?,
            insert_attempts: tx
                .prepare(
                    "INSERT INTO attempts (delivery_seq, attempt, at, result, status, detail,
                                           instance)
                     SELECT v.*, $7::text
                     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                                 $5::bigint[], $6::text[]) AS v",
                )
                .await?,
            insert_conversations: tx
                .prepare(
                    "INSERT INTO conversations (delivery_seq, key, destination, holding,
                                                failed_at)
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bool[],
                                          $5::bigint[])",
                )
                .await?,
            // Returns the keys copied: new, or newer than the one there.
            insert_dedup: tx
                .prepare(
                    "INSERT INTO dedup AS d (key, event_seq, seen_at)
                     SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[])
                     ON CONFLICT (key) DO UPDATE SET event_seq = EXCLUDED.event_seq,
                                                     seen_at = EXCLUDED.seen_at
                     WHERE d.seen_at < EXCLUDED.seen_at
                     RETURNING d.key",
                )
                .await?,
        })
    }
}

/// Writes the events of `rows` that PostgreSQL does not have yet, with their bodies,
/// deliveries and attempts; notes every event's new number in `renumbered`.
async fn write_chunk(
    tx: &Transaction<'_>,
    s: &Statements,
    rows: Chunk,
    origin: &str,
    renumbered: &mut HashMap<i64, i64>,
    copied: &mut Copied,
) -> Result<(), tokio_postgres::Error> {
    let ids: Vec<&str> = rows.events.iter().map(|e| e.id.as_str()).collect();
    let there: HashMap<String, i64> = tx
        .query(&s.existing, &[&ids])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let new: Vec<&EventRow> = rows
        .events
        .iter()
        .filter(|e| !there.contains_key(&e.id))
        .collect();
    for e in &rows.events {
        if let Some(seq) = there.get(&e.id) {
            renumbered.insert(e.seq, *seq);
        }
    }
    copied.events_there += (rows.events.len() - new.len()) as u64;
    if new.is_empty() {
        return Ok(());
    }
    let seqs = schema::next_seqs(tx, &s.next_seqs, "events", new.len()).await?;
    // Old event numbers to new ones, for this chunk's new events only: deliveries of
    // events already there are not copied.
    let mut new_seq = HashMap::with_capacity(new.len());
    for (e, seq) in new.iter().zip(&seqs) {
        new_seq.insert(e.seq, *seq);
        renumbered.insert(e.seq, *seq);
    }
    let e = &new;
    let events: [&(dyn ToSql + Sync); 11] = [
        &seqs,
        &e.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        &e.iter().map(|e| e.received_at).collect::<Vec<_>>(),
        &e.iter().map(|e| e.route.as_str()).collect::<Vec<_>>(),
        &e.iter().map(|e| e.size).collect::<Vec<_>>(),
        &e.iter().map(|e| e.object.as_str()).collect::<Vec<_>>(),
        &e.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
        &e.iter().map(|e| e.headers.as_str()).collect::<Vec<_>>(),
        &e.iter().map(|e| e.signature.as_str()).collect::<Vec<_>>(),
        &e.iter()
            .map(|e| e.signature_sha1.as_deref())
            .collect::<Vec<_>>(),
        &origin,
    ];
    tx.execute(&s.insert_events, &events).await?;
    let bodies: Vec<&[u8]> = e.iter().map(|e| e.body.as_slice()).collect();
    tx.execute(&s.insert_bodies, &[&seqs, &bodies]).await?;
    copied.events += new.len() as u64;

    let d: Vec<&DeliveryRow> = rows
        .deliveries
        .iter()
        .filter(|d| new_seq.contains_key(&d.event_seq))
        .collect();
    if d.is_empty() {
        return Ok(());
    }
    let delivery_seqs = schema::next_seqs(tx, &s.next_seqs, "deliveries", d.len()).await?;
    let of_delivery: HashMap<i64, i64> = d
        .iter()
        .zip(&delivery_seqs)
        .map(|(d, seq)| (d.seq, *seq))
        .collect();
    let event_seqs: Vec<i64> = d
        .iter()
        .map(|d| new_seq.get(&d.event_seq).copied().unwrap_or_default())
        .collect();
    let deliveries: [&(dyn ToSql + Sync); 15] = [
        &delivery_seqs,
        &d.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        &event_seqs,
        &d.iter().map(|d| d.destination.as_str()).collect::<Vec<_>>(),
        &d.iter().map(|d| d.part).collect::<Vec<_>>(),
        &d.iter().map(|d| d.parts).collect::<Vec<_>>(),
        &d.iter().map(|d| d.split).collect::<Vec<_>>(),
        &d.iter().map(|d| d.state).collect::<Vec<_>>(),
        &d.iter().map(|d| d.attempts).collect::<Vec<_>>(),
        &d.iter().map(|d| d.next_attempt_at).collect::<Vec<_>>(),
        &d.iter().map(|d| d.retry_from).collect::<Vec<_>>(),
        &d.iter().map(|d| d.finished_at).collect::<Vec<_>>(),
        &d.iter()
            .map(|d| d.last_error.as_deref())
            .collect::<Vec<_>>(),
        &d.iter().map(|d| d.signature.as_deref()).collect::<Vec<_>>(),
        &d.iter()
            .map(|d| d.signature_sha1.as_deref())
            .collect::<Vec<_>>(),
    ];
    tx.execute(&s.insert_deliveries, &deliveries).await?;
    let (own_seqs, own_bodies): (Vec<i64>, Vec<&[u8]>) = d
        .iter()
        .zip(&delivery_seqs)
        .filter_map(|(d, seq)| Some((*seq, d.body.as_deref()?)))
        .unzip();
    if !own_seqs.is_empty() {
        tx.execute(&s.insert_delivery_bodies, &[&own_seqs, &own_bodies])
            .await?;
    }
    for d in &d {
        match DeliveryState::from_code(d.state) {
            Some(DeliveryState::Pending) => copied.pending += 1,
            _ => copied.dead += 1,
        }
    }

    let a: Vec<(i64, &AttemptRow)> = rows
        .attempts
        .iter()
        .filter_map(|a| Some((*of_delivery.get(&a.delivery_seq)?, a)))
        .collect();
    if !a.is_empty() {
        let attempts: [&(dyn ToSql + Sync); 7] = [
            &a.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            &a.iter().map(|(_, a)| a.attempt).collect::<Vec<_>>(),
            &a.iter().map(|(_, a)| a.at).collect::<Vec<_>>(),
            &a.iter().map(|(_, a)| a.result).collect::<Vec<_>>(),
            &a.iter().map(|(_, a)| a.status).collect::<Vec<_>>(),
            &a.iter().map(|(_, a)| a.detail.as_str()).collect::<Vec<_>>(),
            &origin,
        ];
        tx.execute(&s.insert_attempts, &attempts).await?;
        copied.attempts += a.len() as u64;
    }

    // Renumbered in the same order, so each conversation keeps its order.
    let k: Vec<(i64, &ConversationRow)> = rows
        .conversations
        .iter()
        .filter_map(|k| Some((*of_delivery.get(&k.delivery_seq)?, k)))
        .collect();
    if !k.is_empty() {
        let conversations: [&(dyn ToSql + Sync); 5] = [
            &k.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            &k.iter().map(|(_, k)| k.key.as_str()).collect::<Vec<_>>(),
            &k.iter()
                .map(|(_, k)| k.destination.as_str())
                .collect::<Vec<_>>(),
            &k.iter().map(|(_, k)| k.holding).collect::<Vec<_>>(),
            &k.iter().map(|(_, k)| k.failed_at).collect::<Vec<_>>(),
        ];
        tx.execute(&s.insert_conversations, &conversations).await?;
    }
    Ok(())
}

/// One remembered identity as SQLite keeps it: key, event number, when it was seen.
type Identity = (Vec<u8>, i64, i64);

/// Copies the dedup memory, in key order (as instances claim keys, so neither waits on
/// the other in a cycle), a chunk at a time: the table ordered by key, joined with the
/// recent identities not merged into it yet (a key in both counts once, its newer
/// sighting copied).
async fn copy_dedup(
    sqlite: &Connection,
    tx: &Transaction<'_>,
    s: &Statements,
    renumbered: &HashMap<i64, i64>,
    copied: &mut Copied,
) -> anyhow::Result<()> {
    let mut recent = recent_identities(sqlite)?.into_iter().peekable();
    let mut after: Vec<u8> = Vec::new();
    let mut stmt = sqlite
        .prepare("SELECT key, event_seq, seen_at FROM dedup WHERE key > ?1 ORDER BY key LIMIT ?2")
        .context(READ)?;
    loop {
        let rows = stmt
            .query_map(rusqlite::params![after, KEYS_PER_CHUNK as i64], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .context(READ)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .context(READ)?;
        let last_chunk = rows.len() < KEYS_PER_CHUNK;
        if let Some((last, _, _)) = rows.last() {
            after = last.clone();
        }
        let chunk = join(rows, &mut recent, last_chunk);
        if chunk.is_empty() {
            return Ok(());
        }
        let keys: Vec<&[u8]> = chunk.iter().map(|(k, _, _)| k.as_slice()).collect();
        let events: Vec<i64> = chunk
            .iter()
            .map(|(_, seq, _)| dedup_event(*seq, renumbered))
            .collect();
        let seen: Vec<i64> = chunk.iter().map(|(_, _, at)| *at).collect();
        let taken = tx
            .query(&s.insert_dedup, &[&keys, &events, &seen])
            .await
            .context(WRITE)?
            .len() as u64;
        copied.dedup_keys += taken;
        copied.dedup_keys_there += chunk.len() as u64 - taken;
        if last_chunk {
            return Ok(());
        }
    }
}

/// A chunk of `dedup` rows (by key) joined with the recent identities up to its last
/// key (all that are left, for the `last` chunk): by key, each key once, with its newer
/// sighting (the recent one on a tie).
fn join<I>(rows: Vec<Identity>, recent: &mut std::iter::Peekable<I>, last: bool) -> Vec<Identity>
where
    I: Iterator<Item = (Vec<u8>, (i64, i64))>,
{
    let mut chunk = Vec::with_capacity(rows.len());
    for row in rows {
        while let Some((key, (seq, at))) = recent.next_if(|(key, _)| *key < row.0) {
            chunk.push((key, seq, at));
        }
        match recent.next_if(|(key, _)| *key == row.0) {
            Some((key, (seq, at))) if at >= row.2 => chunk.push((key, seq, at)),
            _ => chunk.push(row),
        }
    }
    if last {
        chunk.extend(recent.map(|(key, (seq, at))| (key, seq, at)));
    }
    chunk
}

/// The recent identities (`dedup_recent`, at most a few tens of thousands), each key's
/// newest sighting, by key.
fn recent_identities(sqlite: &Connection) -> anyhow::Result<BTreeMap<Vec<u8>, (i64, i64)>> {
    let mut stmt = sqlite
        .prepare("SELECT key, event_seq, seen_at FROM dedup_recent ORDER BY arrival")
        .context(READ)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .context(READ)?;
    let mut recent = BTreeMap::new();
    for row in rows {
        let (key, seq, at): Identity = row.context(READ)?;
        recent.insert(key, (seq, at));
    }
    Ok(recent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_at_most_their_count_and_about_their_bytes() {
        let small: Vec<(i64, i64)> = (1..=1201).map(|seq| (seq, 100)).collect();
        let sizes: Vec<usize> = chunks(&small).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [500, 500, 201]);
        let large = [
            (1, BYTES_PER_CHUNK + 1),
            (2, BYTES_PER_CHUNK / 2),
            (3, BYTES_PER_CHUNK / 2),
            (4, 1),
        ];
        let cut: Vec<Vec<i64>> = chunks(&large)
            .iter()
            .map(|c| c.iter().map(|(seq, _)| *seq).collect())
            .collect();
        assert_eq!(cut, [vec![1], vec![2, 3], vec![4]]);
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn a_dedup_key_points_at_its_copied_event_or_at_no_row() {
        let renumbered = HashMap::from([(7, 1)]);
        assert_eq!(dedup_event(7, &renumbered), 1);
        assert_eq!(dedup_event(8, &renumbered), -8);
    }

    #[test]
    fn recent_identities_join_the_table_by_key_each_once_with_its_newer_sighting() {
        let recent: BTreeMap<Vec<u8>, (i64, i64)> = [
            (vec![1], (10, 100)),
            (vec![3], (30, 300)),
            (vec![4], (40, 50)),
            (vec![6], (60, 600)),
            (vec![9], (90, 900)),
        ]
        .into();
        let mut recent = recent.into_iter().peekable();
        let first = join(
            vec![(vec![2], 2, 20), (vec![3], 3, 30), (vec![4], 4, 400)],
            &mut recent,
            false,
        );
        assert_eq!(
            first,
            vec![
                (vec![1], 10, 100),
                (vec![2], 2, 20),
                (vec![3], 30, 300),
                (vec![4], 4, 400)
            ]
        );
        let last = join(vec![(vec![5], 5, 50)], &mut recent, true);
        assert_eq!(
            last,
            vec![(vec![5], 5, 50), (vec![6], 60, 600), (vec![9], 90, 900)]
        );
        assert_eq!(join(Vec::new(), &mut recent, true), Vec::new());
    }

    #[test]
    fn the_summary_is_one_line() {
        let copied = Copied {
            events: 3,
            pending: 3,
            dead: 1,
            attempts: 12,
            dedup_keys: 9,
            events_there: 0,
            dedup_keys_there: 2,
        };
        assert_eq!(
            copied.to_string(),
            "copied 3 event(s), 4 deliveries (3 pending, 1 dead), 12 attempt(s), 9 dedup key(s); already there: 0 event(s), 2 dedup key(s)"
        );
    }
}
