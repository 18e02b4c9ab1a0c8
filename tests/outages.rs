//! A destination that is down, against the real binary and a fake backend: after ten
//! retryable failures in a row it gets one probe at a time on a backoff, events are
//! still accepted (stored, not tried), a failed probe makes dead what ran out of
//! `retry_for` meanwhile (never before its deadline), and the first answer releases
//! the backlog; on both spools (tests/postgres.rs has two instances on one).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::faulty_upstream::{FaultyUpstream, Mode};
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// The value of the sample `name` labelled `destination="default"`, if any.
fn gauge(admin: &Target, name: &str) -> Option<f64> {
    let text = admin.get("/metrics").text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("destination") == Some("default"))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

both_spools!(a_destination_that_is_down_gets_one_probe_at_a_time);
fn a_destination_that_is_down_gets_one_probe_at_a_time(spool: &Spool) {
    // Every request takes 200 ms and fails.
    let up = FaultyUpstream::start(Mode::Slow(Duration::from_millis(200), 503));
    let port = free_port();
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .retry("1s", "1m")
            .arg("--upstream-concurrency")
            .arg("8")
            .arg("--admin-listen")
            .arg(&format!("127.0.0.1:{port}"))
            .spool(spool),
    );
    let admin = admin_target(port);
    assert_eq!(gauge(&admin, "xhubd_destination_up"), Some(1.0));
    for n in 0..20 {
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
    }
    wait_for(WAIT, "the destination down", || {
        x.logs()
            .contains("destination down after retryable failures in a row")
    });
    assert!(up.max_in_flight() > 1, "8 at once before it went down");
    // Attempts that started before it went down end; from then on, one at a time.
    wait_for(WAIT, "the attempts under way ended", || up.in_flight() == 0);
    up.reset_max_in_flight();
    let before = up.hits().len();
    let down_at = Instant::now();
    // Events are still accepted while it is down, and not tried.
    for n in 20..60 {
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
    }
    wait_for(WAIT, "two probes", || up.hits().len() >= before + 2);
    assert_eq!(up.max_in_flight(), 1, "one probe at a time");
    let probes = up.hits().len() - before;
    assert!(
        probes <= 4,
        "{probes} requests in {:?} while down: probes back off",
        down_at.elapsed()
    );
    assert_eq!(gauge(&admin, "xhubd_destination_up"), Some(0.0));
    assert_eq!(
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 0"),
        60,
        "all stored, none given up"
    );
    let page = admin.get("/").text();
    assert!(page.contains("down since"), "{page}");
    // It answers again: the probe brings it up and the backlog goes.
    up.set_default(Mode::Status(200));
    wait_for(WAIT, "every event delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == 60
    });
    let delivered: HashSet<String> = up
        .hits()
        .iter()
        .filter(|h| h.answered == Some(200))
        .map(|h| h.event_id.clone())
        .collect();
    assert_eq!(delivered.len(), 60, "each event delivered");
    assert!(x.logs().contains("destination up again"), "{}", x.logs());
    assert_eq!(gauge(&admin, "xhubd_destination_up"), Some(1.0));
}

both_spools!(retry_for_running_out_during_an_outage_makes_deliveries_dead_at_a_failed_probe);
fn retry_for_running_out_during_an_outage_makes_deliveries_dead_at_a_failed_probe(spool: &Spool) {
    let up = FaultyUpstream::start(Mode::Status(503));
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .retry("1s", "2s")
            .arg("--retry-for")
            .arg("4s")
            .spool(spool),
    );
    for n in 0..12 {
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
    }
    wait_for(WAIT, "the destination down", || {
        x.logs()
            .contains("destination down after retryable failures in a row")
    });
    // One accepted later: its deadline is later too.
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(x.target.post_signed(&page_event(12)).status, 200);
    wait_for(WAIT, "the first twelve dead", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") >= 12
    });
    assert!(
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2 AND last_error LIKE 'destination down since %'") >= 1,
        "{}",
        x.logs()
    );
    // Never dead before its deadline.
    assert_eq!(
        x.count(
            "SELECT COUNT(*) FROM deliveries WHERE state = 2 AND finished_at < retry_from + 4000"
        ),
        0
    );
    // The attempt logs what its record did once the record is committed, so the
    // line may come a moment after the rows show it.
    wait_for(WAIT, "the expiry logged", || {
        x.logs()
            .contains("their --retry-for ran out while the destination was down")
    });
    // The later one, at the latest a failed probe after its own deadline.
    wait_for(WAIT, "the later one dead too", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == 13
    });
    assert_eq!(
        x.count(
            "SELECT COUNT(*) FROM deliveries WHERE state = 2 AND finished_at < retry_from + 4000"
        ),
        0
    );
}

both_spools!(a_flapping_destination_goes_down_and_up_and_gets_every_event_once);
fn a_flapping_destination_goes_down_and_up_and_gets_every_event_once(spool: &Spool) {
    let up = FaultyUpstream::start(Mode::Reset);
    let x = Xhubd::start(Options::new(&up.url("/")).retry("500ms", "1s").spool(spool));
    let mut sent = 0;
    for round in 1..=2 {
        up.set_default(Mode::Reset);
        for _ in 0..15 {
            assert_eq!(x.target.post_signed(&page_event(sent)).status, 200);
            sent += 1;
        }
        wait_for(WAIT, &format!("down, round {round}"), || {
            x.logs()
                .matches("destination down after retryable failures in a row")
                .count()
                == round
        });
        up.set_default(Mode::Status(200));
        wait_for(WAIT, &format!("up, round {round}"), || {
            x.logs().matches("destination up again").count() == round
        });
        wait_for(WAIT, &format!("all delivered, round {round}"), || {
            x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == sent as i64
        });
    }
    let delivered: Vec<String> = up
        .hits()
        .iter()
        .filter(|h| h.answered == Some(200))
        .map(|h| h.event_id.clone())
        .collect();
    let distinct: HashSet<&String> = delivered.iter().collect();
    assert_eq!(distinct.len(), 30, "every event delivered");
    assert_eq!(delivered.len(), 30, "and once");
    // Two outages, each logged once as it began and once as it ended: no false turn
    // from an outcome that came back after a later one.
    let logs = x.logs();
    let turns: Vec<&str> = logs
        .lines()
        .filter_map(|line| {
            if line.contains("destination down after retryable failures in a row") {
                Some("down")
            } else if line.contains("destination up again") {
                Some("up")
            } else {
                None
            }
        })
        .collect();
    assert_eq!(turns, ["down", "up", "down", "up"], "{logs}");
}

both_spools!(a_message_the_backend_keeps_refusing_neither_takes_it_down_nor_blocks_the_probe);
fn a_message_the_backend_keeps_refusing_neither_takes_it_down_nor_blocks_the_probe(spool: &Spool) {
    let up = FaultyUpstream::start(Mode::Status(200));
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .retry("50ms", "100ms")
            .spool(spool),
    );
    // One message the backend answers 500 to, whatever happens to the others.
    let poison = page_event(0);
    up.for_body(&poison, &[Mode::Status(500)]);
    assert_eq!(x.target.post_signed(&poison).status, 200);
    wait_for(WAIT, "fifteen failures of it", || {
        up.hits().iter().filter(|h| h.body == poison).count() >= 15
    });
    assert!(
        !x.logs().contains("destination down"),
        "one message refused again and again is not an outage: {}",
        x.logs()
    );
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    wait_for(WAIT, "the next event delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == 1
    });
    // A real outage, then the backend back for all but that message: the probes go
    // round the pending deliveries, so one of the others finds it up.
    up.set_default(Mode::Reset);
    for n in 2..14 {
        assert_eq!(x.target.post_signed(&page_event(n)).status, 200);
    }
    wait_for(WAIT, "the destination down", || {
        x.logs()
            .contains("destination down after retryable failures in a row")
    });
    up.set_default(Mode::Status(200));
    wait_for(WAIT, "every other event delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == 13
    });
    assert!(x.logs().contains("destination up again"), "{}", x.logs());
}
