//! The admin listener and the operator's commands, against the real binary: metrics
//! (parsed as Prometheus text), JSON views, replay, the token, the status page, and
//! `xhubd events`, `check` and `send-test`.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);

fn start_with_admin(up: &Upstream, extra: &[&str]) -> (Xhubd, Target) {
    start_with_admin_on(&Spool::sqlite(), up, extra)
}

fn start_with_admin_on(spool: &Spool, up: &Upstream, extra: &[&str]) -> (Xhubd, Target) {
    let port = free_port();
    let mut opts = Options::new(&up.url("/"))
        .arg("--admin-listen")
        .arg(&format!("127.0.0.1:{port}"))
        .spool(spool);
    for a in extra {
        opts = opts.arg(a);
    }
    (Xhubd::start(opts), admin_target(port))
}

fn metrics(admin: &Target) -> prometheus_parse::Scrape {
    let a = admin.get("/metrics");
    assert_eq!(a.status, 200);
    let text = a.text();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        prometheus_parse::Value::Histogram(ref buckets) => {
            buckets.last().map(|b| b.count).unwrap_or(0.0)
        }
        _ => panic!("unexpected value for {name}"),
    }
}

/// Before any event, every configured destination already has its gauges at 0 (and
/// its route the unrouted counter), and every request outcome its counter, so an alert
/// tells zero from absent; a ready xhubd says so as `xhubd_ready 1`.
#[test]
fn every_destination_has_its_series_from_the_start() {
    let up = Upstream::start();
    let (_x, admin) = start_with_admin(&up, &[]);
    let scrape = metrics(&admin);
    for name in [
        "xhubd_destination_backlog",
        "xhubd_destination_dead",
        "xhubd_destination_oldest_pending_age_seconds",
        "xhubd_items_unrouted_total",
    ] {
        assert_eq!(
            value(&scrape, name, Some(("route", "default"))),
            0.0,
            "{name}"
        );
    }
    assert_eq!(value(&scrape, "xhubd_ready", None), 1.0, "as /readyz says");
    // Every outcome too: the shipped alert's increase() sees the first spool error.
    for outcome in xhubd::metrics::RequestOutcome::ALL {
        assert_eq!(
            value(
                &scrape,
                "xhubd_requests_total",
                Some(("outcome", outcome.as_str()))
            ),
            0.0,
            "{}",
            outcome.as_str()
        );
    }
    assert_eq!(admin.get("/readyz").status, 200);
}

both_spools!(metrics_count_what_was_sent);
fn metrics_count_what_was_sent(spool: &Spool) {
    let up = Upstream::start();
    up.fail_next(&[404]);
    let (x, admin) = start_with_admin_on(spool, &up, &["--max-body-bytes", "2000"]);
    let t = &x.target;
    assert_eq!(
        t.get(&format!(
            "/?hub.mode=subscribe&hub.challenge=1&hub.verify_token={VERIFY_TOKEN}"
        ))
        .status,
        200
    );
    assert_eq!(
        t.get("/?hub.mode=subscribe&hub.challenge=1&hub.verify_token=wrong")
            .status,
        403
    );
    for n in 0..3 {
        assert_eq!(t.post_signed(&page_event(n)).status, 200);
    }
    assert_eq!(t.post_signed(&page_event(1)).status, 200); // a retry
    assert_eq!(
        t.request("POST", "/", &[("X-Hub-Signature-256", "sha256=00")], b"{}")
            .status,
        401
    );
    assert_eq!(t.post_signed(b"[]").status, 400);
    assert_eq!(t.post_signed(&vec![b' '; 3000]).status, 413);
    assert_eq!(t.request("PUT", "/", &[], b"").status, 405);
    up.wait_for(3, WAIT);
    wait_for(WAIT, "outcomes recorded", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state != 0") == 3
    });

    let m = metrics(&admin);
    let requests = |outcome| value(&m, "xhubd_requests_total", Some(("outcome", outcome)));
    assert_eq!(requests("verified"), 1.0);
    assert_eq!(requests("challenge_refused"), 1.0);
    assert_eq!(requests("accepted"), 3.0);
    assert_eq!(requests("duplicate"), 1.0);
    assert_eq!(requests("signature_refused"), 1.0);
    assert_eq!(requests("bad_json"), 1.0);
    assert_eq!(requests("too_large"), 1.0);
    assert_eq!(requests("method_not_allowed"), 1.0);
    assert_eq!(
        value(&m, "xhubd_ack_duration_seconds_count", None),
        4.0,
        "accepted + duplicate"
    );
    assert_eq!(
        value(
            &m,
            "xhubd_delivery_attempts_total",
            Some(("result", "delivered"))
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "xhubd_delivery_attempts_total",
            Some(("result", "dead"))
        ),
        1.0
    );
    assert_eq!(
        value(&m, "xhubd_delivery_duration_seconds_count", None),
        3.0
    );
    assert_eq!(
        value(&m, "xhubd_spool_events", Some(("state", "delivered"))),
        2.0
    );
    assert_eq!(
        value(&m, "xhubd_spool_events", Some(("state", "dead"))),
        1.0
    );
    assert_eq!(
        value(&m, "xhubd_spool_events", Some(("state", "pending"))),
        0.0
    );
    assert_eq!(value(&m, "xhubd_oldest_pending_age_seconds", None), 0.0);
    assert_eq!(value(&m, "xhubd_dedup_keys", None), 3.0);
}

both_spools!(oldest_pending_age_grows_while_the_upstream_is_down);
fn oldest_pending_age_grows_while_the_upstream_is_down(spool: &Spool) {
    let mut up = Upstream::start();
    up.stop();
    let (x, admin) = start_with_admin_on(spool, &up, &[]);
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    std::thread::sleep(Duration::from_millis(1200));
    let m = metrics(&admin);
    assert!(value(&m, "xhubd_oldest_pending_age_seconds", None) >= 1.0);
    assert_eq!(
        value(&m, "xhubd_spool_events", Some(("state", "pending"))),
        1.0
    );
    assert!(
        value(
            &m,
            "xhubd_delivery_attempts_total",
            Some(("result", "retry"))
        ) >= 1.0
    );
}

both_spools!(json_views_and_replay_of_a_dead_event);
fn json_views_and_replay_of_a_dead_event(spool: &Spool) {
    let up = Upstream::start();
    up.fail_next(&[410]);
    let (x, admin) = start_with_admin_on(spool, &up, &[]);
    let body = page_event(5);
    assert_eq!(x.target.post_signed(&body).status, 200);
    wait_for(WAIT, "a dead event", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == 1
    });

    let dead: serde_json::Value =
        serde_json::from_slice(&admin.get("/events?state=dead").body).unwrap();
    let id = dead[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(dead[0]["state"], "dead");
    assert_eq!(dead[0]["object"], "user");
    assert_eq!(dead[0]["field"], "photos");
    assert!(dead[0]["last_error"].as_str().unwrap().contains("410"));
    let one: serde_json::Value =
        serde_json::from_slice(&admin.get(&format!("/events/{id}")).body).unwrap();
    assert_eq!(one["body"].as_str().unwrap().as_bytes(), &body[..]);
    assert!(one["headers"]["x-hub-signature-256"]
        .as_str()
        .unwrap()
        .starts_with("sha256="));
    assert_eq!(admin.get("/events?state=bogus").status, 400);
    assert_eq!(admin.get("/events/no-such-id").status, 404);

    let replay = admin.request("POST", &format!("/events/{id}/replay"), &[], b"");
    assert_eq!(replay.status, 200, "{}", replay.text());
    let got = up.wait_for(2, WAIT);
    assert_eq!(got[1].header("x-xhubd-event-id"), Some(id.as_str()));
    wait_for(WAIT, "delivered after replay", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == 1
    });
    assert!(x.logs().contains("replay requested"));
    assert_eq!(
        admin
            .request("POST", "/events/no-such-id/replay", &[], b"")
            .status,
        404
    );
    // A replay form posted from another site is refused.
    let cross = admin.request(
        "POST",
        &format!("/events/{id}/replay"),
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"",
    );
    assert_eq!(cross.status, 403);
}

#[test]
fn the_admin_token_protects_everything_but_health() {
    let up = Upstream::start();
    let (x, admin) = start_with_admin(&up, &["--admin-token", "adm1n-t0ken"]);
    assert_eq!(admin.get("/healthz").status, 200);
    assert_eq!(admin.get("/readyz").status, 200);
    for path in ["/", "/metrics", "/events", "/events/x"] {
        let a = admin.get(path);
        assert_eq!(a.status, 401, "{path}");
        assert!(a.header("www-authenticate").unwrap().starts_with("Basic"));
    }
    let ok = admin.request(
        "GET",
        "/metrics",
        &[("Authorization", "Bearer adm1n-t0ken")],
        b"",
    );
    assert_eq!(ok.status, 200);
    let basic = "Basic YWRtaW46YWRtMW4tdDBrZW4="; // admin:adm1n-t0ken
    assert_eq!(
        admin
            .request("GET", "/", &[("Authorization", basic)], b"")
            .status,
        200
    );
    assert_eq!(
        admin
            .request("GET", "/", &[("Authorization", "Bearer nope")], b"")
            .status,
        401
    );
    assert!(!x.logs().contains("adm1n-t0ken"));
}

/// The admin listener shows payloads and replays events: listening beyond loopback
/// without a token is allowed (a private network) but logged at start.
#[test]
fn an_open_admin_listener_is_warned_about() {
    const WARNING: &str = "reachable beyond loopback without --admin-token";
    let up = Upstream::start();
    let (local, _) = start_with_admin(&up, &[]);
    assert!(!local.logs().contains(WARNING), "{}", local.logs());
    for (token, warned) in [(None, true), (Some("adm1n-t0ken"), false)] {
        let mut opts = Options::new(&up.url("/"))
            .arg("--admin-listen")
            .arg(&format!("0.0.0.0:{}", free_port()));
        if let Some(token) = token {
            opts = opts.arg("--admin-token").arg(token);
        }
        let x = Xhubd::start(opts);
        assert_eq!(x.logs().contains(WARNING), warned, "{}", x.logs());
    }
}

#[test]
fn the_status_page_escapes_payloads() {
    let up = Upstream::start();
    let (x, admin) = start_with_admin(&up, &[]);
    let body = br#"{"object":"page<script>alert(1)</script>","entry":[{"id":"1","time":1,"messaging":[{"message":{"mid":"m.1","text":"<img src=x onerror=alert(2)>"}}]}]}"#;
    assert_eq!(x.target.post_signed(body).status, 200);
    up.wait_for(1, WAIT);
    let page = admin.get("/").text();
    assert!(
        page.contains("page&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert"));
    let id = x
        .logs()
        .split("event_id=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let event = admin.get(&format!("/event/{id}")).text();
    assert!(
        event.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{event}"
    );
    assert!(!event.contains("<img"));
    assert!(event.contains("x-hub-signature-256"));
}

both_spools!(dead_events_are_purged_on_request_and_pending_ones_never);
fn dead_events_are_purged_on_request_and_pending_ones_never(spool: &Spool) {
    let up = Upstream::start();
    up.answer_always(400);
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .spool(spool)
            .retry("100ms", "200ms"),
    );
    for n in 0..2 {
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
    }
    wait_for(WAIT, "two dead", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == 2
    });
    up.answer_always(503);
    assert_eq!(x.target.post_signed(&page_event(2)).status, 200);
    wait_for(WAIT, "the third refused once", || up.count() >= 3);

    let (code, out, err) = x.run_on_spool(&["events", "purge", "--dead-before", "0s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("2 dead event(s) accepted before"), "{out}");
    assert_eq!(
        x.count("SELECT COUNT(*) FROM events"),
        1,
        "the pending one stays"
    );
    assert_eq!(
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 0"),
        1
    );
    let (code, out, _) = x.run_on_spool(&["events", "purge", "--delivered-before", "0s"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("0 delivered"), "{out}");
    // Meta's retry of a purged dead event is still recognised.
    assert_eq!(x.target.post_signed(&page_event(0)).status, 200);
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 1);
    // Which events, it must be told.
    let (code, _, err) = x.run_on_spool(&["events", "purge"]);
    assert_eq!(code, 2, "{err}");
}

both_spools!(events_commands_work_on_the_spool_while_the_daemon_runs);
fn events_commands_work_on_the_spool_while_the_daemon_runs(spool: &Spool) {
    let up = Upstream::start();
    up.fail_next(&[404, 404]);
    let x = Xhubd::start(Options::new(&up.url("/")).spool(spool));
    for n in 0..3 {
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
    }
    wait_for(WAIT, "two dead, one delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == 2
            && x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == 1
    });
    let (code, table, err) = x.run_on_spool(&["events", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(table.lines().count(), 4, "header + 3 events:\n{table}");
    assert!(table.starts_with("RECEIVED (UTC)"));
    assert_eq!(table.matches(" dead ").count(), 2);
    // A filter nothing matches says so, rather than reading as an empty spool.
    let (code, none, _) = x.run_on_spool(&["events", "list", "--route", "nosuch"]);
    assert_eq!(code, 0);
    assert!(
        none.ends_with("(no events match --route nosuch)\n"),
        "{none}"
    );

    let (code, json, _) = x.run_on_spool(&["events", "list", "--state", "dead", "--json"]);
    assert_eq!(code, 0);
    let dead: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 2);
    let id = dead[0]["id"].as_str().unwrap().to_owned();

    let (code, shown, _) = x.run_on_spool(&["events", "show", &id]);
    assert_eq!(code, 0);
    assert!(
        shown.contains("state:      dead")
            && shown.contains("x-hub-signature-256")
            && shown.contains("payload (as received):\n{\"object\":\"user\"")
            && shown.contains("attempt at (UTC)"),
        "{shown}"
    );

    let (code, out, _) = x.run_on_spool(&["events", "replay", &id]);
    assert_eq!(code, 0, "{out}");
    up.wait_for(4, WAIT);
    let (code, out, _) = x.run_on_spool(&["events", "replay", "--all-dead"]);
    assert_eq!(code, 0);
    assert!(out.starts_with('1') || out.starts_with('0'), "{out}");
    wait_for(WAIT, "all delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == 3
    });
    let (code, _, err) = x.run_on_spool(&["events", "replay", "no-such-id"]);
    assert_eq!(code, 2);
    assert!(err.contains("no event"));

    let (code, out, _) = x.run_on_spool(&["events", "purge", "--delivered-before", "0s"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("3 delivered"), "{out}");
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 0);
    // Where there is no spool: exit 2 and a line that says so.
    let (code, _, err) = match spool {
        Spool::Sqlite => run_xhubd(&["events", "list", "--state-dir", "/nonexistent"], None),
        Spool::Postgres { .. } => {
            let missing = common::postgres::shared().url("no_such_spool");
            run_xhubd(&["events", "list", "--spool", &missing], None)
        }
    };
    assert_eq!(code, 2);
    let says = if spool.is_sqlite() {
        "no spool"
    } else {
        "does not exist"
    };
    assert!(err.contains(says), "{err}");
}

#[test]
fn check_reports_each_problem() {
    let mut up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let args = |upstream: &str| {
        vec![
            "check".to_owned(),
            "--upstream".into(),
            upstream.to_owned(),
            "--verify-token".into(),
            VERIFY_TOKEN.into(),
            "--app-secret".into(),
            APP_SECRET.into(),
            "--state-dir".into(),
            state.display().to_string(),
        ]
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run_xhubd(&refs, None)
    };
    let (code, out, _) = run(args(&up.url("/")));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("ok ").count(), 3, "{out}");
    up.stop();
    let (code, out, _) = run(args(&up.url("/")));
    assert_eq!(code, 2);
    assert!(out.contains("FAIL upstream"), "{out}");
    let mut no_secret = args(&up.url("/"));
    no_secret.drain(5..7);
    let (code, out, _) = run(no_secret);
    assert_eq!(code, 2);
    assert!(
        out.contains("FAIL configuration") && out.contains("--app-secret"),
        "{out}"
    );
    assert!(!out.contains(APP_SECRET));
}

/// `check` with no option checks what the service runs with: the variables of its
/// environment file (the packaged one reads nothing), a flag still winning over them,
/// and an unreadable file is one clear line.
#[test]
fn check_reads_the_service_environment_file() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").display().to_string();
    let (app, token) = (
        dir.path().join("app_secret"),
        dir.path().join("verify_token"),
    );
    std::fs::write(&app, format!("{APP_SECRET}\n")).unwrap();
    std::fs::write(&token, format!("{VERIFY_TOKEN}\n")).unwrap();
    let config = dir.path().join("xhubd.toml");
    std::fs::write(&config, "# every line commented, as packaged\n").unwrap();
    let env_file = dir.path().join("xhubd.default");
    std::fs::write(
        &env_file,
        format!(
            // The last of two lines wins, as in systemd; the file names the config file
            // (the unit's would be /etc/xhubd/xhubd.toml).
            "# as in /etc/default/xhubd\nXHUBD_UPSTREAM=http://127.0.0.1:9/\nXHUBD_UPSTREAM={}\nXHUBD_APP_SECRET_FILE=\"{}\"\nXHUBD_VERIFY_TOKEN_FILE={}\n#XHUBD_ADMIN_LISTEN=127.0.0.1:9\nXHUBD_CONFIG={}\n",
            up.url("/"),
            app.display(),
            token.display(),
            config.display()
        ),
    )
    .unwrap();
    let file = env_file.display().to_string();
    let check = |extra: &[&str]| {
        let mut args = vec!["check", "--environment-file", &file, "--state-dir", &state];
        args.extend_from_slice(extra);
        run_xhubd(&args, None)
    };
    let (code, out, err) = check(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "read XHUBD_UPSTREAM, XHUBD_APP_SECRET_FILE, XHUBD_VERIFY_TOKEN_FILE, XHUBD_CONFIG"
        ),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "ok   destination default/default: {}",
            up.url("/")
        )),
        "{out}"
    );
    let (code, out, _) = check(&["--upstream", "http://127.0.0.1:9/"]);
    assert_eq!(code, 2, "the flag wins: {out}");
    assert!(out.contains("FAIL upstream"), "{out}");

    // The packaged file (every line commented) sets nothing: the options are missing.
    let packaged = concat!(env!("CARGO_MANIFEST_DIR"), "/debian/xhubd.default");
    let (code, out, _) = run_xhubd(&["check", "--environment-file", packaged], None);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("no variable set")
            && out.contains(
                "names no config file; checking the one the unit names, /etc/xhubd/xhubd.toml"
            )
            && !out.contains("ok   /etc/xhubd/xhubd.toml")
            && out.contains("FAIL configuration"),
        "{out}"
    );

    // Unreadable (a directory): one line, status 2.
    let (code, out, err) = run_xhubd(
        &[
            "check",
            "--environment-file",
            &dir.path().display().to_string(),
        ],
        None,
    );
    assert_eq!(code, 2);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn send_test_verifies_and_sends_a_signed_batch() {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")).tcp());
    let Target::Tcp(addr) = x.target.clone() else {
        unreachable!()
    };
    let url = format!("http://{addr}/webhook");
    let (code, out, _) = run_xhubd(
        &[
            "send-test",
            "--url",
            &url,
            "--app-secret",
            APP_SECRET,
            "--verify-token",
            VERIFY_TOKEN,
            "--batch",
            "5",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the challenge came back") && out.contains("the event was accepted"),
        "{out}"
    );
    let got = up.wait_for(1, WAIT);
    let doc: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(doc["entry"].as_array().unwrap().len(), 5);
    assert_eq!(doc["entry"][0]["changes"][0]["field"], "photos");
    assert!(!out.contains(VERIFY_TOKEN) && !out.contains(APP_SECRET));

    let (code, out, _) = run_xhubd(
        &[
            "send-test",
            "--url",
            &url,
            "--app-secret",
            "wrong",
            "--verify-token",
            "wrong",
            "--phone-number-id",
            "5",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert_eq!(out.matches("FAILED").count(), 2, "{out}");
    assert!(
        out.contains("note: --phone-number-id goes only into the WhatsApp messages sample"),
        "{out}"
    );

    // An X.509 version 1 client certificate is named for what it is.
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/x509v1");
    let (code, out, err) = run_xhubd(
        &[
            "send-test",
            "--url",
            &url,
            "--app-secret",
            APP_SECRET,
            "--verify-token",
            VERIFY_TOKEN,
            "--cert",
            &format!("{fixture}/client.pem"),
            "--key",
            &format!("{fixture}/client.key"),
        ],
        None,
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("it is an X.509 version 1 certificate; TLS here needs version 3"),
        "{err}"
    );
}

#[test]
fn every_outcome_readme_lists_is_counted() {
    // README's list of `outcome` label values is exactly the daemon's.
    let readme = std::fs::read_to_string("README.md").unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("| `xhubd_requests_total`"))
        .expect("README documents xhubd_requests_total");
    let documented: Vec<&str> = line
        .split_once("`outcome`:")
        .expect("the outcome label's values")
        .1
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    let known: Vec<&str> = xhubd::metrics::RequestOutcome::ALL
        .iter()
        .map(|o| o.as_str())
        .collect();
    assert_eq!(documented, known, "{line}");

    // Each can happen, and is counted once per request (spool_error: tests/disk_full.rs).
    let up = Upstream::start();
    let (x, admin) = start_with_admin(
        &up,
        &[
            "--max-body-bytes",
            "2000",
            "--client-cn-header",
            "X-Client-Subject",
            "--body-timeout",
            "1s",
        ],
    );
    let t = &x.target;
    let subject = ("X-Client-Subject", "CN=client.webhooks.fbclientcerts.com");
    let body = page_event(1);
    let sig = sign(APP_SECRET, &body);
    let token = format!("/?hub.mode=subscribe&hub.challenge=1&hub.verify_token={VERIFY_TOKEN}");
    /// A request that ends in one outcome, returning its status.
    type Request<'a> = Box<dyn Fn() -> u16 + 'a>;
    let cases: Vec<(&str, Request)> = vec![
        ("verified", Box::new(|| t.get(&token).status)),
        (
            "challenge_refused",
            Box::new(|| t.get("/?hub.mode=subscribe").status),
        ),
        (
            "signature_refused",
            Box::new(|| t.request("POST", "/", &[subject], &body).status),
        ),
        (
            "too_large",
            Box::new(|| t.request("POST", "/", &[subject], &[b'x'; 3000]).status),
        ),
        (
            "bad_json",
            Box::new(|| {
                t.request(
                    "POST",
                    "/",
                    &[subject, ("X-Hub-Signature-256", &sign(APP_SECRET, b"[]"))],
                    b"[]",
                )
                .status
            }),
        ),
        (
            "incomplete_body",
            Box::new(|| {
                t.raw(b"POST / HTTP/1.1\r\nHost: x\r\nX-Client-Subject: CN=client.webhooks.fbclientcerts.com\r\nContent-Length: 100\r\n\r\n{\"a\"")
                    .status
            }),
        ),
        (
            "accepted",
            Box::new(|| {
                t.request(
                    "POST",
                    "/",
                    &[subject, ("X-Hub-Signature-256", &sig)],
                    &body,
                )
                .status
            }),
        ),
        (
            "duplicate",
            Box::new(|| {
                t.request(
                    "POST",
                    "/",
                    &[subject, ("X-Hub-Signature-256", &sig)],
                    &body,
                )
                .status
            }),
        ),
        (
            "client_refused",
            Box::new(|| {
                t.request("POST", "/", &[("X-Hub-Signature-256", &sig)], &body)
                    .status
            }),
        ),
        (
            "method_not_allowed",
            Box::new(|| t.request("DELETE", "/", &[], b"").status),
        ),
    ];
    for (outcome, send) in &cases {
        let before = metrics(&admin);
        let count = |scrape: &prometheus_parse::Scrape| {
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == "xhubd_requests_total")
                .map(|s| {
                    let v = match s.value {
                        prometheus_parse::Value::Counter(v)
                        | prometheus_parse::Value::Untyped(v) => v,
                        _ => 0.0,
                    };
                    (s.labels.get("outcome").unwrap_or_default().to_owned(), v)
                })
                .collect::<std::collections::HashMap<String, f64>>()
        };
        let status = send();
        assert!(status >= 200, "{outcome}");
        let (was, now) = (count(&before), count(&metrics(&admin)));
        for known in &known {
            let delta = now.get(*known).unwrap_or(&0.0) - was.get(*known).unwrap_or(&0.0);
            let expected = if known == outcome { 1.0 } else { 0.0 };
            assert_eq!(
                delta, expected,
                "{outcome} (answered {status}) counted as {known}"
            );
        }
    }
}
