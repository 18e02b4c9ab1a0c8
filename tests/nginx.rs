//! End to end through a real Nginx running the shipped site file: mutual TLS with a
//! throw-away PKI, the anchored CN check, the subject header, body limits, and the real
//! xhubd behind it delivering to a fake upstream.

mod common;

use std::time::Duration;

use common::nginx::{Curl, Nginx};
use common::pki::Pki;
use common::*;

struct Front {
    pki: Pki,
    _pki_dir: tempfile::TempDir,
    up: Upstream,
    x: Xhubd,
    nginx: Nginx,
}

/// Nginx in front of xhubd. With `xhubd_checks_cn`, xhubd checks the subject header
/// too (defence in depth, as the shipped deployment does); without it, Nginx's check
/// stands alone, so a test can see what Nginx itself refuses.
fn front(enable_no_mtls: bool, xhubd_checks_cn: bool) -> Front {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(pki_dir.path());
    let up = Upstream::start();
    let mut options = Options::new(&up.url("/"));
    if xhubd_checks_cn {
        options = options.arg("--client-cn-header").arg("X-Client-Subject");
    }
    let x = Xhubd::start(options);
    let Target::Unix(socket) = x.target.clone() else {
        unreachable!()
    };
    let nginx = Nginx::start(&pki, &socket, enable_no_mtls);
    Front {
        pki,
        _pki_dir: pki_dir,
        up,
        x,
        nginx,
    }
}

const CHALLENGE: &str =
    "/webhook?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=verify-token-93jd8s";

#[test]
fn meta_with_the_right_certificate_gets_through_byte_identical() {
    let f = front(false, true);
    let curl = Curl {
        pki: &f.pki,
        port: f.nginx.port,
    };
    assert!(CHALLENGE.contains(VERIFY_TOKEN));

    let a = curl.send("GET", CHALLENGE, Some(&f.pki.good), &[], None);
    assert_eq!(a.status, 200, "{}", f.nginx.error_log());
    assert_eq!(a.body, b"1158201444");

    let body = "{\"object\":\"page\",\"entry\":[{\"id\":\"1\",\"time\":1,\"changes\":[{\"field\":\"feed\",\"value\":{\"message\":\"Caf\\u00e9 \\/ caf\u{e9}\"}}]}]}";
    let sig = sign(APP_SECRET, body.as_bytes());
    let a = curl.send(
        "POST",
        "/webhook",
        Some(&f.pki.good),
        &[
            ("X-Hub-Signature-256", &sig),
            ("Content-Type", "application/json"),
        ],
        Some(body.as_bytes()),
    );
    assert_eq!(a.status, 200);
    let got = f.up.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].body.as_ref(), body.as_bytes());
    assert_eq!(got[0].header("x-hub-signature-256"), Some(sig.as_str()));

    // A forged subject header from the client is overwritten by Nginx: xhubd's own
    // check (--client-cn-header) sees the real subject and still accepts.
    let body2 = page_event(2);
    let a = curl.send(
        "POST",
        "/webhook",
        Some(&f.pki.good),
        &[
            ("X-Hub-Signature-256", &sign(APP_SECRET, &body2)),
            ("X-Client-Subject", "CN=evil.example"),
        ],
        Some(&body2),
    );
    assert_eq!(a.status, 200);
    f.up.wait_for(2, Duration::from_secs(20));

    // Other methods and paths.
    let put = curl.send("PUT", "/webhook", Some(&f.pki.good), &[], Some(b"{}"));
    assert_eq!(put.status, 405);
    assert!(
        put.headers
            .to_ascii_lowercase()
            .contains("allow: get, post"),
        "{}",
        put.headers
    );
    assert_eq!(
        curl.send("GET", "/elsewhere", Some(&f.pki.good), &[], None)
            .status,
        404
    );
    f.x.assert_no_secret_in_logs();
}

#[test]
fn wrong_or_missing_client_certificates_are_refused_before_xhubd() {
    let f = front(false, false);
    let curl = Curl {
        pki: &f.pki,
        port: f.nginx.port,
    };
    let body = page_event(1);
    let sig = sign(APP_SECRET, &body);
    let headers = [
        ("X-Hub-Signature-256", sig.as_str()),
        ("X-Client-Subject", "CN=client.webhooks.fbclientcerts.com"),
    ];
    // (who, expected status of the POST): 403 from the location's CN check, 400 from
    // Nginx when a presented certificate fails verification. The verification GET needs
    // no certificate (Meta does not promise one on it): it reaches xhubd unless a
    // certificate presented with it fails verification.
    let cases = [
        ("no certificate", None, 403),
        ("CN with a suffix", Some(&f.pki.cn_suffix), 403),
        ("CN with a prefix", Some(&f.pki.cn_prefix), 403),
        ("the name only in OU", Some(&f.pki.cn_in_ou), 403),
        (
            "the name escaped inside O",
            Some(&f.pki.cn_escaped_in_o),
            403,
        ),
        ("a leaf from another root", Some(&f.pki.other_root), 400),
        ("an expired leaf", Some(&f.pki.expired), 400),
        ("a chain deeper than 3", Some(&f.pki.too_deep), 400),
    ];
    for (who, id, expected) in cases {
        let post = curl.send("POST", "/webhook", id, &headers, Some(&body));
        assert_eq!(post.status, expected, "POST with {who}");
        let get = curl.send("GET", CHALLENGE, id, &[], None);
        if expected == 400 {
            assert_eq!(get.status, 400, "GET with {who}");
        } else {
            assert_eq!(get.status, 200, "GET with {who}");
            assert_eq!(get.body, b"1158201444", "{who}");
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(f.up.count(), 0, "nothing reached the upstream");
    assert_eq!(
        f.x.count("SELECT COUNT(*) FROM events"),
        0,
        "nothing reached xhubd"
    );
    assert!(
        !f.x.logs().contains("rejected"),
        "Nginx refused them, not xhubd"
    );
}

#[test]
fn without_mtls_a_forged_subject_header_does_not_pass_xhubd() {
    // The shipped variant location without mTLS, enabled: Nginx overwrites the
    // subject header with the (empty) real subject, so xhubd's check refuses.
    let f = front(true, true);
    let curl = Curl {
        pki: &f.pki,
        port: f.nginx.port,
    };
    let body = page_event(1);
    let sig = sign(APP_SECRET, &body);
    let a = curl.send(
        "POST",
        "/webhook/no-mtls",
        None,
        &[
            ("X-Hub-Signature-256", &sig),
            ("X-Client-Subject", "CN=client.webhooks.fbclientcerts.com"),
        ],
        Some(&body),
    );
    assert_eq!(a.status, 403);
    assert!(
        String::from_utf8_lossy(&a.body).contains("client certificate"),
        "refused by xhubd"
    );
    assert!(f.x.logs().contains("rejected: client certificate"));
    // With the real certificate the same location passes.
    let a = curl.send(
        "POST",
        "/webhook/no-mtls",
        Some(&f.pki.good),
        &[("X-Hub-Signature-256", &sig)],
        Some(&body),
    );
    assert_eq!(a.status, 200);
    f.up.wait_for(1, Duration::from_secs(20));
}

#[test]
fn a_3mb_body_passes_and_an_oversized_one_gets_413() {
    let f = front(false, true);
    let curl = Curl {
        pki: &f.pki,
        port: f.nginx.port,
    };
    let text = "x".repeat(3 * 1024 * 1024);
    let big = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messages":[{{"id":"wamid.BIG","text":{{"body":"{text}"}}}}]}}}}]}}]}}"#
    );
    let a = curl.send(
        "POST",
        "/webhook",
        Some(&f.pki.good),
        &[("X-Hub-Signature-256", &sign(APP_SECRET, big.as_bytes()))],
        Some(big.as_bytes()),
    );
    assert_eq!(a.status, 200);
    let got = f.up.wait_for(1, Duration::from_secs(30));
    assert_eq!(got[0].body.as_ref(), big.as_bytes());

    let huge = format!(r#"{{"pad":"{}"}}"#, "y".repeat(9 * 1024 * 1024));
    let a = curl.send(
        "POST",
        "/webhook",
        Some(&f.pki.good),
        &[("X-Hub-Signature-256", &sign(APP_SECRET, huge.as_bytes()))],
        Some(huge.as_bytes()),
    );
    assert_eq!(a.status, 413);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.up.count(), 1);
}

#[test]
fn send_test_checks_the_whole_mtls_path() {
    let f = front(false, true);
    let url = format!("https://localhost:{}/webhook", f.nginx.port);
    let run = |client: Option<&common::pki::ClientId>| {
        let mut args = vec![
            "send-test".to_owned(),
            "--url".into(),
            url.clone(),
            "--app-secret".into(),
            APP_SECRET.into(),
            "--verify-token".into(),
            VERIFY_TOKEN.into(),
            "--cacert".into(),
            f.pki.server_ca.display().to_string(),
        ];
        if let Some(id) = client {
            args.extend([
                "--cert".into(),
                id.chain.display().to_string(),
                "--key".into(),
                id.key.display().to_string(),
            ]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // "localhost" must resolve to the loopback Nginx listens on.
        run_xhubd(&refs, None)
    };
    let (code, out, err) = run(Some(&f.pki.good));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the challenge came back") && out.contains("the event was accepted"));
    f.up.wait_for(1, Duration::from_secs(20));
    let (code, out, _) = run(None);
    assert_eq!(code, 1);
    assert!(out.contains("FAILED: 403"), "{out}");
}

#[test]
fn the_verify_token_stays_out_of_nginx_s_logs() {
    let mut f = front(false, true);
    let curl = Curl {
        pki: &f.pki,
        port: f.nginx.port,
    };
    // The dashboard's "Verify and save", with and without a client certificate, and
    // with a wrong token; an event without the certificate is still refused.
    let a = curl.send("GET", CHALLENGE, None, &[], None);
    assert_eq!((a.status, a.body.as_slice()), (200, &b"1158201444"[..]));
    let a = curl.send("GET", CHALLENGE, Some(&f.pki.good), &[], None);
    assert_eq!(a.status, 200);
    let wrong = CHALLENGE.replace(VERIFY_TOKEN, "not-the-token");
    assert_eq!(curl.send("GET", &wrong, None, &[], None).status, 403);
    let body = page_event(1);
    let sig = sign(APP_SECRET, &body);
    let post = curl.send(
        "POST",
        "/webhook",
        None,
        &[("X-Hub-Signature-256", &sig)],
        Some(&body),
    );
    assert_eq!(post.status, 403);
    // xhubd down: Nginx answers 502, and its error log, which prints the request line
    // of a failed request, must still not get the token.
    assert!(f.x.terminate().success());
    assert_eq!(curl.send("GET", CHALLENGE, None, &[], None).status, 502);
    let post = curl.send(
        "POST",
        "/webhook",
        Some(&f.pki.good),
        &[("X-Hub-Signature-256", &sig)],
        Some(&body),
    );
    assert_eq!(post.status, 502);
    let access = f.nginx.access_log();
    let error = f.nginx.error_log();
    assert_no_secret("Nginx's access log", &access);
    assert_no_secret("Nginx's error log", &error);
    // What is logged is still useful: each request's method, path and status.
    for (status, count) in [(200, 2), (403, 2), (502, 2)] {
        let lines = access
            .lines()
            .filter(|l| l.contains("/webhook HTTP/1.1\"") && l.contains(&format!("\" {status} ")))
            .count();
        assert_eq!(lines, count, "{status} in {access}");
    }
    assert!(!access.contains("hub.verify_token"), "{access}");
    // The failed event's connection error is in the error log (POSTs carry no token).
    assert!(error.contains("connect() to unix:"), "{error}");
}

#[test]
fn two_routes_behind_the_shipped_site() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(pki_dir.path());
    let (a, b) = (Upstream::start(), Upstream::start());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("xhubd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            client_cn_header = "X-Client-Subject"
            [[route]]
            name = "app-a"
            path = "/webhook/app-a"
            verify_token = "token-a"
            app_secret = "secret-a"
              [[route.destination]]
              name = "backend"
              url = "{}"
            [[route]]
            name = "app-b"
            path = "/webhook/app-b"
            verify_token = "token-b"
            app_secret = "secret-b"
              [[route.destination]]
              name = "backend"
              url = "{}"
            "#,
            a.url("/a"),
            b.url("/b")
        ),
    )
    .unwrap();
    let x = Xhubd::start(Options::config(config.to_str().unwrap()));
    let Target::Unix(socket) = x.target.clone() else {
        unreachable!()
    };
    let nginx = Nginx::start(&pki, &socket, false);
    let curl = Curl {
        pki: &pki,
        port: nginx.port,
    };
    let verify = |path: &str, token: &str| {
        curl.send(
            "GET",
            &format!("{path}?hub.mode=subscribe&hub.challenge=31&hub.verify_token={token}"),
            None,
            &[],
            None,
        )
    };
    // Verification, with no client certificate, per route with its own token.
    assert_eq!(verify("/webhook/app-a", "token-a").body, b"31");
    assert_eq!(verify("/webhook/app-b", "token-b").body, b"31");
    assert_eq!(verify("/webhook/app-b", "token-a").status, 403);
    // Events need Meta's certificate, and go to their route's backend only.
    let body = page_event(1);
    let send = |path: &str, secret: &str, client| {
        curl.send(
            "POST",
            path,
            client,
            &[("X-Hub-Signature-256", &sign(secret, &body))],
            Some(&body),
        )
        .status
    };
    assert_eq!(send("/webhook/app-a", "secret-a", None), 403);
    assert_eq!(send("/webhook/app-a", "secret-b", Some(&pki.good)), 401);
    assert_eq!(send("/webhook/app-c", "secret-a", Some(&pki.good)), 404);
    assert_eq!(send("/webhook/app-a", "secret-a", Some(&pki.good)), 200);
    assert_eq!(send("/webhook/app-b", "secret-b", Some(&pki.good)), 200);
    let got_a = a.wait_for(1, Duration::from_secs(20));
    let got_b = b.wait_for(1, Duration::from_secs(20));
    assert_eq!(
        (
            got_a[0].path_and_query.as_str(),
            got_b[0].path_and_query.as_str()
        ),
        ("/a", "/b")
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((a.count(), b.count()), (1, 1));
    let logs = nginx.access_log() + &nginx.error_log() + &x.logs();
    for secret in ["token-a", "token-b", "secret-a", "secret-b"] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
}
