//! The read side of the spool that feeds delivery: which deliveries are due, and the
//! body of a large event when its attempt starts. Reads use their own connection, so
//! they never wait for the writer (WAL).

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use super::schema;
use crate::spool::INLINE_BODY_MAX;
use crate::types::{Availability, DestinationKey, DueDelivery};

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

    /// Up to `limit` pending deliveries to `destination` due at `now`, oldest first.
    pub fn due(
        &self,
        destination: &DestinationKey,
        now: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<DueDelivery>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT d.seq, d.id, e.seq, e.id, d.retry_from, d.attempts,
                        COALESCE(d.signature, e.signature),
                        CASE WHEN d.signature IS NULL THEN e.signature_sha1 ELSE d.signature_sha1 END,
                        CASE WHEN e.size <= ?3
                             THEN COALESCE((SELECT o.body FROM delivery_bodies o WHERE o.seq = d.seq),
                                           (SELECT b.body FROM bodies b WHERE b.seq = e.seq)) END,
                        d.split, d.part, d.parts
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.state = 0 AND d.destination = ?4 AND d.next_attempt_at <= ?1
                 ORDER BY d.next_attempt_at, d.seq LIMIT ?2",
            )?;
            let params = params![
                now,
                limit as i64,
                INLINE_BODY_MAX as i64,
                destination.as_str()
            ];
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
