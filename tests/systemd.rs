//! xhubd as a systemd service: the shipped units verify and meet the hardening aim,
//! socket activation works (with systemd's own tool and with a harness that holds the
//! socket across restarts, as systemd does), READY=1/STOPPING=1/WATCHDOG=1 arrive on
//! the notify socket, and secrets come from credentials.

mod common;

use std::collections::HashSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The exposure score the shipped service must reach ("OK" is below 2.0).
const EXPOSURE_AIM: f64 = 1.5;

fn systemd_analyze() -> &'static str {
    assert!(
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok(),
        "systemd-analyze is missing: install the Debian package systemd"
    );
    "systemd-analyze"
}

/// The shipped units, with only the binary's path substituted.
fn rendered_units(dir: &Path) -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let service = std::fs::read_to_string(root.join("systemd/xhubd.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/bin/xhubd serve"));
    let service = service.replace("/usr/bin/xhubd", env!("CARGO_BIN_EXE_xhubd"));
    let service_path = dir.join("xhubd.service");
    std::fs::write(&service_path, service).unwrap();
    let socket_path = dir.join("xhubd.socket");
    std::fs::copy(root.join("systemd/xhubd.socket"), &socket_path).unwrap();
    (service_path, socket_path)
}

#[test]
fn the_units_verify_and_the_service_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let (service, socket) = rendered_units(dir.path());
    let verify = Command::new(systemd_analyze())
        .args(["verify", "--man=no"])
        .arg(&socket)
        .arg(&service)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let security = Command::new(systemd_analyze())
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&service)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout).into_owned()
        + &String::from_utf8_lossy(&security.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for xhubd.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    println!("systemd-analyze security: exposure {score}");
    assert!(
        score <= EXPOSURE_AIM,
        "exposure {score} is above {EXPOSURE_AIM}:\n{text}"
    );
}

#[test]
fn socket_activation_with_systemd_socket_activate() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("activated.sock");
    let state = dir.path().join("state");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .arg(env!("CARGO_BIN_EXE_xhubd"))
        .args([
            "serve",
            "--listen",
            "unix:/nonexistent/ignored.sock",
            "--upstream",
            &up.url("/"),
        ])
        .args(["--verify-token", VERIFY_TOKEN, "--app-secret", APP_SECRET])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd)");
    wait_for(Duration::from_secs(10), "the activation socket", || {
        listening(&sock)
    });
    // The first connection starts xhubd; it waits in the backlog meanwhile.
    let t = Target::Unix(sock.clone());
    let a = t.get(&format!(
        "/?hub.mode=subscribe&hub.challenge=77&hub.verify_token={VERIFY_TOKEN}"
    ));
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"77");
    assert_eq!(t.post_signed(&page_event(1)).status, 200);
    up.wait_for(1, Duration::from_secs(20));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert!(
        is_socket(&sock),
        "xhubd never removes a socket that systemd owns"
    );
}

#[test]
fn restarts_on_a_held_socket_refuse_and_lose_nothing() {
    let up = Upstream::start();
    let mut x = Xhubd::start(Options::new(&up.url("/")).held_socket());
    let target = x.target.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|worker| {
            let (t, stop, sent) = (target.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut refused = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = page_event(worker * 1_000_000 + n);
                    let status = t.post_signed(&body).status;
                    if status != 200 {
                        refused.push(status);
                    }
                    n += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
                (n, refused)
            })
        })
        .collect();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        assert!(x.terminate().success());
        std::thread::sleep(Duration::from_millis(200)); // xhubd is down; the socket is not
        x.spawn();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for s in senders {
        let (n, refused) = s.join().unwrap();
        assert!(
            refused.is_empty(),
            "answers other than 200 during restarts: {refused:?}"
        );
        total += n;
    }
    println!("{total} events sent across 3 restarts");
    let got = up.wait_for(total, Duration::from_secs(30));
    let distinct: HashSet<_> = got.iter().map(|r| r.body.to_vec()).collect();
    assert_eq!(
        distinct.len(),
        total,
        "every acknowledged event is delivered"
    );
    assert!(x.logs().matches("xhubd ready").count() >= 4);
}

fn read_datagrams(socket: &UnixDatagram, until: impl Fn(&str) -> bool, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut all = String::new();
    let mut buf = [0u8; 4096];
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            all.push('\n');
            if until(&all) {
                return all;
            }
        }
    }
    panic!("notify messages so far: {all:?}");
}

#[test]
fn ready_only_once_serving_then_watchdog_and_stopping() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut x = Xhubd::start(
        Options::new(&up.url("/"))
            .env("NOTIFY_SOCKET", notify_path.to_str().unwrap())
            .env("WATCHDOG_USEC", "300000")
            .no_wait(),
    );
    let messages = read_datagrams(&notify, |m| m.contains("READY=1"), Duration::from_secs(20));
    // Right after READY=1 the listener must serve (the socket exists and accepts).
    let a = x.target.get(&format!(
        "/?hub.mode=subscribe&hub.challenge=5&hub.verify_token={VERIFY_TOKEN}"
    ));
    assert_eq!(a.body, b"5");
    assert!(
        messages.contains("STATUS=accepting webhooks on unix:"),
        "{messages}"
    );
    read_datagrams(
        &notify,
        |m| m.contains("WATCHDOG=1"),
        Duration::from_secs(5),
    );
    let _ = Command::new("kill")
        .args(["-TERM", &x.child.as_ref().unwrap().id().to_string()])
        .status();
    let stopping = std::panic::catch_unwind(|| {
        read_datagrams(
            &notify,
            |m| m.contains("STOPPING=1"),
            Duration::from_secs(10),
        )
    });
    assert!(stopping.is_ok(), "no STOPPING=1; logs: {}", x.logs());
    assert!(wait_exit(x.child.as_mut().unwrap(), Duration::from_secs(20)).success());
    x.child = None;
}

#[test]
fn secrets_come_from_systemd_credentials() {
    let up = Upstream::start();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("app_secret"), format!("{APP_SECRET}\n")).unwrap();
    std::fs::write(
        creds.path().join("verify_token"),
        format!("{VERIFY_TOKEN}\n"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("c.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xhubd"))
        .args(["serve", "--upstream", &up.url("/")])
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .env_remove("XHUBD_APP_SECRET")
        .env_remove("XHUBD_VERIFY_TOKEN")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "the socket", || listening(&sock));
    let t = Target::Unix(sock);
    assert_eq!(
        t.get(&format!(
            "/?hub.mode=subscribe&hub.challenge=9&hub.verify_token={VERIFY_TOKEN}"
        ))
        .body,
        b"9"
    );
    assert_eq!(t.post_signed(&page_event(1)).status, 200);
    let _ = child.kill();
    let _ = child.wait();

    // Without a credential (and no flag), the start fails with one line naming it.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xhubd"))
        .args(["serve", "--upstream", &up.url("/")])
        .arg("--state-dir")
        .arg(dir.path().join("state2"))
        .env("CREDENTIALS_DIRECTORY", empty.path())
        .env_remove("XHUBD_APP_SECRET")
        .env_remove("XHUBD_VERIFY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CREDENTIALS_DIRECTORY"));
}
