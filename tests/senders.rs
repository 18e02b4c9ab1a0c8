//! What real senders send that the dedup identity, the JSON grammar and the forwarded
//! headers must get right: ids Meta reuses for different events (an unsend, an echo),
//! ids that are not ids (empty strings), items without ids next to seen ones, bodies
//! with lone surrogate escapes, and Meta's SHA-1 signature.

mod common;

use std::time::Duration;

use common::*;

/// An Instagram messaging notification sent at `time`, with one `message`.
fn instagram(time: u64, message: &str) -> Vec<u8> {
    format!(
        r#"{{"object":"instagram","entry":[{{"time":{time},"id":"17841400000000001","messaging":[{{"sender":{{"id":"6100000000000001"}},"recipient":{{"id":"17841400000000001"}},"timestamp":{time},"message":{message}}}]}}]}}"#
    )
    .into_bytes()
}

/// A WhatsApp notification whose change `value` holds `members` (JSON members text).
fn whatsapp(members: &str) -> Vec<u8> {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"106540352242922"}},{members}}},"field":"messages"}}]}}]}}"#
    )
    .into_bytes()
}

/// Posts each body, asserts that exactly `expected` of them were stored as new events
/// (the others recognised as retries: final once each is answered 200), and returns
/// what the upstream received of them.
fn delivered(x: &Xhubd, up: &Upstream, bodies: &[Vec<u8>], expected: usize) -> Vec<Received> {
    let events = x.count("SELECT COUNT(*) FROM events");
    let before = up.count();
    for body in bodies {
        assert_eq!(x.target.post_signed(body).status, 200);
    }
    assert_eq!(
        x.count("SELECT COUNT(*) FROM events"),
        events + expected as i64,
        "new events"
    );
    let got = up.wait_for(before + expected, Duration::from_secs(20));
    got[before..].to_vec()
}

/// Whether `body` is among what the upstream received (deliveries run concurrently, in
/// no promised order).
fn has(got: &[Received], body: &[u8]) -> bool {
    got.iter().any(|r| r.body[..] == *body)
}

#[test]
fn an_unsend_and_an_echo_reuse_the_mid_and_are_still_delivered() {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")));
    let mid = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx";
    let message = instagram(1, &format!(r#"{{"mid":"{mid}","text":"hello"}}"#));
    let unsend = instagram(2, &format!(r#"{{"mid":"{mid}","is_deleted":true}}"#));
    let got = delivered(&x, &up, &[message.clone(), unsend.clone()], 2);
    assert!(has(&got, &message) && has(&got, &unsend));
    // Meta's retries (a new entry time) of each: dropped.
    delivered(
        &x,
        &up,
        &[
            instagram(3, &format!(r#"{{"mid":"{mid}","text":"hello"}}"#)),
            instagram(4, &format!(r#"{{"mid":"{mid}","is_deleted":true}}"#)),
        ],
        0,
    );
    // A Page's echo, then the unsend of the echo; each retried once.
    let echo_mid = "m_echo_1";
    let echo = |t| {
        instagram(
            t,
            &format!(r#"{{"mid":"{echo_mid}","text":"hi","is_echo":true}}"#),
        )
    };
    let echo_unsend = |t| {
        instagram(
            t,
            &format!(r#"{{"mid":"{echo_mid}","is_echo":true,"is_deleted":true}}"#),
        )
    };
    let got = delivered(
        &x,
        &up,
        &[echo(5), echo_unsend(6), echo(7), echo_unsend(8)],
        2,
    );
    assert!(has(&got, &echo(5)) && has(&got, &echo_unsend(6)));
    // An edit of the message (Messenger's message_edit) is another event; each
    // further edit too.
    let edit = |t: u64, n: u32| {
        format!(
            r#"{{"object":"page","entry":[{{"time":{t},"id":"1","messaging":[{{"sender":{{"id":"2"}},"recipient":{{"id":"1"}},"timestamp":{t},"message_edit":{{"mid":"{mid}","text":"hello!","num_edit":{n}}}}}]}}]}}"#
        )
        .into_bytes()
    };
    delivered(&x, &up, &[edit(9, 1), edit(10, 1), edit(11, 2)], 2);
}

#[test]
fn an_empty_id_is_no_id_and_an_error_item_is_new() {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")));
    let text = |body: &str| {
        whatsapp(&format!(
            r#""messages":[{{"from":"16505551234","id":"","timestamp":"1","type":"text","text":{{"body":"{body}"}}}}]"#
        ))
    };
    delivered(&x, &up, &[text("first"), text("second")], 2);

    let seen = r#""messages":[{"from":"16505551234","id":"wamid.SEEN","timestamp":"1","type":"text","text":{"body":"hi"}}]"#;
    let with_error = whatsapp(&format!(
        r#"{seen},"errors":[{{"code":131051,"title":"Message type unknown"}}]"#
    ));
    let got = delivered(&x, &up, &[whatsapp(seen), with_error.clone()], 2);
    assert!(has(&got, &with_error));
    // Statuses of one message are distinct events; a retry of one is not.
    let status = |state: &str| {
        whatsapp(&format!(
            r#""statuses":[{{"id":"wamid.SENT","status":"{state}","timestamp":"1","recipient_id":"16505551234"}}]"#
        ))
    };
    delivered(
        &x,
        &up,
        &[status("sent"), status("delivered"), status("read")],
        3,
    );
    let retry_of_read = whatsapp(
        r#""statuses":[{"id":"wamid.SENT","status":"read","timestamp":"2","recipient_id":"16505551234"}]"#,
    );
    delivered(&x, &up, &[retry_of_read], 0);
}

#[test]
fn a_lone_surrogate_is_json_and_its_bytes_are_kept() {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")));
    // A truncated emoji, as a sender that cut a string between its two halves sends it.
    let bodies = [
        br#"{"object":"page","entry":[{"id":"1","time":1,"changed_fields":["name"],"note":"caf\u00e9 \ud83d"}]}"#.to_vec(),
        br#"{"object":"page","entry":[{"id":"1","time":2,"changed_fields":["name"],"note":"\ude00 alone"}]}"#.to_vec(),
    ];
    let got = delivered(&x, &up, &bodies, 2);
    for sent in &bodies {
        let received = got
            .iter()
            .find(|r| r.body[..] == sent[..])
            .expect("delivered byte-identical");
        assert_eq!(
            received.header("x-hub-signature-256"),
            Some(sign(APP_SECRET, sent).as_str())
        );
    }
    // What the grammar refuses stays refused.
    for bad in [
        &br#"{"note":"\ud83"}"#[..],
        br#"{"note":"\ud83d}"#,
        br#"{"note":"\q"}"#,
    ] {
        let answer = x.target.post_signed(bad);
        assert_eq!(answer.status, 400, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn meta_s_sha1_signature_is_passed_on_unchanged() {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")));
    let body = page_event(1);
    let sha256 = sign(APP_SECRET, &body);
    // Never checked: any value Meta sends is passed on as it came.
    let sha1 = "sha1=2fd4e1c67a2d28fced849ee1bb76e7391b93eb12";
    let answer = x.target.request(
        "POST",
        "/webhook",
        &[("X-Hub-Signature-256", &sha256), ("X-Hub-Signature", sha1)],
        &body,
    );
    assert_eq!(answer.status, 200);
    assert_eq!(x.target.post_signed(&page_event(2)).status, 200);
    let got = up.wait_for(2, Duration::from_secs(20));
    let with = got.iter().find(|r| r.body[..] == body[..]).unwrap();
    assert_eq!(with.header("x-hub-signature"), Some(sha1));
    assert_eq!(with.header("x-hub-signature-256"), Some(sha256.as_str()));
    let without = got.iter().find(|r| r.body[..] != body[..]).unwrap();
    assert_eq!(without.header("x-hub-signature"), None);
    // A SHA-1 signature alone is not enough.
    let answer = x.target.request(
        "POST",
        "/webhook",
        &[("X-Hub-Signature", sha1)],
        &page_event(3),
    );
    assert_eq!(answer.status, 401);
}
