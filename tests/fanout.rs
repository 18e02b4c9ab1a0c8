//! Destinations chosen by what an event holds: `match` on object, entry, field (the
//! dashboard's names, for every product), value arrays and phone number; `fallback`;
//! narrowed bodies made of the bytes Meta sent and signed anew; `split = "item"`; a
//! destination's own signing secret. Real-shaped payloads of every product are in
//! `tests/fixtures/payloads/` (fake ids and text, Meta's escaping).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "fanout-app-secret";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/payloads/{name}.json")).unwrap()
}

/// Starts xhubd on `spool` and `config`, where `{up}` is the fake backend's address and
/// `{dir}` a temporary directory holding `files`.
fn start(
    spool: &Spool,
    config: &str,
    up: &Upstream,
    files: &[(&str, &str)],
) -> (Xhubd, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let text = config
        .replace("{up}", &up.url(""))
        .replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("xhubd.toml");
    std::fs::write(&path, text).unwrap();
    let x = Xhubd::start(Options::config(path.to_str().unwrap()).spool(spool));
    (x, dir)
}

fn post(x: &Xhubd, path: &str, body: &[u8], sha1: Option<&str>) -> u16 {
    let sig = sign(SECRET, body);
    let mut headers = vec![("X-Hub-Signature-256", sig.as_str())];
    if let Some(s) = sha1 {
        headers.push(("X-Hub-Signature", s));
    }
    x.target.request("POST", path, &headers, body).status
}

const PRODUCTS: &str = r#"
[[route]]
name = "wa"
path = "/wa"
verify_token = "t"
app_secret = "fanout-app-secret"
  [[route.destination]]
  name = "bot"
  url = "{up}/wa/bot"
  match = { field = "messages", value_has = "messages" }
  [[route.destination]]
  name = "statuses"
  url = "{up}/wa/statuses"
  match = { value_has = "statuses" }
  [[route.destination]]
  name = "errors"
  url = "{up}/wa/errors"
  match = { value_has = "errors" }
  [[route.destination]]
  name = "echoes"
  url = "{up}/wa/echoes"
  match = { field = "smb_message_echoes" }
  [[route.destination]]
  name = "other"
  url = "{up}/wa/other"
  fallback = true
[[route]]
name = "page"
path = "/page"
verify_token = "t"
app_secret = "fanout-app-secret"
  [[route.destination]]
  name = "inbox"
  url = "{up}/page/inbox"
  match = { field = "messages" }
  [[route.destination]]
  name = "echoes"
  url = "{up}/page/echoes"
  match = { field = "message_echoes" }
  [[route.destination]]
  name = "receipts"
  url = "{up}/page/receipts"
  match = { field = ["message_reads", "message_deliveries"] }
  [[route.destination]]
  name = "handover"
  url = "{up}/page/handover"
  match = { field = "standby" }
  [[route.destination]]
  name = "feed"
  url = "{up}/page/feed"
  match = { field = "feed", entry_id = 104000000000001 }
  [[route.destination]]
  name = "other"
  url = "{up}/page/other"
  fallback = true
[[route]]
name = "ig"
path = "/ig"
verify_token = "t"
app_secret = "fanout-app-secret"
  [[route.destination]]
  name = "comments"
  url = "{up}/ig/comments"
  match = { object = "instagram", field = ["comments", "mentions"] }
  [[route.destination]]
  name = "dm"
  url = "{up}/ig/dm"
  match = { field = "messages" }
  [[route.destination]]
  name = "seen"
  url = "{up}/ig/seen"
  match = { field = "messaging_seen" }
[[route]]
name = "other-apps"
path = "/apps"
verify_token = "t"
app_secret = "fanout-app-secret"
  [[route.destination]]
  name = "photos"
  url = "{up}/apps/photos"
  match = { object = "user", field = "photos" }
  [[route.destination]]
  name = "replies"
  url = "{up}/apps/replies"
  match = { object = "threads", field = "replies", entry_id = "17841400000000777" }
"#;

#[test]
fn every_product_s_items_reach_the_destinations_that_match_them() {
    let up = Upstream::start();
    let (x, _dir) = start(&Spool::sqlite(), PRODUCTS, &up, &[]);
    // fixture -> (route path, the destinations that must get it whole)
    let cases: &[(&str, &str, &[&str])] = &[
        ("wa-text", "/wa", &["/wa/bot"]),
        ("wa-image", "/wa", &["/wa/bot"]),
        ("wa-reaction", "/wa", &["/wa/bot"]),
        ("wa-interactive", "/wa", &["/wa/bot"]),
        ("wa-status-sent", "/wa", &["/wa/statuses"]),
        ("wa-status-failed", "/wa", &["/wa/statuses"]),
        ("wa-value-errors", "/wa", &["/wa/errors"]),
        ("wa-template-status", "/wa", &["/wa/other"]),
        ("wa-account-update", "/wa", &["/wa/other"]),
        ("wa-echo", "/wa", &["/wa/echoes"]),
        ("ms-message", "/page", &["/page/inbox"]),
        ("ms-echo", "/page", &["/page/echoes"]),
        ("ms-read", "/page", &["/page/receipts"]),
        ("ms-delivery", "/page", &["/page/receipts"]),
        ("ms-standby", "/page", &["/page/handover"]),
        ("page-feed", "/page", &["/page/feed"]),
        ("ms-postback", "/page", &["/page/other"]),
        ("ms-reaction", "/page", &["/page/other"]),
        ("ms-referral", "/page", &["/page/other"]),
        ("ms-optin", "/page", &["/page/other"]),
        ("ms-edit", "/page", &["/page/other"]),
        ("ig-comment", "/ig", &["/ig/comments"]),
        ("ig-mention", "/ig", &["/ig/comments"]),
        ("ig-message", "/ig", &["/ig/dm"]),
        ("ig-unsend", "/ig", &["/ig/dm"]),
        ("ig-seen", "/ig", &["/ig/seen"]),
        ("user-photos", "/apps", &["/apps/photos"]),
        ("threads-replies", "/apps", &["/apps/replies"]),
    ];
    let mut expected = 0;
    for (name, path, _) in cases {
        assert_eq!(post(&x, path, &fixture(name), None), 200, "{name}");
    }
    for (_, _, to) in cases {
        expected += to.len();
    }
    let got = up.wait_for(expected, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.count(), expected, "nothing sent twice, nothing extra");
    for (name, _, to) in cases {
        let body = fixture(name);
        let paths: BTreeSet<&str> = got
            .iter()
            .filter(|r| r.body[..] == body[..])
            .map(|r| r.path_and_query.as_str())
            .collect();
        assert_eq!(paths, to.iter().copied().collect(), "{name}");
        // A destination that takes every item gets Meta's bytes and signature.
        for r in got.iter().filter(|r| r.body[..] == body[..]) {
            assert_eq!(
                r.header("x-hub-signature-256"),
                Some(sign(SECRET, &body).as_str()),
                "{name}"
            );
            assert_eq!(r.header("x-xhubd-part"), None);
        }
    }
}

/// A WhatsApp batch for two phone numbers: entry 1 holds a message for number A and a
/// status for number B, entry 2 a message for number B.
const BATCH: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550000001","phone_number_id":"111"},"contacts":[{"profile":{"name":"Caf\u00e9"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.A1","timestamp":"1","text":{"body":"for A \/ one"},"type":"text"}]},"field":"messages"},{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550000002","phone_number_id":"222"},"statuses":[{"id":"wamid.B0","status":"read","timestamp":"2","recipient_id":"16505559999"}]},"field":"messages"}]},{"id":"102290129340398","time":1764490000,"changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550000002","phone_number_id":"222"},"messages":[{"from":"16505559999","id":"wamid.B1","timestamp":"3","text":{"body":"for B"},"type":"text"}]},"field":"messages"}]}]}"#;

both_spools!(each_customer_gets_only_its_own_entries_narrowed_and_re_signed);
fn each_customer_gets_only_its_own_entries_narrowed_and_re_signed(spool: &Spool) {
    let up = Upstream::start();
    let (x, _dir) = start(
        spool,
        r#"
        [[route]]
        name = "wa"
        path = "/wa"
        verify_token = "t"
        app_secret = ["an-older-secret", "fanout-app-secret"]
          [[route.destination]]
          name = "customer-a"
          url = "{up}/a"
          match = { phone_number_id = 111 }
          [[route.destination]]
          name = "customer-b"
          url = "{up}/b"
          match = { phone_number_id = "222" }
          [[route.destination]]
          name = "archive"
          url = "{up}/all"
          [[route.destination]]
          name = "partner"
          url = "{up}/partner"
          match = { phone_number_id = "222", value_has = "messages" }
          sign_secret_file = "partner.secret"
        "#,
        &up,
        &[("partner.secret", "partner-own-secret\n")],
    );
    let body = BATCH.as_bytes();
    let meta_sha1 = "sha1=0000000000000000000000000000000000000000";
    assert_eq!(post(&x, "/wa", body, Some(meta_sha1)), 200);
    let got = up.wait_for(4, WAIT);
    let by_path: BTreeMap<&str, &Received> =
        got.iter().map(|r| (r.path_and_query.as_str(), r)).collect();
    // The archive takes every item: Meta's bytes and both of Meta's signatures.
    let all = by_path["/all"];
    assert_eq!(all.body[..], body[..]);
    assert_eq!(all.header("x-hub-signature"), Some(meta_sha1));
    // Customer A: only its change, in the first entry; the bytes as sent.
    let a_expected = BATCH
        .split_once(r#",{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550000002""#)
        .map(|(head, _)| format!("{head}]}}]}}"))
        .unwrap();
    let a = by_path["/a"];
    assert_eq!(String::from_utf8_lossy(&a.body), a_expected);
    // Customer B: the status of entry 1 and the whole of entry 2.
    let b = by_path["/b"];
    let b_text = String::from_utf8_lossy(&b.body).into_owned();
    assert!(
        !b_text.contains("wamid.A1") && !b_text.contains("for A"),
        "{b_text}"
    );
    assert!(b_text.contains(r#""statuses":[{"id":"wamid.B0","status":"read","timestamp":"2","recipient_id":"16505559999"}]"#));
    assert!(b_text.contains(r#""text":{"body":"for B"}"#));
    let b_doc: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
    assert_eq!(b_doc["entry"].as_array().unwrap().len(), 2);
    // Each narrowed body is signed anew with the App Secret that verified the request
    // (the second of the route's two), and SHA-1 too since Meta sent one: a backend
    // that checks Meta's signature still can.
    for r in [a, b] {
        assert_eq!(
            r.header("x-hub-signature-256"),
            Some(sign(SECRET, &r.body).as_str())
        );
        let sha1 = r.header("x-hub-signature").unwrap();
        assert!(sha1.starts_with("sha1=") && sha1 != meta_sha1, "{sha1}");
        assert_eq!(
            sha1,
            xhubd::webhook::fanout::sign_sha1(SECRET.as_bytes(), &r.body)
        );
    }
    // The partner signs with its own secret, and gets only number B's message.
    let partner = by_path["/partner"];
    let p_text = String::from_utf8_lossy(&partner.body).into_owned();
    assert!(
        p_text.contains("wamid.B1") && !p_text.contains("wamid.B0"),
        "{p_text}"
    );
    assert_eq!(
        partner.header("x-hub-signature-256"),
        Some(sign("partner-own-secret", &partner.body).as_str())
    );
    // One event id for all; a delivery id each.
    let events: BTreeSet<&str> = got
        .iter()
        .map(|r| r.header("x-xhubd-event-id").unwrap())
        .collect();
    let deliveries: BTreeSet<&str> = got
        .iter()
        .map(|r| r.header("x-xhubd-delivery-id").unwrap())
        .collect();
    assert_eq!((events.len(), deliveries.len()), (1, 4));
}

both_spools!(split_sends_a_1000_item_batch_as_1000_signed_parts);
fn split_sends_a_1000_item_batch_as_1000_signed_parts(spool: &Spool) {
    let up = Upstream::start();
    let (x, _dir) = start(
        spool,
        r#"
        max_body_bytes = "8MiB"
        [[route]]
        name = "wa"
        path = "/wa"
        verify_token = "t"
        app_secret = "fanout-app-secret"
          [[route.destination]]
          name = "each"
          url = "{up}/each"
          split = "item"
          concurrency = 16
        "#,
        &up,
        &[],
    );
    let changes: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                r#"{{"value":{{"messaging_product":"whatsapp","metadata":{{"phone_number_id":"111"}},"messages":[{{"from":"1","id":"wamid.S{i}","type":"text","text":{{"body":"n\u00ba {i}"}}}}]}},"field":"messages"}}"#
            )
        })
        .collect();
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","time":5,"changes":[{}]}}]}}"#,
        changes.join(",")
    );
    assert_eq!(post(&x, "/wa", body.as_bytes(), None), 200);
    let got = up.wait_for(1000, Duration::from_secs(120));
    let mut parts = BTreeSet::new();
    for r in &got {
        let part = r.header("x-xhubd-part").unwrap();
        let (i, n) = part.split_once('/').unwrap();
        assert_eq!(n, "1000");
        let i: usize = i.parse().unwrap();
        assert!(parts.insert(i), "part {i} twice");
        // One entry holding one item: the i-th change, its bytes as sent.
        let expected = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","time":5,"changes":[{}]}}]}}"#,
            changes[i - 1]
        );
        assert_eq!(String::from_utf8_lossy(&r.body), expected);
        assert_eq!(
            r.header("x-hub-signature-256"),
            Some(sign(SECRET, &r.body).as_str())
        );
    }
    assert_eq!(parts, (1..=1000).collect());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.count(), 1000);
}

both_spools!(items_nobody_takes_are_stored_and_counted);
fn items_nobody_takes_are_stored_and_counted(spool: &Spool) {
    let up = Upstream::start();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xhubd.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [[route]]
            name = "wa"
            path = "/wa"
            verify_token = "t"
            app_secret = "fanout-app-secret"
              [[route.destination]]
              name = "bot"
              url = "{}"
              match = {{ field = "messages", value_has = "messages" }}
            "#,
            up.url("/bot")
        ),
    )
    .unwrap();
    let x = Xhubd::start(
        Options::config(path.to_str().unwrap())
            .arg("--admin-listen")
            .arg(&format!("127.0.0.1:{port}"))
            .tcp()
            .spool(spool),
    );
    assert_eq!(post(&x, "/wa", &fixture("wa-template-status"), None), 200);
    assert_eq!(post(&x, "/wa", &fixture("wa-text"), None), 200);
    up.wait_for(1, WAIT);
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 2);
    assert_eq!(x.count("SELECT COUNT(*) FROM deliveries"), 1);
    wait_for(WAIT, "the delivery recorded", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == 1
    });
    let admin = admin_target(port);
    let metrics = admin.get("/metrics").text();
    assert!(
        metrics.contains(r#"xhubd_items_unrouted_total{route="wa"} 1"#),
        "{metrics}"
    );
    // Listed like any other event, delivered (to nobody).
    let (code, out, err) = x.run_on_spool(&["events", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains("delivered")).count(),
        2,
        "{out}"
    );
    // send-test says so of its sample, before anyone wonders where it went.
    let Target::Tcp(addr) = &x.target else {
        unreachable!()
    };
    let (code, out, err) = send_test_route(addr, &path, "wa");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("no destination of route wa takes this sample (object user, field photos)"),
        "{out}"
    );
    // A WhatsApp message sample is shaped as Meta's, so the bot's match takes it.
    let url = format!("http://{addr}/");
    let (code, out, err) = run_xhubd(
        &[
            "send-test",
            "--url",
            &url,
            "--config",
            path.to_str().unwrap(),
            "--route",
            "wa",
            "--object",
            "whatsapp_business_account",
            "--field",
            "messages",
            "--phone-number-id",
            "106540352242922",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("the destinations of route wa that take it: wa/bot"),
        "{out}"
    );
    let got = up.wait_for(2, WAIT);
    let sample = String::from_utf8_lossy(&got[1].body).into_owned();
    assert!(
        sample.contains(r#""phone_number_id":"106540352242922""#)
            && sample.contains(r#""text":{"body":"xhubd send-test"}"#),
        "{sample}"
    );
}
