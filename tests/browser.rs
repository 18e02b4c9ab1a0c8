//! The status page in a real browser: headless Chromium driven through chromedriver
//! (Debian packages chromium and chromium-driver, installed by scripts/test.sh). The page
//! shows accepted events and a dead one; Replay on the dead one gets it delivered; a
//! payload holding a script is shown as text and never runs. Screenshots are kept in
//! target/test-artifacts/.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

const WAIT: Duration = Duration::from_secs(20);

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(names: &[&str]) -> PathBuf {
    for name in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("{names:?} not found: run `bash scripts/test.sh`, which installs chromium and chromium-driver");
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn browser(port: u16, profile: &Path) -> Client {
    let chromium = tool(&["chromium", "chromium-browser"]);
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    // chromedriver speaks plain HTTP on loopback: no TLS connector needed.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with headless Chromium")
}

async fn body_text(c: &Client) -> String {
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[test]
fn status_page_in_chromium_shows_events_and_replays_a_dead_one() {
    let driver_port = free_port();
    let _driver = Driver(
        Command::new(tool(&["chromedriver"]))
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    wait_for(Duration::from_secs(20), "chromedriver", || {
        std::net::TcpStream::connect(("127.0.0.1", driver_port)).is_ok()
    });

    let up = Upstream::start();
    up.fail_next(&[404]);
    let admin_port = free_port();
    // Two destinations: the backend, and a legacy one nothing listens for, which goes
    // down after ten failed attempts.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("xhubd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[route]]
name = "default"
path = "/webhook"
verify_token = "{VERIFY_TOKEN}"
app_secret = "{APP_SECRET}"

  [[route.destination]]
  name = "default"
  url = "{backend}"

  [[route.destination]]
  name = "legacy"
  url = "http://127.0.0.1:{closed}/hook"
  match = {{ object = "whatsapp_business_account" }}
  rate_limit = 5
"#,
            backend = up.url("/backend"),
            closed = free_port(),
        ),
    )
    .unwrap();
    let x = Xhubd::start(
        Options::config(config.to_str().unwrap())
            // Quick retries: the legacy destination's ten failures come within a second.
            .retry("20ms", "50ms")
            .arg("--admin-listen")
            .arg(&format!("127.0.0.1:{admin_port}")),
    );
    let doomed = page_event(1);
    assert_eq!(x.target.post_signed(&doomed).status, 200);
    wait_for(WAIT, "a dead event", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == 1
    });
    let hostile = br#"{"object":"page","entry":[{"id":"7","time":1,"messaging":[{"message":{"mid":"m.7","text":"<script>window.pwned=1;document.title='pwned'</script>"}}]}]}"#;
    assert_eq!(x.target.post_signed(hostile).status, 200);
    let whatsapp = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messages":[{"id":"wamid.XYZ","type":"text","text":{"body":"Caf\u00e9"}}]}}]}]}"#;
    assert_eq!(x.target.post_signed(whatsapp).status, 200);
    // Two more for the legacy destination: failures of three deliveries in turn take it
    // down (one delivery failing again and again would not).
    for n in 2..4 {
        let more = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messages":[{{"id":"wamid.XYZ{n}","type":"text","text":{{"body":"more"}}}}]}}}}]}}]}}"#
        );
        assert_eq!(x.target.post_signed(more.as_bytes()).status, 200);
    }
    wait_for(WAIT, "four delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == 4
    });
    wait_for(WAIT, "the legacy destination down", || {
        x.logs()
            .contains("destination down after retryable failures in a row")
    });
    // A forged event: refused, and counted on the page.
    let forged = x.target.request(
        "POST",
        "/webhook",
        &[("X-Hub-Signature-256", &sign("not-the-app-secret", &doomed))],
        &doomed,
    );
    assert_eq!(forged.status, 401);
    let dead_id: String = {
        let conn = rusqlite::Connection::open(x.db_path()).unwrap();
        conn.query_row(
            "SELECT e.id FROM events e JOIN deliveries d ON d.event_seq = e.seq WHERE d.state = 2",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let hostile_id: String = {
        let conn = rusqlite::Connection::open(x.db_path()).unwrap();
        conn.query_row("SELECT id FROM events WHERE field = 'messages'", [], |r| {
            r.get(0)
        })
        .unwrap()
    };

    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = browser(driver_port, profile.path()).await;
        let base = format!("http://127.0.0.1:{admin_port}");
        c.goto(&format!("{base}/")).await.unwrap();
        let text = body_text(&c).await;
        assert!(text.contains("Ready"), "{text}");
        assert!(
            text.contains("Dead events") && text.contains(&dead_id),
            "{text}"
        );
        assert!(
            text.contains("whatsapp_business_account / messages"),
            "{text}"
        );
        assert!(text.contains("page / messages"), "{text}");
        assert!(text.matches("delivered").count() >= 2, "{text}");
        assert!(text.contains("upstream answered 404"), "{text}");
        assert_eq!(c.title().await.unwrap(), "xhubd status", "no script ran");
        // The verdict, the last hour's refusals and relative times.
        assert!(text.contains("Needs attention"), "{text}");
        assert!(text.contains("Requests in the last hour"), "{text}");
        assert!(text.contains("signature_refused 401 1"), "{text}");
        assert!(text.contains("accepted 200 5"), "{text}");
        assert!(
            text.contains("Z (just now)") || text.contains(" s ago)"),
            "{text}"
        );
        // Styles as rendered: red where something is wrong, dates on one line.
        let styles = c
            .execute(
                r#"const color = s => getComputedStyle(document.querySelector(s)).color;
                return {
                  dead: color('td.state-dead'),
                  verdict: color('.verdict .notready'),
                  refused: color('tr.refused td'),
                  delivered: color('td.state-delivered'),
                  dates: document.querySelectorAll('.when time').length,
                  wrapped: Array.from(document.querySelectorAll('.when time, .when .muted'))
                    .filter(e => new Set(Array.from(e.getClientRects(), r => Math.round(r.top))).size !== 1)
                    .length,
                };"#,
                vec![],
            )
            .await
            .unwrap();
        let red = serde_json::json!("rgb(207, 34, 46)");
        assert_eq!(styles["dead"], red, "{styles}");
        assert_eq!(styles["verdict"], red, "{styles}");
        assert_eq!(styles["refused"], red, "{styles}");
        assert_eq!(styles["delivered"], serde_json::json!("rgb(26, 127, 55)"));
        assert!(styles["dates"].as_u64().unwrap() >= 4, "{styles}");
        assert_eq!(styles["wrapped"], serde_json::json!(0), "{styles}");
        // Each destination's state and its last hour, drawn inline (no script).
        assert!(text.contains("default/legacy"), "{text}");
        assert!(text.contains("down since"), "{text}");
        assert!(
            text.contains("next probe") || text.contains("probing"),
            "{text}"
        );
        let charts = c
            .execute(
                r#"return Array.from(document.querySelectorAll('svg.chart'), s => ({
                  bars: s.querySelectorAll('rect').length,
                  width: Math.round(s.getBoundingClientRect().width),
                  title: s.querySelector('title').textContent,
                }));"#,
                vec![],
            )
            .await
            .unwrap();
        let charts = charts.as_array().unwrap();
        assert_eq!(charts.len(), 2, "{charts:?}");
        for chart in charts {
            // The background and at least the minute under way's bars.
            assert!(chart["bars"].as_u64().unwrap() >= 3, "{chart}");
            assert_eq!(chart["width"], serde_json::json!(180), "{chart}");
        }
        assert!(
            charts[0]["title"]
                .as_str()
                .unwrap()
                .contains("5 accepted, 4 delivered, 1 failed"),
            "{charts:?}"
        );
        let state_color = c
            .execute(
                r#"return Array.from(document.querySelectorAll('td .notready'), e => getComputedStyle(e).color);"#,
                vec![],
            )
            .await
            .unwrap();
        assert!(
            state_color.as_array().unwrap().contains(&red),
            "down is red: {state_color}"
        );
        std::fs::write(
            artifacts().join("status-page.png"),
            c.screenshot().await.unwrap(),
        )
        .unwrap();

        // The hostile payload is shown as text on its page, and never runs.
        c.goto(&format!("{base}/event/{hostile_id}")).await.unwrap();
        let page = c
            .find(Locator::Css("pre"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("<script>window.pwned=1;document.title='pwned'</script>"),
            "{page}"
        );
        let pwned = c
            .execute("return typeof window.pwned;", vec![])
            .await
            .unwrap();
        assert_eq!(pwned, serde_json::json!("undefined"));
        assert!(c.title().await.unwrap().starts_with("xhubd event"));
        std::fs::write(
            artifacts().join("event-page.png"),
            c.screenshot().await.unwrap(),
        )
        .unwrap();

        // Replay the dead event from the status page.
        c.goto(&format!("{base}/")).await.unwrap();
        let button = c.find(Locator::Css("#dead + table button")).await.unwrap();
        button.click().await.unwrap();
        // The click returns before the form's answer (a redirect) has loaded.
        let event_path = format!("/event/{dead_id}");
        let mut path = String::new();
        for _ in 0..100 {
            path = c.current_url().await.unwrap().path().to_owned();
            if path == event_path {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(path, event_path, "the replay leads to the event's page");
        let mut delivered = false;
        for _ in 0..100 {
            let url = c.current_url().await.unwrap();
            assert_eq!(url.path(), event_path);
            let state = c
                .find(Locator::Css("td[class^=state-]"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if state == "delivered" {
                delivered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.refresh().await.unwrap();
        }
        assert!(delivered, "the replayed event was delivered");
        c.goto(&format!("{base}/")).await.unwrap();
        let text = body_text(&c).await;
        assert!(text.contains("Dead events\nNone."), "{text}");
        std::fs::write(
            artifacts().join("status-page-after-replay.png"),
            c.screenshot().await.unwrap(),
        )
        .unwrap();
        c.close().await.unwrap();
    });
    let replayed = up
        .received()
        .into_iter()
        .filter(|r| r.body.as_ref() == &doomed[..])
        .count();
    assert_eq!(replayed, 2, "sent once (404), then again after Replay");
}
