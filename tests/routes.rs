//! Several apps and backends behind one xhubd, from a config file (`--config`): routes by
//! exact path, each with its own verify token and App Secrets and its own dedup memory
//! (or a shared `dedup_group`), several destinations per route, each delivery with its
//! own id and its own retries, and a file's problems refused at start in one line.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// Starts xhubd on `spool` and `config` (TOML; `{dir}` is replaced by a temporary
/// directory that holds the config file and `files`), with no route options on the
/// command line.
fn start(spool: &Spool, config: &str, files: &[(&str, &str)]) -> (Xhubd, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let text = config.replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("xhubd.toml");
    std::fs::write(&path, text).unwrap();
    let x = Xhubd::start(Options::config(path.to_str().unwrap()).spool(spool));
    (x, dir)
}

/// POSTs `body` to `path` signed with `secret`.
fn post(x: &Xhubd, path: &str, secret: &str, body: &[u8]) -> Answer {
    x.target.request(
        "POST",
        path,
        &[("X-Hub-Signature-256", &sign(secret, body))],
        body,
    )
}

fn verify(x: &Xhubd, path: &str, token: &str) -> Answer {
    x.target.get(&format!(
        "{path}?hub.mode=subscribe&hub.challenge=77&hub.verify_token={token}"
    ))
}

both_spools!(each_route_has_its_own_path_secrets_and_destinations);
fn each_route_has_its_own_path_secrets_and_destinations(spool: &Spool) {
    let wa_bot = Upstream::start();
    let wa_analytics = Upstream::start();
    let page_app = Upstream::start();
    let (x, _dir) = start(
        spool,
        &format!(
            r#"
        max_body_bytes = 65536
        [[route]]
        name = "whatsapp"
        path = "/webhook/whatsapp"
        verify_token = "wa-token-1"
        app_secret = ["wa-secret-1", "wa-secret-rotated"]
          [[route.destination]]
          name = "bot"
          url = "{bot}"
          headers = {{ Authorization = "Bearer bot-credential-9" }}
          [[route.destination]]
          name = "analytics"
          url = "{analytics}"
          timeout = "5s"
        [[route]]
        name = "page"
        path = "/webhook/page"
        verify_token_file = "page.token"
        app_secret_file = "{{dir}}/page.secret"
          [[route.destination]]
          name = "app"
          url = "{page}"
        "#,
            bot = wa_bot.url("/wa"),
            analytics = wa_analytics.url("/stats"),
            page = page_app.url("/fb"),
        ),
        &[
            ("page.token", "page-token-2\n"),
            ("page.secret", "page-secret-3\n"),
        ],
    );
    // Each route verifies with its own token only.
    assert_eq!(verify(&x, "/webhook/whatsapp", "wa-token-1").text(), "77");
    assert_eq!(verify(&x, "/webhook/whatsapp", "page-token-2").status, 403);
    assert_eq!(verify(&x, "/webhook/page", "page-token-2").text(), "77");
    assert_eq!(verify(&x, "/webhook/page", "wa-token-1").status, 403);
    // An unknown path is 404, with nothing stored; a path is matched exactly.
    for path in ["/webhook", "/webhook/whatsapp/", "/other"] {
        assert_eq!(
            post(&x, path, "wa-secret-1", &page_event(1)).status,
            404,
            "{path}"
        );
        assert_eq!(verify(&x, path, "wa-token-1").status, 404, "{path}");
    }
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 0);

    // A signature valid on one route is 401 on the other.
    let wa = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messages":[{"id":"wamid.R1","type":"text"}]}}]}]}"#;
    assert_eq!(post(&x, "/webhook/page", "wa-secret-1", wa).status, 401);
    assert_eq!(post(&x, "/webhook/whatsapp", "wa-secret-1", wa).status, 200);
    // Each refusal's line names the route whose token or secret did not match.
    let refusals = |what: &str| -> Vec<String> {
        x.logs()
            .lines()
            .filter(|l| l.contains(what))
            .map(str::to_owned)
            .collect()
    };
    // Lines reach the log through a writer thread of their own.
    wait_for(WAIT, "the three refusals logged", || {
        refusals("rejected: verification request with a wrong verify token").len() == 2
            && refusals("rejected: signature").len() == 1
    });
    let tokens = refusals("rejected: verification request with a wrong verify token");
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens[0].contains("route=whatsapp"), "{}", tokens[0]);
    assert!(tokens[1].contains("route=page"), "{}", tokens[1]);
    let signatures = refusals("rejected: signature");
    assert_eq!(signatures.len(), 1, "{signatures:?}");
    assert!(signatures[0].contains("route=page"), "{}", signatures[0]);
    assert_eq!(
        post(&x, "/webhook/whatsapp", "wa-secret-rotated", &page_event(2)).status,
        200
    );
    let page = page_event(3);
    assert_eq!(
        post(&x, "/webhook/page", "page-secret-3", &page).status,
        200
    );

    // Both WhatsApp events reach both of its destinations, byte-identical with Meta's
    // signature; the Page event only its own.
    let bot = wa_bot.wait_for(2, WAIT);
    let analytics = wa_analytics.wait_for(2, WAIT);
    let fb = page_app.wait_for(1, WAIT);
    assert_eq!(fb[0].body[..], page[..]);
    assert_eq!(fb[0].path_and_query, "/fb");
    for got in [&bot, &analytics] {
        let bodies: HashSet<Vec<u8>> = got.iter().map(|r| r.body.to_vec()).collect();
        assert!(bodies.contains(&wa[..]) && bodies.contains(&page_event(2)));
        let first = got.iter().find(|r| r.body[..] == wa[..]).unwrap();
        assert_eq!(
            first.header("x-hub-signature-256"),
            Some(sign("wa-secret-1", wa).as_str())
        );
    }
    // One event id for both destinations; one delivery id each.
    let of = |list: &[Received], header: &str| {
        list.iter()
            .find(|r| r.body[..] == wa[..])
            .and_then(|r| r.header(header))
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        of(&bot, "x-xhubd-event-id"),
        of(&analytics, "x-xhubd-event-id")
    );
    assert_ne!(
        of(&bot, "x-xhubd-delivery-id"),
        of(&analytics, "x-xhubd-delivery-id")
    );
    // Headers go to their destination only.
    assert_eq!(
        bot[0].header("authorization"),
        Some("Bearer bot-credential-9")
    );
    assert_eq!(analytics[0].header("authorization"), None);
    assert!(!x.logs().contains("bot-credential-9"));
    assert!(!x.logs().contains("wa-secret-1") && !x.logs().contains("wa-token-1"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        (wa_bot.count(), wa_analytics.count(), page_app.count()),
        (2, 2, 1)
    );
}

both_spools!(a_destination_that_hangs_holds_up_no_other);
fn a_destination_that_hangs_holds_up_no_other(spool: &Spool) {
    let up = Upstream::start();
    // Accepts connections (the backlog) and never answers: every attempt hangs.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (x, _dir) = start(
        spool,
        &format!(
            r#"
        [[route]]
        name = "wa"
        path = "/hook"
        verify_token = "t"
        app_secret = "s"
          [[route.destination]]
          name = "down"
          url = "http://{}/never"
          concurrency = 1
          timeout = "60s"
          [[route.destination]]
          name = "up"
          url = "{}"
        "#,
            hanging.local_addr().unwrap(),
            up.url("/")
        ),
        &[],
    );
    for n in 0..50 {
        assert_eq!(post(&x, "/hook", "s", &page_event(n)).status, 200);
    }
    up.wait_for(50, WAIT);
    wait_for(WAIT, "50 deliveries recorded as delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE destination = 'wa/up' AND state = 1") == 50
    });
    assert_eq!(
        x.count("SELECT COUNT(*) FROM deliveries WHERE destination = 'wa/down' AND state = 0"),
        50
    );
}

#[test]
fn events_delivered_everywhere_or_nowhere_are_pruned_a_dead_delivery_keeps_its_event() {
    let up = Upstream::start();
    up.answer_path("/refuse", 404);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xhubd.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [[route]]
            name = "two"
            path = "/two"
            verify_token = "t"
            app_secret = "s"
              [[route.destination]]
              name = "ok"
              url = "{ok}"
              [[route.destination]]
              name = "refusing"
              url = "{refuse}"
              match = {{ object = "page" }}
            [[route]]
            name = "nowhere"
            path = "/nowhere"
            verify_token = "t"
            app_secret = "s"
              [[route.destination]]
              name = "never"
              url = "{ok}"
              match = {{ object = "no-such-object" }}
            "#,
            ok = up.url("/ok"),
            refuse = up.url("/refuse"),
        ),
    )
    .unwrap();
    let x = Xhubd::start(
        Options::config(path.to_str().unwrap())
            .arg("--dedup-window")
            .arg("1s"),
    );
    let page = |n: usize| {
        format!(r#"{{"object":"page","entry":[{{"id":"{n}","changed_fields":["name"]}}]}}"#)
    };
    // 3 events with a dead delivery, 3 delivered everywhere, 3 that no destination takes.
    for n in 0..3 {
        assert_eq!(post(&x, "/two", "s", page(n).as_bytes()).status, 200);
        assert_eq!(post(&x, "/two", "s", &page_event(100 + n)).status, 200);
        assert_eq!(post(&x, "/nowhere", "s", &page_event(200 + n)).status, 200);
    }
    wait_for(WAIT, "the deliveries done", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 0") == 0
    });
    // Older than the window, with the writer busy (it prunes between its batches).
    std::thread::sleep(Duration::from_millis(1200));
    let mut n = 1000;
    wait_for(WAIT, "the pruning", || {
        n += 1;
        post(&x, "/two", "s", &page_event(n));
        x.count("SELECT COUNT(*) FROM events WHERE route = 'nowhere'") == 0
            && x.count("SELECT COUNT(*) FROM events e WHERE e.route = 'two' AND e.seq NOT IN (SELECT event_seq FROM deliveries WHERE state = 2) AND e.received_at < (SELECT MAX(received_at) FROM events) - 1100") == 0
    });
    assert_eq!(
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2"),
        3,
        "events with a dead delivery are kept"
    );
    assert_eq!(x.count("SELECT COUNT(*) FROM events WHERE route = 'two' AND seq IN (SELECT event_seq FROM deliveries WHERE state = 2)"), 3);
}

both_spools!(dedup_is_per_route_unless_routes_share_a_group);
fn dedup_is_per_route_unless_routes_share_a_group(spool: &Spool) {
    let up = Upstream::start();
    let (x, _dir) = start(
        spool,
        &format!(
            r#"
        [[route]]
        name = "app-a"
        path = "/a"
        verify_token = "t"
        app_secret = "s"
        dedup_group = "waba"
          [[route.destination]]
          name = "d"
          url = "{url}"
        [[route]]
        name = "app-b"
        path = "/b"
        verify_token = "t"
        app_secret = "s"
        dedup_group = "waba"
          [[route.destination]]
          name = "d"
          url = "{url}"
        [[route]]
        name = "app-c"
        path = "/c"
        verify_token = "t"
        app_secret = "s"
          [[route.destination]]
          name = "d"
          url = "{url}"
        "#,
            url = up.url("/")
        ),
        &[],
    );
    let body = page_event(1);
    // Two apps subscribed to one WhatsApp business account both get the event: the
    // group keeps one.
    assert_eq!(post(&x, "/a", "s", &body).status, 200);
    assert_eq!(post(&x, "/b", "s", &body).status, 200);
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 1);
    // Another route has its own memory.
    assert_eq!(post(&x, "/c", "s", &body).status, 200);
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 2);
    assert_eq!(post(&x, "/c", "s", &body).status, 200);
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 2);
    up.wait_for(2, WAIT);
}

/// Runs `xhubd check --config` on `config`, returning (status, stdout, stderr).
fn check(config: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "file-token\n").unwrap();
    let path = dir.path().join("xhubd.toml");
    std::fs::write(
        &path,
        config.replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
    let state = dir.path().join("state").display().to_string();
    let mut args = vec![
        "check",
        "--config",
        path.to_str().unwrap(),
        "--state-dir",
        &state,
    ];
    args.extend_from_slice(extra);
    run_xhubd(&args, None)
}

#[test]
fn every_problem_in_the_file_is_one_line_naming_the_route_and_key() {
    let route = |extra: &str| {
        format!(
            "[[route]]\nname = \"wa\"\npath = \"/wa\"\nverify_token = \"t\"\napp_secret = \"{APP_SECRET}\"\n{extra}\n[[route.destination]]\nname = \"d\"\nurl = \"http://127.0.0.1:9/\"\n"
        )
    };
    let good = route("");
    let (code, out, err) = check(&good, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warn destination wa/d"),
        "a backend down is a warning: {out}"
    );
    let cases = [
        (
            format!("{good}{}", good.replace("name = \"wa\"", "name = \"wb\"")),
            "path",
        ),
        (
            format!("{good}{}", good.replace("path = \"/wa\"", "path = \"/wb\"")),
            "name",
        ),
        (route("verify_tokn = \"x\""), "verify_tokn"),
        (
            route("verify_token_file = \"{dir}/missing\""),
            "verify_token",
        ),
        (route("app_secret_file = \"{dir}/missing\""), "app_secret"),
        (
            good.replace("url = \"http://127.0.0.1:9/\"", "url = \"ftp://x/\""),
            "url",
        ),
        (good.replace("name = \"d\"", "name = \"D!\""), "name"),
        (
            format!("{good}match = {{ feild = \"messages\" }}\n"),
            "feild",
        ),
        (
            format!("{good}match = {{ entry_id = 1.5 }}\n"),
            "entry_id: 1.5 is neither text nor a whole number",
        ),
        (
            format!("retry_max_delay = \"20\"\n{good}"),
            "retry_max_delay: duration \"20\" has no unit",
        ),
        (
            format!("{good}headers = {{ X-Hub-Signature-256 = \"x\" }}\n"),
            "headers",
        ),
        (
            good.replace(
                "[[route.destination]]\nname = \"d\"\nurl = \"http://127.0.0.1:9/\"\n",
                "",
            ),
            "destination",
        ),
    ];
    for (config, key) in cases {
        let (code, out, err) = check(&config, &[]);
        assert_eq!(code, 2, "{config}\n{out}{err}");
        let line = format!("{out}{err}");
        let fail: Vec<&str> = line.lines().filter(|l| l.contains("FAIL")).collect();
        assert_eq!(fail.len(), 1, "{line}");
        assert!(
            fail[0].contains("xhubd.toml") && fail[0].contains(key),
            "{key}: {line}"
        );
        assert_no_secret("the error", &line);
    }
    // With routes, the single-app flags are refused.
    let (code, out, _) = check(&good, &["--upstream", "http://127.0.0.1:9/"]);
    assert_eq!(code, 2);
    assert!(out.contains("--upstream"), "{out}");
    // serve refuses the same at start, with exit 2 and one line.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xhubd.toml");
    std::fs::write(&path, route("verify_tokn = \"x\"")).unwrap();
    let sock = format!("unix:{}", dir.path().join("s.sock").display());
    let (code, _, err) = run_xhubd(
        &[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            &sock,
            "--state-dir",
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("verify_tokn") && err.contains("line"), "{err}");
}

#[test]
fn top_level_keys_are_options_and_a_flag_wins() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("from-file");
    let path = dir.path().join("xhubd.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\nupstream = \"{}\"\nverify_token = \"{VERIFY_TOKEN}\"\napp_secret = [\"{APP_SECRET}\"]\nmax_body_bytes = 100\n",
            from_file.display(),
            up.url("/")
        ),
    )
    .unwrap();
    // No route: the top-level keys make the flags' route.
    let x = Xhubd::start(
        Options::new("unused")
            .omit("--upstream")
            .omit("--verify-token")
            .omit("--app-secret-file")
            .omit("--state-dir")
            .arg("--config")
            .arg(path.to_str().unwrap()),
    );
    assert!(from_file.join("spool.sqlite3").exists());
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    assert_eq!(x.target.post_signed(&[b'x'; 200]).status, 413);
    up.wait_for(1, WAIT);
    drop(x);
    // A flag wins over the file.
    let x = Xhubd::start(
        Options::config(path.to_str().unwrap())
            .arg("--max-body-bytes")
            .arg("1000"),
    );
    let big = format!(
        r#"{{"object":"user","entry":[{{"id":"1","changed_fields":["x"]}}],"pad":"{}"}}"#,
        "p".repeat(500)
    );
    assert_eq!(x.target.post_signed(big.as_bytes()).status, 200);
}

#[test]
fn the_shipped_config_file_passes_check_as_shipped_and_with_its_examples() {
    let shipped = std::fs::read_to_string("debian/xhubd.toml").unwrap();
    // As shipped (every line commented): one app from the options.
    let (code, out, err) = check(
        &shipped,
        &[
            "--upstream",
            "http://127.0.0.1:9/",
            "--verify-token",
            VERIFY_TOKEN,
            "--app-secret",
            APP_SECRET,
        ],
    );
    assert_eq!(code, 2, "the upstream is down: {out}{err}");
    assert!(
        out.contains("ok   configuration: route(s) default"),
        "{out}"
    );
    // Its examples, uncommented, with the secret files they name.
    let (head, examples) = shipped.split_once("# --- Examples").unwrap();
    let uncommented: Vec<String> = examples
        .lines()
        // Prose is "# text"; example lines are "#key", "#[[...]]" or "#  indented".
        .map(|l| match l.strip_prefix('#') {
            Some("") => String::new(),
            Some(rest) if !rest.starts_with(' ') || rest.starts_with("  ") => rest.to_owned(),
            _ => l.to_owned(),
        })
        .collect();
    let config = format!("{head}# --- Examples{}\n", uncommented.join("\n"));
    let dir = tempfile::tempdir().unwrap();
    for app in ["whatsapp", "page", "instagram", "threads"] {
        std::fs::write(dir.path().join(format!("{app}.verify_token")), "a-token\n").unwrap();
        std::fs::write(dir.path().join(format!("{app}.app_secret")), "a-secret\n").unwrap();
    }
    let path = dir.path().join("xhubd.toml");
    std::fs::write(&path, &config).unwrap();
    let state = dir.path().join("state").display().to_string();
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
    assert_eq!(code, 0, "{config}\n{out}{err}");
    for route in ["whatsapp", "page", "instagram", "threads"] {
        assert!(out.contains(route), "{out}");
    }
    // A backend that cannot be reached (acme.example never resolves) is a warning.
    assert!(
        out.contains("warn destination whatsapp/customer-acme"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    // Every match of the examples is what Meta sends.
    assert!(!out.contains(": match "), "{out}");
}

#[test]
fn a_match_value_meta_never_sends_is_warned_about_by_check_and_at_start() {
    let up = Upstream::start();
    let config = format!(
        "[[route]]\nname = \"wa\"\npath = \"/wa\"\nverify_token = \"t\"\napp_secret = \"{APP_SECRET}\"\n\
         [[route.destination]]\nname = \"newsvc\"\nurl = \"{}\"\n\
         match = {{ object = \"whatsapp_business_account\", field = \"mesages\", phone_number_id = \"+1 555-0100\" }}\n\
         [[route.destination]]\nname = \"all\"\nurl = \"{}\"\nmatch = {{ field = \"messages\", value_has = \"messages\" }}\n",
        up.url("/new"),
        up.url("/all")
    );
    let (code, out, err) = check(&config, &[]);
    assert_eq!(code, 0, "a warning, not a failure: {out}{err}");
    assert!(
        out.contains("warn destination wa/newsvc: match field \"mesages\": not a webhook field this release knows; did you mean \"messages\"?"),
        "{out}"
    );
    assert!(
        out.contains(
            "warn destination wa/newsvc: match phone_number_id \"+1 555-0100\": not an id"
        ),
        "{out}"
    );
    assert!(!out.contains("whatsapp_business_account\":"), "{out}");
    assert!(!out.contains("wa/all: match"), "{out}");
    // serve says the same at start, and serves.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xhubd.toml");
    std::fs::write(&path, &config).unwrap();
    let x = Xhubd::start(Options::config(path.to_str().unwrap()));
    let warned = |what: &str| {
        x.logs()
            .lines()
            .any(|l| l.contains("WARN") && l.contains(what))
    };
    wait_for(WAIT, "the warning logged", || {
        warned("match field \"mesages\"")
    });
    // And on a reload.
    std::fs::write(&path, config.replace("\"mesages\"", "\"mentoins\"")).unwrap();
    x.sighup();
    wait_for(WAIT, "the reload's warning logged", || {
        warned("match field \"mentoins\": not a webhook field this release knows; did you mean \"mentions\"?")
    });
}

#[test]
fn a_config_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let up = Upstream::start();
    let config = route_config(&up);
    for (mode, warned) in [(0o644, true), (0o640, false)] {
        let (x, dir) = start(&Spool::sqlite(), &config, &[]);
        drop(x);
        let path = dir.path().join("xhubd.toml");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let x = Xhubd::start(Options::config(path.to_str().unwrap()));
        assert_eq!(
            x.logs().contains("readable by every user"),
            warned,
            "{mode:o}"
        );
        // check says the same, as a warning: the configuration still passes.
        let state = dir.path().join("state").display().to_string();
        let (code, out, _) = run_xhubd(
            &[
                "check",
                "--config",
                path.to_str().unwrap(),
                "--state-dir",
                &state,
            ],
            None,
        );
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out.contains("warn the config file") && out.contains("readable by every user"),
            warned,
            "{mode:o}: {out}"
        );
    }
}

/// The spool holds events' payloads: the state directory xhubd makes is its owner's
/// only, and one made open to every user beforehand is warned about, by serve and check.
#[test]
fn a_state_directory_others_can_enter_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made").join("state");
    let x = Xhubd::start(Options::new(&up.url("/")).state_dir(&made));
    let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
    assert!(!x.logs().contains("open to every user"), "{}", x.logs());
    drop(x);

    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let x = Xhubd::start(Options::new(&up.url("/")).state_dir(&open));
    wait_for(WAIT, "the warning", || {
        x.logs().lines().any(|l| {
            l.contains("WARN")
                && l.contains("the state directory")
                && l.contains("open to every user")
        })
    });
    drop(x);
    let (code, out, _) = run_xhubd(
        &[
            "check",
            "--upstream",
            &up.url("/"),
            "--verify-token",
            "t",
            "--app-secret",
            "s",
            "--state-dir",
            open.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warn the state directory") && out.contains("chmod 700"),
        "{out}"
    );
}

fn route_config(up: &Upstream) -> String {
    format!(
        "[[route]]\nname = \"r\"\npath = \"/r\"\nverify_token = \"t\"\napp_secret = \"s\"\n[[route.destination]]\nname = \"d\"\nurl = \"{}\"\n",
        up.url("/")
    )
}

#[test]
fn kill_9_with_deliveries_pending_to_three_destinations_loses_none() {
    let mut ups = [Upstream::start(), Upstream::start(), Upstream::start()];
    let config = format!(
        "[[route]]\nname = \"wa\"\npath = \"/wa\"\nverify_token = \"t\"\napp_secret = \"s\"\n{}",
        ups.iter()
            .enumerate()
            .map(|(i, up)| format!(
                "[[route.destination]]\nname = \"d{i}\"\nurl = \"{}\"\nretry_initial = \"100ms\"\nretry_max_delay = \"200ms\"\n",
                up.url("/")
            ))
            .collect::<String>()
    );
    for up in &mut ups {
        up.stop();
    }
    let (mut x, _dir) = start(&Spool::sqlite(), &config, &[]);
    for n in 0..20 {
        assert_eq!(post(&x, "/wa", "s", &page_event(n)).status, 200);
    }
    assert_eq!(
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 0"),
        60
    );
    x.kill9();
    for up in &mut ups {
        up.restart();
    }
    x.spawn();
    for up in &ups {
        let got = up.wait_for(20, WAIT);
        let bodies: HashSet<Vec<u8>> = got.iter().map(|r| r.body.to_vec()).collect();
        assert_eq!(bodies.len(), 20, "every event, to every destination");
    }
    wait_for(WAIT, "all 60 deliveries recorded", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == 60
    });
}
