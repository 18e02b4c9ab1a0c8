//! A destination's rate limit, against the real binary and a fake backend that notes
//! when each request arrives: never more than `rate_limit` per second after a burst of
//! `rate_burst`, on both spools (on PostgreSQL the budget is the database's, shared by
//! every instance; tests/postgres.rs runs two instances on one).

mod common;

use std::time::{Duration, Instant};

use common::faulty_upstream::{FaultyUpstream, Mode};
use common::*;

const WAIT: Duration = Duration::from_secs(30);

both_spools!(five_hundred_events_at_100_per_second_with_bursts_of_10);
fn five_hundred_events_at_100_per_second_with_bursts_of_10(spool: &Spool) {
    let up = FaultyUpstream::start(Mode::Status(200));
    let port = free_port();
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .arg("--upstream-rate-limit")
            .arg("100")
            .arg("--upstream-rate-burst")
            .arg("10")
            .arg("--upstream-concurrency")
            .arg("32")
            .arg("--admin-listen")
            .arg(&format!("127.0.0.1:{port}"))
            .spool(spool),
    );
    // Four senders at once: the events are in faster than the limit lets them out.
    let accepted = std::time::Instant::now();
    std::thread::scope(|s| {
        for k in 0..4 {
            let x = &x;
            s.spawn(move || {
                for n in (k * 125)..((k + 1) * 125) {
                    assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
                }
            });
        }
    });
    let accepted = accepted.elapsed();
    wait_for(WAIT, "500 requests at the backend", || {
        up.hits().len() >= 500
    });
    let arrivals: Vec<Instant> = up.hits().iter().map(|h| h.at).collect();
    assert_eq!(arrivals.len(), 500, "each event once");
    let first = *arrivals.iter().min().unwrap();
    let last = *arrivals.iter().max().unwrap();
    // (500 - 10) / 100 s = 4.9 s, less a margin.
    assert!(
        last - first >= Duration::from_millis(4_400),
        "500 requests in {:?}",
        last - first
    );
    let most = busiest_second(&arrivals);
    eprintln!(
        "500 accepted in {accepted:?}, sent in {:?}, at most {most} in one second",
        last - first
    );
    assert!(most <= 110, "{most} requests in one second");
    // The limit held requests back, and says so.
    assert!(
        most >= 50,
        "the backend was barely used: {most} in its busiest second"
    );
    let admin = admin_target(port);
    let metrics = admin.get("/metrics").text();
    let waits: f64 = metrics
        .lines()
        .find(|l| l.starts_with("xhubd_destination_rate_limited_waits_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(waits > 0.0, "no rate-limited wait counted:\n{metrics}");
}

#[test]
fn a_rate_limit_is_checked_at_start() {
    for (args, says) in [
        (&["--upstream-rate-limit", "0"][..], "--upstream-rate-limit"),
        (&["--upstream-rate-limit=-5"][..], "--upstream-rate-limit"),
        (
            &["--upstream-rate-burst", "5"][..],
            "needs --upstream-rate-limit",
        ),
        (
            &["--upstream-rate-limit", "5", "--upstream-rate-burst", "0"][..],
            "burst",
        ),
    ] {
        let mut all = vec![
            "serve",
            "--upstream",
            "http://127.0.0.1:1/",
            "--verify-token",
            "t",
            "--app-secret",
            "s",
            "--listen",
            "127.0.0.1:0",
        ];
        all.extend_from_slice(args);
        let (code, _, err) = run_xhubd(&all, None);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
