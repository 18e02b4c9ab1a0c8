//! A spool written by the previous release (layout 3, `tests/fixtures/layout3-spool.sqlite3`,
//! made by `tests/fixtures/make-layout3-spool.sh` from the bodies in
//! `tests/fixtures/layout3/`) is upgraded at start: its pending events are delivered
//! (with Meta's SHA-1 signature, which that release kept only among the headers), and
//! Meta's retries of what it accepted are still dropped, also for the variants whose
//! identity changed (an echo, an unsend), while a new variant of a seen message is new.

mod common;

use std::time::Duration;

use common::*;

const FIXTURES: &str = "tests/fixtures/layout3";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

/// The same notification as Meta sends it again: a new `entry[].time` where it has
/// one, else other spacing; the same items.
fn retry_of(body: &str) -> String {
    let retried = body.replacen("\"time\":17644900", "\"time\":17644999", 1);
    if retried != body {
        retried
    } else {
        body.replacen('{', "{ ", 1)
    }
}

#[test]
fn a_layout_3_spool_is_upgraded_and_its_events_keep_their_identity() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let db = state.join("spool.sqlite3");
    std::fs::copy("tests/fixtures/layout3-spool.sqlite3", &db).unwrap();
    // Due now, whenever the fixture was made (its retries were an hour apart).
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE events SET next_attempt_at = 0", [])
        .unwrap();
    let up = Upstream::start();
    let secret = "fixture-secret";
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .state_dir(&state)
            .omit("--app-secret-file")
            .arg("--app-secret")
            .arg(secret)
            // The fixture's events were accepted when it was made.
            .arg("--dedup-window")
            .arg("36500d"),
    );
    assert_eq!(
        x.count("PRAGMA user_version"),
        xhubd::spool::sqlite::schema::SCHEMA_VERSION
    );

    // The six pending events of the old release are delivered, byte for byte, with both
    // of Meta's signatures.
    let got = up.wait_for(6, Duration::from_secs(30));
    let mut names: Vec<String> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 6);
    for name in &names {
        let body = fixture(name);
        let delivered = got
            .iter()
            .find(|r| r.body[..] == *body.as_bytes())
            .unwrap_or_else(|| panic!("{name} was not delivered"));
        assert_eq!(
            delivered.header("x-hub-signature-256"),
            Some(sign(secret, body.as_bytes()).as_str()),
            "{name}"
        );
        let sha1 = delivered.header("x-hub-signature").unwrap_or_default();
        assert!(
            sha1.starts_with("sha1=") && sha1.len() == 45,
            "{name}: {sha1:?}"
        );
    }

    // Meta's retries of all six: dropped, the echo and the unsend included. The Page
    // feed change carries no id: only its byte-identical copy is a retry.
    let post = |body: &str| {
        x.target.request(
            "POST",
            "/webhook",
            &[("X-Hub-Signature-256", &sign(secret, body.as_bytes()))],
            body.as_bytes(),
        )
    };
    for name in &names {
        if !name.contains("feed") {
            let retry = retry_of(&fixture(name));
            assert_ne!(retry, fixture(name));
            assert_eq!(post(&retry).status, 200, "{name}");
        }
        assert_eq!(post(&fixture(name)).status, 200, "{name}");
    }
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 6, "no retry stored");

    // The unsend of the message the old release accepted is a new event.
    let unsend = fixture("01-ig-message.json").replace(
        r#""text":"hello, is this open on Sunday?""#,
        r#""is_deleted":true"#,
    );
    assert_eq!(post(&unsend).status, 200);
    let got = up.wait_for(7, Duration::from_secs(20));
    assert_eq!(got[6].body[..], *unsend.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.count(), 7, "nothing delivered twice");
    assert_eq!(
        x.logs().matches("duplicate: already accepted").count(),
        11,
        "{}",
        x.logs()
    );
}
