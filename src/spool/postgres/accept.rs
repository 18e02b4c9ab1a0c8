//! A batch of accepts on PostgreSQL in a fixed number of statements, whatever its
//! size: every identity of the batch is claimed with one `INSERT … ON CONFLICT` per
//! kind (bodies, then items), and the new events, their bodies and their deliveries
//! are each inserted with one statement over arrays (`unnest`). A statement costs the
//! server about as much for one row as for a hundred, so this is what lets one
//! transaction carry a whole group commit.
//!
//! The outcome is the one of taking the batch's events one after the other, as the
//! SQLite writer does: an event whose body an earlier event of the batch has is a
//! retry of it; an item identity listed by several events of the batch is claimed by
//! the first, and is *seen* for the others; an event is a retry when every item it
//! lists was seen (Meta's retry with a new `time`). Keys are claimed in key order, so
//! two instances taking the same identities wait for each other rather than deadlock
//! within one statement.

use std::collections::{HashMap, HashSet};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

use crate::types::{DedupKey, NewEvent, Stored};

/// The statements of a batch of accepts, prepared once per connection.
pub(super) struct AcceptStatements {
    claim_keys: Statement,
    holders: Statement,
    undo_keys: Statement,
    refresh_keys: Statement,
    insert_events: Statement,
    insert_bodies: Statement,
    insert_deliveries: Statement,
    insert_delivery_bodies: Statement,
    insert_conversations: Statement,
}

impl AcceptStatements {
    /// Prepares them on `c`.
    pub(super) async fn prepare(c: &Client) -> Result<AcceptStatements, tokio_postgres::Error> {
        Ok(AcceptStatements {
            // $1 keys (sorted, distinct), $2 their events, $3 now, $4 the window's start:
            // returns the keys taken (new, or remembered from before the window).
            claim_keys: c
                .prepare(
                    "INSERT INTO dedup AS d (key, event_seq, seen_at)
                     SELECT k, s, $3 FROM unnest($1::bytea[], $2::bigint[]) AS v(k, s)
                     ON CONFLICT (key) DO UPDATE SET event_seq = EXCLUDED.event_seq,
                                                     seen_at = EXCLUDED.seen_at
                     WHERE d.seen_at < $4
                     RETURNING d.key",
                )
                .await?,
            holders: c
                .prepare(
                    "SELECT d.key, d.event_seq, e.id
                     FROM dedup d LEFT JOIN events e ON e.seq = d.event_seq
                     WHERE d.key = ANY($1::bytea[])",
                )
                .await?,
            undo_keys: c
                .prepare(
                    "DELETE FROM dedup d USING unnest($1::bytea[], $2::bigint[]) AS v(k, s)
                     WHERE d.key = v.k AND d.event_seq = v.s",
                )
                .await?,
            refresh_keys: c
                .prepare(
                    "UPDATE dedup d SET event_seq = v.s, seen_at = $3
                     FROM unnest($1::bytea[], $2::bigint[]) AS v(k, s) WHERE d.key = v.k",
                )
                .await?,
            insert_events: c
                .prepare(
                    "INSERT INTO events (seq, id, received_at, size, object, field, headers,
                                         signature, signature_sha1, route, accepted_by)
                     SELECT s, i, $3, z, o, f, h, g, g1, r, $11
                     FROM unnest($1::bigint[], $2::text[], $4::bigint[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::text[])
                          AS v(s, i, z, o, f, h, g, g1, r)",
                )
                .await?,
            insert_bodies: c
                .prepare(
                    "INSERT INTO bodies (seq, body)
                     SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                )
                .await?,
            insert_deliveries: c
                .prepare(
                    "INSERT INTO deliveries (id, event_seq, destination, part, parts, split, state,
                                             next_attempt_at, retry_from, signature, signature_sha1)
                     SELECT i, e, d, p, n, sp, 0, $9, $9, g, g1
                     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[],
                                 $6::bool[], $7::text[], $8::text[])
                          AS v(i, e, d, p, n, sp, g, g1)",
                )
                .await?,
            insert_delivery_bodies: c
                .prepare(
                    "INSERT INTO delivery_bodies (seq, body)
                     SELECT d.seq, v.b FROM unnest($1::text[], $2::bytea[]) AS v(i, b)
                     JOIN deliveries d ON d.id = v.i",
                )
                .await?,
            insert_conversations: c
                .prepare(
                    "INSERT INTO conversations (delivery_seq, key, destination)
                     SELECT d.seq, v.k, d.destination FROM unnest($1::text[], $2::text[]) AS v(i, k)
                     JOIN deliveries d ON d.id = v.i
                     ON CONFLICT DO NOTHING",
                )
                .await?,
        })
    }
}

/// What an accept needs besides its event.
pub(super) struct AcceptTerms<'a> {
    /// Unix ms, the batch's time.
    pub now: i64,
    /// Identities seen before this (unix ms) are forgotten: the dedup window's start.
    pub cutoff: i64,
    /// The instance that accepts.
    pub instance: &'a str,
}

/// Checks the identities of `events` (whose row numbers, reserved, are `seqs`) and
/// stores those that are new, with their bodies and deliveries, inside `tx`. Returns,
/// per event in order, what happened and how many deliveries were stored.
pub(super) async fn accept_batch(
    tx: &Transaction<'_>,
    s: &AcceptStatements,
    events: &[&NewEvent],
    seqs: &[i64],
    terms: &AcceptTerms<'_>,
) -> Result<Vec<(Stored, usize)>, tokio_postgres::Error> {
    let (now, cutoff) = (terms.now, terms.cutoff);
    let mut plan = Plan::new(events);
    let (keys, owners) = plan.body_claims(seqs);
    let taken = claim(tx, s, &keys, &owners, now, cutoff).await?;
    plan.bodies_taken(&taken);
    let (keys, owners) = plan.item_claims(seqs);
    let taken = if keys.is_empty() {
        HashSet::new()
    } else {
        claim(tx, s, &keys, &owners, now, cutoff).await?
    };
    let outcome = plan.items_taken(&taken, seqs);
    // Who holds each key a retry was recognised by, before the keys point elsewhere.
    let ids: Vec<Option<String>> = outcome
        .verdicts
        .iter()
        .map(|v| matches!(v, Verdict::New).then(|| uuid::Uuid::now_v7().to_string()))
        .collect();
    let holders = holders(tx, s, &outcome, seqs, &ids).await?;
    if !outcome.undo.is_empty() {
        let (keys, owners) = split(&outcome.undo);
        tx.execute(&s.undo_keys, &[&keys, &owners]).await?;
    }
    if !outcome.refresh.is_empty() {
        let (keys, owners) = split(&outcome.refresh);
        tx.execute(&s.refresh_keys, &[&keys, &owners, &now]).await?;
    }
    let stored = insert_new(tx, s, events, seqs, &ids, terms).await?;
    // Each event's answer, an earlier event of the batch standing for its copies.
    let mut answers: Vec<(Stored, usize)> = Vec::with_capacity(events.len());
    for (i, verdict) in outcome.verdicts.iter().enumerate() {
        let answer = match (verdict, &ids[i]) {
            (Verdict::New, Some(id)) => (Stored::New(id.clone()), stored[i]),
            (Verdict::SameBodyAs(j), _) => match &answers[*j].0 {
                Stored::New(id) | Stored::Duplicate(id) => (Stored::Duplicate(id.clone()), 0),
            },
            (Verdict::Seen(key), _) => (
                Stored::Duplicate(holders.get(key).cloned().unwrap_or_else(|| "#?".into())),
                0,
            ),
            (Verdict::New, None) => (Stored::Duplicate("#?".into()), 0),
        };
        answers.push(answer);
    }
    Ok(answers)
}

/// Claims `keys` (sorted, distinct) for their events; returns those taken.
async fn claim(
    tx: &Transaction<'_>,
    s: &AcceptStatements,
    keys: &[&[u8]],
    owners: &[i64],
    now: i64,
    cutoff: i64,
) -> Result<HashSet<DedupKey>, tokio_postgres::Error> {
    let rows = tx
        .query(&s.claim_keys, &[&keys, &owners, &now, &cutoff])
        .await?;
    rows.iter()
        .map(|r| Ok(key_of(r.try_get::<_, &[u8]>(0)?)))
        .collect()
}

/// The id of the event holding each key a retry was recognised by: an event of this
/// batch, or one stored before (`#seq` when that event was purged since).
async fn holders(
    tx: &Transaction<'_>,
    s: &AcceptStatements,
    outcome: &Outcome,
    seqs: &[i64],
    ids: &[Option<String>],
) -> Result<HashMap<DedupKey, String>, tokio_postgres::Error> {
    let keys: Vec<&[u8]> = outcome
        .verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Seen(k) => Some(&k.as_bytes()[..]),
            _ => None,
        })
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let in_batch: HashMap<i64, &String> = seqs
        .iter()
        .zip(ids)
        .filter_map(|(seq, id)| Some((*seq, id.as_ref()?)))
        .collect();
    let rows = tx.query(&s.holders, &[&keys]).await?;
    rows.iter()
        .map(|r| {
            let key = key_of(r.try_get::<_, &[u8]>(0)?);
            let seq: i64 = r.try_get(1)?;
            let id: Option<String> = r.try_get(2)?;
            let name = match (in_batch.get(&seq), id) {
                (Some(id), _) => (*id).clone(),
                (None, Some(id)) => id,
                (None, None) => format!("#{seq}"),
            };
            Ok((key, name))
        })
        .collect()
}

/// Inserts the new events (those with an id), their bodies, their deliveries and their
/// conversation keys, in five statements sent together. Returns each event's number of deliveries stored.
async fn insert_new(
    tx: &Transaction<'_>,
    s: &AcceptStatements,
    events: &[&NewEvent],
    seqs: &[i64],
    ids: &[Option<String>],
    terms: &AcceptTerms<'_>,
) -> Result<Vec<usize>, tokio_postgres::Error> {
    let mut e = EventColumns::default();
    let mut d = DeliveryColumns::default();
    let mut stored = vec![0; events.len()];
    for (i, event) in events.iter().enumerate() {
        let Some(id) = &ids[i] else { continue };
        e.seq.push(seqs[i]);
        e.id.push(id.as_str());
        e.size.push(event.body.len() as i64);
        e.object.push(&event.object);
        e.field.push(&event.field);
        e.headers.push(&event.headers);
        e.signature.push(&event.signature);
        e.signature_sha1.push(event.signature_sha1.as_deref());
        e.route.push(&event.route);
        e.body.push(&event.body[..]);
        for planned in &event.deliveries {
            let (part, parts) = planned.part.unwrap_or((1, 1));
            let delivery_id = uuid::Uuid::now_v7().to_string();
            if let Some(own) = &planned.body {
                d.own_body_of.push(delivery_id.clone());
                d.own_body.push(&own[..]);
            }
            for key in &planned.conversations {
                d.conversation_of.push(delivery_id.clone());
                d.conversation.push(key);
            }
            d.id.push(delivery_id);
            d.event_seq.push(seqs[i]);
            d.destination.push(planned.destination.as_str());
            d.part.push(i64::from(part));
            d.parts.push(i64::from(parts));
            d.split.push(planned.part.is_some());
            d.signature.push(planned.signature.as_deref());
            d.signature_sha1.push(planned.signature_sha1.as_deref());
        }
        stored[i] = event.deliveries.len();
    }
    if e.seq.is_empty() {
        return Ok(stored);
    }
    // Sent together (pipelined), run in this order: events before what refers to them.
    let event_params: [&(dyn ToSql + Sync); 11] = [
        &e.seq,
        &e.id,
        &terms.now,
        &e.size,
        &e.object,
        &e.field,
        &e.headers,
        &e.signature,
        &e.signature_sha1,
        &e.route,
        &terms.instance,
    ];
    let body_params: [&(dyn ToSql + Sync); 2] = [&e.seq, &e.body];
    let events_insert = tx.execute(&s.insert_events, &event_params);
    let bodies_insert = tx.execute(&s.insert_bodies, &body_params);
    let deliveries_insert = async {
        if d.id.is_empty() {
            return Ok(0);
        }
        tx.execute(
            &s.insert_deliveries,
            &[
                &d.id,
                &d.event_seq,
                &d.destination,
                &d.part,
                &d.parts,
                &d.split,
                &d.signature,
                &d.signature_sha1,
                &terms.now,
            ],
        )
        .await
    };
    let own_bodies_insert = async {
        if d.own_body.is_empty() {
            return Ok(0);
        }
        tx.execute(&s.insert_delivery_bodies, &[&d.own_body_of, &d.own_body])
            .await
    };
    let conversations_insert = async {
        if d.conversation.is_empty() {
            return Ok(0);
        }
        tx.execute(
            &s.insert_conversations,
            &[&d.conversation_of, &d.conversation],
        )
        .await
    };
    futures_util::try_join!(
        events_insert,
        bodies_insert,
        deliveries_insert,
        own_bodies_insert,
        conversations_insert
    )?;
    Ok(stored)
}

/// The columns of the new events, one array per column.
#[derive(Default)]
struct EventColumns<'a> {
    seq: Vec<i64>,
    id: Vec<&'a str>,
    size: Vec<i64>,
    object: Vec<&'a str>,
    field: Vec<&'a str>,
    headers: Vec<&'a str>,
    signature: Vec<&'a str>,
    signature_sha1: Vec<Option<&'a str>>,
    route: Vec<&'a str>,
    body: Vec<&'a [u8]>,
}

/// The columns of the new deliveries, and the bodies of those that send their own.
#[derive(Default)]
struct DeliveryColumns<'a> {
    id: Vec<String>,
    event_seq: Vec<i64>,
    destination: Vec<&'a str>,
    part: Vec<i64>,
    parts: Vec<i64>,
    split: Vec<bool>,
    signature: Vec<Option<&'a str>>,
    signature_sha1: Vec<Option<&'a str>>,
    own_body_of: Vec<String>,
    own_body: Vec<&'a [u8]>,
    /// The conversation keys of ordered deliveries, by delivery id, one per key.
    conversation_of: Vec<String>,
    conversation: Vec<&'a str>,
}

/// A key as read back.
fn key_of(bytes: &[u8]) -> DedupKey {
    let mut key = [0u8; 16];
    let n = bytes.len().min(16);
    key[..n].copy_from_slice(&bytes[..n]);
    DedupKey::from_bytes(key)
}

/// Pairs of (key, event row number) as the two arrays a statement takes.
fn split(pairs: &[(DedupKey, i64)]) -> (Vec<&[u8]>, Vec<i64>) {
    pairs.iter().map(|(k, s)| (&k.as_bytes()[..], *s)).unzip()
}

/// What an event of the batch turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// New: stored.
    New,
    /// A retry of the earlier event of the batch with this index (same body).
    SameBodyAs(usize),
    /// A retry of the event holding this key (its body, or its first item).
    Seen(DedupKey),
}

/// The dedup decisions of a batch, made in the order of its events (see the module's
/// header), as far as they can be made before the database answers.
struct Plan<'a> {
    events: &'a [&'a NewEvent],
    /// Per event: `None` until its body key is claimed or found; then its verdict so
    /// far.
    verdicts: Vec<Option<Verdict>>,
}

/// What the batch's claims came to.
struct Outcome {
    /// Per event.
    verdicts: Vec<Verdict>,
    /// Body keys to give back: their event turned out a retry by its items.
    undo: Vec<(DedupKey, i64)>,
    /// Item keys seen before that now point at the newest event listing them (each key
    /// once, the last such event of the batch).
    refresh: Vec<(DedupKey, i64)>,
}

impl<'a> Plan<'a> {
    fn new(events: &'a [&'a NewEvent]) -> Plan<'a> {
        Plan {
            events,
            verdicts: vec![None; events.len()],
        }
    }

    /// The body keys to claim, sorted: each once, for the first event that has it;
    /// later events with the same body are retries of that one.
    fn body_claims(&mut self, seqs: &[i64]) -> (Vec<&'a [u8]>, Vec<i64>) {
        let mut first: HashMap<DedupKey, usize> = HashMap::new();
        let mut claims = Vec::new();
        for (i, event) in self.events.iter().enumerate() {
            let key = event.keys.body;
            match first.get(&key) {
                Some(&j) => self.verdicts[i] = Some(Verdict::SameBodyAs(j)),
                None => {
                    first.insert(key, i);
                    claims.push((&event.keys.body, seqs[i]));
                }
            }
        }
        claims.sort_by_key(|(k, _)| **k);
        claims
            .into_iter()
            .map(|(k, s)| (&k.as_bytes()[..], s))
            .unzip()
    }

    /// Takes the body keys the database gave: the events whose body was seen are
    /// retries.
    fn bodies_taken(&mut self, taken: &HashSet<DedupKey>) {
        for (i, event) in self.events.iter().enumerate() {
            if self.verdicts[i].is_none() && !taken.contains(&event.keys.body) {
                self.verdicts[i] = Some(Verdict::Seen(event.keys.body));
            }
        }
    }

    /// The item keys to claim, sorted: of the events still undecided, each key once,
    /// for the first event that lists it.
    fn item_claims(&self, seqs: &[i64]) -> (Vec<&'a [u8]>, Vec<i64>) {
        let mut seen = HashSet::new();
        let mut claims = Vec::new();
        for (i, event) in self.events.iter().enumerate() {
            if self.verdicts[i].is_some() {
                continue;
            }
            for key in event.keys.items.iter().flatten() {
                if seen.insert(*key) {
                    claims.push((key, seqs[i]));
                }
            }
        }
        claims.sort_by_key(|(k, _)| **k);
        claims
            .into_iter()
            .map(|(k, s)| (&k.as_bytes()[..], s))
            .unzip()
    }

    /// Takes the item keys the database gave and decides every event.
    fn items_taken(self, taken: &HashSet<DedupKey>, seqs: &[i64]) -> Outcome {
        let mut owner: HashMap<DedupKey, usize> = HashMap::new();
        let mut verdicts = Vec::with_capacity(self.events.len());
        let mut undo = Vec::new();
        let mut refresh: HashMap<DedupKey, i64> = HashMap::new();
        for (i, (event, verdict)) in self.events.iter().zip(self.verdicts).enumerate() {
            if let Some(v) = verdict {
                verdicts.push(v);
                continue;
            }
            let Some(items) = event.keys.items.as_ref().filter(|k| !k.is_empty()) else {
                verdicts.push(Verdict::New);
                continue;
            };
            let mut mine = Vec::new();
            let mut others = Vec::new();
            for key in items {
                let first = *owner.entry(*key).or_insert(i);
                if first == i && taken.contains(key) {
                    mine.push(*key);
                } else {
                    others.push(*key);
                }
            }
            if mine.is_empty() {
                let mut sorted = items.clone();
                sorted.sort();
                undo.push((event.keys.body, seqs[i]));
                verdicts.push(Verdict::Seen(sorted[0]));
            } else {
                for key in others {
                    refresh.insert(key, seqs[i]);
                }
                verdicts.push(Verdict::New);
            }
        }
        let mut refresh: Vec<(DedupKey, i64)> = refresh.into_iter().collect();
        refresh.sort();
        Outcome {
            verdicts,
            undo,
            refresh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DedupKeys;

    fn event(body: &str, items: Option<&[&str]>) -> NewEvent {
        NewEvent {
            route: "default".into(),
            deliveries: Vec::new(),
            body: bytes::Bytes::new(),
            signature: String::new(),
            signature_sha1: None,
            keys: DedupKeys {
                body: DedupKey::of(body),
                items: items.map(|i| i.iter().map(|k| DedupKey::of(k)).collect()),
            },
            object: String::new(),
            field: String::new(),
            headers: String::new(),
        }
    }

    /// Runs the plan against a database that remembers `known` keys.
    fn decide(events: &[NewEvent], known: &[&str]) -> Outcome {
        let known: HashSet<DedupKey> = known.iter().map(|k| DedupKey::of(k)).collect();
        let refs: Vec<&NewEvent> = events.iter().collect();
        let seqs: Vec<i64> = (1..=events.len() as i64).collect();
        let mut plan = Plan::new(&refs);
        let (keys, _) = plan.body_claims(&seqs);
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "claimed in key order");
        let taken = keys
            .iter()
            .map(|k| key_of(k))
            .filter(|k| !known.contains(k));
        plan.bodies_taken(&taken.collect());
        let (keys, _) = plan.item_claims(&seqs);
        let taken = keys
            .iter()
            .map(|k| key_of(k))
            .filter(|k| !known.contains(k));
        plan.items_taken(&taken.collect(), &seqs)
    }

    #[test]
    fn copies_within_a_batch_are_retries_of_the_first() {
        let out = decide(&[event("a", None), event("a", None), event("b", None)], &[]);
        assert_eq!(
            out.verdicts,
            [Verdict::New, Verdict::SameBodyAs(0), Verdict::New]
        );
    }

    #[test]
    fn a_body_seen_before_is_a_retry() {
        let out = decide(&[event("a", Some(&["m1"]))], &["a"]);
        assert_eq!(out.verdicts, [Verdict::Seen(DedupKey::of("a"))]);
        assert!(out.undo.is_empty());
    }

    #[test]
    fn every_item_seen_makes_a_retry_and_gives_its_body_key_back() {
        let out = decide(&[event("a2", Some(&["m1", "m2"]))], &["m1", "m2"]);
        let first = DedupKey::of("m1").min(DedupKey::of("m2"));
        assert_eq!(out.verdicts, [Verdict::Seen(first)]);
        assert_eq!(out.undo, [(DedupKey::of("a2"), 1)]);
    }

    #[test]
    fn one_new_item_makes_it_new_and_the_seen_ones_point_at_it() {
        let out = decide(&[event("a2", Some(&["m1", "m2"]))], &["m1"]);
        assert_eq!(out.verdicts, [Verdict::New]);
        assert_eq!(out.refresh, [(DedupKey::of("m1"), 1)]);
    }

    #[test]
    fn an_item_taken_earlier_in_the_batch_is_seen_by_the_later_events() {
        // Meta's retry with a new time arriving beside the first copy.
        let out = decide(
            &[
                event("t1", Some(&["m1"])),
                event("t2", Some(&["m1"])),
                event("t3", Some(&["m1", "m2"])),
            ],
            &[],
        );
        assert_eq!(
            out.verdicts,
            [
                Verdict::New,
                Verdict::Seen(DedupKey::of("m1")),
                Verdict::New
            ]
        );
        assert_eq!(out.undo, [(DedupKey::of("t2"), 2)]);
        assert_eq!(out.refresh, [(DedupKey::of("m1"), 3)]);
    }
}
