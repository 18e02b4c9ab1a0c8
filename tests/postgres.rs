//! Several xhubd instances on one PostgreSQL spool (a real server, started by the
//! tests in a throw-away cluster): dedup across instances, delivery taken over after a
//! lease when an instance dies, the database going down under load, what start-up
//! says about a database that refuses or does not answer, and TLS to the database
//! (`sslmode`, `sslrootcert`, client certificates) against a server with `ssl = on`.
//! Behaviour one instance shows on either spool is tested on PostgreSQL by the
//! `on_postgres` variants in the other files (`both_spools!`).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use common::faulty_upstream::{FaultyUpstream, Mode};
use common::pki::{ClientId, PgPki};
use common::postgres::{PgCluster, PgTls, PG_PASSWORD};
use common::*;

/// An instance on the database at `url`, named `name`, with an admin listener.
fn instance(url: &str, name: &str, upstream: &str, extra: &[&str]) -> (Xhubd, Target) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut opts = Options::new(upstream)
        .arg("--spool")
        .arg(url)
        .arg("--instance-name")
        .arg(name)
        .arg("--admin-listen")
        .arg(&admin.to_string());
    for a in extra {
        opts = opts.arg(a);
    }
    (Xhubd::start(opts), Target::Tcp(admin))
}

/// `xhubd check` of a one-app setup on the spool at `url`, delivering to `upstream`.
fn check_args<'a>(url: &'a str, upstream: &'a str) -> Vec<&'a str> {
    vec![
        "check",
        "--upstream",
        upstream,
        "--verify-token",
        VERIFY_TOKEN,
        "--app-secret",
        APP_SECRET,
        "--spool",
        url,
    ]
}

/// A WhatsApp message notification: message id `wamid`, sent at `timestamp`.
fn whatsapp(wamid: &str, timestamp: u64) -> Vec<u8> {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"phone_number_id":"5"}},"messages":[{{"from":"4477","id":"{wamid}","timestamp":"{timestamp}","type":"text","text":{{"body":"hi"}}}}]}}}}]}}]}}"#
    )
    .into_bytes()
}

/// How many times each body reached the upstream.
fn tally(upstream: &Upstream) -> HashMap<Vec<u8>, usize> {
    let mut seen = HashMap::new();
    for r in upstream.received() {
        *seen.entry(r.body.to_vec()).or_insert(0) += 1;
    }
    seen
}

#[test]
fn two_instances_started_at_once_deliver_each_copy_once_and_drop_retries_seen_by_the_other() {
    let pg = PgCluster::start();
    let url = pg.database("spool");
    let upstream = Upstream::start();
    let url_events = upstream.url("/events");
    // Both start at once: the schema is created once, under the migration lock.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| instance(&url, "a", &url_events, &[]));
        let b = s.spawn(|| instance(&url, "b", &url_events, &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, admin_a) = a;
    let (b, _admin_b) = b;
    let version = xhubd::spool::postgres::schema::SCHEMA_VERSION;
    assert_eq!(
        pg.count(
            "spool",
            &format!("SELECT count(*) FROM xhubd_schema WHERE version = {version}")
        ),
        1
    );
    let (code, report, err) = run_xhubd(&check_args(&url, &url_events), None);
    assert_eq!(code, 0, "{report}{err}");
    assert!(
        report.contains(&format!("connects (schema version {version})")),
        "{report}"
    );
    assert!(!report.contains(PG_PASSWORD), "{report}");
    // The same body to both at the same moment, 100 times.
    let barrier = Barrier::new(2);
    let answers = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for x in [&a, &b] {
            let (barrier, answers) = (&barrier, &answers);
            s.spawn(move || {
                for i in 0..100 {
                    let body = page_event(i);
                    barrier.wait();
                    let answer = x.target.post_signed(&body);
                    answers.lock().unwrap().push(answer.status);
                }
            });
        }
    });
    let answers = answers.into_inner().unwrap();
    assert_eq!(answers.len(), 200);
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    upstream.wait_for(100, Duration::from_secs(30));
    // Meta's retry of a message (same id, new time) at the other instance.
    assert_eq!(a.target.post_signed(&whatsapp("wamid.A1", 1)).status, 200);
    upstream.wait_for(101, Duration::from_secs(30));
    let retry = b.target.post_signed(&whatsapp("wamid.A1", 2));
    assert_eq!(retry.status, 200);
    // Nothing more arrives: each copy was delivered once, the retry not at all.
    std::thread::sleep(Duration::from_secs(2));
    let seen = tally(&upstream);
    assert_eq!(seen.len(), 101, "distinct bodies delivered");
    assert!(seen.values().all(|n| *n == 1), "a body was delivered twice");
    assert!(!seen.contains_key(&whatsapp("wamid.A1", 2)));
    assert_eq!(pg.count("spool", "SELECT count(*) FROM events"), 101);
    // Which instance accepted what is kept, and the page and metrics read the database.
    let accepted_by: HashSet<String> = pg
        .psql("spool", "SELECT DISTINCT accepted_by FROM events")
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(accepted_by.is_subset(&["a".to_owned(), "b".to_owned()].into()));
    let metrics = admin_a.get("/metrics").text();
    assert!(
        metrics.contains("xhubd_spool_events{state=\"delivered\"} 101"),
        "{metrics}"
    );
    assert_eq!(admin_a.get("/readyz").status, 200);
    for x in [&a, &b] {
        assert!(!x.logs().contains(PG_PASSWORD), "the password in a log");
    }
}

#[test]
fn deliveries_claimed_by_an_instance_killed_with_kill_9_are_taken_over_after_the_lease() {
    let pg = PgCluster::start();
    let url = pg.database("spool");
    let hang = FaultyUpstream::start(Mode::Hang);
    let target = hang.url("/events");
    // Concurrency 8 (the default) holds for the cluster: a sends 8 of the 20 at once,
    // and takes 8 more ahead, so that an attempt that ends is followed at once.
    let extra = ["--upstream-timeout", "2s"];
    let (mut a, admin_a) = instance(&url, "a", &target, &extra);
    for i in 0..20 {
        assert_eq!(a.target.post_signed(&page_event(i)).status, 200);
    }
    wait_for(Duration::from_secs(10), "a holds 8 attempts", || {
        hang.in_flight() >= 8
    });
    // Its status page and metrics say which spool and who holds what.
    let page = admin_a.get("/").text();
    assert!(page.contains("spool: postgresql (instance a)"), "{page}");
    assert!(page.contains("<td>a</td><td class=\"num\">"), "{page}");
    let metrics = admin_a.get("/metrics").text();
    assert!(
        metrics.contains("xhubd_spool_claimed{holder=\"a\"} "),
        "{metrics}"
    );
    assert_eq!(
        pg.psql(
            "spool",
            "SELECT slots FROM delivery_slots WHERE holder = 'a'"
        )
        .trim(),
        "8"
    );
    let claimed_at = Instant::now();
    a.kill9();
    let held: Vec<String> = pg
        .psql(
            "spool",
            "SELECT e.id FROM deliveries d JOIN events e ON e.seq = d.event_seq
             WHERE d.state = 0 AND d.claimed_by = 'a'",
        )
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        (8..=16).contains(&held.len()),
        "a claimed {}: its 8 attempts, and at most 8 ahead",
        held.len()
    );
    assert_eq!(hang.max_in_flight(), 8, "more at once than the concurrency");
    // The operator sees who holds what, from the command line, while a's lease runs.
    let (code, shown, err) = run_xhubd(&["events", "--spool", &url, "show", &held[0]], None);
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains("accepted by: instance a"), "{shown}");
    assert!(
        shown.contains("taken by instance a (lease running)"),
        "{shown}"
    );
    hang.set_default(Mode::Status(200));
    let (b, _) = instance(&url, "b", &target, &extra);
    wait_for(Duration::from_secs(40), "b delivers the 20", || {
        pg.count("spool", "SELECT count(*) FROM deliveries WHERE state = 1") == 20
    });
    // None before a's lease (its timeout, 2 s, plus the 10 s margin) ran out: a's 8
    // may still be in flight at the backend, and a's slots count against the
    // destination's concurrency, so the 4 nobody held wait too.
    for h in hang.hits().iter().filter(|h| h.at > claimed_at) {
        let after = h.at.duration_since(claimed_at);
        assert!(
            after >= Duration::from_secs(10),
            "{}: sent after {after:?}, inside a's lease",
            h.event_id
        );
    }
    for id in pg.psql("spool", "SELECT id FROM events").lines() {
        assert!(
            hang.hits_for(id).iter().any(|h| h.at > claimed_at),
            "{id} not delivered by b"
        );
    }
    assert_eq!(
        pg.count(
            "spool",
            "SELECT count(*) FROM attempts WHERE instance = 'b' AND result = 1"
        ),
        20
    );
    let (code, listed, err) = run_xhubd(
        &[
            "events",
            "--spool",
            &url,
            "list",
            "--state",
            "delivered",
            "--json",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 20);
    let (_, shown, _) = run_xhubd(&["events", "--spool", &url, "show", &held[0]], None);
    assert!(
        shown.contains("(b) "),
        "the attempt names its instance: {shown}"
    );
    // A replay from the command line reaches the running instance.
    let before = hang.hits_for(&held[0]).len();
    let (code, out, err) = run_xhubd(&["events", "--spool", &url, "replay", &held[0]], None);
    assert_eq!(code, 0, "{out}{err}");
    wait_for(Duration::from_secs(10), "b delivers the replay", || {
        hang.hits_for(&held[0]).len() > before
    });
    assert!(!err.contains(PG_PASSWORD) && !out.contains(PG_PASSWORD));
    drop(b);
}

#[test]
fn a_destinations_concurrency_holds_for_both_instances_together() {
    let pg = PgCluster::start();
    let url = pg.database("spool");
    let slow = FaultyUpstream::start(Mode::Slow(Duration::from_millis(50), 200));
    let target = slow.url("/events");
    let extra = ["--upstream-concurrency", "3"];
    let (a, _) = instance(&url, "a", &target, &extra);
    let (b, _) = instance(&url, "b", &target, &extra);
    for i in 0..60 {
        let to = if i % 2 == 0 { &a } else { &b };
        assert_eq!(to.target.post_signed(&page_event(i)).status, 200);
    }
    wait_for(Duration::from_secs(30), "the 60 delivered", || {
        pg.count("spool", "SELECT count(*) FROM deliveries WHERE state = 1") == 60
    });
    // Never more than 3 at the backend, though each instance may send 3.
    let most = slow.max_in_flight();
    assert!(most <= 3, "{most} requests at once at the backend");
    assert!(most >= 2, "the room was never used: at most {most} at once");
}

#[test]
fn two_instances_share_a_destinations_concurrency_under_a_steady_load() {
    let (db, url) = postgres::shared().fresh_database();
    let slow = FaultyUpstream::start(Mode::Slow(Duration::from_millis(40), 200));
    let target = slow.url("/events");
    let extra = ["--upstream-concurrency", "4"];
    let (a, _) = instance(&url, "a", &target, &extra);
    let (b, _) = instance(&url, "b", &target, &extra);
    // A backlog first, all of it accepted by a, then both look at it.
    for i in 0..200 {
        assert_eq!(a.target.post_signed(&page_event(i)).status, 200);
    }
    let count = |sql: &str| postgres::shared().count(&db, sql);
    wait_for(Duration::from_secs(30), "the 200 delivered", || {
        count("SELECT count(*) FROM deliveries WHERE state = 1") == 200
    });
    let by = |name: &str| {
        count(&format!(
            "SELECT count(*) FROM attempts WHERE instance = '{name}' AND result = 1"
        ))
    };
    let (by_a, by_b) = (by("a"), by("b"));
    eprintln!("delivered by a: {by_a}, by b: {by_b}");
    // Each holds about half of the 4 slots while both are claiming.
    assert!(by_a >= 40 && by_b >= 40, "a {by_a}, b {by_b}");
    assert!(
        slow.max_in_flight() <= 4,
        "{} at once",
        slow.max_in_flight()
    );
    drop((a, b));
}

#[test]
fn an_instance_that_stops_gives_back_its_slots_and_what_it_took_ahead() {
    let (db, url) = postgres::shared().fresh_database();
    let slow = FaultyUpstream::start(Mode::Slow(Duration::from_millis(500), 200));
    let target = slow.url("/events");
    // Leases of 40 s: a slot or a delivery left to run out would hold b back that long.
    let extra = ["--upstream-concurrency", "2", "--upstream-timeout", "30s"];
    let (mut a, _) = instance(&url, "a", &target, &extra);
    for i in 0..12 {
        assert_eq!(a.target.post_signed(&page_event(i)).status, 200);
    }
    let count = |sql: &str| postgres::shared().count(&db, sql);
    let held_by_a = "SELECT count(*) FROM deliveries WHERE state = 0 AND claimed_by = 'a'";
    wait_for(
        Duration::from_secs(10),
        "a sends 2 and takes more ahead",
        || slow.in_flight() == 2 && count(held_by_a) > 2,
    );
    assert!(a.terminate().success(), "{}", a.logs());
    // Its attempts ended and were recorded before it stopped; it holds nothing now.
    assert_eq!(count(held_by_a), 0);
    assert_eq!(
        count("SELECT count(*) FROM delivery_slots WHERE holder = 'a'"),
        0
    );
    let (b, _) = instance(&url, "b", &target, &extra);
    wait_for(Duration::from_secs(20), "b delivers the 12", || {
        count("SELECT count(*) FROM deliveries WHERE state = 1") == 12
    });
    assert!(
        slow.max_in_flight() <= 2,
        "{} at once",
        slow.max_in_flight()
    );
    drop(b);
}

#[test]
fn a_destinations_rate_limit_holds_for_both_instances_together() {
    let (_, url) = postgres::shared().fresh_database();
    let up = FaultyUpstream::start(Mode::Status(200));
    let target = up.url("/events");
    let extra = [
        "--upstream-rate-limit",
        "50",
        "--upstream-rate-burst",
        "5",
        "--upstream-concurrency",
        "16",
    ];
    let (a, _) = instance(&url, "a", &target, &extra);
    let (b, _) = instance(&url, "b", &target, &extra);
    for i in 0..200 {
        let to = if i % 2 == 0 { &a } else { &b };
        assert_eq!(to.target.post_signed(&page_event(i)).status, 200);
    }
    wait_for(Duration::from_secs(30), "the 200 at the backend", || {
        up.hits().len() >= 200
    });
    let hits = up.hits();
    let arrivals: Vec<Instant> = hits.iter().map(|h| h.at).collect();
    let span = *arrivals.iter().max().unwrap() - *arrivals.iter().min().unwrap();
    let most = busiest_second(&arrivals);
    eprintln!("200 requests by two instances in {span:?}, at most {most} in one second");
    // (200 - 5) / 50 s = 3.9 s, less a margin; each instance alone could send 50/s.
    assert!(
        span >= Duration::from_millis(3_500),
        "200 requests in {span:?}"
    );
    assert!(most <= 55, "{most} requests in one second");
    let ids: HashSet<&String> = hits.iter().map(|h| &h.event_id).collect();
    assert_eq!(ids.len(), 200, "each event once");
}

#[test]
fn a_destination_down_gets_one_probe_at_a_time_from_both_instances_together() {
    let (db, url) = postgres::shared().fresh_database();
    let up = FaultyUpstream::start(Mode::Slow(Duration::from_millis(200), 503));
    let target = up.url("/events");
    let extra = ["--upstream-concurrency", "4"];
    let (a, admin_a) = instance(&url, "a", &target, &extra);
    let (b, admin_b) = instance(&url, "b", &target, &extra);
    for i in 0..30 {
        let to = if i % 2 == 0 { &a } else { &b };
        assert_eq!(to.target.post_signed(&page_event(i)).status, 200);
    }
    let down = "destination down after retryable failures in a row";
    wait_for(Duration::from_secs(30), "down for both", || {
        a.logs().contains(down) && b.logs().contains(down)
    });
    wait_for(Duration::from_secs(30), "attempts under way ended", || {
        up.in_flight() == 0
    });
    up.reset_max_in_flight();
    let before = up.hits().len();
    for i in 30..50 {
        let to = if i % 2 == 0 { &a } else { &b };
        assert_eq!(to.target.post_signed(&page_event(i)).status, 200);
    }
    wait_for(Duration::from_secs(30), "three probes", || {
        up.hits().len() >= before + 3
    });
    assert_eq!(
        up.max_in_flight(),
        1,
        "one probe at a time, whichever instance"
    );
    for admin in [&admin_a, &admin_b] {
        let page = admin.get("/").text();
        assert!(page.contains("down since"), "{page}");
    }
    up.set_default(Mode::Status(200));
    wait_for(Duration::from_secs(30), "the 50 delivered", || {
        postgres::shared().count(&db, "SELECT count(*) FROM deliveries WHERE state = 1") == 50
    });
    wait_for(Duration::from_secs(10), "both see it up", || {
        [&admin_a, &admin_b]
            .iter()
            .all(|admin| !admin.get("/").text().contains("down since"))
    });
}

#[test]
fn while_the_database_restarts_events_get_503_and_every_200_is_delivered() {
    let pg = PgCluster::start();
    let url = pg.database("spool");
    let upstream = Upstream::start();
    let events = upstream.url("/events");
    let (a, admin_a) = instance(&url, "a", &events, &[]);
    let (b, _) = instance(&url, "b", &events, &[]);
    let stop = AtomicBool::new(false);
    let accepted = Mutex::new(Vec::new());
    let refused = Mutex::new(0usize);
    let saw_not_ready = AtomicBool::new(false);
    std::thread::scope(|s| {
        for (k, x) in [&a, &b].into_iter().enumerate() {
            let (stop, accepted, refused) = (&stop, &accepted, &refused);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = page_event(1_000_000 * (k + 1) + i);
                    i += 1;
                    match x.target.post_signed(&body).status {
                        200 => accepted.lock().unwrap().push(body),
                        503 => *refused.lock().unwrap() += 1,
                        other => panic!("answered {other}"),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(800));
        pg.stop_immediate();
        let down_since = Instant::now();
        wait_for(
            Duration::from_secs(10),
            "readyz 503 while the database is down",
            || admin_a.get("/readyz").status == 503,
        );
        saw_not_ready.store(true, Ordering::Relaxed);
        while down_since.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(50));
        }
        pg.start_again();
        wait_for(Duration::from_secs(20), "readyz 200 again", || {
            admin_a.get("/readyz").status == 200
        });
        std::thread::sleep(Duration::from_millis(800));
        stop.store(true, Ordering::Relaxed);
    });
    assert!(saw_not_ready.load(Ordering::Relaxed));
    let accepted = accepted.into_inner().unwrap();
    let refused = refused.into_inner().unwrap();
    assert!(refused > 0, "no 503 while the database was down");
    assert!(accepted.len() > 50, "only {} accepted", accepted.len());
    let expected: HashSet<Vec<u8>> = accepted.into_iter().collect();
    wait_for(Duration::from_secs(60), "every 200 delivered", || {
        let seen = tally(&upstream);
        expected.iter().all(|b| seen.contains_key(b))
    });
    assert!(
        a.logs().contains("lost the PostgreSQL spool")
            || a.logs().contains("waiting for the PostgreSQL spool")
    );
    assert!(a.logs().contains("connected to the PostgreSQL spool"));
}

#[test]
fn a_refused_password_ends_the_start_with_one_line_and_an_unreachable_database_is_waited_for() {
    let pg = PgCluster::start();
    pg.database("spool");
    let wrong = format!(
        "postgres://postgres:wrong-pw-77@127.0.0.1:{}/spool?sslmode=disable",
        pg.port
    );
    let started = Instant::now();
    let (code, out, err) = run_xhubd(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--upstream",
            "http://127.0.0.1:9/",
            "--verify-token",
            VERIFY_TOKEN,
            "--app-secret",
            APP_SECRET,
            "--spool",
            &wrong,
        ],
        None,
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("xhubd:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("password authentication failed"), "{err}");
    assert!(lines[0].contains("postgres://postgres@127.0.0.1"), "{err}");
    assert!(
        !err.contains("wrong-pw-77") && !out.contains("wrong-pw-77"),
        "{err}"
    );

    let (code, report, err) = run_xhubd(&check_args(&wrong, "http://127.0.0.1:9/"), None);
    assert_eq!(code, 2, "{report}{err}");
    assert!(
        report.contains("FAIL spool: postgres://postgres@127.0.0.1"),
        "{report}"
    );
    assert!(
        !report.contains("wrong-pw-77") && !err.contains("wrong-pw-77"),
        "{report}"
    );

    // TLS required of a server that has none: refused too, not waited for.
    let no_tls = format!(
        "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/spool?sslmode=require",
        pg.port
    );
    let line = refused_at_start(&no_tls);
    assert!(line.contains("server does not support TLS"), "{line}");

    // A database that does not answer: xhubd runs, says so, and answers 503.
    let closed = free_port();
    let nowhere =
        format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:{closed}/spool?sslmode=disable");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut x = Xhubd::start(
        Options::new("http://127.0.0.1:9/")
            .arg("--spool")
            .arg(&nowhere)
            .arg("--admin-listen")
            .arg(&admin.to_string())
            .no_wait(),
    );
    let admin = Target::Tcp(admin);
    wait_for(Duration::from_secs(15), "the wait is logged", || {
        x.logs().contains("waiting for the PostgreSQL spool")
    });
    wait_for(Duration::from_secs(5), "the admin listener answers", || {
        std::net::TcpStream::connect(match &admin {
            Target::Tcp(a) => *a,
            _ => unreachable!(),
        })
        .is_ok()
    });
    assert_eq!(admin.get("/readyz").status, 503);
    assert_eq!(x.target.post_signed(&page_event(1)).status, 503);
    assert!(!x.logs().contains("xhubd ready"));
    assert!(!x.logs().contains(PG_PASSWORD));
    // Delivery waits for the database too, before it reads a destination's state.
    assert!(
        !x.logs()
            .contains("cannot read whether the destination is down"),
        "{}",
        x.logs()
    );
    assert!(x.child.as_mut().unwrap().try_wait().unwrap().is_none());
    // Stopped while still waiting: it never said it was ready.
    x.terminate();
    let logs = x.logs();
    assert!(logs.contains("stopped"), "{logs}");
    assert!(!logs.contains("xhubd ready"), "{logs}");
    assert!(
        !logs.contains("cannot read whether the destination is down"),
        "{logs}"
    );
}

/// Two machines' config: every event to `bot`; WhatsApp messages to `down`, one request
/// per item; page feed changes to `strict`.
const MOVING: &str = r#"
[[route]]
name = "wa"
path = "/webhook"
verify_token = "{token}"
app_secret = "{secret}"
  [[route.destination]]
  name = "bot"
  url = "{up}/bot"
  [[route.destination]]
  name = "down"
  url = "{up}/down"
  split = "item"
  match = { value_has = "messages" }
  [[route.destination]]
  name = "strict"
  url = "{up}/strict"
  match = { field = "feed" }
"#;

/// [`MOVING`] delivering to `up`, written in `dir`; returns its path.
fn moving_config(dir: &std::path::Path, name: &str, up: &Upstream) -> String {
    let path = dir.join(name);
    let text = MOVING
        .replace("{token}", VERIFY_TOKEN)
        .replace("{secret}", APP_SECRET)
        .replace("{up}", &up.url(""));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// What reached `path` of `up`, by `X-Xhubd-Delivery-Id`: each request's body,
/// signature and attempt number.
fn by_delivery(up: &Upstream, path: &str) -> HashMap<String, Vec<(Vec<u8>, String, u32)>> {
    let mut seen: HashMap<String, Vec<_>> = HashMap::new();
    for r in up
        .received()
        .into_iter()
        .filter(|r| r.path_and_query == path)
    {
        let id = r.header("X-Xhubd-Delivery-Id").unwrap().to_owned();
        let signature = r.header("X-Hub-Signature-256").unwrap().to_owned();
        let attempt = r.header("X-Xhubd-Attempt").unwrap().parse().unwrap();
        seen.entry(id)
            .or_default()
            .push((r.body.to_vec(), signature, attempt));
    }
    seen
}

#[test]
fn spool_copy_moves_pending_and_dead_deliveries_and_the_dedup_memory_once() {
    let pg = PgCluster::start();
    let url = pg.database("spool");
    // The password from a file, not in the URL.
    let bare = format!(
        "postgres://postgres@127.0.0.1:{}/spool?sslmode=disable",
        pg.port
    );
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("spool_password");
    std::fs::write(&password_file, format!("{PG_PASSWORD}\n")).unwrap();
    let password_file = password_file.display().to_string();
    let copy_args = |from: &str| -> Vec<String> {
        [
            "spool",
            "copy",
            "--from",
            from,
            "--to",
            &bare,
            "--spool-password-file",
            &password_file,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let copy = |from: &str| {
        let args = copy_args(from);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run_xhubd(&args, None);
        assert!(!out.contains(PG_PASSWORD) && !err.contains(PG_PASSWORD));
        (code, out, err)
    };

    // The old machine: its backend refuses `down` (503: retried) and `strict` (400:
    // dead), takes `bot`.
    let old_up = Upstream::start();
    old_up.answer_path("/down", 503);
    old_up.answer_path("/strict", 400);
    let mut old = Xhubd::start(Options::config(&moving_config(
        dir.path(),
        "old.toml",
        &old_up,
    )));
    let change = |wamid: &str| {
        format!(
            r#"{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"phone_number_id":"5"}},"messages":[{{"from":"4477","id":"{wamid}","timestamp":"1","type":"text","text":{{"body":"hi"}}}}]}}}}"#
        )
    };
    let two_messages = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102","changes":[{},{}]}}]}}"#,
        change("wamid.P1"),
        change("wamid.P2")
    )
    .into_bytes();
    let one_message = whatsapp("wamid.P3", 1);
    let feed = br#"{"object":"page","entry":[{"id":"104","time":1700000000,"changes":[{"field":"feed","value":{"item":"status","verb":"add","post_id":"104_1"}}]}]}"#.to_vec();
    let delivered = page_event(1);
    for body in [&two_messages, &one_message, &feed, &delivered] {
        assert_eq!(old.target.post_signed(body).status, 200);
    }
    // Every event went to bot; the 3 messages' parts are pending, tried at least once;
    // the feed change is dead at strict.
    wait_for(
        Duration::from_secs(15),
        "the old machine's outcomes",
        || {
            old.count("SELECT count(*) FROM deliveries WHERE state = 1") == 4
                && old.count("SELECT count(*) FROM deliveries WHERE state = 2") == 1
                && old.count("SELECT count(*) FROM deliveries WHERE state = 0 AND attempts > 0")
                    == 3
        },
    );
    let from = old.state_dir.display().to_string();

    // Refused while the old daemon runs: its lock, and nothing written.
    let (code, out, err) = copy(&from);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("in use by a running xhubd"), "{err}");
    assert_eq!(
        pg.count(
            "spool",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'events'"
        ),
        0
    );
    assert!(old.terminate().success());
    let owed_attempts = old.count(
        "SELECT count(*) FROM attempts a JOIN deliveries d ON d.seq = a.delivery_seq
         WHERE d.state != 1",
    );
    let own_bodies = old.count(
        "SELECT count(*) FROM delivery_bodies b JOIN deliveries d ON d.seq = b.seq
         WHERE d.state != 1",
    );
    // Every remembered identity, merged into the table or still among the recent ones
    // (the old daemon ran too briefly to merge them: the copy reads them there).
    let keys = old
        .count("SELECT count(*) FROM (SELECT key FROM dedup UNION SELECT key FROM dedup_recent)");
    assert!(owed_attempts >= 4 && own_bodies >= 2 && keys >= 4);
    assert!(old.count("SELECT count(*) FROM dedup_recent") > 0);

    // Copied: the events that still owe something, their owed deliveries (their own
    // bodies too) with their history, and every dedup key.
    let (code, out, err) = copy(&from);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("copied 3 event(s), 4 deliveries (3 pending, 1 dead), {owed_attempts} attempt(s), {keys} dedup key(s); already there: 0 event(s), 0 dedup key(s)")
    );
    let counts = || {
        [
            "SELECT count(*) FROM events WHERE accepted_by LIKE 'copied from %'",
            "SELECT count(*) FROM deliveries WHERE state = 0 AND claimed_by IS NULL AND lease_until IS NULL",
            "SELECT count(*) FROM deliveries WHERE state = 2",
            "SELECT count(*) FROM deliveries",
            "SELECT count(*) FROM delivery_bodies",
            "SELECT count(*) FROM attempts WHERE instance LIKE 'copied from %'",
            "SELECT count(*) FROM dedup",
            // Each key points at its copied event, or at no row (the delivered event's).
            "SELECT count(*) FROM dedup WHERE event_seq IN (SELECT seq FROM events)",
            "SELECT count(*) FROM dedup WHERE event_seq < 0",
        ]
        .map(|sql| pg.count("spool", sql))
    };
    let after_first = counts();
    assert_eq!(
        after_first[..7],
        [3, 3, 1, 4, own_bodies, owed_attempts, keys]
    );
    assert!(after_first[7] > 0 && after_first[8] > 0);
    assert_eq!(after_first[7] + after_first[8], keys);

    // Run again: nothing new.
    let (code, out, err) = copy(&from);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("copied 0 event(s), 0 deliveries (0 pending, 0 dead), 0 attempt(s), 0 dedup key(s); already there: 3 event(s), {keys} dedup key(s)")
    );
    assert_eq!(counts(), after_first);

    // An instance on PostgreSQL with a working backend sends each pending part once,
    // as the old machine would have: same delivery id, bytes and signature, the attempt
    // count carried on.
    let new_up = Upstream::start();
    let new = Xhubd::start(
        Options::config(&moving_config(dir.path(), "new.toml", &new_up))
            .arg("--spool")
            .arg(&url)
            .arg("--instance-name")
            .arg("web1"),
    );
    wait_for(
        Duration::from_secs(15),
        "the pending parts delivered",
        || pg.count("spool", "SELECT count(*) FROM deliveries WHERE state = 1") == 3,
    );
    let before = by_delivery(&old_up, "/down");
    let after = by_delivery(&new_up, "/down");
    assert_eq!(after.len(), 3, "{after:?}");
    for (id, sent) in &after {
        assert_eq!(sent.len(), 1, "delivery {id} sent {} times", sent.len());
        let (body, signature, attempt) = &sent[0];
        let (old_body, old_signature, old_attempt) = before[id].last().unwrap();
        assert_eq!(
            (body, signature),
            (old_body, old_signature),
            "delivery {id}"
        );
        assert!(attempt > old_attempt, "delivery {id}: attempt {attempt}");
    }
    assert!(new_up
        .received()
        .iter()
        .all(|r| r.path_and_query == "/down"));

    // Meta's retries of what the old machine accepted are recognised: the delivered
    // event's body, and a message with a new time. Answered 200, stored and sent never.
    assert_eq!(new.target.post_signed(&delivered).status, 200);
    assert_eq!(new.target.post_signed(&whatsapp("wamid.P3", 2)).status, 200);
    assert_eq!(pg.count("spool", "SELECT count(*) FROM events"), 3);
    let fresh = page_event(2);
    assert_eq!(new.target.post_signed(&fresh).status, 200);
    new_up.wait_for(4, Duration::from_secs(15));
    let bodies: Vec<Vec<u8>> = new_up.received().iter().map(|r| r.body.to_vec()).collect();
    assert!(bodies.contains(&fresh));
    assert!(!bodies.contains(&delivered));
    assert_eq!(pg.count("spool", "SELECT count(*) FROM events"), 4);

    // The dead one is listed as dead on the new spool.
    let dead_id = old_up
        .received()
        .iter()
        .find(|r| r.path_and_query == "/strict")
        .and_then(|r| r.header("X-Xhubd-Event-Id").map(str::to_owned))
        .unwrap();
    let (code, listed, err) = run_xhubd(
        &[
            "events", "--spool", &url, "list", "--state", "dead", "--json",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [dead_id.as_str()]);

    // A state directory without a spool is refused, naming it.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = copy(&empty.path().display().to_string());
    assert_eq!(code, 2);
    assert!(err.contains("no spool at"), "{err}");
    assert!(!new.logs().contains(PG_PASSWORD));
}

// ---------------------------------------------------------------- TLS to the database

/// A cluster with TLS (`pki`'s server certificate for localhost and 127.0.0.1) whose
/// only TCP line in pg_hba.conf is `hba`, with a database `spool`.
fn tls_cluster(pki: &PgPki, hba: &str) -> PgCluster {
    let pg = PgCluster::start_with_tls(&PgTls {
        cert: &pki.server_cert,
        key: &pki.server_key,
        client_ca: &pki.client_ca,
        hba: &[hba],
    });
    pg.database("spool");
    pg
}

/// The URL of database `spool` as `user` (with the password when given), over TCP to
/// `host` (with `hostaddr=127.0.0.1` when it is not an address), with `params`.
fn tls_url(
    pg: &PgCluster,
    user: &str,
    password: bool,
    host: &str,
    params: &[(&str, &Path)],
) -> String {
    let password = if password {
        format!(":{PG_PASSWORD}")
    } else {
        String::new()
    };
    let mut url = format!("postgres://{user}{password}@{host}:{}/spool", pg.port);
    let mut query: Vec<String> = params
        .iter()
        .map(|(name, value)| format!("{name}={}", value.display()))
        .collect();
    if host.parse::<std::net::IpAddr>().is_err() {
        query.push("hostaddr=127.0.0.1".into());
    }
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    url
}

/// `xhubd check` on the spool at `url`: its exit status and its spool line.
fn check_spool(url: &str, upstream: &Upstream) -> (i32, String) {
    let (code, report, err) = run_xhubd(&check_args(url, &upstream.url("/events")), None);
    assert!(
        !report.contains(PG_PASSWORD) && !err.contains(PG_PASSWORD),
        "{report}{err}"
    );
    let line = report
        .lines()
        .find(|l| l.contains(" spool: "))
        .unwrap_or_else(|| panic!("no spool line: {report}{err}"))
        .to_owned();
    (code, line)
}

/// `xhubd serve` on the spool at `url`, which must end at start: status 2 and one line
/// (returned), fast, without the password.
fn refused_at_start(url: &str) -> String {
    let started = Instant::now();
    let (code, out, err) = run_xhubd(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--upstream",
            "http://127.0.0.1:9/",
            "--verify-token",
            VERIFY_TOKEN,
            "--app-secret",
            APP_SECRET,
            "--spool",
            url,
        ],
        None,
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("xhubd:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        !err.contains(PG_PASSWORD) && !out.contains(PG_PASSWORD),
        "{err}"
    );
    lines[0].to_owned()
}

/// How many of the server's connections from xhubd use TLS, and how many do not.
fn xhubd_sessions_by_tls(pg: &PgCluster) -> (i64, i64) {
    let sql = |ssl: bool| {
        format!(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'xhubd' AND s.ssl = {ssl}"
        )
    };
    (
        pg.count("postgres", &sql(true)),
        pg.count("postgres", &sql(false)),
    )
}

#[test]
fn verify_full_with_the_servers_ca_serves_over_tls_and_another_ca_ends_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PgPki::create(dir.path());
    let pg = tls_cluster(&pki, "hostssl all all 127.0.0.1/32 scram-sha-256");
    let upstream = Upstream::start();
    let verify_full = Path::new("verify-full");
    let url = tls_url(
        &pg,
        "postgres",
        true,
        "127.0.0.1",
        &[("sslmode", verify_full), ("sslrootcert", &pki.ca)],
    );

    let (code, line) = check_spool(&url, &upstream);
    assert_eq!(code, 0, "{line}");
    assert!(line.contains("connects"), "{line}");
    let (x, _) = instance(&url, "a", &upstream.url("/events"), &[]);
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    let got = upstream.wait_for(1, Duration::from_secs(15));
    assert_eq!(&got[0].body[..], &page_event(1)[..]);
    let (encrypted, plain) = xhubd_sessions_by_tls(&pg);
    assert!(
        encrypted > 0 && plain == 0,
        "{encrypted} over TLS, {plain} not"
    );
    drop(x);

    // The same URL, trusting a CA that did not sign the server's certificate.
    let wrong = tls_url(
        &pg,
        "postgres",
        true,
        "127.0.0.1",
        &[("sslmode", verify_full), ("sslrootcert", &pki.other_ca)],
    );
    let line = refused_at_start(&wrong);
    assert!(line.contains("certificate"), "{line}");
    assert!(line.contains("UnknownIssuer"), "{line}");
    assert!(line.contains("not signed by a CA of sslrootcert"), "{line}");
    assert!(line.contains("postgres://postgres@127.0.0.1"), "{line}");
    let (code, line) = check_spool(&wrong, &upstream);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("FAIL spool:") && line.contains("certificate"),
        "{line}"
    );
}

#[test]
fn each_sslmode_against_a_server_that_allows_only_tls_does_what_libpq_does() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PgPki::create(dir.path());
    let pg = tls_cluster(&pki, "hostssl all all 127.0.0.1/32 scram-sha-256");
    let upstream = Upstream::start();
    let mode = |m: &'static str| ("sslmode", Path::new(m));
    let right = ("sslrootcert", pki.ca.as_path());
    let wrong = ("sslrootcert", pki.other_ca.as_path());
    let connects = |host: &str, params: &[(&str, &Path)]| {
        let url = tls_url(&pg, "postgres", true, host, params);
        let (code, line) = check_spool(&url, &upstream);
        assert!(code == 0 && line.contains("connects"), "{url}: {line}");
    };
    let fails = |host: &str, params: &[(&str, &Path)], expect: &str| {
        let url = tls_url(&pg, "postgres", true, host, params);
        let (code, line) = check_spool(&url, &upstream);
        assert!(code == 2 && line.contains(expect), "{url}: {line}");
    };

    // Encrypted (only hostssl lets anyone in) and, without a root file, unverified:
    // nothing trusts the test CA, yet require and prefer connect.
    connects("127.0.0.1", &[mode("require")]);
    connects("127.0.0.1", &[]);
    // With a root file, require checks the chain as verify-ca does.
    connects("127.0.0.1", &[mode("require"), right]);
    fails("127.0.0.1", &[mode("require"), wrong], "UnknownIssuer");
    // verify-full without sslrootcert trusts the system's CAs only.
    fails("127.0.0.1", &[mode("verify-full")], "UnknownIssuer");
    // A host name the certificate does not carry (connecting to 127.0.0.1 through
    // hostaddr): verify-ca does not look at the name, verify-full refuses it.
    connects("db.internal", &[mode("verify-ca"), right]);
    fails("db.internal", &[mode("verify-ca"), wrong], "UnknownIssuer");
    fails(
        "db.internal",
        &[mode("verify-full"), right],
        "certificate not valid for name \"db.internal\"",
    );
    // sslrootcert=system asks for verify-full.
    let system = tls_url(
        &pg,
        "postgres",
        true,
        "127.0.0.1",
        &[mode("require"), ("sslrootcert", Path::new("system"))],
    );
    let line = refused_at_start(&system);
    assert!(line.contains("use verify-full"), "{line}");

    // No TLS: pg_hba.conf has no line for it.
    let plain = tls_url(&pg, "postgres", true, "127.0.0.1", &[mode("disable")]);
    let line = refused_at_start(&plain);
    assert!(line.contains("no pg_hba.conf entry"), "{line}");
    assert!(line.contains("no encryption"), "{line}");
}

#[test]
fn a_client_certificate_whose_cn_is_the_user_logs_in_without_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PgPki::create(dir.path());
    let pg = tls_cluster(&pki, "hostssl all all 127.0.0.1/32 cert");
    let upstream = Upstream::start();
    let as_user = |id: &ClientId| {
        tls_url(
            &pg,
            "postgres",
            false,
            "127.0.0.1",
            &[
                ("sslmode", Path::new("verify-full")),
                ("sslrootcert", &pki.ca),
                ("sslcert", &id.chain),
                ("sslkey", &id.key),
            ],
        )
    };

    let url = as_user(&pki.postgres);
    let (x, _) = instance(&url, "a", &upstream.url("/events"), &[]);
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    let got = upstream.wait_for(1, Duration::from_secs(15));
    assert_eq!(&got[0].body[..], &page_event(1)[..]);
    drop(x);

    // Another user's certificate, and none at all.
    let line = refused_at_start(&as_user(&pki.someone_else));
    assert!(
        line.contains("certificate authentication failed for user \"postgres\""),
        "{line}"
    );
    let none = tls_url(
        &pg,
        "postgres",
        false,
        "127.0.0.1",
        &[
            ("sslmode", Path::new("verify-full")),
            ("sslrootcert", &pki.ca),
        ],
    );
    let line = refused_at_start(&none);
    assert!(
        line.contains("connection requires a valid client certificate"),
        "{line}"
    );
}

/// Every commit of events on the spool wakes each instance's schedulers (`LISTEN`), and
/// a claim runs beside the attempts: deliveries already taken still go out at once
/// while wakeups keep coming, not only once they stop.
#[test]
fn deliveries_go_out_while_other_instances_commits_keep_waking_the_schedulers() {
    let pg = postgres::shared();
    let (_db, url) = pg.fresh_database();
    // The database 20 ms away each way: each claim takes a round trip of 40 ms or
    // more, and wakeups come while it runs.
    let far = common::latency::LatencyProxy::start(pg.port, Duration::from_millis(20));
    let far_url = url.replace(&format!(":{}/", pg.port), &format!(":{}/", far.port));
    assert_ne!(far_url, url);
    let up = Upstream::start();
    let (x, _) = instance(&far_url, "a", &up.url("/"), &[]);
    // What other instances' commits do: a notification every 2 ms or so, for a minute.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("notify.sql");
    std::fs::write(
        &script,
        "SELECT pg_notify('xhubd_due', ''); SELECT pg_sleep(0.002);\n".repeat(20_000),
    )
    .unwrap();
    let mut noise = std::process::Command::new("psql")
        .args(["-X", "-q", "-o", "/dev/null", "-f"])
        .arg(&script)
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql (Debian package postgresql-client)");
    for i in 0..5 {
        assert_eq!(x.target.post_signed(&page_event(i)).status, 200);
        wait_for(
            Duration::from_secs(10),
            &format!("event {i} delivered"),
            || up.count() == i + 1,
        );
    }
    assert!(
        noise.try_wait().unwrap().is_none(),
        "the notifications went on all along"
    );
    let _ = noise.kill();
    let _ = noise.wait();
}

/// A reload that would change the spool's password (its file rewritten) is refused:
/// the daemon goes on with the password it connected with, and says a restart is needed.
#[test]
fn a_reload_that_changes_the_spools_password_is_refused() {
    let pg = postgres::shared();
    let (_db, url) = pg.fresh_database();
    let bare = url.replace(&format!("postgres:{PG_PASSWORD}@"), "postgres@");
    assert_ne!(bare, url);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("spool_password");
    std::fs::write(&password, format!("{PG_PASSWORD}\n")).unwrap();
    let up = Upstream::start();
    let config = dir.path().join("xhubd.toml");
    std::fs::write(
        &config,
        format!(
            "spool = \"{bare}\"\nspool_password_file = \"{}\"\n{}",
            password.display(),
            one_route_config(&up.url("/"))
        ),
    )
    .unwrap();
    let x = Xhubd::start(Options::config(config.to_str().unwrap()));
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    std::fs::write(&password, "another-password\n").unwrap();
    x.sighup();
    wait_for(Duration::from_secs(20), "the reload answered", || {
        x.logs().contains("reload refused")
    });
    assert!(
        x.logs()
            .contains("reload refused: a restart changes the spool's password, not a reload"),
        "{}",
        x.logs()
    );
    assert!(!x.logs().contains("another-password"));
    assert_eq!(x.target.post_signed(&page_event(2)).status, 200);
    up.wait_for(2, Duration::from_secs(20));
}

/// An instance on a machine whose clock is 90 s behind (libfaketime) keeps the spool's
/// times by the database's clock: its leases and slots do not read as run out to the
/// instance beside it, so no delivery goes out twice and the destination's concurrency
/// holds; what it stores is dated by the database's clock; and it says how far off its
/// machine's clock is, in the log, on the status page and in
/// `xhubd_spool_clock_offset_seconds`. When its clock is then set right (a jump of 90 s
/// while it runs), nothing it dates moves, and it says the clocks agree again.
#[test]
fn an_instance_whose_clock_is_behind_keeps_the_spools_times_by_the_databases() {
    let pg = postgres::shared();
    let (db, url) = pg.fresh_database();
    let slow = FaultyUpstream::start(Mode::Slow(Duration::from_millis(1500), 200));
    let target = slow.url("/events");
    let admin = free_port();
    let clock = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(clock.path(), "-90s\n").unwrap();
    let mut opts = Options::new(&target)
        .arg("--spool")
        .arg(&url)
        .arg("--instance-name")
        .arg("behind")
        .arg("--upstream-concurrency")
        .arg("2")
        .arg("--admin-listen")
        .arg(&format!("127.0.0.1:{admin}"));
    for (name, value) in clock_moved(clock.path()) {
        opts = opts.env(&name, &value);
    }
    let behind = Xhubd::start(opts);
    let (on_time, _) = instance(&url, "on-time", &target, &["--upstream-concurrency", "2"]);
    let dated_now = |n: i64| {
        pg.count(
            &db,
            "SELECT count(*) FROM events
             WHERE abs(received_at - extract(epoch FROM now()) * 1000) < 30000",
        ) == n
    };
    let delivered_once = |bodies: &[Vec<u8>]| {
        for body in bodies {
            let hits = slow.hits().iter().filter(|h| &h.body == body).count();
            assert_eq!(hits, 1, "an event delivered {hits} times");
        }
        let most = slow.max_in_flight();
        assert!(most <= 2, "{most} requests at once at the backend");
    };
    let bodies: Vec<Vec<u8>> = (0..6).map(page_event).collect();
    for body in &bodies {
        assert_eq!(behind.target.post_signed(body).status, 200);
    }
    wait_for(Duration::from_secs(30), "the 6 delivered", || {
        pg.count(&db, "SELECT count(*) FROM deliveries WHERE state = 1") == 6
    });
    delivered_once(&bodies);
    assert!(dated_now(6), "dated by the database's clock, not 90 s ago");
    // The seconds said (to a tenth) before `after`, in `text`.
    let said = |text: &str, after: &str| -> Option<f64> {
        let at = text.find(after)?;
        text[..at].rsplit(' ').next()?.parse().ok()
    };
    let logs = behind.logs();
    let in_log = said(&logs, " s behind the database's;");
    assert!(in_log.is_some_and(|s| (89.5..90.5).contains(&s)), "{logs}");
    assert!(!on_time.logs().contains("this machine's clock is"));
    let admin = Target::Tcp(format!("127.0.0.1:{admin}").parse().unwrap());
    let page = admin.get("/").text();
    let on_page = said(&page, " s behind the database's: the spool's times follow");
    assert!(on_page.is_some_and(|s| (89.5..90.5).contains(&s)), "{page}");
    let metrics = admin.get("/metrics").text();
    let offset: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("xhubd_spool_clock_offset_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no offset in /metrics:\n{metrics}"));
    assert!((89.0..91.0).contains(&offset), "offset {offset}");

    // The machine's clock is set right while it runs: 90 s forward at once.
    std::fs::write(clock.path(), "+0\n").unwrap();
    let later: Vec<Vec<u8>> = (6..12).map(page_event).collect();
    // libfaketime reads the file again after a second.
    std::thread::sleep(Duration::from_millis(1500));
    for body in &later {
        assert_eq!(behind.target.post_signed(body).status, 200);
    }
    wait_for(Duration::from_secs(30), "the 12 delivered", || {
        pg.count(&db, "SELECT count(*) FROM deliveries WHERE state = 1") == 12
    });
    delivered_once(&[bodies, later].concat());
    assert!(dated_now(12), "nothing dated 90 s ahead after the jump");
    wait_for(Duration::from_secs(40), "the clocks said to agree", || {
        behind
            .logs()
            .contains("this machine's clock agrees with the database's again")
    });
}
