//! Opening the SQLite database: pragmas for durability (WAL, `synchronous=FULL`), the
//! schema, and the upgrade of a spool an earlier release wrote. Only the daemon creates
//! or upgrades a spool ([`open`]); the operator's commands [`connect`] to one at this
//! build's layout, so they never change a layout under a running daemon.

use std::fs::{File, TryLockError};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::types::DedupKeys;

/// The file name of the spool inside the state directory.
pub const DB_FILE: &str = "spool.sqlite3";

/// The file in the state directory whose lock keeps two processes from writing one spool.
pub const LOCK_FILE: &str = "xhubd.lock";

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

/// The current layout. Statements are idempotent: they create what is missing.
pub(super) const SCHEMA: &str = "
-- One row per accepted event: what Meta sent, never changed afterwards.
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    received_at     INTEGER NOT NULL,
    route           TEXT    NOT NULL DEFAULT 'default',
    size            INTEGER NOT NULL,
    object          TEXT    NOT NULL DEFAULT '',
    field           TEXT    NOT NULL DEFAULT '',
    headers         TEXT    NOT NULL DEFAULT '{}',
    signature       TEXT    NOT NULL,
    signature_sha1  TEXT
);
CREATE INDEX IF NOT EXISTS events_received ON events(received_at);
-- The bodies, apart from the rows that delivery updates: recording an outcome then
-- rewrites a short row, not a page full of body.
CREATE TABLE IF NOT EXISTS bodies (
    seq  INTEGER PRIMARY KEY,
    body BLOB    NOT NULL
);
-- One row per (event, destination, part): its own state, attempts and backoff.
-- state: 0 pending, 1 delivered, 2 dead (types::DeliveryState).
CREATE TABLE IF NOT EXISTS deliveries (
    seq             INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL,
    event_seq       INTEGER NOT NULL,
    destination     TEXT    NOT NULL,
    part            INTEGER NOT NULL DEFAULT 1,
    parts           INTEGER NOT NULL DEFAULT 1,
    state           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    retry_from      INTEGER NOT NULL,
    finished_at     INTEGER,
    last_error      TEXT,
    split           INTEGER NOT NULL DEFAULT 0,
    signature       TEXT,
    signature_sha1  TEXT
);
-- A delivery's own bytes (narrowed to the items its destination takes, or one item),
-- when not the event's body; signature and signature_sha1 are then its own too.
CREATE TABLE IF NOT EXISTS delivery_bodies (
    seq  INTEGER PRIMARY KEY,
    body BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(destination, next_attempt_at)
    WHERE state = 0;
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries(finished_at) WHERE state = 2;
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries(event_seq);
-- Every attempt at a delivery: when, its result (a state code), the destination's
-- status if it answered, and the error or the first bytes of its answer.
-- Clustered by delivery: one b-tree, no index to keep.
CREATE TABLE IF NOT EXISTS attempts (
    delivery_seq INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    result       INTEGER NOT NULL,
    status       INTEGER,
    detail       TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (delivery_seq, attempt)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS events_delete_body AFTER DELETE ON events
BEGIN
    DELETE FROM bodies WHERE seq = OLD.seq;
    DELETE FROM deliveries WHERE event_seq = OLD.seq;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_delete_attempts AFTER DELETE ON deliveries
BEGIN
    DELETE FROM attempts WHERE delivery_seq = OLD.seq;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_delete_body AFTER DELETE ON deliveries
BEGIN
    DELETE FROM delivery_bodies WHERE seq = OLD.seq;
END;
-- The conversations of each delivery to a destination with order = 'conversation'
-- (spool::conversations): holding while it is pending and not released; failed_at its
-- first failed attempt since it became pending.
CREATE TABLE IF NOT EXISTS conversations (
    delivery_seq INTEGER NOT NULL,
    key          TEXT    NOT NULL,
    destination  TEXT    NOT NULL,
    holding      INTEGER NOT NULL DEFAULT 1,
    failed_at    INTEGER,
    PRIMARY KEY (delivery_seq, key)
) WITHOUT ROWID;
-- Whether an earlier delivery holds a conversation: one probe per key.
CREATE INDEX IF NOT EXISTS conversations_holding
    ON conversations(destination, key, delivery_seq) WHERE holding;
CREATE TRIGGER IF NOT EXISTS deliveries_delete_conversations AFTER DELETE ON deliveries
BEGIN
    DELETE FROM conversations WHERE delivery_seq = OLD.seq;
END;
-- A replayed delivery holds its conversations again, its hold starting afresh.
CREATE TRIGGER IF NOT EXISTS deliveries_replay_conversations
    AFTER UPDATE OF state ON deliveries WHEN NEW.state = 0 AND OLD.state <> 0
BEGIN
    UPDATE conversations SET holding = 1, failed_at = NULL WHERE delivery_seq = NEW.seq;
END;
-- key: the first 16 bytes of the SHA-256 of an identity (body hash or item id).
CREATE TABLE IF NOT EXISTS dedup (
    key       BLOB    PRIMARY KEY,
    event_seq INTEGER NOT NULL,
    seen_at   INTEGER NOT NULL
) WITHOUT ROWID;
-- Pruning finds expired identities by the second they were seen; within a second they
-- are in key order, as the writer merges them (a key-ordered slice of recent identities
-- then writes each page of this index once, not one page per key).
CREATE INDEX IF NOT EXISTS dedup_seen_second ON dedup(seen_at / 1000);
-- The identities accepted lately, in arrival order, until the writer merges them into
-- dedup (spool::sqlite::recent); a key may appear more than once, its newest row counts.
CREATE TABLE IF NOT EXISTS dedup_recent (
    arrival   INTEGER PRIMARY KEY,
    key       BLOB    NOT NULL,
    event_seq INTEGER NOT NULL,
    seen_at   INTEGER NOT NULL
);
-- Whether each destination is up or down (types::Availability), kept across restarts.
CREATE TABLE IF NOT EXISTS destinations (
    destination   TEXT    PRIMARY KEY,
    failures      INTEGER NOT NULL DEFAULT 0,
    down_since    INTEGER,
    next_probe_at INTEGER,
    failed_probes INTEGER NOT NULL DEFAULT 0,
    last_failed   INTEGER
) WITHOUT ROWID;
";

/// The layout version this build reads and writes (`PRAGMA user_version`).
/// 1: dedup keys stored as text with the event's id; 2: as [`crate::types::DedupKey`] hashes with the
/// event's `seq`; 3: bodies in a table of their own; 4: Meta's SHA-1 `X-Hub-Signature`
/// kept with each event, and dedup keys recomputed with the identity rules that tell an
/// echo, an unsend and an edit from the message they are about; 5: delivery state in
/// `deliveries` (one row per event, destination and part), with an `attempts` history;
/// 6: each event's route, due deliveries indexed per destination, and a delivery's own
/// (narrowed or split) body and signatures; 7: whether each destination is up or down;
/// 8: each delivery's conversation keys, for destinations that keep order
/// (`conversations`); 9: new identities in arrival order (`dedup_recent`) until they
/// are merged into `dedup`, whose time index is by second (`dedup_seen_second`).
pub const SCHEMA_VERSION: i64 = 9;

/// The dedup keys of a stored body under this build's identity rules, for the upgrade
/// of a spool written with older ones. The spool does not know those rules: the daemon
/// passes them in.
pub type Rekey<'a> = &'a dyn Fn(&[u8]) -> DedupKeys;

/// How an operator's command uses the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only: the file is opened read-only.
    ReadOnly,
    /// Reads and writes rows (replay, purge); never the layout.
    ReadWrite,
}

/// Opens (and creates if needed) the spool database in `state_dir`, with WAL and
/// `synchronous=FULL`, so that a committed transaction survives a crash or power loss.
/// A spool of an older layout is upgraded in one transaction, its dedup keys recomputed
/// with `rekey`; one of a newer layout is refused. Only the daemon calls this.
pub fn open(state_dir: &Path, rekey: Rekey<'_>) -> anyhow::Result<Connection> {
    let path = state_dir.join(DB_FILE);
    let conn = Connection::open(&path)
        .with_context(|| format!("cannot open the spool {}", path.display()))?;
    configure(&conn).with_context(|| format!("cannot prepare the spool {}", path.display()))?;
    let version = layout(&conn, &path)?;
    let mut conn = conn;
    super::migrate::apply(&mut conn, version, rekey)
        .with_context(|| format!("cannot create the spool schema in {}", path.display()))?;
    Ok(conn)
}

/// Connects to the existing spool in `state_dir`, which must be at this build's layout:
/// nothing is created or upgraded (an older spool is upgraded when this release's
/// daemon starts on it).
pub fn connect(state_dir: &Path, access: Access) -> anyhow::Result<Connection> {
    let path = state_dir.join(DB_FILE);
    match std::fs::metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("no spool at {} (is --state-dir right?)", path.display())
        }
        Err(e) => anyhow::bail!(
            "cannot read the spool {}: {e} (run as root, or as the user of the service)",
            path.display()
        ),
    }
    let flags = match access {
        Access::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
        Access::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(&path, flags)
        .with_context(|| format!("cannot open the spool {}", path.display()))?;
    match access {
        Access::ReadOnly => conn.busy_timeout(Duration::from_secs(5)),
        Access::ReadWrite => configure(&conn),
    }
    .with_context(|| format!("cannot prepare the spool {}", path.display()))?;
    let version = layout(&conn, &path)?;
    if version < SCHEMA_VERSION {
        anyhow::bail!(
            "the spool {} is at layout {version}, this xhubd reads {SCHEMA_VERSION}: start this release's daemon once to upgrade it",
            path.display()
        );
    }
    Ok(conn)
}

/// The layout of the spool in `state_dir`, read without changing anything: `None` when
/// there is none yet, an error when it cannot be read or is newer than this build's.
pub fn inspect(state_dir: &Path) -> anyhow::Result<Option<i64>> {
    let path = state_dir.join(DB_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open the spool {}", path.display()))?;
    layout(&conn, &path).map(Some)
}

/// The spool's layout version; a newer one than this build's is refused.
fn layout(conn: &Connection, path: &Path) -> anyhow::Result<i64> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .with_context(|| format!("cannot read the spool {}", path.display()))?;
    if version > SCHEMA_VERSION {
        anyhow::bail!(
            "the spool {} was written by a newer xhubd (layout {version}, this one reads {SCHEMA_VERSION})",
            path.display()
        );
    }
    Ok(version)
}

/// Takes the exclusive lock on `state_dir` (its file [`LOCK_FILE`], created if
/// missing): the daemon holds it while it runs, `xhubd spool copy` while it copies.
/// `None` when another process holds it; released when the file is closed.
pub fn lock(state_dir: &Path) -> anyhow::Result<Option<File>> {
    let path = state_dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
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

    #[test]
    fn commands_connect_only_to_a_spool_at_this_layout() {
        let dir = tempfile::tempdir().unwrap();
        let missing = format!("{:#}", connect(dir.path(), Access::ReadOnly).unwrap_err());
        assert!(missing.contains("no spool at"), "{missing}");
        assert!(!dir.path().join(DB_FILE).exists(), "nothing created");
        Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .execute_batch(
                "CREATE TABLE events (seq INTEGER PRIMARY KEY); PRAGMA user_version = 2;",
            )
            .unwrap();
        let error = format!("{:#}", connect(dir.path(), Access::ReadWrite).unwrap_err());
        assert!(error.contains("at layout 2"), "{error}");
        assert_eq!(
            inspect(dir.path()).unwrap(),
            Some(2),
            "a command never upgrades"
        );
        std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
        drop(open(dir.path(), &|_: &[u8]| unreachable!("nothing to upgrade")).unwrap());
        let conn = connect(dir.path(), Access::ReadOnly).unwrap();
        assert!(conn.execute("DELETE FROM events", []).is_err(), "read-only");
    }

    #[test]
    fn a_spool_from_a_newer_layout_is_refused_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .execute_batch(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 1))
            .unwrap();
        let error = format!(
            "{:#}",
            open(dir.path(), &|_: &[u8]| unreachable!()).unwrap_err()
        );
        assert!(error.contains("written by a newer xhubd"), "{error}");
        assert!(
            error.contains(&format!("layout {}", SCHEMA_VERSION + 1)),
            "{error}"
        );
    }
}
