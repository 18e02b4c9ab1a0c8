//! The read side of the spool that feeds delivery: which deliveries are due, and the
//! body of a large event when its attempt starts. Reads use their own connection, so
//! they never wait for the writer (WAL).

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use super::schema;
use crate::spool::{conversations, INLINE_BODY_MAX};
use crate::types::{Availability, ConversationHold, DestinationKey, DueDelivery};

/// A shared read connection.
#[derive(Clone)]
pub struct Queue {
    conn: Arc<Mutex<Connection>>,
}

impl Queue {
    /// Opens a read connection to the spool in `state_dir`.
    pub fn open(state_dir: &Path) -> anyhow::Result<Queue> {
        let conn = schema::connect(state_dir, schema::Access::ReadWrite)?;
        Ok(Queue {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn)
    }

    /// Up to `limit` pending deliveries to `destination` due at `now`, the earliest
    /// due first; with `now` `None` (the destination's probe), whether due or not. With
    /// `hold_cutoff` (a destination that keeps order: now less its `order_hold`), none
    /// held by an earlier delivery of its conversation ([`conversations`]).
    pub fn due(
        &self,
        destination: &DestinationKey,
        now: Option<i64>,
        limit: usize,
        hold_cutoff: Option<i64>,
    ) -> rusqlite::Result<Vec<DueDelivery>> {
        let ordered = match hold_cutoff {
            Some(_) => format!("AND {}", conversations::not_held("d.seq", "?5")),
            None => String::new(),
        };
        let now = now.unwrap_or(i64::MAX);
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT d.seq, d.id, e.seq, e.id, d.retry_from, d.attempts,
                        COALESCE(d.signature, e.signature),
                        CASE WHEN d.signature IS NULL THEN e.signature_sha1 ELSE d.signature_sha1 END,
                        CASE WHEN e.size <= ?3
                             THEN COALESCE((SELECT o.body FROM delivery_bodies o WHERE o.seq = d.seq),
                                           (SELECT b.body FROM bodies b WHERE b.seq = e.seq)) END,
                        d.split, d.part, d.parts
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.state = 0 AND d.destination = ?4 AND d.next_attempt_at <= ?1 {ordered}
                 ORDER BY d.next_attempt_at, d.seq LIMIT ?2",
            ))?;
            let (limit, inline) = (limit as i64, INLINE_BODY_MAX as i64);
            let key = destination.as_str();
            let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&now, &limit, &inline, &key];
            if let Some(cutoff) = &hold_cutoff {
                bound.push(cutoff);
            }
            let params = bound.as_slice();
            let rows = stmt.query_map(params, |r| {
                Ok(DueDelivery {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    event_seq: r.get(2)?,
                    event_id: r.get(3)?,
                    destination: destination.clone(),
                    part: r
                        .get::<_, bool>(9)?
                        .then(|| Ok::<_, rusqlite::Error>((r.get(10)?, r.get(11)?)))
                        .transpose()?,
                    retry_from: r.get(4)?,
                    attempts: r.get(5)?,
                    signature: r.get(6)?,
                    signature_sha1: r.get(7)?,
                    body: r.get::<_, Option<Vec<u8>>>(8)?.map(Bytes::from),
                })
            })?;
            rows.collect()
        })
    }

    /// When the next pending delivery to `destination` becomes due (unix ms), if any.
    pub fn next_due_at(&self, destination: &DestinationKey) -> rusqlite::Result<Option<i64>> {
        self.with(|conn| {
            conn.prepare_cached(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 0 AND destination = ?1",
            )?
            .query_row([destination.as_str()], |r| r.get(0))
        })
    }

    /// The stored state of `destination` (up or down).
    pub fn availability(&self, destination: &DestinationKey) -> rusqlite::Result<Availability> {
        self.with(|conn| super::availability::load(conn, destination))
    }

    /// When the next pending delivery to `destination` falls due after `now` (unix
    /// ms), if any ([`conversations::NEXT_RETRY`]).
    pub fn next_retry_at(
        &self,
        destination: &DestinationKey,
        now: i64,
    ) -> rusqlite::Result<Option<i64>> {
        self.with(|conn| {
            conn.prepare_cached(conversations::NEXT_RETRY)?
                .query_row(params![destination.as_str(), now], |r| r.get(0))
        })
    }

    /// What delivery `seq` still holds of its conversations ([`conversations::HOLD`]).
    pub fn hold(&self, seq: i64) -> rusqlite::Result<ConversationHold> {
        self.with(|conn| {
            conn.prepare_cached(conversations::HOLD)?
                .query_row([seq], |r| {
                    Ok(ConversationHold {
                        keys: r.get::<_, i64>(0)? as usize,
                        failed_at: r.get(1)?,
                    })
                })
        })
    }

    /// The body delivery `seq` sends: its own (narrowed, split), else its event's.
    pub fn body(&self, seq: i64) -> rusqlite::Result<Option<Bytes>> {
        self.with(|conn| {
            conn.prepare_cached(
                "SELECT COALESCE((SELECT o.body FROM delivery_bodies o WHERE o.seq = d.seq),
                                 (SELECT b.body FROM bodies b WHERE b.seq = d.event_seq))
                 FROM deliveries d WHERE d.seq = ?1",
            )?
            .query_row([seq], |r| r.get::<_, Option<Vec<u8>>>(0))
            .optional()
            .map(|b| b.flatten().map(Bytes::from))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new spool with deliveries 1 to 5 to `r/d`, all due: 1 and 2 in conversation
    /// A, 3 in B, 4 in both, 5 in none.
    fn spool() -> (tempfile::TempDir, Connection, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let conn = schema::open(dir.path(), &|_: &[u8]| unreachable!("a new spool")).unwrap();
        conn.execute_batch(
            "INSERT INTO events (seq, id, received_at, size, signature) VALUES (1, 'e', 0, 2, 's');
             INSERT INTO bodies (seq, body) VALUES (1, x'7b7d');
             INSERT INTO deliveries (seq, id, event_seq, destination, next_attempt_at, retry_from)
             VALUES (1, 'd1', 1, 'r/d', 0, 0), (2, 'd2', 1, 'r/d', 0, 0), (3, 'd3', 1, 'r/d', 0, 0),
                    (4, 'd4', 1, 'r/d', 0, 0), (5, 'd5', 1, 'r/d', 0, 0);
             INSERT INTO conversations (delivery_seq, key, destination)
             VALUES (1, 'a', 'r/d'), (2, 'a', 'r/d'), (3, 'b', 'r/d'), (4, 'a', 'r/d'),
                    (4, 'b', 'r/d');",
        )
        .unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        (dir, conn, queue)
    }

    fn due(queue: &Queue, hold_cutoff: Option<i64>) -> Vec<i64> {
        let destination = DestinationKey::from_stored("r/d".into());
        queue
            .due(&destination, Some(1000), 10, hold_cutoff)
            .unwrap()
            .iter()
            .map(|d| d.seq)
            .collect()
    }

    #[test]
    fn a_delivery_waits_while_an_earlier_one_holds_its_conversation() {
        let (_dir, conn, queue) = spool();
        assert_eq!(due(&queue, None), [1, 2, 3, 4, 5], "not ordered: all");
        assert_eq!(due(&queue, Some(0)), [1, 3, 5]);
        // 1 delivered (its record ends its hold): 2 goes; 4 waits for 2 and 3.
        conn.execute_batch(
            "UPDATE deliveries SET state = 1 WHERE seq = 1;
             UPDATE conversations SET holding = 0 WHERE delivery_seq = 1;",
        )
        .unwrap();
        assert_eq!(due(&queue, Some(0)), [2, 3, 5]);
        // 2 fails at 500 and keeps failing: it holds A until its order_hold runs out.
        conn.execute(
            "UPDATE conversations SET failed_at = 500 WHERE delivery_seq = 2",
            [],
        )
        .unwrap();
        assert_eq!(due(&queue, Some(499)), [2, 3, 5]);
        conn.execute("DELETE FROM conversations WHERE delivery_seq = 3", [])
            .unwrap();
        assert_eq!(due(&queue, Some(499)), [2, 3, 5], "4 still waits for 2");
        assert_eq!(due(&queue, Some(500)), [2, 3, 4, 5], "2's hold ran out");
        // 1 replayed: it holds A again, from its own row number.
        conn.execute("UPDATE deliveries SET state = 0 WHERE seq = 1", [])
            .unwrap();
        let (holding, failed_at): (bool, Option<i64>) = conn
            .query_row(
                "SELECT holding, failed_at FROM conversations WHERE delivery_seq = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(holding && failed_at.is_none());
        assert_eq!(due(&queue, Some(500)), [1, 3, 5]);
        // A delivery deleted (its event pruned or purged) takes its keys along.
        conn.execute("DELETE FROM deliveries WHERE seq = 1", [])
            .unwrap();
        let left: i64 = conn
            .query_row(
                "SELECT count(*) FROM conversations WHERE delivery_seq = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
        assert_eq!(
            queue.hold(2).unwrap(),
            ConversationHold {
                keys: 1,
                failed_at: Some(500)
            }
        );
    }

    #[test]
    fn the_next_retry_is_the_first_due_after_now() {
        let (_dir, conn, queue) = spool();
        let destination = DestinationKey::from_stored("r/d".into());
        assert_eq!(queue.next_retry_at(&destination, 0).unwrap(), None);
        conn.execute_batch(
            "UPDATE deliveries SET next_attempt_at = 700 WHERE seq = 4;
             UPDATE deliveries SET next_attempt_at = 500 WHERE seq = 2;",
        )
        .unwrap();
        assert_eq!(queue.next_retry_at(&destination, 0).unwrap(), Some(500));
        assert_eq!(queue.next_retry_at(&destination, 500).unwrap(), Some(700));
        let other = DestinationKey::from_stored("r/e".into());
        assert_eq!(queue.next_retry_at(&other, 0).unwrap(), None);
    }

    #[test]
    fn whether_a_delivery_is_held_is_one_index_probe_per_key() {
        let (_dir, conn, _queue) = spool();
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT d.seq FROM deliveries d
             WHERE d.state = 0 AND d.destination = 'r/d' AND d.next_attempt_at <= 1000 AND {}",
            conversations::not_held("d.seq", "0")
        );
        let plan: Vec<String> = conn
            .prepare(&sql)
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("deliveries_due"), "{plan}");
        assert!(
            plan.contains("USING PRIMARY KEY (delivery_seq=?)"),
            "{plan}"
        );
        assert!(
            plan.contains("conversations_holding (destination=? AND key=? AND delivery_seq<?)"),
            "{plan}"
        );
    }
}
