//! Opening the SQLite database: pragmas for durability (WAL, `synchronous=FULL`), the
//! schema, and the upgrade of a spool an earlier release wrote. Only the daemon creates
//! or upgrades a spool ([`open`]); the operator's commands [`connect`] to one at this
//! build's layout, so they never change a layout under a running daemon.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::types::{DedupKey, DedupKeys};

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
    signature_sha1  TEXT
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
/// 1: dedup keys stored as text with the event's id; 2: as [`DedupKey`] hashes with the
/// event's `seq`; 3: bodies in a table of their own; 4: Meta's SHA-1 `X-Hub-Signature`
/// kept with each event, and dedup keys recomputed with the identity rules that tell an
/// echo, an unsend and an edit from the message they are about.
pub const SCHEMA_VERSION: i64 = 4;

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
    apply_schema(&mut conn, version, rekey)
        .with_context(|| format!("cannot create the spool schema in {}", path.display()))?;
    Ok(conn)
}

/// Connects to the existing spool in `state_dir`, which must be at this build's layout:
/// nothing is created or upgraded (an older spool is upgraded when this release's
/// daemon starts on it).
pub fn connect(state_dir: &Path, access: Access) -> anyhow::Result<Connection> {
    let path = state_dir.join(DB_FILE);
    if !path.exists() {
        anyhow::bail!("no spool at {} (is --state-dir right?)", path.display());
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

/// Creates what is missing and upgrades an older layout, in one transaction, so that
/// connections opening at the same time never see half a layout.
fn apply_schema(conn: &mut Connection, version: i64, rekey: Rekey<'_>) -> rusqlite::Result<()> {
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
                write.execute(params![
                    &DedupKey::of(&identity).as_bytes()[..],
                    seq,
                    seen_at
                ])?;
            }
        }
        tx.execute_batch("DROP TABLE dedup_v1;")?;
    }
    let has_sha1: i64 = tx.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'signature_sha1'",
        [],
        |r| r.get(0),
    )?;
    let events_exist: i64 = tx.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get(0),
    )?;
    if events_exist > 0 && has_sha1 == 0 {
        // Layouts 1 to 3: Meta's SHA-1 signature was kept only among the request
        // headers shown to operators; take it from there.
        tx.execute_batch(
            "ALTER TABLE events ADD COLUMN signature_sha1 TEXT;
             UPDATE events SET signature_sha1 = json_extract(headers, '$.\"x-hub-signature\"')
             WHERE json_valid(headers);",
        )?;
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
    if version > 0 && version < 4 {
        rekey_events(&tx, rekey)?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
    tx.commit()
}

/// Recomputes the dedup keys of every stored event (pending, dead, and delivered ones
/// still within the window) from its body, in the order they were accepted, so that
/// Meta's retries of events accepted under older identity rules are still recognised.
/// Keys whose event is gone (purged) cannot be recomputed and stay as they are.
fn rekey_events(tx: &Transaction<'_>, rekey: Rekey<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM dedup WHERE event_seq IN (SELECT seq FROM events)",
        [],
    )?;
    let mut read = tx.prepare(
        "SELECT e.seq, e.received_at, b.body FROM events e JOIN bodies b ON b.seq = e.seq
         ORDER BY e.seq",
    )?;
    let mut write =
        tx.prepare("INSERT OR REPLACE INTO dedup (key, event_seq, seen_at) VALUES (?1, ?2, ?3)")?;
    let mut rows = read.query([])?;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let received_at: i64 = row.get(1)?;
        let body = row.get_ref(2)?.as_blob()?;
        let keys = rekey(body);
        write.execute(params![&keys.body.as_bytes()[..], seq, received_at])?;
        for key in keys.items.iter().flatten() {
            write.execute(params![&key.as_bytes()[..], seq, received_at])?;
        }
    }
    Ok(())
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
        let conn = open(dir.path(), &rekey).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        (dir, conn)
    }

    /// Identity rules for the tests: the body key is the body's text, and a body
    /// `{"items":[..]}` has those item ids.
    fn rekey(body: &[u8]) -> DedupKeys {
        let text = String::from_utf8_lossy(body);
        let items = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                let list = v.get("items")?.as_array()?.clone();
                Some(
                    list.iter()
                        .filter_map(|i| i.as_str().map(DedupKey::of))
                        .collect(),
                )
            });
        DedupKeys {
            body: DedupKey::of(&format!("body:{text}")),
            items,
        }
    }

    fn key(identity: &str) -> Vec<u8> {
        DedupKey::of(identity).as_bytes().to_vec()
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
        // The stored event's keys are recomputed from its body; the key of an event
        // that is gone stays.
        let mut expected = vec![(key("body:{}"), 7, 1000), (key("body:gone"), 0, 900)];
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
        let again = open(dir.path(), &|_: &[u8]| unreachable!("no upgrade")).unwrap();
        let count: i64 = again
            .query_row("SELECT COUNT(*) FROM dedup", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2);
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
        let error = format!("{:#}", open(dir.path(), &rekey).unwrap_err());
        assert!(error.contains("written by a newer xhubd"), "{error}");
        assert!(
            error.contains(&format!("layout {}", SCHEMA_VERSION + 1)),
            "{error}"
        );
    }

    /// A layout-3 spool: the dedup keys of today's rules, Meta's SHA-1 signature among
    /// the headers only.
    const LAYOUT_3: &str = "
        ALTER TABLE events DROP COLUMN body;
        CREATE TABLE bodies (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
        CREATE TABLE dedup (key BLOB PRIMARY KEY, event_seq INTEGER NOT NULL,
            seen_at INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO events (seq, id, received_at, state, next_attempt_at, retry_from, size, headers, signature)
            VALUES (1, 'evt-1', 1000, 0, 1000, 1000, 19, '{\"x-hub-signature\":\"sha1=ab\"}', 'sha256=01'),
                   (2, 'evt-2', 2000, 2, 2000, 2000, 19, '{}', 'sha256=02'),
                   (3, 'evt-3', 3000, 0, 3000, 3000, 19, 'not json', 'sha256=03');
        INSERT INTO bodies VALUES (1, CAST('{\"items\":[\"a\",\"b\"]}' AS BLOB)),
                                  (2, CAST('{\"items\":[\"b\",\"c\"]}' AS BLOB)),
                                  (3, CAST('{}' AS BLOB));
        INSERT INTO dedup VALUES (x'00', 1, 1000), (x'01', 2, 2000), (x'02', 99, 500);
        PRAGMA user_version = 3;
    ";

    #[test]
    fn a_layout_3_spool_gets_recomputed_keys_and_sha1_signatures() {
        let (_dir, conn) = upgraded(LAYOUT_3);
        let mut rows: Vec<(Vec<u8>, i64, i64)> = conn
            .prepare("SELECT key, event_seq, seen_at FROM dedup")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        rows.sort();
        // In acceptance order: "b" belongs to the later event 2, as when it was accepted.
        let mut expected = vec![
            (key("body:{\"items\":[\"a\",\"b\"]}"), 1, 1000),
            (key("a"), 1, 1000),
            (key("body:{\"items\":[\"b\",\"c\"]}"), 2, 2000),
            (key("b"), 2, 2000),
            (key("c"), 2, 2000),
            (key("body:{}"), 3, 3000),
            (vec![2u8], 99, 500),
        ];
        expected.sort();
        assert_eq!(rows, expected);
        let sha1: Vec<Option<String>> = conn
            .prepare("SELECT signature_sha1 FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(sha1, [Some("sha1=ab".to_owned()), None, None]);
    }

    #[test]
    fn commands_connect_only_to_a_spool_at_this_layout() {
        let dir = tempfile::tempdir().unwrap();
        let missing = format!("{:#}", connect(dir.path(), Access::ReadOnly).unwrap_err());
        assert!(missing.contains("no spool at"), "{missing}");
        assert!(!dir.path().join(DB_FILE).exists(), "nothing created");
        let old = Connection::open(dir.path().join(DB_FILE)).unwrap();
        old.execute_batch(EVENTS_WITH_BODIES).unwrap();
        old.execute_batch(LAYOUT_2).unwrap();
        drop(old);
        let error = format!("{:#}", connect(dir.path(), Access::ReadWrite).unwrap_err());
        assert!(error.contains("at layout 2"), "{error}");
        let version: i64 = Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2, "a command never upgrades");
        drop(open(dir.path(), &rekey).unwrap());
        let conn = connect(dir.path(), Access::ReadOnly).unwrap();
        let write = conn.execute("DELETE FROM events", []);
        assert!(write.is_err(), "read-only");
    }
}
