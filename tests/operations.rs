//! Operating behaviour: a spool that cannot commit answers 503, reads not ready (on
//! `/readyz` and as `xhubd_ready`) and recovers (on both spools), JSON logs, and the
//! health listener.

mod common;

use std::time::Duration;

use common::*;

/// Makes every insert of an event fail inside the spool's database, as a full or broken
/// disk would (`refuse`), or lets them pass again.
fn refuse_inserts(x: &Xhubd, refuse: bool) {
    match &x.spool {
        Spool::Sqlite => {
            let db = rusqlite::Connection::open(x.db_path()).unwrap();
            db.execute_batch(if refuse {
                "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'no space left'); END;"
            } else {
                "DROP TRIGGER refuse;"
            })
            .unwrap();
        }
        Spool::Postgres { db, .. } => {
            common::postgres::shared().psql(
                db,
                if refuse {
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql
                       AS $$ BEGIN RAISE EXCEPTION 'no space left'; END $$;
                     CREATE TRIGGER refuse BEFORE INSERT ON events
                       FOR EACH ROW EXECUTE FUNCTION refuse();"
                } else {
                    "DROP TRIGGER refuse ON events; DROP FUNCTION refuse();"
                },
            );
        }
    }
}

both_spools!(a_failed_commit_answers_503_stores_nothing_and_recovers);
fn a_failed_commit_answers_503_stores_nothing_and_recovers(spool: &Spool) {
    let up = Upstream::start();
    let admin_port = free_port();
    let x = Xhubd::start(
        Options::new(&up.url("/"))
            .arg("--admin-listen")
            .arg(&format!("127.0.0.1:{admin_port}"))
            .spool(spool),
    );
    let admin = admin_target(admin_port);
    assert_eq!(admin.get("/readyz").status, 200);
    assert_eq!(ready_gauge(&admin), "1");

    refuse_inserts(&x, true);
    let body = whatsapp_message("wamid.FAIL");
    let answer = x.target.post_signed(&body);
    assert_eq!(answer.status, 503);
    assert!(!answer.text().is_empty());
    assert_eq!(admin.get("/readyz").status, 503);
    assert_eq!(
        ready_gauge(&admin),
        "0",
        "xhubd_ready says what /readyz says"
    );
    assert_eq!(x.count("SELECT COUNT(*) FROM events"), 0);
    let identities = match spool {
        Spool::Sqlite => {
            "SELECT (SELECT COUNT(*) FROM dedup) + (SELECT COUNT(*) FROM dedup_recent)"
        }
        Spool::Postgres { .. } => "SELECT COUNT(*) FROM dedup",
    };
    assert_eq!(x.count(identities), 0, "nothing half-written");
    wait_for(Duration::from_secs(5), "the refusal logged", || {
        x.logs().contains("spool error: event not stored")
    });
    assert!(x.logs().contains("spool commit failed"));
    let refusal = x
        .logs()
        .lines()
        .find(|l| l.contains("spool error: event not stored"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(refusal.contains("route=default"), "{refusal}");

    // Space returns: Meta's retry of the same event is accepted and delivered once.
    refuse_inserts(&x, false);
    assert_eq!(x.target.post_signed(&body).status, 200);
    assert_eq!(admin.get("/readyz").status, 200);
    assert_eq!(ready_gauge(&admin), "1");
    let got = up.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].body.as_ref(), &body[..]);
    assert_eq!(admin.get("/healthz").status, 200);
    assert_eq!(admin.get("/nope").status, 404);
}

/// The value of `xhubd_ready` on the admin listener's `/metrics`.
fn ready_gauge(admin: &Target) -> String {
    let answer = admin.get("/metrics");
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("xhubd_ready "))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no xhubd_ready in /metrics:\n{}", answer.text()))
}

fn whatsapp_message(id: &str) -> Vec<u8> {
    format!(r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messages":[{{"id":"{id}"}}]}}}}]}}]}}"#).into_bytes()
}

#[test]
fn json_logs_have_one_object_per_line_with_the_event_id() {
    let up = Upstream::start();
    let mut x = Xhubd::start(Options::new(&up.url("/")).arg("--log-format").arg("json"));
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    assert_eq!(x.target.request("POST", "/", &[], b"{}").status, 401);
    let id = up.wait_for(1, Duration::from_secs(20))[0]
        .header("x-xhubd-event-id")
        .unwrap()
        .to_owned();
    assert!(x.terminate().success());
    let logs = x.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages = |m: &str| {
        lines
            .iter()
            .filter(|l| l["message"].as_str().is_some_and(|s| s.starts_with(m)))
            .collect::<Vec<_>>()
    };
    assert_eq!(messages("accepted")[0]["event_id"], id.as_str());
    assert_eq!(messages("delivered")[0]["event_id"], id.as_str());
    assert_eq!(messages("duplicate")[0]["event_id"], id.as_str());
    assert_eq!(messages("rejected: signature").len(), 1);
    x.assert_no_secret_in_logs();
}
