//! Delivery to the upstream: byte-identical forwarding with the contract's headers,
//! large bodies, de-duplication, retries, dead events, and durability across
//! SIGKILL and restarts.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::faulty_upstream::{FaultyUpstream, Mode};
use common::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn forwards_the_exact_bytes_with_the_contract_headers() {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/meta/in?source=xhubd&k=1")));
    // Non-ASCII as raw UTF-8, Meta's \u00e9 escapes and escaped slashes: any
    // re-serialisation would change these bytes.
    let body = "{\"object\":\"page\",\"entry\":[{\"id\":\"1\",\"time\":1,\"changes\":[{\"field\":\"feed\",\"value\":{\"message\":\"Caf\\u00e9 \\/ caf\u{e9} \u{1f600}\",\"link\":\"https:\\/\\/example.com\\/a\"}}]}]}";
    let sig = sign(APP_SECRET, body.as_bytes());
    let a = x.target.request(
        "POST",
        "/",
        &[
            ("X-Hub-Signature-256", &sig),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert_eq!(a.status, 200);
    let got = up.wait_for(1, WAIT);
    let r = &got[0];
    assert_eq!(r.body.as_ref(), body.as_bytes());
    assert_eq!(r.path_and_query, "/meta/in?source=xhubd&k=1");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-hub-signature-256"), Some(sig.as_str()));
    let id = r.header("x-xhubd-event-id").expect("event id header");
    // Lines reach the log through a writer thread of their own: wait for it.
    wait_for(WAIT, "the log names the event id", || x.logs().contains(id));
    x.assert_no_secret_in_logs();
}

both_spools!(a_64kib_body_a_1000_entry_batch_and_a_3mb_body_are_delivered_whole);
fn a_64kib_body_a_1000_entry_batch_and_a_3mb_body_are_delivered_whole(spool: &Spool) {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")).spool(spool));
    let entries: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"id":"{i}","time":1700000000,"changes":[{{"field":"feed","value":{{"item":"status","verb":"add","post_id":"{i}_1"}}}}]}}"#))
        .collect();
    let batch = format!(r#"{{"object":"page","entry":[{}]}}"#, entries.join(","));
    assert_eq!(x.target.post_signed(batch.as_bytes()).status, 200);

    let text = "x".repeat(3 * 1024 * 1024);
    let big = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messages":[{{"id":"wamid.BIG","type":"text","text":{{"body":"{text}"}}}}]}}}}]}}]}}"#
    );
    assert!(big.len() > 3_000_000);
    assert_eq!(x.target.post_signed(big.as_bytes()).status, 200);

    // Bodies of a few tens of KiB go to delivery in memory (SQLite), within a budget
    // that each gives back once its outcome is recorded: many of them, all delivered
    // whole.
    let medium: Vec<String> = (0..200)
        .map(|i| {
            format!(
                r#"{{"object":"page","entry":[{{"id":"m{i}","time":1700000000,"changes":[{{"field":"feed","value":{{"message":"{}"}}}}]}}]}}"#,
                i.to_string().repeat(64 * 1024 / i.to_string().len())
            )
        })
        .collect();
    for body in &medium {
        assert_eq!(x.target.post_signed(body.as_bytes()).status, 200);
    }

    let got = up.wait_for(2 + medium.len(), WAIT);
    let bodies: HashSet<Vec<u8>> = got.iter().map(|r| r.body.to_vec()).collect();
    assert!(bodies.contains(batch.as_bytes()));
    assert!(bodies.contains(big.as_bytes()));
    for body in &medium {
        assert!(bodies.contains(body.as_bytes()), "{}", &body[..80]);
    }
}

/// More 64 KiB bodies than the writer's in-memory hand-over may hold (8 MiB), while the
/// destination holds every request it gets: those beyond the budget go to delivery
/// without their body and are read back from the spool. Once it answers, every one is
/// delivered whole.
#[test]
fn bodies_beyond_the_hand_over_budget_are_read_from_the_spool_and_delivered_whole() {
    let up = FaultyUpstream::start(Mode::Hang);
    let x = Xhubd::start(Options::new(&up.url("/")));
    let bodies: Vec<Vec<u8>> = (0..160)
        .map(|i| {
            format!(
                r#"{{"object":"page","entry":[{{"id":"b{i}","time":1700000000,"changes":[{{"field":"feed","value":{{"message":"{}"}}}}]}}]}}"#,
                char::from(b'a' + (i % 26) as u8).to_string().repeat(64 * 1024 - 100)
            )
            .into_bytes()
        })
        .collect();
    assert!(bodies.iter().map(Vec::len).sum::<usize>() > 10 << 20);
    for body in &bodies {
        assert_eq!(x.target.post_signed(body).status, 200);
    }
    wait_for(WAIT, "attempts held by the destination", || {
        up.in_flight() > 0
    });
    up.set_default(Mode::Status(200));
    up.release_hung();
    wait_for(WAIT, "every body delivered whole", || {
        let delivered: HashSet<Vec<u8>> = up
            .hits()
            .into_iter()
            .filter(|hit| hit.answered == Some(200))
            .map(|hit| hit.body)
            .collect();
        bodies.iter().all(|body| delivered.contains(body))
    });
    wait_for(WAIT, "every delivery recorded", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 0") == 0
    });
}

both_spools!(concurrent_copies_of_one_event_are_delivered_once);
fn concurrent_copies_of_one_event_are_delivered_once(spool: &Spool) {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")).spool(spool));
    let body = page_event(42);
    let target = x.target.clone();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let t = target.clone();
            let b = body.clone();
            std::thread::spawn(move || t.post_signed(&b).status)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200, "every copy is acknowledged");
    }
    up.wait_for(1, WAIT);
    // A later retry is dropped too.
    assert_eq!(x.target.post_signed(&body).status, 200);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(up.count(), 1, "delivered once");
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 1);
    assert!(x.logs().contains("duplicate"));
}

fn whatsapp(time: u64, spacing: &str, ids: &[&str]) -> Vec<u8> {
    let messages: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"from":"4917600000000","id":"{id}","timestamp":"{time}","type":"text","text":{{"body":"hi"}}}}"#))
        .collect();
    format!(
        r#"{{"object":"whatsapp_business_account",{spacing}"entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"phone_number_id":"106540352242922"}},"messages":[{}]}},"field":"messages"}}]}}]}}"#,
        messages.join(",")
    )
    .into_bytes()
}

both_spools!(a_whatsapp_retry_formatted_differently_is_delivered_once);
fn a_whatsapp_retry_formatted_differently_is_delivered_once(spool: &Spool) {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")).spool(spool));
    let first = whatsapp(1700000000, "", &["wamid.AAA", "wamid.BBB"]);
    let retry = whatsapp(1700000060, " ", &["wamid.AAA", "wamid.BBB"]);
    assert_ne!(first, retry);
    assert_eq!(x.target.post_signed(&first).status, 200);
    assert_eq!(x.target.post_signed(&retry).status, 200);
    // A subset of known ids is a retry too; one new id makes the whole body new.
    assert_eq!(
        x.target
            .post_signed(&whatsapp(1700000090, "", &["wamid.BBB"]))
            .status,
        200
    );
    let mixed = whatsapp(1700000120, "", &["wamid.AAA", "wamid.CCC"]);
    assert_eq!(x.target.post_signed(&mixed).status, 200);
    up.wait_for(2, WAIT);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(up.count(), 2);
    // Two events to a destination that keeps no order may arrive either way round.
    let all: Vec<_> = up.received().iter().map(|r| r.body.to_vec()).collect();
    assert!(all.contains(&first), "the first body is the one delivered");
    assert!(
        all.contains(&mixed),
        "a body with a new item is delivered whole"
    );
}

#[test]
fn an_id_less_change_repeated_with_a_new_time_is_delivered_twice() {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")));
    let change = |time: u64| {
        format!(r#"{{"object":"user","entry":[{{"id":"44","time":{time},"changes":[{{"field":"photos","value":{{"verb":"update","object_id":"9"}}}}]}}]}}"#).into_bytes()
    };
    assert_eq!(x.target.post_signed(&change(1700000000)).status, 200);
    assert_eq!(x.target.post_signed(&change(1700000500)).status, 200);
    up.wait_for(2, WAIT);
}

both_spools!(retries_after_500s_with_the_same_event_id);
fn retries_after_500s_with_the_same_event_id(spool: &Spool) {
    let up = Upstream::start();
    up.fail_next(&[500, 503]);
    let x = Xhubd::start(Options::new(&up.url("/")).spool(spool));
    assert_eq!(x.target.post_signed(&page_event(7)).status, 200);
    let got = up.wait_for(3, WAIT);
    let ids = |header: &str| -> HashSet<String> {
        got.iter()
            .map(|r| r.header(header).unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids("x-xhubd-event-id").len(),
        1,
        "one event id for every attempt"
    );
    let delivery = ids("x-xhubd-delivery-id");
    assert_eq!(delivery.len(), 1, "one delivery id for every attempt");
    assert!(delivery.is_disjoint(&ids("x-xhubd-event-id")));
    assert_eq!(got[2].header("x-xhubd-attempt"), Some("3"));
    wait_for(WAIT, "the event marked delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1 AND attempts = 3") == 1
    });
    // The attempt history: two failures with the upstream's status, then the success.
    let event_id = got[0].header("x-xhubd-event-id").unwrap();
    let (code, out, err) = x.run_on_spool(&["events", "show", event_id, "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let delivery_shown = &shown["deliveries"][0];
    assert_eq!(
        delivery_shown["id"],
        got[0].header("x-xhubd-delivery-id").unwrap()
    );
    assert_eq!(delivery_shown["destination"], "default");
    let history: Vec<(String, u64)> = delivery_shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["result"].as_str().unwrap().to_owned(),
                a["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("pending".to_owned(), 500),
            ("pending".to_owned(), 503),
            ("delivered".to_owned(), 200)
        ]
    );
    assert_eq!(
        delivery_shown["history"][2]["detail"], "ok",
        "the answer's first bytes"
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(up.count(), 3);
    let logs = x.logs();
    assert!(logs.contains("retry scheduled"));
    assert!(logs.contains("delivered"));
}

#[test]
fn a_4xx_or_3xx_answer_makes_the_event_dead_without_retrying() {
    let up = Upstream::start();
    up.fail_next(&[404, 302]);
    let x = Xhubd::start(Options::new(&up.url("/")));
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    assert_eq!(x.target.post_signed(&page_event(2)).status, 200);
    up.wait_for(2, WAIT);
    wait_for(WAIT, "two dead events", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == 2
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(up.count(), 2, "dead events are not retried");
    assert!(x.logs().contains("dead"));
}

#[test]
fn the_end_of_retry_for_makes_the_event_dead_and_keeps_it() {
    let up = Upstream::start();
    up.answer_always(503);
    let x = Xhubd::start(Options::new(&up.url("/")).arg("--retry-for").arg("1s"));
    assert_eq!(x.target.post_signed(&page_event(5)).status, 200);
    wait_for(WAIT, "the event to become dead", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == 1
    });
    let attempts = up.count();
    assert!(attempts >= 2, "retried before giving up ({attempts})");
    assert_eq!(
        x.count(
            "SELECT COUNT(*) FROM deliveries WHERE state = 2 AND last_error LIKE '%retry-for%'"
        ),
        1
    );
}

#[test]
fn upstream_down_then_up_delivers_everything() {
    let mut up = Upstream::start();
    up.stop();
    let x = Xhubd::start(Options::new(&up.url("/")));
    for n in 0..20 {
        assert_eq!(
            x.target.post_signed(&page_event(n)).status,
            200,
            "acks never wait for the upstream"
        );
    }
    std::thread::sleep(Duration::from_millis(600));
    up.restart();
    let got = up.wait_for(20, WAIT);
    let distinct: HashSet<_> = got.iter().map(|r| r.body.to_vec()).collect();
    assert_eq!(distinct.len(), 20);
    assert!(x.logs().contains("retry scheduled"));
}

both_spools!(when_the_upstream_answers_again_the_backlog_goes_at_once);
fn when_the_upstream_answers_again_the_backlog_goes_at_once(spool: &Spool) {
    let mut up = Upstream::start();
    up.stop();
    let x = Xhubd::start(Options::new(&up.url("/")).retry("1s", "1m").spool(spool));
    for n in 0..12 {
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
    }
    wait_for(
        WAIT,
        "the destination down after 10 failures in a row",
        || {
            x.logs()
                .contains("destination down after retryable failures in a row")
        },
    );
    // Every delivery's own retry far off, as after a long outage's backoffs.
    let later = now_ms() + 3_600_000;
    x.execute(&format!(
        "UPDATE deliveries SET next_attempt_at = {later} WHERE state = 0"
    ));
    up.restart();
    // The probe finds it answering again (probes back off from 1 s); the whole backlog
    // then goes at once, not in an hour.
    let got = up.wait_for(12, Duration::from_secs(20));
    let distinct: HashSet<_> = got.iter().map(|r| r.body.to_vec()).collect();
    assert_eq!(distinct.len(), 12, "every event delivered once");
    assert!(x.logs().contains("destination up again"), "{}", x.logs());
    wait_for(WAIT, "nothing pending", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 0") == 0
    });
}

both_spools!(events_acknowledged_before_kill_9_are_delivered_after_restart);
fn events_acknowledged_before_kill_9_are_delivered_after_restart(spool: &Spool) {
    let mut up = Upstream::start();
    up.stop();
    let mut x = Xhubd::start(Options::new(&up.url("/")).spool(spool));
    for n in 0..50 {
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
    }
    x.kill9();
    up.restart();
    x.spawn();
    let got = up.wait_for(50, WAIT);
    let distinct: HashSet<_> = got.iter().map(|r| r.body.to_vec()).collect();
    assert_eq!(
        distinct.len(),
        50,
        "every acknowledged event survives SIGKILL"
    );
    // Meta's retry of an event accepted before the crash is still recognised.
    assert_eq!(x.target.post_signed(&page_event(3)).status, 200);
    std::thread::sleep(Duration::from_millis(500));
    let copies = up
        .received()
        .iter()
        .filter(|r| r.body.as_ref() == &page_event(3)[..])
        .count();
    assert_eq!(copies, 1);
    x.assert_no_secret_in_logs();
}

#[test]
fn sigterm_exits_zero_and_removes_the_socket() {
    let up = Upstream::start();
    let mut x = Xhubd::start(Options::new(&up.url("/")));
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    up.wait_for(1, WAIT);
    let status = x.terminate();
    assert!(status.success(), "{status}");
    let Target::Unix(sock) = x.target.clone() else {
        unreachable!()
    };
    assert!(!sock.exists(), "our socket is removed on shutdown");
    assert!(x.logs().contains("stopped"));
}

both_spools!(delivered_events_and_identities_are_pruned_after_the_dedup_window);
fn delivered_events_and_identities_are_pruned_after_the_dedup_window(spool: &Spool) {
    let up = Upstream::start();
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .arg("--dedup-window")
            .arg("1s")
            .spool(spool),
    );
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    let got = up.wait_for(1, WAIT);
    let id = got[0].header("x-xhubd-event-id").unwrap().to_owned();
    let seq = x.count(&format!("SELECT seq FROM events WHERE id = '{id}'"));
    let merged = format!("SELECT COUNT(*) FROM dedup WHERE event_seq = {seq}");
    // SQLite keeps a new identity in arrival order first, then merges it into `dedup`.
    let keys = match spool {
        Spool::Sqlite => format!(
            "SELECT COUNT(*) FROM (SELECT key FROM dedup WHERE event_seq = {seq}
                                  UNION SELECT key FROM dedup_recent WHERE event_seq = {seq})"
        ),
        Spool::Postgres { .. } => merged.clone(),
    };
    assert_eq!(x.count(&keys), 1);
    // Other traffic keeps the writer going; merging and pruning run with its commits.
    let mut n = 100;
    let mut seen_merged = false;
    wait_for(
        WAIT,
        "the delivered event and its identity to be pruned",
        || {
            n += 1;
            assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
            seen_merged |= x.count(&merged) == 1;
            x.count(&format!("SELECT COUNT(*) FROM events WHERE id = '{id}'")) == 0
                && x.count(&keys) == 0
        },
    );
    assert!(
        seen_merged,
        "the identity was in dedup before it was pruned"
    );
    // After the window, the same body is a new event again.
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    wait_for(WAIT, "a second delivery", || {
        up.received()
            .iter()
            .filter(|r| r.body.as_ref() == &page_event(1)[..])
            .count()
            == 2
    });
}

#[test]
fn a_retry_is_recognised_by_an_identity_merged_into_the_key_ordered_table() {
    // A window of 8 s: identities waiting over 2 s are merged (a quarter of it).
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")).arg("--dedup-window").arg("8s"));
    let first = whatsapp(1700000000, "", &["wamid.M1", "wamid.M2"]);
    assert_eq!(x.target.post_signed(&first).status, 200);
    let mut n = 0;
    wait_for(WAIT, "the identities merged into dedup", || {
        n += 1;
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
        x.count("SELECT COUNT(*) FROM dedup") >= 3
            && x.count("SELECT COUNT(*) FROM dedup_recent WHERE event_seq = 1") == 0
    });
    let events = x.count("SELECT COUNT(*) FROM events");
    // The same body, and another body with the same items: both retries.
    assert_eq!(x.target.post_signed(&first).status, 200);
    let reformatted = whatsapp(1700000060, " ", &["wamid.M1", "wamid.M2"]);
    assert_eq!(x.target.post_signed(&reformatted).status, 200);
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), events);
    // A body with one new item is a new event.
    let mixed = whatsapp(1700000120, "", &["wamid.M1", "wamid.M3"]);
    assert_eq!(x.target.post_signed(&mixed).status, 200);
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), events + 1);
    let got = up.wait_for(n + 2, WAIT);
    assert_eq!(
        got.iter().filter(|r| r.body.as_ref() == &first[..]).count(),
        1
    );
}

both_spools!(pending_and_dead_events_are_never_pruned);
fn pending_and_dead_events_are_never_pruned(spool: &Spool) {
    let mut up = Upstream::start();
    up.fail_next(&[404]);
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .arg("--dedup-window")
            .arg("1s")
            .spool(spool),
    );
    // The oldest event dead, the next delivered, the third pending (its backend gone).
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    wait_for(WAIT, "a dead event", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == 1
    });
    assert_eq!(x.target.post_signed(&page_event(2)).status, 200);
    let delivered = up.wait_for(2, WAIT)[1]
        .header("x-xhubd-event-id")
        .unwrap()
        .to_owned();
    up.stop();
    assert_eq!(x.target.post_signed(&page_event(3)).status, 200);
    let pending = x.count("SELECT MAX(seq) FROM events");
    let kept = format!(
        "SELECT COUNT(*) FROM events e JOIN deliveries d ON d.event_seq = e.seq
         WHERE (e.seq = {pending} AND d.state = 0) OR d.state = 2"
    );
    assert_eq!(x.count(&kept), 2);
    // Pruning passes over the kept ones to the delivered one once it is older than the
    // window (other traffic keeps the writer committing).
    let mut n = 100;
    wait_for(WAIT, "the delivered event pruned", || {
        n += 1;
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
        x.count(&format!(
            "SELECT COUNT(*) FROM events WHERE id = '{delivered}'"
        )) == 0
    });
    assert_eq!(x.count(&kept), 2, "the dead and the pending event are kept");
}
