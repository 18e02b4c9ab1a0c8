//! Opening the SQLite database: pragmas for durability (WAL, `synchronous=FULL`) and
//! the schema.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

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
    signature       TEXT    NOT NULL,
    body            BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_pending ON events(next_attempt_at) WHERE state = 0;
CREATE INDEX IF NOT EXISTS events_delivered ON events(received_at) WHERE state = 1;
-- key: the first 16 bytes of the SHA-256 of an identity (body hash or item id).
CREATE TABLE IF NOT EXISTS dedup (
    key       BLOB    PRIMARY KEY,
    event_seq INTEGER NOT NULL,
    seen_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_seen ON dedup(seen_at);
CREATE INDEX IF NOT EXISTS events_dead ON events(finished_at) WHERE state = 2;
PRAGMA user_version = 1;
";

/// The layout version this build reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

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
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("cannot create the spool schema in {}", path.display()))?;
    Ok(conn)
}

/// Applies the pragmas every connection needs.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")?;
    Ok(())
}
