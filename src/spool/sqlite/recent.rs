//! The identities accepted lately, kept in arrival order and in memory, and merged into
//! the key-ordered `dedup` table in sorted slices.
//!
//! An identity is the first 16 bytes of a SHA-256 ([`crate::types::DedupKey`]), so a
//! new one lands on a random page of a table ordered by key: one page of the log (and
//! later of the file) written per event, whatever else the batch writes. The writer
//! appends each new event's identities to `dedup_recent` instead, in arrival order (a
//! batch's identities share its last pages), and keeps them in memory, where lookups
//! find them first. Once [`RECENT_MAX`] of them are held, or the oldest has waited
//! [`MERGE_AFTER`] (at most), they are sorted by key and merged into `dedup` a slice
//! per batch: neighbouring keys share a page, so a page is written once for all of a
//! slice's keys on it. When the last slice is merged the merged rows leave
//! `dedup_recent` in the same transaction.
//!
//! Everything here is written in the batch's own transaction, and the memory follows
//! only what committed: a failed commit undoes the batch's identities
//! ([`Recent::roll_back`]) and leaves the merge where it was. A crash loses nothing:
//! at start the memory is read back from `dedup_recent`, and a merge cut short is done
//! again (merging is idempotent: a slice writes each key's newest sighting).
//!
//! Measured (`bench/RESULTS.md`, 2026-12-01, with `dedup`'s time index by the second):
//! C at 1 KiB on a fresh spool accepted 20,300-22,000 events/s against 12,900-17,400,
//! writing 8.7 KiB per event against 14.7; a third less written with 4,000,000
//! identities remembered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, Transaction};

use crate::types::DedupKey;

/// Identities held in memory before a merge starts: 32,768. A merge moves half again
/// as many keys per batch as the batch adds, so at most two thirds of a run arrive while
/// it is merged, and the memory, sized once for 57,344, never grows: 65,536 slots of 40
/// bytes (2.6 MiB) and the merge's sorted copy (1.3 MiB). A larger run shares more pages
/// with a large table (with 4,000,000 identities remembered, 32,768 keys write about
/// 0.6 pages each), but costs RSS, which the aim of 48 MiB at 1 KiB bounds.
pub const RECENT_MAX: usize = 32 << 10;

/// Longest an identity waits in `dedup_recent` before a merge starts, even when few
/// have arrived (or the writer's pruning interval, when shorter).
pub const MERGE_AFTER: Duration = Duration::from_secs(60);

/// Keys merged with each batch, at least. A slice is otherwise one and a half times the
/// identities the batch added: the merge keeps ahead of arrivals, and its pages are
/// spread over the batches rather than written in a burst that would hold up the
/// requests of a few commits.
const SLICE_MIN: usize = 64;

/// One identity's newest sighting: the event that carried it, when (ms since the Unix
/// epoch), and its row in `dedup_recent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    /// `events.seq` of the event.
    pub event_seq: i64,
    /// When it was accepted, ms since the Unix epoch.
    pub seen_at: i64,
    /// `dedup_recent.arrival`: its place in arrival order.
    arrival: i64,
}

/// A merge under way: every identity that had arrived by `upto`, sorted by key, and how
/// many of them are merged.
#[derive(Debug)]
struct Merge {
    upto: i64,
    run: Vec<(DedupKey, Sighting)>,
    done: usize,
}

/// The identities in `dedup_recent`, in memory, and the merge of them into `dedup`.
#[derive(Debug)]
pub struct Recent {
    held: HashMap<DedupKey, Sighting>,
    /// What the batch being written changed, to undo it if its commit fails: each key
    /// with what it held before.
    undo: Vec<(DedupKey, Option<Sighting>)>,
    merge: Option<Merge>,
    /// The merge slice written in the batch being committed: (`done` once committed,
    /// whether it was the last).
    slice: Option<(usize, bool)>,
    /// Whether the merge started in the batch being committed: its run was taken with
    /// the batch's identities in memory, so a failed commit drops it.
    started: bool,
    /// When the oldest identity not being merged arrived.
    oldest: Option<Instant>,
    max: usize,
    after: Duration,
}

impl Recent {
    /// Reads `dedup_recent` back (after a restart, or a crash in the middle of a merge).
    /// `merge_after` is [`MERGE_AFTER`] or shorter.
    pub fn load(conn: &Connection, merge_after: Duration) -> rusqlite::Result<Recent> {
        let mut recent = Recent {
            held: HashMap::with_capacity(RECENT_MAX * 7 / 4),
            undo: Vec::new(),
            merge: None,
            slice: None,
            started: false,
            oldest: None,
            max: RECENT_MAX,
            after: merge_after.min(MERGE_AFTER),
        };
        let mut rows = conn.prepare(
            "SELECT key, event_seq, seen_at, arrival FROM dedup_recent ORDER BY arrival",
        )?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            let key = row.get_ref(0)?.as_blob()?;
            // A key of another length was never written by xhubd: it matches nothing.
            let Ok(key) = <[u8; 16]>::try_from(key) else {
                continue;
            };
            let key = DedupKey::from_bytes(key);
            let sighting = Sighting {
                event_seq: row.get(1)?,
                seen_at: row.get(2)?,
                arrival: row.get(3)?,
            };
            recent.held.insert(key, sighting);
        }
        if !recent.held.is_empty() {
            recent.oldest = Some(Instant::now());
        }
        Ok(recent)
    }

    /// The newest sighting of `key` among the recent identities, this batch's included.
    pub fn get(&self, key: &DedupKey) -> Option<Sighting> {
        self.held.get(key).copied()
    }

    /// How many identities are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Appends `key`, carried by event `event_seq` accepted at `now`, to `dedup_recent`
    /// within the batch's transaction, and holds it (undone by [`Recent::roll_back`]).
    pub fn remember(
        &mut self,
        tx: &Transaction<'_>,
        key: &DedupKey,
        event_seq: i64,
        now: i64,
    ) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "INSERT INTO dedup_recent (key, event_seq, seen_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![&key.as_bytes()[..], event_seq, now])?;
        let sighting = Sighting {
            event_seq,
            seen_at: now,
            arrival: tx.last_insert_rowid(),
        };
        let before = self.held.insert(*key, sighting);
        self.undo.push((*key, before));
        self.oldest.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Writes the next slice of the merge (starting one when it is due) within the
    /// batch's transaction, after its events: 1.5 x the identities the batch
    /// remembered, at least [`SLICE_MIN`].
    pub fn merge_slice(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if self.merge.is_none() {
            let due = self.held.len() >= self.max
                || self.oldest.is_some_and(|at| at.elapsed() >= self.after);
            if !due {
                return Ok(());
            }
            // Only what had committed before this batch: its own identities wait for the
            // next merge, so a failed commit has nothing to take back from the run.
            let batch: std::collections::HashSet<DedupKey> =
                self.undo.iter().map(|(key, _)| *key).collect();
            let mut run: Vec<(DedupKey, Sighting)> = self
                .held
                .iter()
                .filter(|(key, _)| !batch.contains(*key))
                .map(|(key, sighting)| (*key, *sighting))
                .collect();
            if run.is_empty() {
                return Ok(());
            }
            run.sort_unstable_by_key(|(key, _)| *key);
            let upto = run.iter().map(|(_, s)| s.arrival).max().unwrap_or(0);
            self.merge = Some(Merge { upto, run, done: 0 });
            self.started = true;
            self.oldest = (!batch.is_empty()).then(Instant::now);
        }
        let Some(merge) = &self.merge else {
            return Ok(());
        };
        let added = self.undo.len();
        let end = (merge.done + SLICE_MIN.max(added + added.div_ceil(2))).min(merge.run.len());
        let mut write = tx.prepare_cached(
            "INSERT OR REPLACE INTO dedup (key, event_seq, seen_at) VALUES (?1, ?2, ?3)",
        )?;
        for (key, sighting) in &merge.run[merge.done..end] {
            write.execute(params![
                &key.as_bytes()[..],
                sighting.event_seq,
                sighting.seen_at
            ])?;
        }
        let last = end == merge.run.len();
        if last {
            tx.prepare_cached("DELETE FROM dedup_recent WHERE arrival <= ?1")?
                .execute([merge.upto])?;
        }
        self.slice = Some((end, last));
        Ok(())
    }

    /// The batch committed: its identities stay, and the merge moves on.
    pub fn committed(&mut self) {
        self.undo.clear();
        self.started = false;
        let Some((done, last)) = self.slice.take() else {
            return;
        };
        let Some(merge) = &mut self.merge else {
            return;
        };
        merge.done = done;
        if last {
            let upto = merge.upto;
            // A key seen again since the run was taken stays, with its newer sighting.
            self.held.retain(|_, sighting| sighting.arrival > upto);
            self.merge = None;
        }
    }

    /// The batch's commit failed: nothing of it was written, so the memory forgets its
    /// identities and the merge stays where it was (or starts again, if it started in
    /// this batch: a key the batch saw again left the run).
    pub fn roll_back(&mut self) {
        if std::mem::take(&mut self.started) {
            self.merge = None;
        }
        for (key, before) in self.undo.drain(..).rev() {
            match before {
                Some(sighting) => self.held.insert(key, sighting),
                None => self.held.remove(&key),
            };
        }
        self.slice = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::TransactionBehavior;

    fn spool() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE dedup (key BLOB PRIMARY KEY, event_seq INTEGER NOT NULL,
                                 seen_at INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE dedup_recent (arrival INTEGER PRIMARY KEY, key BLOB NOT NULL,
                                        event_seq INTEGER NOT NULL, seen_at INTEGER NOT NULL);",
        )
        .unwrap();
        conn
    }

    fn key(n: u32) -> DedupKey {
        DedupKey::of(&format!("item-{n}"))
    }

    /// One batch: remembers `keys` as event `seq`, writes a merge slice, commits (or
    /// fails the commit and rolls back).
    fn batch(conn: &mut Connection, recent: &mut Recent, keys: &[u32], seq: i64, commit: bool) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        for n in keys {
            recent.remember(&tx, &key(*n), seq, 1000 + seq).unwrap();
        }
        recent.merge_slice(&tx).unwrap();
        if commit {
            tx.commit().unwrap();
            recent.committed();
        } else {
            drop(tx);
            recent.roll_back();
        }
    }

    fn in_table(conn: &Connection, table: &str) -> Vec<(Vec<u8>, i64)> {
        conn.prepare(&format!(
            "SELECT key, event_seq FROM {table} ORDER BY key, event_seq"
        ))
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    fn small(conn: &Connection, max: usize) -> Recent {
        let mut recent = Recent::load(conn, MERGE_AFTER).unwrap();
        recent.max = max;
        recent
    }

    /// A spool whose recent identities merge once `max` are held, after `n` batches of
    /// one identity each (identity `seq` carried by event `seq`).
    fn after_batches(max: usize, n: i64) -> (Connection, Recent) {
        let mut conn = spool();
        let mut recent = small(&conn, max);
        for seq in 0..n {
            batch(&mut conn, &mut recent, &[seq as u32], seq, true);
        }
        (conn, recent)
    }

    #[test]
    fn a_merge_moves_every_identity_into_the_table_in_slices_and_empties_the_log() {
        // The batch that brings the 100th identity starts the merge, with the 99
        // committed before it.
        let (mut conn, mut recent) = after_batches(100, 100);
        let mut seq = 100;
        let mut slices = 1;
        while recent.merge.is_some() {
            assert!(seq < 110, "the merge does not end");
            batch(&mut conn, &mut recent, &[seq as u32], seq, true);
            seq += 1;
            slices += 1;
        }
        assert!(slices > 1, "99 identities merge in more than one slice");
        assert_eq!(in_table(&conn, "dedup").len(), 99);
        assert_eq!(in_table(&conn, "dedup_recent").len(), recent.len());
        assert_eq!(recent.len(), (seq - 99) as usize);
        for n in 0..seq {
            let found = recent.get(&key(n as u32)).map(|s| s.event_seq);
            let stored: Option<i64> = conn
                .query_row(
                    "SELECT event_seq FROM dedup WHERE key = ?1",
                    [&key(n as u32).as_bytes()[..]],
                    |r| r.get(0),
                )
                .ok();
            assert_eq!(found.or(stored), Some(n), "identity {n}");
        }
    }

    #[test]
    fn a_failed_commit_forgets_its_identities_and_keeps_the_merge_where_it_was() {
        let (mut conn, mut recent) = after_batches(81, 80);
        // This batch starts a merge (81 identities) and sees identity 3 again.
        batch(&mut conn, &mut recent, &[80, 3], 80, false);
        assert_eq!(recent.get(&key(80)), None);
        assert_eq!(recent.get(&key(3)).map(|s| s.event_seq), Some(3));
        assert!(in_table(&conn, "dedup").is_empty());
        // The merge runs again in full from the next batch on.
        batch(&mut conn, &mut recent, &[81], 81, true);
        batch(&mut conn, &mut recent, &[82], 82, true);
        assert_eq!(in_table(&conn, "dedup").len(), 80);
        assert_eq!(recent.len(), 2);
    }

    #[test]
    fn a_key_seen_again_during_a_merge_keeps_its_newer_sighting() {
        let (mut conn, mut recent) = after_batches(100, 100);
        // Identity 5, in the merge's run, comes again with event 700 while it runs.
        batch(&mut conn, &mut recent, &[5], 700, true);
        batch(&mut conn, &mut recent, &[], 701, true);
        assert!(recent.merge.is_none());
        assert_eq!(recent.get(&key(5)).map(|s| s.event_seq), Some(700));
        assert_eq!(recent.len(), 2, "identities 99 and 5");
        let reloaded = Recent::load(&conn, MERGE_AFTER).unwrap();
        assert_eq!(reloaded.get(&key(5)).map(|s| s.event_seq), Some(700));
        assert_eq!(reloaded.len(), 2);
    }

    #[test]
    fn after_a_crash_in_the_middle_of_a_merge_every_identity_is_read_back() {
        let (mut conn, mut recent) = after_batches(200, 200);
        batch(&mut conn, &mut recent, &[200], 200, true);
        let merged = in_table(&conn, "dedup").len();
        assert!(
            merged > 0 && merged < 200,
            "part of the run merged: {merged}"
        );
        // The writer stops here; a new one reads the log back and merges it again.
        let mut recent = small(&conn, 200);
        assert_eq!(recent.len(), 201);
        for n in 0..=200 {
            assert!(recent.get(&key(n)).is_some(), "identity {n}");
        }
        let mut seq = 201;
        while !in_table(&conn, "dedup_recent")
            .iter()
            .all(|(_, s)| *s > 200)
        {
            batch(&mut conn, &mut recent, &[], seq, true);
            seq += 1;
            assert!(seq < 220, "the merge does not end");
        }
        assert_eq!(in_table(&conn, "dedup").len(), 201);
    }

    #[test]
    fn an_old_identity_is_merged_even_when_few_arrive() {
        let mut conn = spool();
        let mut recent = Recent::load(&conn, Duration::ZERO).unwrap();
        batch(&mut conn, &mut recent, &[1], 1, true);
        batch(&mut conn, &mut recent, &[2], 2, true);
        assert_eq!(in_table(&conn, "dedup").len(), 1);
        assert_eq!(recent.len(), 1);
        assert_eq!(recent.get(&key(2)).map(|s| s.event_seq), Some(2));
    }
}
