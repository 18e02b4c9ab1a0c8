//! The disk fills up: the state directory sits on a size-limited tmpfs made by the test
//! (the test needs root to mount it, as CI runs), a filler file takes the last free
//! byte, and xhubd must answer 503 (never a 200 it cannot keep), stay up, say so on
//! /readyz and in its log, and recover by itself once space returns. Every event it
//! did answer 200 is delivered in the end.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{admin_target, free_port, Options, Upstream, Xhubd};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "this test mounts a size-limited tmpfs and must run as root (as CI does): mount failed with {status}"
        );
        SmallFs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes zeros to `path` until the filesystem refuses more.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
                break;
            }
        }
    }
    // The last partial blocks.
    while file.write(&[0u8; 512]).is_ok_and(|n| n > 0) {
        written += 512;
    }
    written
}

fn event(n: usize) -> Vec<u8> {
    let pad = "x".repeat(100 * 1024);
    format!(r#"{{"object":"page","entry":[{{"id":"full-{n}","time":1700000000}}],"pad":"{pad}"}}"#)
        .into_bytes()
}

#[test]
fn a_full_disk_gets_503_never_a_lost_200_and_recovers_by_itself() {
    let fs = SmallFs::mount("24m");
    let mut upstream = Upstream::start();
    // Events stay pending (and their delivery records must be written too).
    upstream.answer_always(500);
    let admin_port = free_port();
    let state: PathBuf = fs.path().join("state");
    let x = Xhubd::start(
        Options::new(&upstream.url("/hook"))
            .state_dir(&state)
            .arg("--admin-listen")
            .arg(&format!("127.0.0.1:{admin_port}")),
    );
    let admin = admin_target(admin_port);
    let mut acked = Vec::new();
    let mut n = 0;
    for _ in 0..5 {
        n += 1;
        assert_eq!(x.target.post_signed(&event(n)).status, 200);
        acked.push(n);
    }

    let filler = fs.path().join("filler");
    let filled = fill(&filler);
    // Until the commits fail, answers may still be 200 (the log reuses space it has);
    // each of those is a real commit and is counted.
    let mut first_503 = None;
    for _ in 0..200 {
        n += 1;
        match x.target.post_signed(&event(n)).status {
            200 => acked.push(n),
            503 => {
                first_503 = Some(n);
                break;
            }
            other => panic!("unexpected answer {other} on a full disk"),
        }
    }
    let first_503 = first_503.expect("the disk never filled up");
    // While it stays full, xhubd stays up and refuses with 503. A commit may still fit
    // now and then in log space a failed one left allocated: such a 200 is a real
    // commit, so it joins the acknowledged events that must all be delivered.
    let mut refused = 1;
    for _ in 0..40 {
        n += 1;
        let answer = x.target.post_signed(&event(n));
        match answer.status {
            503 => refused += 1,
            200 => acked.push(n),
            other => panic!(
                "unexpected answer {other} on a full disk: {}",
                answer.text()
            ),
        }
        if refused >= 10 {
            break;
        }
    }
    assert!(
        refused >= 10,
        "only {refused} refusals in 40 events on a full disk"
    );
    common::wait_for(Duration::from_secs(5), "readyz 503 on a full disk", || {
        admin.get("/readyz").status == 503
    });
    assert!(x.logs().contains("spool commit failed"), "{}", x.logs());
    // Each refusal is counted as a spool error.
    let metrics = admin.get("/metrics").text();
    let spool_errors: f64 = metrics
        .lines()
        .find(|l| l.starts_with("xhubd_requests_total{outcome=\"spool_error\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no spool_error count: {metrics}"));
    assert!(spool_errors >= refused as f64, "{spool_errors} < {refused}");

    // Space returns: xhubd recovers without a restart.
    std::fs::remove_file(&filler).expect("remove filler");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        n += 1;
        let status = x.target.post_signed(&event(n)).status;
        if status == 200 {
            acked.push(n);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after space returned"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..5 {
        n += 1;
        assert_eq!(x.target.post_signed(&event(n)).status, 200);
        acked.push(n);
    }
    common::wait_for(Duration::from_secs(10), "readyz 200 again", || {
        admin.get("/readyz").status == 200
    });

    // Every event answered 200 is delivered once the upstream works.
    upstream.answer_always(200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let got: std::collections::HashSet<String> = upstream
            .received()
            .iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                Some(v["entry"][0]["id"].as_str()?.to_owned())
            })
            .collect();
        if acked.iter().all(|n| got.contains(&format!("full-{n}"))) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged events missing upstream: {:?}",
            acked
                .iter()
                .filter(|n| !got.contains(&format!("full-{n}")))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let refused_delivered = (first_503..=n)
        .filter(|n| !acked.contains(n) && delivered.contains(&format!("full-{n}")))
        .count();
    assert_eq!(
        refused_delivered, 0,
        "an event answered 503 was stored after all"
    );
    upstream.stop();
    println!(
        "disk full: filler {filled} bytes; {} events acked and delivered; 503 from event {first_503} until space returned",
        acked.len()
    );
    drop(x);
}
