//! A refusal answered before the body is read (client subject 403, 405, a body over the
//! limit) reaches a client that sends the body after the head, on a Unix socket as on
//! TCP: xhubd reads and drops the rest of the body before it answers, as Nginx's
//! `lingering_close` does, so the client's writes never fail (`EPIPE`) before it reads
//! the answer. Nginx writing a body to xhubd's socket would otherwise answer Meta 502.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;

/// Sends `head`, waits 0.3 s, sends `body`, and returns the status line's code; fails
/// when a write fails (the server closed before reading the body).
fn head_pause_body(target: &Target, head: &str, body: &[u8]) -> u16 {
    fn exchange(mut conn: impl Read + Write, head: &str, body: &[u8]) -> u16 {
        conn.write_all(head.as_bytes()).expect("the head is sent");
        std::thread::sleep(Duration::from_millis(300));
        conn.write_all(body)
            .expect("the body is sent after the server answered");
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        text.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no answer: {text:?}"))
    }
    match target {
        Target::Unix(path) => {
            let conn = UnixStream::connect(path).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            exchange(conn, head, body)
        }
        Target::Tcp(addr) => {
            let conn = TcpStream::connect(addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            exchange(conn, head, body)
        }
    }
}

fn head(method: &str, length: usize, extra: &str) -> String {
    format!(
        "{method} /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {length}\r\n{extra}\r\n"
    )
}

fn every_early_refusal_reaches_the_client(opts: Options) {
    let x = Xhubd::start(
        opts.arg("--client-cn-header")
            .arg("X-Client-Subject")
            .arg("--max-body-bytes")
            .arg("64KiB"),
    );
    let good = "X-Client-Subject: CN=client.webhooks.fbclientcerts.com\r\n";
    for size in [200, 1024 * 1024] {
        let body = vec![b'x'; size];
        assert_eq!(
            head_pause_body(&x.target, &head("POST", size, ""), &body),
            403,
            "no client subject, {size} bytes"
        );
        assert_eq!(
            head_pause_body(&x.target, &head("PUT", size, good), &body),
            405,
            "PUT, {size} bytes"
        );
    }
    for size in [100 * 1024, 1024 * 1024] {
        let body = vec![b'x'; size];
        assert_eq!(
            head_pause_body(&x.target, &head("POST", size, good), &body),
            413,
            "{size} bytes declared"
        );
    }
    // A chunked body that turns out too large, sent after a pause.
    let chunked = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n{good}\r\n"
    );
    let mut body = Vec::new();
    for _ in 0..10 {
        body.extend_from_slice(format!("{:x}\r\n", 10 * 1024).as_bytes());
        body.extend_from_slice(&[b'y'; 10 * 1024]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(head_pause_body(&x.target, &chunked, &body), 413);
    // Nothing of it was stored; a good event still is.
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 0);
    let event = page_event(1);
    let answer = x.target.request(
        "POST",
        "/webhook",
        &[
            ("X-Hub-Signature-256", &sign(APP_SECRET, &event)),
            ("X-Client-Subject", "CN=client.webhooks.fbclientcerts.com"),
        ],
        &event,
    );
    assert_eq!(answer.status, 200);
}

#[test]
fn on_a_unix_socket() {
    every_early_refusal_reaches_the_client(Options::new("http://127.0.0.1:9/"));
}

#[test]
fn on_tcp() {
    every_early_refusal_reaches_the_client(Options::new("http://127.0.0.1:9/").tcp());
}

#[test]
fn a_client_waiting_for_100_continue_gets_the_refusal_at_once() {
    let x = Xhubd::start(
        Options::new("http://127.0.0.1:9/")
            .arg("--client-cn-header")
            .arg("X-Client-Subject"),
    );
    let answer = x
        .target
        .raw(head("POST", 5_000_000, "Expect: 100-continue\r\n").as_bytes());
    assert_eq!(answer.status, 403);
    assert_eq!(answer.header("connection"), Some("close"));
}
