//! Every row of the HTTP contract, against the real binary on a Unix socket and on TCP.

mod common;

use std::time::Duration;

use common::*;

fn challenge_path(token: &str) -> String {
    format!("/webhook?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={token}")
}

fn verification_rows(x: &Xhubd) {
    let t = &x.target;
    let ok = t.get(&challenge_path(VERIFY_TOKEN));
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, b"1158201444");
    assert!(ok.header("content-type").unwrap().starts_with("text/plain"));

    // Any path: Nginx decides what reaches xhubd.
    assert_eq!(
        t.get(&format!(
            "/other/path?hub.mode=subscribe&hub.challenge=7&hub.verify_token={VERIFY_TOKEN}"
        ))
        .body,
        b"7"
    );

    let wrong = t.get(&challenge_path("not-the-token"));
    assert_eq!(wrong.status, 403);
    assert!(!wrong.text().contains(VERIFY_TOKEN));
    assert_eq!(
        t.get(&format!(
            "/?hub.mode=unsubscribe&hub.challenge=1&hub.verify_token={VERIFY_TOKEN}"
        ))
        .status,
        403
    );
    assert_eq!(t.get("/?hub.challenge=1&hub.verify_token=x").status, 400);
    assert_eq!(
        t.get(&format!(
            "/?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"
        ))
        .status,
        400
    );
    assert_eq!(t.get("/?hub.mode=subscribe&hub.challenge=1").status, 400);
    assert_eq!(t.get("/").status, 400);
}

fn event_rows(x: &Xhubd, up: &Upstream) {
    let t = &x.target;
    let body = page_event(1);

    // 401: no header, malformed, wrong secret, sha1.
    assert_eq!(t.request("POST", "/", &[], &body).status, 401);
    assert_eq!(
        t.request("POST", "/", &[("X-Hub-Signature-256", "sha256=abc")], &body)
            .status,
        401
    );
    let wrong = sign("not-our-secret", &body);
    let refused = t.request("POST", "/", &[("X-Hub-Signature-256", &wrong)], &body);
    assert_eq!(refused.status, 401);
    assert!(refused
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let sha1 = format!("sha1={}", &sign(APP_SECRET, &body)[7..47]);
    assert_eq!(
        t.request("POST", "/", &[("X-Hub-Signature-256", &sha1)], &body)
            .status,
        401
    );
    // The computed signature is never revealed.
    let expected = sign(APP_SECRET, &body);
    assert!(!refused.text().contains(&expected[7..]));

    // 400: valid signature, not a JSON object.
    for bad in [
        &b"not json"[..],
        b"[1,2,3]",
        b"\"text\"",
        b"",
        b"{\"a\":1} trailing",
    ] {
        let a = t.request(
            "POST",
            "/",
            &[("X-Hub-Signature-256", &sign(APP_SECRET, bad))],
            bad,
        );
        assert_eq!(a.status, 400, "{:?}", String::from_utf8_lossy(bad));
    }

    // 200, and upper-case hex and the second secret are accepted.
    assert_eq!(t.post_signed(&body).status, 200);
    let upper = format!(
        "sha256={}",
        sign(APP_SECRET, &page_event(2))[7..].to_uppercase()
    );
    assert_eq!(
        t.request(
            "POST",
            "/",
            &[("X-Hub-Signature-256", &upper)],
            &page_event(2)
        )
        .status,
        200
    );
    let other = sign(OTHER_SECRET, &page_event(3));
    assert_eq!(
        t.request(
            "POST",
            "/",
            &[("X-Hub-Signature-256", &other)],
            &page_event(3)
        )
        .status,
        200
    );

    // Other methods: 405 with Allow.
    for method in ["HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"] {
        let a = t.request(method, "/", &[], b"");
        assert_eq!(a.status, 405, "{method}");
        assert_eq!(a.header("allow"), Some("GET, POST"), "{method}");
    }

    // Exactly the three accepted events reach the upstream, nothing refused does.
    let got = up.wait_for(3, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.count(), 3, "refused requests must never be forwarded");
    let mut bodies: Vec<_> = got.iter().map(|r| r.body.to_vec()).collect();
    bodies.sort();
    let mut sent = vec![page_event(1), page_event(2), page_event(3)];
    sent.sort();
    assert_eq!(bodies, sent);
}

#[test]
fn contract_over_a_unix_socket() {
    let up = Upstream::start();
    let mut x = Xhubd::start(Options::new(&up.url("/hook")));
    verification_rows(&x);
    event_rows(&x, &up);
    x.assert_no_secret_in_logs();
    assert!(x.terminate().success());
}

#[test]
fn contract_over_tcp() {
    let up = Upstream::start();
    let mut x = Xhubd::start(Options::new(&up.url("/hook")).tcp());
    verification_rows(&x);
    event_rows(&x, &up);
    x.assert_no_secret_in_logs();
    assert!(x.terminate().success());
}

#[test]
fn body_size_limit_is_checked_first_and_exact_size_passes() {
    let up = Upstream::start();
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .arg("--max-body-bytes")
            .arg("1000"),
    );
    let t = &x.target;

    // A JSON object of exactly 1000 bytes passes.
    let mut exact = br#"{"object":"user","pad":""#.to_vec();
    exact.resize(998, b'x');
    exact.extend_from_slice(b"\"}");
    assert_eq!(exact.len(), 1000);
    assert_eq!(t.post_signed(&exact).status, 200);

    // One byte more: 413, even with a wrong signature (size is checked before it).
    let mut over = exact.clone();
    over.insert(1, b' ');
    assert_eq!(t.post_signed(&over).status, 413);
    assert_eq!(
        t.request("POST", "/", &[("X-Hub-Signature-256", "sha256=00")], &over)
            .status,
        413
    );

    // Without Content-Length (chunked), the stream is capped.
    let sig = sign(APP_SECRET, &over);
    let mut chunked = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nX-Hub-Signature-256: {sig}\r\n\r\n"
    )
    .into_bytes();
    for part in over.chunks(100) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(t.raw(&chunked).status, 413);

    // A declared length far over the limit is refused before the body is sent.
    let huge = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\nX-Hub-Signature-256: sha256=00\r\n\r\n";
    assert_eq!(t.raw(huge.as_bytes()).status, 413);

    // Signature (401) comes before JSON (400).
    assert_eq!(
        t.request(
            "POST",
            "/",
            &[("X-Hub-Signature-256", &sign("wrong", b"nope"))],
            b"nope"
        )
        .status,
        401
    );

    up.wait_for(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.count(), 1);
    assert_eq!(
        x.count("SELECT COUNT(*) FROM events"),
        1,
        "nothing refused is stored"
    );
}

#[test]
fn client_cn_header_is_enforced_when_configured() {
    let up = Upstream::start();
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .arg("--client-cn-header")
            .arg("X-Client-Subject"),
    );
    let t = &x.target;
    let body = page_event(9);
    let sig = sign(APP_SECRET, &body);
    let good = "CN=client.webhooks.fbclientcerts.com,O=Meta Platforms\\, Inc.,C=US";
    for (subject, status) in [
        (None, 403),
        (
            Some("CN=client.webhooks.fbclientcerts.com.evil.example"),
            403,
        ),
        (Some("OU=client.webhooks.fbclientcerts.com,CN=evil"), 403),
        (Some("CN=xclient.webhooks.fbclientcerts.com"), 403),
        (Some(good), 200),
    ] {
        let mut headers = vec![("X-Hub-Signature-256", sig.as_str())];
        if let Some(s) = subject {
            headers.push(("X-Client-Subject", s));
        }
        assert_eq!(
            t.request("POST", "/", &headers, &body).status,
            status,
            "{subject:?}"
        );
    }
    // The verification GET is exempt: Meta does not promise a certificate on it, and
    // the verify token guards it.
    let path = format!("/?hub.mode=subscribe&hub.challenge=42&hub.verify_token={VERIFY_TOKEN}");
    assert_eq!(t.get(&path).body, b"42");
    assert_eq!(
        t.request("GET", &path, &[("X-Client-Subject", good)], b"")
            .body,
        b"42"
    );
    let wrong = "/?hub.mode=subscribe&hub.challenge=42&hub.verify_token=wrong";
    assert_eq!(t.get(wrong).status, 403);
    up.wait_for(1, Duration::from_secs(10));
    assert!(x.logs().contains("client certificate"));
}
