//! The operator's commands behave like Unix tools and never stall the daemon: output
//! into a closed pipe ends quietly; bulk changes (purge, replay of every dead event)
//! go in short chunks while Meta's events keep being answered 200; reading commands
//! never change or upgrade a spool.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Runs `xhubd args`, reads its first line of output, closes the pipe and returns the
/// exit status and what it wrote to stderr.
fn first_line_then_close(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xhubd"))
        .args(args)
        .env_remove("STATE_DIRECTORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    drop(stdout);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&first).into_owned(),
        err,
    )
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let up = Upstream::start();
    let mut x = Xhubd::start(Options::new(&up.url("/")));
    // A payload far larger than a pipe's buffer, so the reader is gone mid-output.
    let note = "n".repeat(1024 * 1024);
    let body = format!(
        r#"{{"object":"user","entry":[{{"id":"1","changed_fields":["x"]}}],"note":"{note}"}}"#
    );
    assert_eq!(x.target.post_signed(body.as_bytes()).status, 200);
    let id = up.wait_for(1, Duration::from_secs(20))[0]
        .header("x-xhubd-event-id")
        .unwrap()
        .to_owned();
    x.terminate();
    let state = x.state_dir.display().to_string();
    for args in [
        vec!["events", "show", &id, "--state-dir", &state],
        vec!["events", "show", &id, "--json", "--state-dir", &state],
        vec!["events", "list", "--state-dir", &state],
        vec!["completions", "bash"],
        vec!["--help"],
    ] {
        let (code, first, err) = first_line_then_close(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!first.is_empty(), "{args:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Adds `n` events in `state` (0 pending, 1 delivered, 2 dead) received `age_ms` ago,
/// straight into the spool file of a stopped daemon.
fn seed(x: &Xhubd, n: usize, state: i64, age_ms: i64) {
    let mut conn = rusqlite::Connection::open(x.db_path()).unwrap();
    let tx = conn.transaction().unwrap();
    let at = now_ms() - age_ms;
    {
        let mut event = tx
            .prepare(
                "INSERT INTO events (id, received_at, size, signature)
                 VALUES (?1, ?2, 2, 'sha256=00')",
            )
            .unwrap();
        let mut body = tx
            .prepare("INSERT INTO bodies (seq, body) VALUES (?1, x'7b7d')")
            .unwrap();
        let mut delivery = tx
            .prepare(
                "INSERT INTO deliveries (id, event_seq, destination, state, attempts,
                                         next_attempt_at, retry_from, finished_at)
                 VALUES (?1, ?2, 'default/default', ?3, 1, ?4, ?4, ?4)",
            )
            .unwrap();
        for i in 0..n {
            event
                .execute(rusqlite::params![format!("seed-{state}-{i}"), at])
                .unwrap();
            let seq = tx.last_insert_rowid();
            body.execute([seq]).unwrap();
            delivery
                .execute(rusqlite::params![
                    format!("seed-d-{state}-{i}"),
                    seq,
                    state,
                    at
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

#[test]
fn bulk_changes_never_make_meta_s_events_wait() {
    let up = Upstream::start();
    let mut x = Xhubd::start(Options::new(&up.url("/")));
    x.terminate();
    seed(&x, 200_000, 1, 2 * 3_600_000);
    seed(&x, 5_000, 2, 2 * 3_600_000);
    x.spawn();

    // Signed events stream in while the operator purges and replays.
    let streaming = Arc::new(AtomicBool::new(true));
    let target = x.target.clone();
    let flag = streaming.clone();
    let sender = std::thread::spawn(move || {
        let mut statuses = Vec::new();
        let mut n = 0;
        while flag.load(Ordering::Relaxed) || n < 50 {
            n += 1;
            statuses.push(target.post_signed(&page_event(1_000_000 + n)).status);
        }
        statuses
    });
    let state = x.state_dir.display().to_string();
    let (code, out, err) = run_xhubd(
        &[
            "events",
            "purge",
            "--delivered-before",
            "1h",
            "--state-dir",
            &state,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("200000 delivered event(s)"), "{out}");
    let (code, out, err) = run_xhubd(
        &["events", "replay", "--all-dead", "--state-dir", &state],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("5000 dead event(s) pending again"), "{out}");
    streaming.store(false, Ordering::Relaxed);
    let statuses = sender.join().unwrap();
    let refused: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        refused.is_empty(),
        "{} of {} events answered other than 200: {:?}",
        refused.len(),
        statuses.len(),
        &refused[..refused.len().min(10)]
    );
    assert!(!x.logs().contains("spool commit failed"), "{}", x.logs());
    // Every streamed event and every replayed one reaches the upstream.
    up.wait_for(statuses.len() + 5_000, Duration::from_secs(120));
}

#[test]
fn reading_commands_never_change_a_spool() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("spool.sqlite3");
    std::fs::copy("tests/fixtures/layout3-spool.sqlite3", &db).unwrap();
    let before = std::fs::read(&db).unwrap();
    let state = dir.path().display().to_string();
    for args in [
        vec!["events", "list", "--state-dir", &state],
        vec![
            "events",
            "show",
            "01a22bd5-6165-7091-a01b-db46fa3af3d8",
            "--state-dir",
            &state,
        ],
        vec![
            "events",
            "purge",
            "--delivered-before",
            "1s",
            "--state-dir",
            &state,
        ],
    ] {
        let (code, _, err) = run_xhubd(&args, None);
        assert_eq!(code, 2, "{args:?}");
        assert!(
            err.contains("at layout 3") && err.contains("start this release's daemon"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the spool is untouched"
    );
    // check reports it and changes nothing either.
    let (code, out, _) = run_xhubd(
        &[
            "check",
            "--upstream",
            "http://127.0.0.1:9/",
            "--verify-token",
            VERIFY_TOKEN,
            "--app-secret",
            APP_SECRET,
            "--state-dir",
            &state,
        ],
        None,
    );
    assert_eq!(code, 2, "the upstream is down: {out}");
    assert!(out.contains("ok   spool: layout 3"), "{out}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the spool is untouched"
    );
}

both_spools!(events_find_the_spool_the_config_file_names);
/// `xhubd events --config FILE` works on the spool the daemon's config file names
/// (`state_dir`, `spool`), the option before or after the action; a flag still wins.
fn events_find_the_spool_the_config_file_names(spool: &Spool) {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let spool_key = match spool {
        Spool::Sqlite => String::new(),
        Spool::Postgres { url, .. } => format!("spool = \"{url}\"\n"),
    };
    let config = dir.path().join("xhubd.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n{spool_key}{}",
            state.display(),
            one_route_config(&up.url("/"))
        ),
    )
    .unwrap();
    let x = Xhubd::start(
        Options::config(config.to_str().unwrap())
            .state_dir(&state)
            .spool(spool),
    );
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    up.wait_for(1, Duration::from_secs(20));
    let path = config.to_str().unwrap();
    for args in [
        ["events", "list", "--json", "--config", path],
        ["events", "--config", path, "list", "--json"],
    ] {
        let (code, out, err) = run_xhubd(&args, None);
        assert_eq!(code, 0, "{args:?}: {err}");
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{args:?}: {out}");
    }
    // A flag wins over the file: another state directory has no spool.
    let elsewhere = dir.path().join("elsewhere");
    let (code, _, err) = run_xhubd(
        &[
            "events",
            "list",
            "--config",
            path,
            "--spool",
            "sqlite",
            "--state-dir",
            elsewhere.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no spool at"), "{err}");
}
