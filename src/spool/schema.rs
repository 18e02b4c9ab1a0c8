//! Opening the SQLite database: pragmas for durability (WAL, `synchronous=FULL`) and
//! the schema.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, TransactionBehavior};
use sha2::{Digest, Sha256};

/// The file name of the spool inside the state directory.
pub const DB_FILE: &str = "spool.sqlite3";

/// Event states as stored.
pub mod state {
    /// The name of a state, as shown to operators.
    pub fn name(state: i64) -> &'static str {
        match state {
            PENDING => "pending",
            DELIVERED => "delivered",
            DEAD => "dead",
            _ => "unknown",
        }
    }

    /// Waiting for (another) delivery attempt.
    pub const PENDING: i64 = 0;
    /// The upstream answered 2xx.
    pub const DELIVERED: i64 = 1;
    /// Given up: kept, listed and replayable.
    pub const DEAD: i64 = 2;
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    received_at     INTEGER NOT NULL,
    state           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    finished_at     INTEGER,
    last_error      TEXT,
    retry_from      INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    object          TEXT    NOT NULL DEFAULT '',
    field           TEXT    NOT NULL DEFAULT '',
    headers         TEXT    NOT NULL DEFAULT '{}',
    signature       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_pending ON events(next_attempt_at) WHERE state = 0;
CREATE INDEX IF NOT EXISTS events_delivered ON events(received_at) WHERE state = 1;
-- The bodies, apart from the rows that delivery updates: recording an outcome then
-- rewrites a short row, not a page full of body.
CREATE TABLE IF NOT EXISTS bodies (
    seq  INTEGER PRIMARY KEY,
    body BLOB    NOT NULL
);
CREATE TRIGGER IF NOT EXISTS events_delete_body AFTER DELETE ON events
BEGIN
    DELETE FROM bodies WHERE seq = OLD.seq;
END;
-- key: the first 16 bytes of the SHA-256 of an identity (body hash or item id).
CREATE TABLE IF NOT EXISTS dedup (
    key       BLOB    PRIMARY KEY,
    event_seq INTEGER NOT NULL,
    seen_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_seen ON dedup(seen_at);
CREATE INDEX IF NOT EXISTS events_dead ON events(finished_at) WHERE state = 2;
";

/// The layout version this build reads and writes (`PRAGMA user_version`).
/// 1: dedup keys stored as text with the event's id; 2: as [`dedup_key`] hashes with the
/// event's `seq`; 3: bodies in a table of their own.
pub const SCHEMA_VERSION: i64 = 3;

/// The stored form of a dedup identity (body hash or item id): the first 16 bytes of
/// its SHA-256.
pub fn dedup_key(identity: &str) -> [u8; 16] {
    let digest = Sha256::digest(identity.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Opens (and creates if needed) the spool database in `state_dir`, with WAL and
/// `synchronous=FULL`, so that a committed transaction survives a crash or power loss.
pub fn open(state_dir: &Path) -> anyhow::Result<Connection> {
    let path = state_dir.join(DB_FILE);
    let conn = Connection::open(&path)
        .with_context(|| format!("cannot open the spool {}", path.display()))?;
    configure(&conn).with_context(|| format!("cannot prepare the spool {}", path.display()))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .with_context(|| format!("cannot read the spool {}", path.display()))?;
    if version > SCHEMA_VERSION {
        anyhow::bail!(
            "the spool {} was written by a newer xhubd (layout {version}, this one reads {SCHEMA_VERSION})",
            path.display()
        );
    }
    let mut conn = conn;
    apply_schema(&mut conn)
        .with_context(|| format!("cannot create the spool schema in {}", path.display()))?;
    Ok(conn)
}

/// Creates what is missing and upgrades an older layout, in one transaction, so that
/// connections opening at the same time never see half a layout.
fn apply_schema(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let text_keys: i64 = tx.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('dedup') WHERE name = 'event_id'",
        [],
        |r| r.get(0),
    )?;
    if text_keys > 0 {
        // Layout 1: rebuild the dedup table with hashed keys, keeping every identity
        // and when it was seen. An identity whose event was already deleted points at
        // seq 0 (its duplicates are then reported as `#0`).
        tx.execute_batch("ALTER TABLE dedup RENAME TO dedup_v1; DROP INDEX dedup_seen;")?;
        tx.execute_batch(SCHEMA)?;
        {
            let mut read = tx.prepare(
                "SELECT d.key, COALESCE(e.seq, 0), d.seen_at
                 FROM dedup_v1 d LEFT JOIN events e ON e.id = d.event_id",
            )?;
            let mut write = tx.prepare(
                "INSERT OR REPLACE INTO dedup (key, event_seq, seen_at) VALUES (?1, ?2, ?3)",
            )?;
            let mut rows = read.query([])?;
            while let Some(row) = rows.next()? {
                let identity: String = row.get(0)?;
                let seq: i64 = row.get(1)?;
                let seen_at: i64 = row.get(2)?;
                write.execute(params![&dedup_key(&identity)[..], seq, seen_at])?;
            }
        }
        tx.execute_batch("DROP TABLE dedup_v1;")?;
    }
    tx.execute_batch(SCHEMA)?;
    let inline_bodies: i64 = tx.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'body'",
        [],
        |r| r.get(0),
    )?;
    if inline_bodies > 0 {
        // Layouts 1 and 2: bodies move out of the events rows.
        tx.execute_batch(
            "INSERT OR REPLACE INTO bodies (seq, body) SELECT seq, body FROM events;
             ALTER TABLE events DROP COLUMN body;",
        )?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
    tx.commit()
}

/// Applies the pragmas every connection needs.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    // Plans never depend on bound values. Without this, a statement whose parameter
    // the planner looked at (the dedup lookup's time cutoff, next to the partial
    // indexes) is compiled again whenever that value changes: once per event.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events table of layouts 1 and 2, bodies inside the rows.
    const EVENTS_WITH_BODIES: &str = "
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, received_at INTEGER NOT NULL,
            state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL, finished_at INTEGER, last_error TEXT,
            retry_from INTEGER NOT NULL, size INTEGER NOT NULL,
            object TEXT NOT NULL DEFAULT '', field TEXT NOT NULL DEFAULT '',
            headers TEXT NOT NULL DEFAULT '{}', signature TEXT NOT NULL, body BLOB NOT NULL);
    ";

    /// What a layout-1 spool holds: one event and the text keys it was accepted under.
    const LAYOUT_1: &str = "
        CREATE TABLE dedup (key TEXT PRIMARY KEY, event_id TEXT NOT NULL,
            seen_at INTEGER NOT NULL) WITHOUT ROWID;
        CREATE INDEX dedup_seen ON dedup(seen_at);
        INSERT INTO events (seq, id, received_at, next_attempt_at, retry_from, size, signature, body)
            VALUES (7, 'evt-7', 1000, 1000, 1000, 2, 'sha256=00', x'7b7d');
        INSERT INTO dedup VALUES ('body:abc', 'evt-7', 1000), ('wamid.X', 'evt-7', 1000),
            ('body:gone', 'evt-deleted', 900);
        PRAGMA user_version = 1;
    ";

    /// A spool written as `layout` (SQL, after [`EVENTS_WITH_BODIES`]), opened by this
    /// build: it must be at the current layout afterwards.
    fn upgraded(layout: &str) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join(DB_FILE)).unwrap();
        old.execute_batch(EVENTS_WITH_BODIES).unwrap();
        old.execute_batch(layout).unwrap();
        drop(old);
        let conn = open(dir.path()).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        (dir, conn)
    }

    #[test]
    fn a_layout_1_spool_is_upgraded_with_every_identity_kept() {
        let (dir, conn) = upgraded(LAYOUT_1);
        let mut rows: Vec<(Vec<u8>, i64, i64)> = conn
            .prepare("SELECT key, event_seq, seen_at FROM dedup ORDER BY seen_at, event_seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        rows.sort();
        let mut expected = vec![
            (dedup_key("body:abc").to_vec(), 7, 1000),
            (dedup_key("wamid.X").to_vec(), 7, 1000),
            (dedup_key("body:gone").to_vec(), 0, 900),
        ];
        expected.sort();
        assert_eq!(rows, expected);
        let indexed: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'dedup_seen' AND tbl_name = 'dedup'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexed, 1);
        assert_eq!(bodies(&conn), [(7, b"{}".to_vec())]);
        drop(conn);
        // A second open finds the current layout and changes nothing.
        let again = open(dir.path()).unwrap();
        let count: i64 = again
            .query_row("SELECT COUNT(*) FROM dedup", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 3);
    }

    /// The event rows' columns and the bodies table, as (seq, body).
    fn bodies(conn: &Connection) -> Vec<(i64, Vec<u8>)> {
        let inline: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'body'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(inline, 0, "events rows no longer hold bodies");
        conn.prepare("SELECT seq, body FROM bodies ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// A layout-2 spool: bodies inside the events rows, one delivered and one pending.
    const LAYOUT_2: &str = "
        CREATE INDEX events_pending ON events(next_attempt_at) WHERE state = 0;
        CREATE INDEX events_delivered ON events(received_at) WHERE state = 1;
        CREATE TABLE dedup (key BLOB PRIMARY KEY, event_seq INTEGER NOT NULL,
            seen_at INTEGER NOT NULL) WITHOUT ROWID;
        CREATE INDEX dedup_seen ON dedup(seen_at);
        CREATE INDEX events_dead ON events(finished_at) WHERE state = 2;
        INSERT INTO events (seq, id, received_at, state, next_attempt_at, retry_from, size, signature, body)
            VALUES (1, 'evt-1', 1000, 1, 1000, 1000, 9, 'sha256=01', x'7b2261223a317d0a0a'),
                   (2, 'evt-2', 2000, 0, 2000, 2000, 2, 'sha256=02', x'7b7d');
        PRAGMA user_version = 2;
    ";

    #[test]
    fn a_layout_2_spool_keeps_every_body_and_pending_event() {
        let (_dir, conn) = upgraded(LAYOUT_2);
        assert_eq!(
            bodies(&conn),
            [(1, b"{\"a\":1}\n\n".to_vec()), (2, b"{}".to_vec())]
        );
        let pending: Vec<(String, i64)> = conn
            .prepare("SELECT id, next_attempt_at FROM events WHERE state = 0")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(pending, [("evt-2".to_owned(), 2000)]);
        // Deleting an event (pruning, purging) deletes its body.
        conn.execute("DELETE FROM events WHERE seq = 1", [])
            .unwrap();
        assert_eq!(bodies(&conn), [(2, b"{}".to_vec())]);
    }

    #[test]
    fn a_spool_from_a_newer_layout_is_refused_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .execute_batch(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 1))
            .unwrap();
        let error = format!("{:#}", open(dir.path()).unwrap_err());
        assert!(error.contains("written by a newer xhubd"), "{error}");
        assert!(
            error.contains(&format!("layout {}", SCHEMA_VERSION + 1)),
            "{error}"
        );
    }
}
