//! Delivery against an upstream that misbehaves (hangs, answers slowly, resets
//! connections, redirects, refuses, throttles, fails): each event is retried or made
//! dead exactly as the contract's "Upstream delivery" says, and acknowledgements to
//! Meta never wait for the upstream.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::faulty_upstream::{FaultyUpstream, Hit, Mode, REDIRECT_PATH};
use common::*;

/// Longest wait for something that should happen.
const WAIT: Duration = Duration::from_secs(20);
/// An acknowledgement must come back within this; every upstream delay used against it
/// is at least three times as long (or endless).
const ACK_BOUND: Duration = Duration::from_secs(1);
/// `deliveries.state` of a delivered event.
const DELIVERED: i64 = 1;

/// POSTs a signed event, asserts `200`, and returns how long the answer took.
fn post(x: &Xhubd, body: &[u8]) -> Duration {
    let started = Instant::now();
    let answer = x.target.post_signed(body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    started.elapsed()
}

/// The id xhubd gave the event with this body, once its first attempt has arrived.
fn event_id(up: &FaultyUpstream, body: &[u8]) -> String {
    wait_for(WAIT, "the event's first attempt", || {
        up.event_id_of(body).is_some()
    });
    up.event_id_of(body).unwrap()
}

/// One integer column of the (one) delivery of one event, from the spool.
fn column(x: &Xhubd, id: &str, name: &str) -> i64 {
    x.count(&format!(
        "SELECT d.{name} FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE e.id = '{id}'"
    ))
}

/// The event as an operator sees it: `xhubd events show ID --json`.
fn show(x: &Xhubd, id: &str) -> serde_json::Value {
    let (code, out, err) = x.run_on_spool(&["events", "show", id, "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn last_error(shown: &serde_json::Value) -> String {
    shown["last_error"].as_str().unwrap_or_default().to_owned()
}

/// The `X-Xhubd-Attempt` headers of these requests.
fn attempt_numbers(hits: &[Hit]) -> Vec<u32> {
    hits.iter().map(|h| h.attempt).collect()
}

#[test]
fn a_hanging_upstream_times_out_is_retried_and_gets_the_event_once_it_answers() {
    let up = FaultyUpstream::start(Mode::Hang);
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .arg("--upstream-timeout")
            .arg("1s"),
    );
    let body = page_event(1);
    let took = post(&x, &body);
    assert!(took < ACK_BOUND, "the ack took {took:?}");
    let id = event_id(&up, &body);

    wait_for(WAIT, "two timed-out attempts", || {
        column(&x, &id, "attempts") >= 2
    });
    let shown = show(&x, &id);
    assert_eq!(shown["state"], "pending", "{shown}");
    assert!(
        last_error(&shown).contains("no answer within 1s"),
        "{shown}"
    );
    let hits = up.hits_for(&id);
    assert!(hits.len() >= 2);
    assert!(hits.iter().all(|h| h.answered.is_none()));
    let gap = hits[1].at - hits[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "the first attempt was given up after {gap:?}, before --upstream-timeout"
    );

    up.set_default(Mode::Status(200));
    wait_for(WAIT, "the event delivered", || {
        column(&x, &id, "state") == DELIVERED
    });
    let hits = up.hits_for(&id);
    let after_recovery: Vec<_> = hits.iter().filter(|h| h.mode != Mode::Hang).collect();
    assert_eq!(after_recovery.len(), 1, "one attempt once it answers");
    assert_eq!(hits.last().unwrap().answered, Some(200));
    assert_eq!(hits.iter().filter(|h| h.answered.is_some()).count(), 1);
    assert_eq!(
        attempt_numbers(&hits),
        (1..=hits.len() as u32).collect::<Vec<_>>()
    );
    assert_eq!(
        column(&x, &id, "attempts"),
        hits.len() as i64,
        "every attempt counted reached the upstream"
    );
}

#[test]
fn a_slow_upstream_gets_every_event_and_acks_do_not_wait_for_it() {
    const DELAY: Duration = Duration::from_secs(3);
    const EVENTS: usize = 10;
    let up = FaultyUpstream::start(Mode::Slow(DELAY, 200));
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .arg("--upstream-timeout")
            .arg("10s")
            .arg("--upstream-concurrency")
            .arg("16"),
    );
    let bodies: Vec<_> = (0..EVENTS).map(page_event).collect();
    let took = post(&x, &bodies[0]);
    assert!(took < ACK_BOUND, "the ack took {took:?}");
    wait_for(WAIT, "the upstream holding the first event", || {
        up.in_flight() >= 1
    });
    for body in &bodies[1..] {
        let took = post(&x, body);
        assert!(
            took < ACK_BOUND,
            "an ack took {took:?} while the upstream takes {DELAY:?}"
        );
        assert!(
            up.in_flight() >= 1,
            "the ack came back while the upstream still held a request"
        );
    }

    wait_for(WAIT, "every event delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == EVENTS as i64
    });
    assert_eq!(
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1 AND attempts = 1"),
        EVENTS as i64,
        "a slow answer within --upstream-timeout is not retried"
    );
    let hits = up.hits();
    assert_eq!(hits.len(), EVENTS);
    for body in &bodies {
        let hit: Vec<_> = hits.iter().filter(|h| &h.body == body).collect();
        assert_eq!(hit.len(), 1);
        assert_eq!(hit[0].answered, Some(200));
    }
}

#[test]
fn connection_resets_are_retried_until_the_upstream_recovers() {
    let up = FaultyUpstream::start(Mode::Reset);
    let x = Xhubd::start(Options::new(&up.url("/")));
    let body = page_event(1);
    let took = post(&x, &body);
    assert!(took < ACK_BOUND, "the ack took {took:?}");
    let id = event_id(&up, &body);

    wait_for(WAIT, "three failed attempts", || {
        column(&x, &id, "attempts") >= 3
    });
    let shown = show(&x, &id);
    assert_eq!(shown["state"], "pending", "{shown}");
    let error = last_error(&shown);
    assert!(
        error.to_lowercase().contains("connection") && !error.contains("answered"),
        "the error names the broken connection: {error}"
    );
    assert!(up.hits_for(&id).iter().all(|h| h.answered.is_none()));

    up.set_default(Mode::Status(200));
    wait_for(WAIT, "the event delivered", || {
        column(&x, &id, "state") == DELIVERED
    });
    let hits = up.hits_for(&id);
    assert!(hits.len() >= 4);
    assert_eq!(
        hits.iter().filter(|h| h.mode == Mode::Status(200)).count(),
        1,
        "one attempt once it answers"
    );
    assert_eq!(hits.last().unwrap().answered, Some(200));
    assert_eq!(
        attempt_numbers(&hits),
        (1..=hits.len() as u32).collect::<Vec<_>>()
    );
    assert_eq!(column(&x, &id, "attempts"), hits.len() as i64);
}

both_spools!(redirects_and_client_errors_make_the_event_dead_at_once);
fn redirects_and_client_errors_make_the_event_dead_at_once(spool: &Spool) {
    let up = FaultyUpstream::start(Mode::Status(200));
    let x = Xhubd::start(Options::new(&up.url("/")).spool(spool));
    let statuses = [301, 302, 303, 307, 308, 400, 401, 403, 404, 410];
    let bodies: Vec<_> = (0..statuses.len()).map(page_event).collect();
    for (body, status) in bodies.iter().zip(statuses) {
        up.for_body(body, &[Mode::Status(status)]);
        post(&x, body);
    }
    wait_for(WAIT, "every event dead", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == statuses.len() as i64
    });
    for (body, status) in bodies.iter().zip(statuses) {
        let id = up.event_id_of(body).unwrap();
        let shown = show(&x, &id);
        assert_eq!(shown["state"], "dead", "{status}: {shown}");
        assert_eq!(shown["attempts"], 1, "{status} is not retried: {shown}");
        assert!(
            last_error(&shown).contains(&status.to_string()),
            "the last error names {status}: {shown}"
        );
        let hits = up.hits_for(&id);
        assert_eq!(hits.len(), 1, "{status}");
        assert_eq!(hits[0].answered, Some(status));
    }
    assert!(
        up.hits().iter().all(|h| h.path != REDIRECT_PATH),
        "a Location was followed"
    );
}

#[test]
fn request_timeouts_throttling_and_server_errors_are_retried_then_delivered() {
    let up = FaultyUpstream::start(Mode::Status(200));
    let x = Xhubd::start(Options::new(&up.url("/")));
    let statuses = [408, 429, 500, 502, 503, 504];
    let bodies: Vec<_> = (0..statuses.len()).map(page_event).collect();
    for (body, status) in bodies.iter().zip(statuses) {
        let fail = Mode::Status(status);
        up.for_body(body, &[fail, fail, Mode::Status(200)]);
        post(&x, body);
    }
    wait_for(WAIT, "every event delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == statuses.len() as i64
    });
    for (body, status) in bodies.iter().zip(statuses) {
        let id = up.event_id_of(body).unwrap();
        assert_eq!(column(&x, &id, "attempts"), 3, "{status}");
        let hits = up.hits_for(&id);
        let answers: Vec<_> = hits.iter().map(|h| h.answered).collect();
        assert_eq!(answers, [Some(status), Some(status), Some(200)]);
        assert_eq!(attempt_numbers(&hits), [1, 2, 3]);
    }
}

#[test]
fn a_retried_event_becomes_dead_when_retry_for_runs_out() {
    const RETRY_FOR_MS: i64 = 2000;
    let up = FaultyUpstream::start(Mode::Status(200));
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .arg("--retry-for")
            .arg("2s")
            .arg("--upstream-timeout")
            .arg("500ms"),
    );
    let faults = [
        (Mode::Status(408), "408"),
        (Mode::Status(429), "429"),
        (Mode::Status(503), "503"),
        (Mode::Hang, "no answer within 500ms"),
        (Mode::Reset, ""),
    ];
    let bodies: Vec<_> = (0..faults.len()).map(page_event).collect();
    for (body, (fault, _)) in bodies.iter().zip(faults) {
        up.for_body(body, &[fault]);
        post(&x, body);
    }
    // Other events delivered meanwhile: the destination answers, so it never counts as
    // down (ten failures in a row), and each failing event runs out of its own retries.
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 1_000;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                post(&x, &page_event(n));
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        wait_for(WAIT, "every event dead", || {
            x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == faults.len() as i64
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    for (body, (fault, names)) in bodies.iter().zip(faults) {
        let id = up.event_id_of(body).unwrap();
        let shown = show(&x, &id);
        let error = last_error(&shown);
        assert!(
            error.contains(names) && error.contains("retry-for"),
            "{fault:?}: {shown}"
        );
        let attempts = shown["attempts"].as_i64().unwrap();
        assert!(attempts >= 2, "{fault:?} was retried: {shown}");
        assert_eq!(up.hits_for(&id).len() as i64, attempts, "{fault:?}");
        let lived = shown["finished_at"].as_i64().unwrap() - shown["received_at"].as_i64().unwrap();
        assert!(
            lived >= RETRY_FOR_MS,
            "{fault:?} was given up after {lived} ms, before --retry-for"
        );
    }
}

both_spools!(a_burst_is_acknowledged_while_every_attempt_hangs_and_delivered_after_recovery);
fn a_burst_is_acknowledged_while_every_attempt_hangs_and_delivered_after_recovery(spool: &Spool) {
    const CONCURRENCY: usize = 4;
    const CLIENTS: usize = 8;
    // 1,000 events: more than delivery holds in memory (its ready queue and the
    // writer's hand-over queue), so some are found only by scanning the spool; none
    // may be sent twice or left behind.
    const PER_CLIENT: usize = 125;
    let up = FaultyUpstream::start(Mode::Hang);
    // Stuck attempts stay stuck for the whole test unless released.
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .arg("--upstream-concurrency")
            .arg(&CONCURRENCY.to_string())
            .arg("--upstream-timeout")
            .arg("60s")
            .spool(spool),
    );
    let first: Vec<_> = (0..CONCURRENCY).map(|n| page_event(100_000 + n)).collect();
    for body in &first {
        post(&x, body);
    }
    wait_for(WAIT, "every delivery slot stuck", || {
        up.in_flight() == CONCURRENCY
    });

    let burst: Vec<Vec<u8>> = (0..CLIENTS * PER_CLIENT).map(page_event).collect();
    let slowest = std::thread::scope(|scope| {
        let clients: Vec<_> = burst
            .chunks(PER_CLIENT)
            .map(|chunk| scope.spawn(|| chunk.iter().map(|b| post(&x, b)).max().unwrap()))
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .max()
            .unwrap()
    });
    assert!(
        slowest < ACK_BOUND,
        "the slowest ack took {slowest:?} while the upstream hung"
    );
    let total = first.len() + burst.len();
    assert_eq!(
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 0"),
        total as i64,
        "every acknowledged event is stored, pending"
    );
    assert_eq!(up.in_flight(), CONCURRENCY);
    assert_eq!(up.hits().len(), CONCURRENCY, "no attempt beyond the limit");

    up.set_default(Mode::Status(200));
    up.release_hung();
    wait_for(WAIT, "every event delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == total as i64
    });
    let mut delivered: HashMap<Vec<u8>, usize> = HashMap::new();
    for hit in up.hits() {
        if hit.answered == Some(200) {
            *delivered.entry(hit.body).or_default() += 1;
        }
    }
    for body in first.iter().chain(&burst) {
        assert!(
            delivered.contains_key(body),
            "{} never reached the upstream",
            String::from_utf8_lossy(body)
        );
    }
    let extras = delivered.values().sum::<usize>() - total;
    assert_eq!(
        extras, 0,
        "{extras} events reached the upstream twice with no crash in between"
    );
    assert_eq!(delivered.len(), total);
    assert!(up.max_in_flight() <= CONCURRENCY);
    assert_eq!(
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1 AND attempts = 1"),
        total as i64
    );
}
