//! What operators see of routes and destinations: metrics labelled by route and
//! destination, per-destination backlog gauges, the status page's destinations, `events
//! list --route/--destination`, replay of one delivery, and `send-test --route`.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);

both_spools!(routes_and_destinations_everywhere);
fn routes_and_destinations_everywhere(spool: &Spool) {
    let up = Upstream::start();
    let admin_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("xhubd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [[route]]
            name = "shop"
            path = "/shop"
            verify_token = "shop-token"
            app_secret = "shop-secret"
              [[route.destination]]
              name = "orders"
              url = "{}"
              [[route.destination]]
              name = "refusing"
              url = "{}"
            [[route]]
            name = "blog"
            path = "/blog"
            verify_token = "blog-token"
            app_secret = "blog-secret"
              [[route.destination]]
              name = "comments"
              url = "{}"
            "#,
            up.url("/orders"),
            up.url("/refuse"),
            up.url("/comments"),
        ),
    )
    .unwrap();
    // The backend refuses everything sent to /refuse (404: dead at once).
    up.answer_path("/refuse", 404);
    let x = Xhubd::start(
        Options::config(config.to_str().unwrap())
            .arg("--admin-listen")
            .arg(&format!("127.0.0.1:{admin_port}"))
            .spool(spool),
    );
    let post = |path: &str, secret: &str, n: usize| {
        let body = page_event(n);
        x.target
            .request(
                "POST",
                path,
                &[("X-Hub-Signature-256", &sign(secret, &body))],
                &body,
            )
            .status
    };
    assert_eq!(post("/shop", "shop-secret", 1), 200);
    assert_eq!(post("/blog", "blog-secret", 2), 200);
    up.wait_for(3, WAIT);
    wait_for(WAIT, "the refused delivery dead", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 2") == 1
    });
    let admin = admin_target(admin_port);
    let metrics = admin.get("/metrics").text();
    for line in [
        r#"xhubd_delivery_attempts_total{route="shop",destination="orders",result="delivered"} 1"#,
        r#"xhubd_delivery_attempts_total{route="shop",destination="refusing",result="dead"} 1"#,
        r#"xhubd_delivery_attempts_total{route="blog",destination="comments",result="delivered"} 1"#,
        r#"xhubd_destination_dead{route="shop",destination="refusing"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    // The status page lists each destination, with its dead count.
    let page = admin.get("/").text();
    for key in ["shop/orders", "shop/refusing", "blog/comments"] {
        assert!(page.contains(key), "{key}: {page}");
    }
    assert!(
        page.contains(r#"<td class="num state-dead">1</td>"#),
        "{page}"
    );
    // Ready, yet something needs attention: the verdict says what, and so does a metric.
    assert!(
        page.contains("Needs attention") && page.contains("1 dead delivery:"),
        "{page}"
    );
    assert!(page.contains("Ready"), "{page}");
    // Its spool counts are deliveries (three here, for two events), and it says so.
    assert!(
        page.contains("<th>pending deliveries</th>") && page.contains("not events"),
        "{page}"
    );
    assert!(metrics.contains("xhubd_needs_attention 1"), "{metrics}");

    // The event page shows the payload as received (member order kept), and offers the
    // raw bytes as a download that never renders on the admin origin.
    let event_id = up.received()[0]
        .header("x-xhubd-event-id")
        .unwrap()
        .to_owned();
    let sent = up.received()[0].body.clone();
    let event_page = admin.get(&format!("/event/{event_id}")).text();
    assert!(
        event_page.contains("{&quot;object&quot;:&quot;user&quot;,&quot;entry&quot;:"),
        "{event_page}"
    );
    // The indented view keeps the members in Meta's order.
    assert!(
        event_page.contains("{\n  &quot;object&quot;: &quot;user&quot;,\n  &quot;entry&quot;: [\n"),
        "{event_page}"
    );
    let raw = admin.get(&format!("/events/{event_id}/body"));
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, sent.to_vec());
    assert!(raw
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    assert_eq!(raw.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(admin.get("/events/no-such-event/body").status, 404);

    // The command line filters by route and destination.
    let list = |extra: &[&str]| {
        let mut args = vec!["events", "list", "--json"];
        args.extend_from_slice(extra);
        let (code, out, err) = x.run_on_spool(&args);
        assert_eq!(code, 0, "{err}");
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        list.as_array().unwrap().len()
    };
    assert_eq!(list(&[]), 2);
    assert_eq!(list(&["--route", "shop"]), 1);
    assert_eq!(list(&["--route", "blog", "--destination", "orders"]), 0);
    assert_eq!(list(&["--destination", "refusing", "--state", "dead"]), 1);
    assert_eq!(list(&["--destination", "comments", "--state", "dead"]), 0);
    // As logs and pages print it: route/destination.
    assert_eq!(
        list(&["--destination", "shop/refusing", "--state", "dead"]),
        1
    );
    assert_eq!(list(&["--destination", "blog/refusing"]), 0);
    assert_eq!(list(&["--destination", "shop/orders"]), 1);
    let (code, _, err) = x.run_on_spool(&[
        "events",
        "list",
        "--route",
        "blog",
        "--destination",
        "shop/orders",
    ]);
    assert_eq!(code, 2, "contradicting filters are a usage error");
    assert!(err.contains("--route is \"blog\""), "{err}");

    // One delivery replayed: only it is sent again.
    let id = up
        .received()
        .iter()
        .find(|r| r.path_and_query == "/refuse")
        .and_then(|r| r.header("x-xhubd-delivery-id"))
        .unwrap()
        .to_owned();
    up.answer_path("/refuse", 200);
    let (code, out, err) = x.run_on_spool(&["events", "replay", "--delivery", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let got = up.wait_for(4, WAIT);
    assert_eq!(got[3].path_and_query, "/refuse");
    assert_eq!(got[3].header("x-xhubd-delivery-id"), Some(id.as_str()));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.count(), 4, "only that delivery was sent again");
    // And on the admin listener (a delivered delivery may be replayed too).
    wait_for(WAIT, "the replayed delivery recorded", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state = 1") == 3
    });
    let replay = admin.request("POST", &format!("/deliveries/{id}/replay"), &[], b"");
    assert_eq!(replay.status, 200, "{}", replay.text());
    let got = up.wait_for(5, WAIT);
    assert_eq!(got[4].header("x-xhubd-delivery-id"), Some(id.as_str()));
    let missing = admin.request("POST", "/deliveries/no-such-id/replay", &[], b"");
    assert_eq!(missing.status, 404);
    // Nothing dead any more: all well.
    wait_for(WAIT, "all delivered", || {
        x.count("SELECT COUNT(*) FROM deliveries WHERE state != 1") == 0
    });
    assert!(admin.get("/").text().contains("All well"));
    assert!(admin
        .get("/metrics")
        .text()
        .contains("xhubd_needs_attention 0"));

    // send-test with a route of the config file: no secret on the command line.
    let Target::Unix(_) = &x.target else {
        unreachable!()
    };
    drop(x);
    let tcp = Xhubd::start(Options::config(config.to_str().unwrap()).tcp().spool(spool));
    let Target::Tcp(addr) = &tcp.target else {
        unreachable!()
    };
    let (code, out, err) = send_test_route(addr, &config, "blog");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("/blog") && out.contains("all steps passed"),
        "{out}"
    );
    assert!(
        out.contains("the destinations of route blog that take it: blog/comments"),
        "{out}"
    );
    for secret in ["blog-secret", "blog-token", "shop-secret"] {
        assert!(!out.contains(secret) && !err.contains(secret));
    }
}
