//! Slow and hostile clients against the real binary: thousands of idle connections,
//! slowloris headers trickled a byte at a time, bodies that never finish, and headers
//! far too long. Well-behaved requests must still be answered promptly, the slow
//! connections must be closed after `--header-timeout` / `--body-timeout`, and memory
//! must stay bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Options, Target, Upstream, Xhubd};

const IDLE: usize = 800;
const SLOW_HEADERS: usize = 500;
const STALLED_BODIES: usize = 300;
/// Generous bound for a well-behaved request while the attack goes on: it is served by
/// its own connection slot, never queued behind the slow ones.
const PROMPT: Duration = Duration::from_secs(3);

fn addr(x: &Xhubd) -> SocketAddr {
    match &x.target {
        Target::Tcp(a) => *a,
        Target::Unix(_) => panic!("this test needs TCP"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// True once the server has closed `conn` (EOF or reset), after reading any answer.
fn closed_by_server(conn: &mut TcpStream) -> (bool, Vec<u8>) {
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("set timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (false, got)
            }
            Err(_) => return (true, got),
        }
    }
}

#[test]
fn slow_and_hostile_clients_do_not_stop_good_requests() {
    // Both ends of 1,600 connections live in this machine's descriptor table.
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-files limit");
    let upstream = Upstream::start();
    let mut x = Xhubd::start(
        Options::new(&upstream.url("/hook"))
            .tcp()
            .arg("--max-connections")
            .arg("2048")
            .arg("--header-timeout")
            .arg("2s")
            .arg("--body-timeout")
            .arg("2s"),
    );
    let target = x.target.clone();
    let addr = addr(&x);
    let pid = x.child.as_ref().expect("running").id();
    let rss_before = rss_kib(pid);

    let attack_started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(addr).expect("idle connection"))
        .collect();
    let mut slow_headers: Vec<TcpStream> = (0..SLOW_HEADERS)
        .map(|_| {
            let mut c = TcpStream::connect(addr).expect("slow connection");
            c.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("first bytes");
            c
        })
        .collect();
    let mut stalled: Vec<TcpStream> = (0..STALLED_BODIES)
        .map(|_| {
            let mut c = TcpStream::connect(addr).expect("stalled connection");
            c.write_all(
                b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  X-Hub-Signature-256: sha256=00\r\nContent-Length: 4000\r\n\r\n{\"object\":",
            )
            .expect("headers and part of the body");
            c
        })
        .collect();

    // Headers far too long: refused with 431, not read without end.
    let mut huge = b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
    huge.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\n{}");
    let answer = target.raw(&huge);
    assert_eq!(answer.status, 431, "oversized headers: {}", answer.text());

    // While the slow clients trickle, good requests keep being answered promptly.
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    while attack_started.elapsed() < Duration::from_millis(1500) {
        for c in slow_headers.iter_mut() {
            let _ = c.write_all(b"a");
        }
        let started = Instant::now();
        let body = format!(r#"{{"object":"page","entry":[{{"id":"good-{served}"}}]}}"#);
        let answer = target.post_signed(body.as_bytes());
        assert_eq!(answer.status, 200, "{}", answer.text());
        slowest = slowest.max(started.elapsed());
        served += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        slowest < PROMPT,
        "a good request waited {slowest:?} behind the slow clients"
    );
    let rss_during = rss_kib(pid);

    // After the timeouts every slow connection is closed by xhubd; a stalled body gets
    // its 408 first.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut open: Vec<(&str, &mut TcpStream)> = idle
        .iter_mut()
        .map(|c| ("idle", c))
        .chain(slow_headers.iter_mut().map(|c| ("slow headers", c)))
        .collect();
    let mut timed_out_bodies = 0;
    for c in stalled.iter_mut() {
        let mut answer = Vec::new();
        loop {
            let (closed, got) = closed_by_server(c);
            answer.extend(got);
            if closed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a stalled body's connection is still open"
            );
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "stalled body answered {text:?}"
        );
        timed_out_bodies += 1;
    }
    while !open.is_empty() {
        open.retain_mut(|(_, c)| !closed_by_server(c).0);
        if let Some((kind, _)) = open.first() {
            assert!(
                Instant::now() < deadline,
                "{} connections still open after the timeouts, e.g. {kind}",
                open.len()
            );
        }
    }

    let logs = x.logs();
    assert!(
        logs.contains("did not arrive within --body-timeout"),
        "no log line for the stalled bodies: {logs}"
    );
    // Memory: bounded while 1,600 connections were held.
    assert!(
        rss_during < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB"
    );
    // Nothing from the hostile clients reached the upstream; every good event did.
    let got = upstream.wait_for(served, Duration::from_secs(10));
    assert_eq!(got.len(), served);
    assert!(x
        .child
        .as_mut()
        .expect("running")
        .try_wait()
        .expect("status")
        .is_none());
    println!(
        "served {served} good requests during the attack (slowest {slowest:?}); \
         {IDLE} idle, {SLOW_HEADERS} slowloris and {timed_out_bodies} stalled-body connections closed; \
         RSS {rss_before} KiB -> {rss_during} KiB"
    );
}
