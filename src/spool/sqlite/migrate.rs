//! Upgrades a spool written by an earlier release to the current layout
//! ([`SCHEMA_VERSION`]), in one transaction, keeping every pending and dead event, every
//! body and every remembered identity. Only the daemon upgrades ([`super::schema::open`]).

use rusqlite::{params, Connection, Transaction, TransactionBehavior};

use super::schema::{Rekey, SCHEMA, SCHEMA_VERSION};
use crate::types::DedupKey;

/// Creates what is missing and upgrades a spool at layout `version` (0: new), in one
/// transaction, so that connections opening at the same time never see half a layout.
pub(super) fn apply(conn: &mut Connection, version: i64, rekey: Rekey<'_>) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // The first release set no layout version: a spool with events but version 0 is one
    // of those, and needs every upgrade.
    let existing: i64 = tx.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get(0),
    )?;
    let older = |layout: i64| existing > 0 && version < layout;
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
    // Layouts 1 to 5 lack the route column (every event so far came in on the flags'
    // route, `default`).
    if existing > 0 {
        let has_route: i64 = tx.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'route'",
            [],
            |r| r.get(0),
        )?;
        if has_route == 0 {
            tx.execute_batch(
                "ALTER TABLE events ADD COLUMN route TEXT NOT NULL DEFAULT 'default';",
            )?;
        }
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
    if older(4) {
        rekey_events(&tx, rekey)?;
    }
    if older(5) {
        deliveries_from_events(&tx)?;
        // The triggers of the current layout, in place of the ones dropped.
        tx.execute_batch(SCHEMA)?;
    }
    // A delivery's own signatures and split flag (added within layout 6).
    let deliveries_exist: i64 = tx.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'",
        [],
        |r| r.get(0),
    )?;
    if deliveries_exist > 0 {
        for (column, definition) in [
            ("split", "INTEGER NOT NULL DEFAULT 0"),
            ("signature", "TEXT"),
            ("signature_sha1", "TEXT"),
        ] {
            let has: i64 = tx.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('deliveries') WHERE name = ?1",
                [column],
                |r| r.get(0),
            )?;
            if has == 0 {
                tx.execute_batch(&format!(
                    "ALTER TABLE deliveries ADD COLUMN {column} {definition};"
                ))?;
            }
        }
    }
    if older(6) {
        // The route column was added above (every event so far came in on the flags'
        // route); due deliveries are now indexed per destination.
        tx.execute_batch(
            "DROP INDEX IF EXISTS deliveries_delivered;
             DROP INDEX IF EXISTS deliveries_pending;
             UPDATE deliveries SET destination = 'default/' || destination
             WHERE instr(destination, '/') = 0;",
        )?;
    }
    // Layout 8 only adds `conversations`, its index and triggers, which SCHEMA above
    // created; deliveries accepted before it have no conversation keys (they wait for
    // nothing and hold nothing).
    // Layout 9 adds `dedup_recent`, which SCHEMA above created (empty: every identity
    // remembered so far is in `dedup`), and indexes `dedup` by the second an identity
    // was seen (SCHEMA too) instead of the millisecond.
    tx.execute_batch("DROP INDEX IF EXISTS dedup_seen;")?;
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
    tx.commit()
}

/// Recomputes the dedup keys of every stored event (pending, dead, and delivered ones
/// still within the window) from its body, in the order they were accepted, so that
/// Meta's retries of events accepted under older identity rules are still recognised.
/// Keys whose event is gone (purged) cannot be recomputed and stay as they are.
fn rekey_events(tx: &Transaction<'_>, rekey: Rekey<'_>) -> rusqlite::Result<()> {
    // The recent identities first join the others, their newest sighting winning.
    tx.execute_batch(
        "INSERT OR REPLACE INTO dedup (key, event_seq, seen_at)
           SELECT key, event_seq, seen_at FROM dedup_recent ORDER BY arrival;
         DELETE FROM dedup_recent;",
    )?;
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
        for key in keys.all() {
            write.execute(params![&key.as_bytes()[..], seq, received_at])?;
        }
    }
    Ok(())
}

/// Layouts 1 to 4 kept each event's delivery state in its own row: each becomes the
/// event's one delivery, to destination `default` (what the flags configure), with its
/// state, attempts, backoff and last error, and an id of its own
/// (`X-Xhubd-Delivery-Id`). The events rows keep only what Meta sent.
fn deliveries_from_events(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    {
        let mut read = tx.prepare(
            "SELECT seq, state, attempts, next_attempt_at, retry_from, finished_at, last_error
             FROM events ORDER BY seq",
        )?;
        let mut write = tx.prepare(
            "INSERT INTO deliveries (id, event_seq, destination, state, attempts,
                                     next_attempt_at, retry_from, finished_at, last_error)
             VALUES (?1, ?2, 'default', ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut rows = read.query([])?;
        while let Some(row) = rows.next()? {
            write.execute(params![
                uuid::Uuid::now_v7().to_string(),
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<i64>>(5)?,
                row.get::<_, Option<String>>(6)?,
            ])?;
        }
    }
    tx.execute_batch(
        "DROP TRIGGER IF EXISTS events_delete_body;
         DROP INDEX IF EXISTS events_pending;
         DROP INDEX IF EXISTS events_delivered;
         DROP INDEX IF EXISTS events_dead;
         ALTER TABLE events DROP COLUMN state;
         ALTER TABLE events DROP COLUMN attempts;
         ALTER TABLE events DROP COLUMN next_attempt_at;
         ALTER TABLE events DROP COLUMN finished_at;
         ALTER TABLE events DROP COLUMN last_error;
         ALTER TABLE events DROP COLUMN retry_from;",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::sqlite::schema::{open, DB_FILE};
    use crate::types::DedupKeys;

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

    /// The first column of every row `sql` returns.
    fn column<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<T> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_layout_1_spool_is_upgraded_with_its_events_keys_recomputed() {
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
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'dedup_seen_second' AND tbl_name = 'dedup'",
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
            .prepare(
                "SELECT e.id, d.next_attempt_at FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.state = 0",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(pending, [("evt-2".to_owned(), 2000)]);
        // Layout 9 indexes identities by the second they were seen, not the millisecond.
        let indexes: Vec<String> = column(
            &conn,
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'dedup' AND sql IS NOT NULL ORDER BY name",
        );
        assert_eq!(indexes, ["dedup_seen_second"]);
        // Deleting an event (pruning, purging) deletes its body and its deliveries.
        conn.execute("DELETE FROM events WHERE seq = 1", [])
            .unwrap();
        assert_eq!(bodies(&conn), [(2, b"{}".to_vec())]);
        let deliveries: i64 = conn
            .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(deliveries, 1);
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
        let sha1: Vec<Option<String>> =
            column(&conn, "SELECT signature_sha1 FROM events ORDER BY seq");
        assert_eq!(sha1, [Some("sha1=ab".to_owned()), None, None]);
    }

    #[test]
    fn an_older_spool_gets_the_conversations_table_and_its_triggers() {
        let (_dir, conn) = upgraded(LAYOUT_2);
        // Its pending delivery (event 2) had no keys; one given now follows the rules.
        let seq: i64 = conn
            .query_row("SELECT seq FROM deliveries WHERE state = 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        conn.execute(
            "INSERT INTO conversations (delivery_seq, key, destination, holding, failed_at)
             VALUES (?1, 'whatsapp:1', 'default/default', 0, 5)",
            [seq],
        )
        .unwrap();
        conn.execute_batch("UPDATE deliveries SET state = 2; UPDATE deliveries SET state = 0;")
            .unwrap();
        let (holding, failed_at): (bool, Option<i64>) = conn
            .query_row("SELECT holding, failed_at FROM conversations", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert!(holding && failed_at.is_none(), "a replay holds again");
        conn.execute("DELETE FROM events", []).unwrap();
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM conversations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0, "deleted with its delivery");
    }

    /// A layout-4 spool: delivery state in the events rows.
    const LAYOUT_4: &str = "
        ALTER TABLE events DROP COLUMN body;
        ALTER TABLE events ADD COLUMN signature_sha1 TEXT;
        CREATE INDEX events_pending ON events(next_attempt_at) WHERE state = 0;
        CREATE INDEX events_delivered ON events(received_at) WHERE state = 1;
        CREATE INDEX events_dead ON events(finished_at) WHERE state = 2;
        CREATE TABLE bodies (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
        CREATE TRIGGER events_delete_body AFTER DELETE ON events
        BEGIN DELETE FROM bodies WHERE seq = OLD.seq; END;
        CREATE TABLE dedup (key BLOB PRIMARY KEY, event_seq INTEGER NOT NULL,
            seen_at INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO events (seq, id, received_at, state, attempts, next_attempt_at, finished_at,
                            last_error, retry_from, size, signature)
            VALUES (1, 'evt-1', 1000, 0, 3, 9000, NULL, 'upstream answered 503', 1000, 2, 'sha256=01'),
                   (2, 'evt-2', 2000, 1, 1, 2000, 2500, NULL, 2000, 2, 'sha256=02'),
                   (3, 'evt-3', 3000, 2, 1, 3000, 3500, 'upstream answered 404', 3000, 2, 'sha256=03');
        INSERT INTO bodies VALUES (1, x'7b7d'), (2, x'7b7d'), (3, x'7b7d');
        INSERT INTO dedup VALUES (x'00', 1, 1000);
        PRAGMA user_version = 4;
    ";

    #[test]
    fn a_layout_4_spool_gets_one_delivery_per_event_with_its_state() {
        let (_dir, conn) = upgraded(LAYOUT_4);
        type Row = (i64, String, i64, i64, i64, i64, Option<i64>, Option<String>);
        let rows: Vec<Row> = conn
            .prepare(
                "SELECT event_seq, destination, state, attempts, next_attempt_at, retry_from,
                        finished_at, last_error FROM deliveries ORDER BY event_seq",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let default = || "default/default".to_owned();
        assert_eq!(
            rows,
            [
                (
                    1,
                    default(),
                    0,
                    3,
                    9000,
                    1000,
                    None,
                    Some("upstream answered 503".to_owned())
                ),
                (2, default(), 1, 1, 2000, 2000, Some(2500), None),
                (
                    3,
                    default(),
                    2,
                    1,
                    3000,
                    3000,
                    Some(3500),
                    Some("upstream answered 404".to_owned())
                ),
            ]
        );
        let ids: i64 = conn
            .query_row("SELECT COUNT(DISTINCT id) FROM deliveries", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(ids, 3, "each delivery has an id of its own");
        let state_columns: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name IN ('state', 'attempts')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(state_columns, 0, "delivery state lives in deliveries only");
        // Deleting an event deletes its body, its deliveries and their attempts.
        conn.execute(
            "INSERT INTO attempts (delivery_seq, attempt, at, result) SELECT seq, 1, 1, 0 FROM deliveries",
            [],
        )
        .unwrap();
        conn.execute("DELETE FROM events WHERE seq = 3", [])
            .unwrap();
        for (table, left) in [("bodies", 2), ("deliveries", 2), ("attempts", 2)] {
            let n: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, left, "{table}");
        }
    }
}
