//! SIGHUP reloads the config file (`systemctl reload xhubd`): destinations added and
//! removed under load with every event answered 200 and none lost; a removed
//! destination's pending deliveries wait on disk, shown on the status page, and resume
//! when it returns; an invalid file, or one that changes what needs a restart, is
//! refused and the running configuration stays.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn route(destinations: &str) -> String {
    format!(
        "[[route]]\nname = \"wa\"\npath = \"/wa\"\nverify_token = \"t\"\napp_secret = \"{APP_SECRET}\"\n{destinations}"
    )
}

fn destination(name: &str, url: &str) -> String {
    format!("[[route.destination]]\nname = \"{name}\"\nurl = \"{url}\"\nretry_initial = \"100ms\"\nretry_max_delay = \"200ms\"\n")
}

struct Running {
    x: Xhubd,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(config: &str) -> Running {
        Running::start_on(&Spool::sqlite(), config)
    }

    fn start_on(spool: &Spool, config: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xhubd.toml");
        std::fs::write(&path, config).unwrap();
        let x = Xhubd::start(Options::config(path.to_str().unwrap()).spool(spool));
        Running {
            x,
            config: path,
            _dir: dir,
        }
    }

    /// Writes `config` and sends SIGHUP; waits for the log line that answers it.
    fn reload(&self, config: &str, answer: &str) {
        let before = self.x.logs().matches(answer).count();
        std::fs::write(&self.config, config).unwrap();
        self.x.sighup();
        wait_for(WAIT, answer, || {
            self.x.logs().matches(answer).count() > before
        });
    }

    fn post(&self, n: usize) -> u16 {
        let body = page_event(n);
        self.x
            .target
            .request(
                "POST",
                "/wa",
                &[("X-Hub-Signature-256", &sign(APP_SECRET, &body))],
                &body,
            )
            .status
    }
}

#[test]
fn destinations_come_and_go_under_load_and_no_event_is_lost() {
    let a = Upstream::start();
    let b = Upstream::start();
    let c = Upstream::start();
    let r = Arc::new(Running::start(&route(&format!(
        "{}{}",
        destination("a", &a.url("/")),
        destination("b", &b.url("/"))
    ))));
    let streaming = Arc::new(AtomicBool::new(true));
    let sender = {
        let (r, streaming) = (r.clone(), streaming.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            let mut n = 0;
            while streaming.load(Ordering::Relaxed) || n < 100 {
                n += 1;
                statuses.push(r.post(n));
            }
            statuses
        })
    };
    wait_for(WAIT, "events before the reload", || a.count() >= 30);
    r.reload(
        &route(&format!(
            "{}{}",
            destination("a", &a.url("/")),
            destination("c", &c.url("/"))
        )),
        "configuration reloaded",
    );
    let at_reload = a.count();
    wait_for(WAIT, "events after the reload", || {
        a.count() >= at_reload + 30
    });
    streaming.store(false, Ordering::Relaxed);
    let statuses = sender.join().unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Every event reached `a`; each also went to `b` (accepted before the reload) or to
    // `c` (after it), never both, never neither.
    a.wait_for(statuses.len(), WAIT);
    let to = |d: &str| {
        r.x.count(&format!(
            "SELECT COUNT(*) FROM deliveries WHERE destination = 'wa/{d}'"
        ))
    };
    assert_eq!(to("b") + to("c"), statuses.len() as i64);
    assert!(
        to("b") >= 30 && to("c") >= 30,
        "b {} c {}",
        to("b"),
        to("c")
    );
    c.wait_for(to("c") as usize, WAIT);
    // `b`'s deliveries that were not done at the reload wait on disk for its return.
    assert_eq!(
        b.count() as i64,
        r.x.count("SELECT COUNT(*) FROM deliveries WHERE destination = 'wa/b' AND state = 1")
    );
    assert!(!r.x.logs().contains("reload refused"));
}

both_spools!(a_removed_destination_s_deliveries_wait_and_resume_when_it_returns);
fn a_removed_destination_s_deliveries_wait_and_resume_when_it_returns(spool: &Spool) {
    let a = Upstream::start();
    let mut b = Upstream::start();
    b.stop();
    let admin_port = free_port();
    let top = format!("admin_listen = \"127.0.0.1:{admin_port}\"\n");
    let with_b = top.clone()
        + &route(&format!(
            "{}{}",
            destination("a", &a.url("/")),
            destination("b", &b.url("/"))
        ));
    let r = Running::start_on(spool, &with_b);
    for n in 0..5 {
        assert_eq!(r.post(n), 200);
    }
    a.wait_for(5, WAIT);
    r.reload(
        &(top + &route(&destination("a", &a.url("/")))),
        "configuration reloaded",
    );
    assert_eq!(r.post(99), 200);
    a.wait_for(6, WAIT);
    assert_eq!(
        r.x.count("SELECT COUNT(*) FROM deliveries WHERE destination = 'wa/b' AND state = 0"),
        5
    );
    // What waits for it is not hidden: the status page lists it and needs attention.
    let admin = admin_target(admin_port);
    let page = admin.get("/").text();
    assert!(page.contains("Needs attention"), "{page}");
    assert!(
        page.contains(
            "5 pending deliveries wait for wa/b, which this instance's configuration does not have"
        ),
        "{page}"
    );
    assert!(page.contains("not in this instance"), "{page}");
    assert!(admin
        .get("/metrics")
        .text()
        .contains("xhubd_needs_attention 1"));
    b.restart();
    r.reload(&with_b, "configuration reloaded");
    b.wait_for(5, WAIT);
    wait_for(WAIT, "the status page all well again", || {
        admin.get("/").text().contains("All well")
    });
    assert!(!admin.get("/").text().contains("not in this instance"));
}

#[test]
fn an_invalid_reload_is_refused_and_the_daemon_serves_on() {
    let a = Upstream::start();
    let good = route(&destination("a", &a.url("/")));
    let r = Running::start(&good);
    assert_eq!(r.post(1), 200);
    for bad in [
        "this is not toml".to_owned(),
        route(&destination("a", "ftp://nowhere/")),
        format!("max_body_bytes = 1234\n{good}"),
    ] {
        r.reload(&bad, "reload refused");
        assert_eq!(
            r.post(2 + r.x.logs().matches("reload refused").count()),
            200
        );
    }
    assert!(
        r.x.logs()
            .contains("reload refused: a restart changes max_body_bytes, not a reload"),
        "the refusal names the option: {}",
        r.x.logs()
    );
    a.wait_for(4, WAIT);
    assert!(r.x.child.is_some());
    assert_no_secret("the logs", &r.x.logs());
}

#[test]
fn sighup_without_a_config_file_never_kills_the_daemon() {
    let up = Upstream::start();
    let mut x = Xhubd::start(Options::new(&up.url("/")));
    x.sighup();
    wait_for(WAIT, "the SIGHUP answered", || {
        x.logs().contains("no --config file")
    });
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    up.wait_for(1, WAIT);
    assert!(x.terminate().success());
}

#[test]
fn a_destination_whose_settings_change_sends_nothing_twice() {
    let up = Upstream::start();
    let r = Arc::new(Running::start(&route(&destination("a", &up.url("/v1")))));
    let streaming = Arc::new(AtomicBool::new(true));
    let sender = {
        let (r, streaming) = (r.clone(), streaming.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while streaming.load(Ordering::Relaxed) || n < 100 {
                n += 1;
                assert_eq!(r.post(n), 200);
            }
            n
        })
    };
    wait_for(WAIT, "deliveries before the reload", || up.count() >= 30);
    r.reload(
        &route(&destination("a", &up.url("/v2"))),
        "configuration reloaded",
    );
    let at_reload = up.count();
    wait_for(WAIT, "deliveries after the reload", || {
        up.count() >= at_reload + 30
    });
    streaming.store(false, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let got = up.wait_for(sent, WAIT);
    std::thread::sleep(Duration::from_millis(500));
    let ids: std::collections::HashSet<String> = up
        .received()
        .iter()
        .map(|r| r.header("x-xhubd-delivery-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), sent, "every delivery once");
    assert_eq!(up.count(), sent, "none twice");
    assert!(got.iter().any(|r| r.path_and_query == "/v2"));
}
