//! Order within a conversation (`order = "conversation"`, `--upstream-order`): a user's
//! messages reach the backend one at a time, in the order xhubd accepted them, while
//! an earlier one is retried; other users' messages do not wait; the order holds across
//! `kill -9` and with two instances on one PostgreSQL spool; a delivery that keeps
//! failing stops holding its conversation after `order_hold`, with a log line and a
//! metric; bad settings are one line and exit status 2.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::faulty_upstream::{contains, FaultyUpstream, Hit, Mode};
use common::*;

const WAIT: Duration = Duration::from_secs(30);
/// Two WhatsApp users (their phone numbers are their conversation keys).
const ALICE: &str = "4917600000001";
const BOB: &str = "4917600000002";

/// A WhatsApp notification of one text message `id` from `from`.
fn message(from: &str, id: &str) -> Vec<u8> {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"106540352242922"}},"contacts":[{{"profile":{{"name":"A user"}},"wa_id":"{from}"}}],"messages":[{{"from":"{from}","id":"{id}","timestamp":"1750000000","type":"text","text":{{"body":"hello"}}}}]}},"field":"messages"}}]}}]}}"#
    )
    .into_bytes()
}

/// One notification holding the messages `(from, id)`, each in a change of its own.
fn batch(messages: &[(&str, &str)]) -> Vec<u8> {
    let changes: Vec<String> = messages
        .iter()
        .map(|(from, id)| {
            format!(
                r#"{{"value":{{"messaging_product":"whatsapp","metadata":{{"phone_number_id":"106540352242922"}},"messages":[{{"from":"{from}","id":"{id}","timestamp":"1750000000","type":"text","text":{{"body":"hello"}}}}]}},"field":"messages"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{}]}}]}}"#,
        changes.join(",")
    )
    .into_bytes()
}

/// The requests that carried one of `ids`, in order of arrival, as (id, answer).
fn sequence(up: &FaultyUpstream, ids: &[&str]) -> Vec<(String, Option<u16>)> {
    up.hits()
        .iter()
        .filter_map(|h| {
            let id = ids.iter().find(|id| contains(&h.body, id.as_bytes()))?;
            Some(((*id).to_owned(), h.answered))
        })
        .collect()
}

/// The first request carrying `id` that was answered `status`.
fn answered(up: &FaultyUpstream, id: &str, status: u16) -> Option<Hit> {
    up.hits()
        .into_iter()
        .find(|h| contains(&h.body, id.as_bytes()) && h.answered == Some(status))
}

/// (id, 200) for each of `ids`.
fn delivered(ids: &[&str]) -> Vec<(String, Option<u16>)> {
    ids.iter().map(|id| ((*id).to_owned(), Some(200))).collect()
}

both_spools!(a_users_messages_arrive_one_at_a_time_in_order_and_others_do_not_wait);
fn a_users_messages_arrive_one_at_a_time_in_order_and_others_do_not_wait(spool: &Spool) {
    let up = FaultyUpstream::start(Mode::Status(200));
    // Alice's first message fails twice, then is taken.
    up.for_content(
        b"wamid.A1",
        &[Mode::Status(500), Mode::Status(500), Mode::Status(200)],
    );
    let x = Xhubd::start(
        Options::new(&up.url("/wa"))
            .spool(spool)
            .retry("1s", "2s")
            .arg("--upstream-order")
            .arg("conversation"),
    );
    for id in ["wamid.A1", "wamid.A2", "wamid.A3"] {
        assert_eq!(x.target.post_signed(&message(ALICE, id)).status, 200);
    }
    for id in ["wamid.B1", "wamid.B2"] {
        assert_eq!(x.target.post_signed(&message(BOB, id)).status, 200);
    }
    wait_for(WAIT, "Alice's third message delivered", || {
        answered(&up, "wamid.A3", 200).is_some()
    });
    // 1 after its retries, then 2, then 3: none sent before the one ahead was taken.
    let alice = ["wamid.A1", "wamid.A2", "wamid.A3"];
    let mut expected = vec![
        ("wamid.A1".to_owned(), Some(500)),
        ("wamid.A1".to_owned(), Some(500)),
    ];
    expected.extend(delivered(&alice));
    assert_eq!(sequence(&up, &alice), expected);
    // Bob's messages, sent after Alice's, went while her first was still failing.
    let first_taken = answered(&up, "wamid.A1", 200).unwrap().at;
    assert_eq!(
        sequence(&up, &["wamid.B1", "wamid.B2"]),
        delivered(&["wamid.B1", "wamid.B2"])
    );
    for id in ["wamid.B1", "wamid.B2"] {
        let bob = answered(&up, id, 200).unwrap().at;
        assert!(
            bob < first_taken,
            "{id} waited for Alice: {:?} after her first was taken",
            bob - first_taken
        );
    }
    // Each delivery kept its user as its key; none holds it any more.
    assert_eq!(x.count("SELECT count(*) FROM conversations"), 5);
    wait_for(WAIT, "every hold ended", || {
        x.count("SELECT count(*) FROM conversations WHERE holding") == 0
    });
    assert_eq!(
        x.count("SELECT count(DISTINCT key) FROM conversations"),
        2,
        "one key per user"
    );
}

both_spools!(the_order_holds_across_kill_9);
fn the_order_holds_across_kill_9(spool: &Spool) {
    let up = FaultyUpstream::start(Mode::Status(200));
    // The first attempt at the first message hangs until xhubd dies.
    up.for_content(b"wamid.K1", &[Mode::Hang, Mode::Status(200)]);
    let mut x = Xhubd::start(
        Options::new(&up.url("/wa"))
            .spool(spool)
            .arg("--upstream-order")
            .arg("conversation"),
    );
    let ids = ["wamid.K1", "wamid.K2", "wamid.K3"];
    for id in ids {
        assert_eq!(x.target.post_signed(&message(ALICE, id)).status, 200);
    }
    wait_for(WAIT, "the first message in flight", || up.in_flight() == 1);
    x.kill9();
    wait_for(WAIT, "the hung attempt closed", || up.in_flight() == 0);
    x.spawn();
    wait_for(WAIT, "the third message delivered", || {
        answered(&up, "wamid.K3", 200).is_some()
    });
    let mut expected = vec![("wamid.K1".to_owned(), None)];
    expected.extend(delivered(&ids));
    assert_eq!(sequence(&up, &ids), expected);
}

both_spools!(a_dead_delivery_holds_nothing_and_a_replayed_one_takes_its_place_again);
fn a_dead_delivery_holds_nothing_and_a_replayed_one_takes_its_place_again(spool: &Spool) {
    let up = FaultyUpstream::start(Mode::Status(200));
    // Refused (dead at once); once replayed, failing twice before it is taken.
    up.for_content(
        b"wamid.R1",
        &[
            Mode::Status(400),
            Mode::Status(503),
            Mode::Status(503),
            Mode::Status(200),
        ],
    );
    let x = Xhubd::start(
        Options::new(&up.url("/wa"))
            .spool(spool)
            .retry("300ms", "600ms")
            .arg("--upstream-order")
            .arg("conversation"),
    );
    for id in ["wamid.R1", "wamid.R2"] {
        assert_eq!(x.target.post_signed(&message(ALICE, id)).status, 200);
    }
    wait_for(WAIT, "the second delivered after the first died", || {
        answered(&up, "wamid.R2", 200).is_some()
    });
    let first = up.hits()[0].event_id.clone();
    let (code, out, err) = x.run_on_spool(&["events", "replay", &first]);
    assert_eq!(code, 0, "{out}{err}");
    // Pending again with its row number: a message accepted after waits for it.
    assert_eq!(
        x.target.post_signed(&message(ALICE, "wamid.R3")).status,
        200
    );
    wait_for(WAIT, "the third delivered", || {
        answered(&up, "wamid.R3", 200).is_some()
    });
    let ids = ["wamid.R1", "wamid.R2", "wamid.R3"];
    let status = |id: &str, s| (id.to_owned(), Some(s));
    assert_eq!(
        sequence(&up, &ids),
        [
            status("wamid.R1", 400),
            status("wamid.R2", 200),
            status("wamid.R1", 503),
            status("wamid.R1", 503),
            status("wamid.R1", 200),
            status("wamid.R3", 200),
        ]
    );
}

both_spools!(a_delivery_that_keeps_failing_stops_holding_after_order_hold);
fn a_delivery_that_keeps_failing_stops_holding_after_order_hold(spool: &Spool) {
    let up = FaultyUpstream::start(Mode::Status(200));
    up.for_content(b"wamid.H1", &[Mode::Status(500)]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("xhubd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[route]]
name = "wa"
path = "/wa"
verify_token = "t"
app_secret = "{APP_SECRET}"
  [[route.destination]]
  name = "bot"
  url = "{}"
  split = "item"
  order = "conversation"
  order_hold = "1s"
  retry_initial = "200ms"
  retry_max_delay = "400ms"
"#,
            up.url("/wa")
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let x = Xhubd::start(
        Options::config(config.to_str().unwrap())
            .spool(spool)
            .arg("--admin-listen")
            .arg(&admin.to_string()),
    );
    let admin = Target::Tcp(admin);
    let post = |body: &[u8]| {
        x.target.request(
            "POST",
            "/wa",
            &[("X-Hub-Signature-256", &sign(APP_SECRET, body))],
            body,
        )
    };
    // One notification for two users (split: a delivery each), then Alice's second.
    assert_eq!(
        post(&batch(&[(ALICE, "wamid.H1"), (BOB, "wamid.D1")])).status,
        200
    );
    assert_eq!(post(&message(ALICE, "wamid.H2")).status, 200);
    wait_for(WAIT, "Alice's second message delivered", || {
        answered(&up, "wamid.H2", 200).is_some()
    });
    let first_failure = answered(&up, "wamid.H1", 500).unwrap().at;
    let second = answered(&up, "wamid.H2", 200).unwrap().at;
    let bob = answered(&up, "wamid.D1", 200).unwrap().at;
    assert!(bob < second, "Bob waited for Alice");
    let waited = second - first_failure;
    assert!(
        waited >= Duration::from_millis(950),
        "the second went {waited:?} after the first failed, inside order_hold"
    );
    // The first keeps failing, out of order now.
    wait_for(WAIT, "the first retried after the second went", || {
        up.hits()
            .iter()
            .any(|h| contains(&h.body, b"wamid.H1") && h.at > second)
    });
    let metrics = || admin.get("/metrics").text();
    wait_for(WAIT, "the release counted", || {
        metrics()
            .contains("xhubd_conversation_holds_released_total{route=\"wa\",destination=\"bot\"} 1")
    });
    // Said once, with the count of conversations, never the user's number.
    let retried_at = Instant::now();
    wait_for(WAIT, "two more attempts at the first", || {
        up.hits()
            .iter()
            .filter(|h| contains(&h.body, b"wamid.H1") && h.at > retried_at)
            .count()
            >= 2
    });
    let logs = x.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("order_hold ran out"))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(lines[0].contains("conversations=1"), "{}", lines[0]);
    assert!(!logs.contains(ALICE), "a user's number in the logs: {logs}");
    assert!(metrics()
        .contains("xhubd_conversation_holds_released_total{route=\"wa\",destination=\"bot\"} 1"));
    assert_eq!(
        x.count("SELECT count(*) FROM deliveries WHERE state = 0"),
        1,
        "the first is still pending"
    );
}

#[test]
fn two_instances_on_one_database_keep_a_conversation_in_order() {
    let spool = Spool::postgres();
    let up = FaultyUpstream::start(Mode::Slow(Duration::from_millis(20), 200));
    // Alice's first message hangs at the backend until its sender dies.
    up.for_content(b"wamid.E1", &[Mode::Hang, Mode::Status(200)]);
    // A lease of 3 s + 10 s: an instance that dies holds its claims that long.
    let start = |name: &str| {
        Xhubd::start(
            Options::new(&up.url("/wa"))
                .spool(&spool)
                .arg("--instance-name")
                .arg(name)
                .arg("--upstream-timeout")
                .arg("3s")
                .arg("--upstream-order")
                .arg("conversation"),
        )
    };
    let mut instances = [start("a"), start("b")];
    let alice: Vec<String> = (1..=6).map(|i| format!("wamid.E{i}")).collect();
    let bob: Vec<String> = (1..=6).map(|i| format!("wamid.F{i}")).collect();
    // Each user's messages alternate between the instances, one after the other.
    for i in 0..6 {
        let post = |x: &Xhubd, from: &str, id: &str| {
            assert_eq!(x.target.post_signed(&message(from, id)).status, 200);
        };
        post(&instances[i % 2], ALICE, &alice[i]);
        post(&instances[(i + 1) % 2], BOB, &bob[i]);
    }
    let alice: Vec<&str> = alice.iter().map(String::as_str).collect();
    let bob: Vec<&str> = bob.iter().map(String::as_str).collect();
    // Bob's go while Alice's first hangs; none of her others leaves either instance.
    wait_for(WAIT, "Bob's six delivered", || {
        answered(&up, "wamid.F6", 200).is_some()
    });
    assert_eq!(sequence(&up, &bob), delivered(&bob));
    wait_for(WAIT, "Alice's first in flight", || up.in_flight() == 1);
    // The instance sending it dies; the other takes it over once the lease has run
    // out, and only then her second, and so on.
    let holder = ["a", "b"]
        .iter()
        .position(|name| {
            instances[0].count(&format!(
                "SELECT count(*) FROM deliveries WHERE state = 0 AND claimed_by = '{name}'"
            )) > 0
        })
        .expect("an instance holds Alice's first");
    instances[holder].kill9();
    let survivor = ["a", "b"][1 - holder];
    wait_for(WAIT, "Alice's sixth delivered", || {
        answered(&up, "wamid.E6", 200).is_some()
    });
    let mut expected = vec![("wamid.E1".to_owned(), None)];
    expected.extend(delivered(&alice));
    assert_eq!(sequence(&up, &alice), expected);
    assert_eq!(
        instances[1 - holder].count(&format!(
            "SELECT count(*) FROM attempts a JOIN conversations c ON c.delivery_seq = a.delivery_seq
             WHERE a.instance = '{survivor}' AND a.result = 1 AND c.key = 'whatsapp:{ALICE}'"
        )),
        6,
        "the survivor delivered Alice's six"
    );
}

#[test]
fn spool_copy_keeps_each_conversation_in_order() {
    // The old machine's backend fails everything: Alice's first is retried, her others
    // wait for it.
    let up = FaultyUpstream::start(Mode::Status(503));
    let mut old = Xhubd::start(
        Options::new(&up.url("/wa"))
            .arg("--upstream-order")
            .arg("conversation"),
    );
    let ids = ["wamid.C1", "wamid.C2", "wamid.C3"];
    for id in ids {
        assert_eq!(old.target.post_signed(&message(ALICE, id)).status, 200);
    }
    wait_for(WAIT, "the first tried twice", || {
        sequence(&up, &ids).len() >= 2
    });
    assert!(old.terminate().success());
    let spool = Spool::postgres();
    let Spool::Postgres { url, db } = &spool else {
        unreachable!()
    };
    let from = old.state_dir.display().to_string();
    let (code, out, err) = run_xhubd(&["spool", "copy", "--from", &from, "--to", url], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 pending"), "{out}");
    assert_eq!(
        common::postgres::shared().count(db, "SELECT count(*) FROM conversations WHERE holding"),
        3,
        "each copied delivery holds Alice's conversation"
    );
    // The new machine takes them in the old one's order.
    up.set_default(Mode::Status(200));
    let _new = Xhubd::start(
        Options::new(&up.url("/wa"))
            .spool(&spool)
            .arg("--upstream-order")
            .arg("conversation"),
    );
    wait_for(WAIT, "the third delivered", || {
        answered(&up, "wamid.C3", 200).is_some()
    });
    let seen = sequence(&up, &ids);
    let failed = seen.len() - 3;
    assert!(
        seen[..failed]
            .iter()
            .all(|(id, status)| id == "wamid.C1" && *status == Some(503)),
        "{seen:?}"
    );
    assert_eq!(seen[failed..], delivered(&ids)[..]);
}

#[test]
fn bad_order_settings_are_one_line_and_exit_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix:{}", dir.path().join("s.sock").display());
    let state = dir.path().join("state").display().to_string();
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--listen",
            &sock,
            "--state-dir",
            &state,
            "--verify-token",
            VERIFY_TOKEN,
            "--app-secret",
            APP_SECRET,
            "--upstream",
            "http://127.0.0.1:9/",
        ];
        args.extend_from_slice(extra);
        run_xhubd(&args, None)
    };
    for (extra, named) in [
        (&["--upstream-order", "sideways"][..], "--upstream-order"),
        (
            &["--upstream-order-hold", "0s"][..],
            "--upstream-order-hold",
        ),
        (
            &["--upstream-order-hold", "10"][..],
            "--upstream-order-hold",
        ),
    ] {
        let (code, _, err) = serve(extra);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(named), "{err}");
    }
    let route = |keys: &str| {
        format!(
            "[[route]]\nname = \"wa\"\npath = \"/wa\"\nverify_token = \"t\"\napp_secret = \"s\"\n[[route.destination]]\nname = \"d\"\nurl = \"http://127.0.0.1:9/\"\n{keys}\n"
        )
    };
    let path = dir.path().join("xhubd.toml");
    for (keys, named) in [
        ("order = \"fifo\"", "order"),
        (
            "order = \"conversation\"\norder_hold = \"never\"",
            "order_hold",
        ),
        ("order_hold = \"5m\"", "order_hold"),
    ] {
        std::fs::write(&path, route(keys)).unwrap();
        let (code, out, err) = run_xhubd(
            &[
                "check",
                "--config",
                path.to_str().unwrap(),
                "--state-dir",
                &state,
            ],
            None,
        );
        assert_eq!(code, 2, "{keys}: {out}{err}");
        let fail: Vec<&str> = out.lines().filter(|l| l.contains("FAIL")).collect();
        assert_eq!(fail.len(), 1, "{out}{err}");
        assert!(
            fail[0].contains("destination \"d\"") && fail[0].contains(named),
            "{keys}: {}",
            fail[0]
        );
    }
    // A good one passes (the backend being down is only a warning).
    std::fs::write(
        &path,
        route("order = \"conversation\"\norder_hold = \"2m\"\nsplit = \"item\""),
    )
    .unwrap();
    let (code, out, err) = run_xhubd(
        &[
            "check",
            "--config",
            path.to_str().unwrap(),
            "--state-dir",
            &state,
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
}

both_spools!(an_outage_longer_than_order_hold_keeps_every_conversation_in_order);
fn an_outage_longer_than_order_hold_keeps_every_conversation_in_order(spool: &Spool) {
    let up = FaultyUpstream::start(Mode::Reset);
    let x = Xhubd::start(
        Options::new(&up.url("/wa"))
            .spool(spool)
            .retry("50ms", "200ms")
            .arg("--upstream-order")
            .arg("conversation")
            .arg("--upstream-order-hold")
            .arg("2s"),
    );
    // Five conversations of two messages: five heads failing together take the
    // destination down (ten failures in a row) in two rounds of retries, well inside
    // order_hold; the outage then lasts longer than order_hold.
    let users: Vec<(String, [String; 2])> = (1..=5)
        .map(|u| {
            (
                format!("49176000001{u:02}"),
                [format!("wamid.U{u}M1"), format!("wamid.U{u}M2")],
            )
        })
        .collect();
    for m in 0..2 {
        for (from, ids) in &users {
            assert_eq!(x.target.post_signed(&message(from, &ids[m])).status, 200);
        }
    }
    wait_for(WAIT, "the destination down", || {
        x.logs()
            .contains("destination down after retryable failures in a row")
    });
    let down_at = Instant::now();
    while down_at.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !x.logs().contains("order_hold ran out"),
        "released during the outage: {}",
        x.logs()
    );
    up.set_default(Mode::Status(200));
    wait_for(WAIT, "all ten delivered", || {
        x.count("SELECT count(*) FROM deliveries WHERE state = 1") == 10
    });
    for (_, ids) in &users {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let got: Vec<String> = sequence(&up, &ids)
            .into_iter()
            .filter(|(_, status)| *status == Some(200))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(got, ids, "in the order they were accepted");
    }
}

/// Instances draw row numbers when their transactions start and commit in any order,
/// so a user's later message may be in flight at one instance before the earlier one
/// is visible at another: the earlier one then waits for it, never goes beside it.
#[test]
fn on_postgres_a_message_waits_while_a_later_one_of_its_conversation_is_in_flight() {
    let spool = Spool::postgres();
    let up = FaultyUpstream::start(Mode::Reset);
    let mut x = Xhubd::start(
        Options::new(&up.url("/wa"))
            .spool(&spool)
            .arg("--upstream-order")
            .arg("conversation"),
    );
    for id in ["wamid.A1", "wamid.A2"] {
        assert_eq!(x.target.post_signed(&message(ALICE, id)).status, 200);
    }
    wait_for(WAIT, "the first tried", || {
        x.count("SELECT count(*) FROM deliveries WHERE attempts > 0") > 0
    });
    x.kill9();
    // The later message in flight at another instance for 3 s more; the earlier due.
    let lease_end = Instant::now() + Duration::from_secs(3);
    let until = now_ms() + 3_000;
    x.execute(&format!(
        "UPDATE deliveries SET claimed_by = 'elsewhere', lease_until = {until}
         WHERE seq = (SELECT max(seq) FROM deliveries);
         UPDATE deliveries SET next_attempt_at = 0, claimed_by = NULL
         WHERE seq = (SELECT min(seq) FROM deliveries)"
    ));
    up.set_default(Mode::Status(200));
    x.spawn();
    wait_for(WAIT, "the first delivered", || {
        answered(&up, "wamid.A1", 200).is_some()
    });
    let first = answered(&up, "wamid.A1", 200).unwrap().at;
    assert!(
        first + Duration::from_millis(100) >= lease_end,
        "sent {:?} before the later one's lease ended",
        lease_end - first
    );
}

/// With a backend that takes its time and room for 8 at once, one user's messages
/// still go one at a time; two users', two at a time.
#[test]
fn a_slow_backend_gets_one_request_at_a_time_per_conversation() {
    let up = FaultyUpstream::start(Mode::Slow(Duration::from_millis(150), 200));
    let x = Xhubd::start(
        Options::new(&up.url("/wa"))
            .arg("--upstream-concurrency")
            .arg("8")
            .arg("--upstream-order")
            .arg("conversation"),
    );
    for n in 0..4 {
        let id = format!("wamid.A{n}");
        assert_eq!(x.target.post_signed(&message(ALICE, &id)).status, 200);
    }
    wait_for(WAIT, "Alice's four delivered", || {
        x.count("SELECT count(*) FROM deliveries WHERE state = 1") == 4
    });
    assert_eq!(up.max_in_flight(), 1, "one of her messages at a time");
    for n in 0..4 {
        for user in [ALICE, BOB] {
            let id = format!("wamid.{user}.{n}");
            assert_eq!(x.target.post_signed(&message(user, &id)).status, 200);
        }
    }
    wait_for(WAIT, "the other eight delivered", || {
        x.count("SELECT count(*) FROM deliveries WHERE state = 1") == 12
    });
    assert_eq!(
        up.max_in_flight(),
        2,
        "one per user at a time, both users at once"
    );
}
