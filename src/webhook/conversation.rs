//! Conversation keys: which conversation an item belongs to, for destinations with
//! `order = "conversation"` (README "Order within a conversation"). Deliveries that
//! share a key go one at a time, in the order they were accepted.
//!
//! The key is the user on the other side, as Meta's webhook references name them:
//! - WhatsApp (`object` `whatsapp_business_account`), a change's `value`: each
//!   `messages[].from` and `statuses[].recipient_id` (the user's WhatsApp id, a phone
//!   number), and `message_echoes[].to` (a message the business sent from the WhatsApp
//!   Business app, field `smb_message_echoes`): `whatsapp:<id>`.
//! - Messenger (`page`) and Instagram (`instagram`), a `messaging[]` or `standby[]`
//!   element: `sender.id`, the user's page- or Instagram-scoped id; for an echo of the
//!   Page's own message (`message.is_echo` true) the user is `recipient.id`:
//!   `messenger:<id>`, `instagram:<id>` (another object: `<object>:<id>`).
//! - Anything else (a Page feed change, `changed_fields`, a WhatsApp change with
//!   neither, an element without a sender): the item's entry, `entry:<entry[].id>`; a
//!   Threads body: `threads:<target_id>`.
//!
//! The kind prefix keeps a phone number, a user id and an entry id apart. Ids are text:
//! a JSON string decoded, a number by the bytes Meta sent (never through a float:
//! Instagram ids exceed 2^53). An empty id is no id.

use std::ops::Range;

use super::raw;

/// The keys of one element of an entry's item array `array` (`changes`, `messaging`,
/// `standby`) at `span` of `raw`, in a body whose `object` is `object`; none when it
/// names no user (the caller then keys it by its entry).
pub fn of_element(raw: &[u8], array: &str, span: Range<usize>, object: &str) -> Vec<String> {
    match array {
        "changes" if object == "whatsapp_business_account" => whatsapp_users(raw, span),
        "messaging" | "standby" => messaging_user(raw, span, object).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The key of an item that names no user: its entry's id, or a Threads body's
/// `target_id` (`threads` is the object items.rs gives a body without `entry`).
pub fn of_entry(object: &str, entry_id: &str) -> Option<String> {
    if entry_id.is_empty() {
        return None;
    }
    Some(if object == "threads" {
        format!("threads:{entry_id}")
    } else {
        format!("entry:{entry_id}")
    })
}

/// WhatsApp: the users a change's `value` is about.
fn whatsapp_users(raw: &[u8], change: Range<usize>) -> Vec<String> {
    let Some(value) = member(raw, change, "value") else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for (array, id) in [
        ("messages", "from"),
        ("statuses", "recipient_id"),
        ("message_echoes", "to"),
    ] {
        let Some(list) = member(raw, value.clone(), array) else {
            continue;
        };
        for element in raw::elements(raw, list).unwrap_or_default() {
            if let Some(user) = member(raw, element, id).and_then(|v| text(raw, v)) {
                keys.push(format!("whatsapp:{user}"));
            }
        }
    }
    keys
}

/// Messenger and Instagram: the user of a `messaging[]` (or `standby[]`) element.
fn messaging_user(raw: &[u8], element: Range<usize>, object: &str) -> Option<String> {
    let echo = member(raw, element.clone(), "message")
        .and_then(|m| member(raw, m, "is_echo"))
        .is_some_and(|v| &raw[v] == b"true");
    let party = member(raw, element, if echo { "recipient" } else { "sender" })?;
    let id = text(raw, member(raw, party, "id")?)?;
    let kind = match object {
        "page" => "messenger",
        "" => "messaging",
        other => other,
    };
    Some(format!("{kind}:{id}"))
}

/// The value of the last member `name` of the object at `span`.
fn member(raw: &[u8], span: Range<usize>, name: &str) -> Option<Range<usize>> {
    raw::members(raw, span)?
        .into_iter()
        .rfind(|m| m.key == name)
        .map(|m| m.value)
}

/// A value as an id: a string decoded, a number by its bytes; `None` for anything
/// else, and for an empty string.
fn text(raw: &[u8], span: Range<usize>) -> Option<String> {
    let bytes = raw.get(span)?;
    let id = match bytes.first()? {
        b'"' => serde_json::from_slice::<String>(bytes).ok()?,
        b'-' | b'0'..=b'9' => std::str::from_utf8(bytes).ok()?.to_owned(),
        _ => return None,
    };
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::super::items::Notification;

    /// The keys of every item of `raw`.
    fn keys(raw: &[u8]) -> Vec<String> {
        let doc = serde_json::from_slice(raw).unwrap();
        let n = Notification::parse(raw, &doc);
        n.conversations(&vec![true; n.items.len()])
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/payloads/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn whatsapp_messages_and_statuses_are_keyed_by_the_user() {
        for name in ["wa-text", "wa-image", "wa-interactive", "wa-reaction"] {
            assert_eq!(keys(&fixture(name)), ["whatsapp:16505551234"], "{name}");
        }
        for name in ["wa-status-sent", "wa-status-failed"] {
            assert_eq!(keys(&fixture(name)), ["whatsapp:16505551234"], "{name}");
        }
        // A business's own message from the WhatsApp Business app: the user it went to.
        assert_eq!(keys(&fixture("wa-echo")), ["whatsapp:16505551234"]);
        // A batch of two users and a status: each user once.
        let batch = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messages":[{"from":"111","id":"a"},{"from":"222","id":"b"}]}},{"field":"messages","value":{"statuses":[{"id":"a","status":"read","recipient_id":"111"}]}}]}]}"#;
        assert_eq!(keys(batch), ["whatsapp:111", "whatsapp:222"]);
    }

    #[test]
    fn messenger_and_instagram_are_keyed_by_the_user_also_for_an_echo() {
        for name in [
            "ms-message",
            "ms-delivery",
            "ms-read",
            "ms-postback",
            "ms-reaction",
            "ms-edit",
            "ms-optin",
            "ms-referral",
            "ms-standby",
        ] {
            assert_eq!(
                keys(&fixture(name)),
                ["messenger:6100000000000001"],
                "{name}"
            );
        }
        for name in ["ig-message", "ig-seen", "ig-unsend"] {
            assert_eq!(
                keys(&fixture(name)),
                ["instagram:6100000000000001"],
                "{name}"
            );
        }
        // The Page's echo: the user is the recipient.
        let echo = br#"{"object":"page","entry":[{"id":"104","messaging":[{"sender":{"id":"104"},"recipient":{"id":"6100"},"message":{"mid":"m_1","is_echo":true}}]}]}"#;
        assert_eq!(keys(echo), ["messenger:6100"]);
        let not_echo = br#"{"object":"instagram","entry":[{"id":"178","messaging":[{"sender":{"id":"61"},"recipient":{"id":"178"},"message":{"mid":"m_1","is_echo":false}}]}]}"#;
        assert_eq!(keys(not_echo), ["instagram:61"]);
    }

    #[test]
    fn ids_are_their_text_never_a_float() {
        let big = br#"{"object":"instagram","entry":[{"id":17841400000000001,"messaging":[{"sender":{"id":17841405793187218123},"message":{"mid":"m"}}]}]}"#;
        assert_eq!(keys(big), ["instagram:17841405793187218123"]);
        let escaped = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messages":[{"from":"\u0034\u0039","id":"a"}]}}]}]}"#;
        assert_eq!(keys(escaped), ["whatsapp:49"]);
    }

    #[test]
    fn an_item_naming_no_user_is_keyed_by_its_entry_or_threads_target() {
        for name in ["wa-template-status", "wa-account-update", "wa-value-errors"] {
            assert_eq!(keys(&fixture(name)), ["entry:102290129340398"], "{name}");
        }
        assert_eq!(keys(&fixture("page-feed")), ["entry:104000000000001"]);
        assert_eq!(keys(&fixture("ig-comment")), ["entry:17841400000000001"]);
        assert_eq!(keys(&fixture("user-photos")), ["entry:1234"]);
        assert_eq!(
            keys(&fixture("threads-replies")),
            ["threads:17841400000000777"]
        );
        // An element without a sender, or with an empty id: its entry.
        let anonymous = br#"{"object":"page","entry":[{"id":"104","messaging":[{"sender":{"id":""},"read":{}},{"read":{}}]}]}"#;
        assert_eq!(keys(anonymous), ["entry:104"]);
        // Nothing to key by: no key (such a delivery waits for nothing).
        assert!(keys(br#"{"object":"page"}"#).is_empty());
    }

    #[test]
    fn only_the_kept_items_count() {
        let raw = br#"{"object":"page","entry":[{"id":"104","messaging":[{"sender":{"id":"1"},"message":{"mid":"a"}},{"sender":{"id":"2"},"message":{"mid":"b"}}]}]}"#;
        let doc = serde_json::from_slice(raw).unwrap();
        let n = Notification::parse(raw, &doc);
        assert_eq!(n.conversations(&[false, true]), ["messenger:2"]);
        assert_eq!(
            n.conversations(&[true, true]),
            ["messenger:1", "messenger:2"]
        );
        assert!(n.conversations(&[false, false]).is_empty());
    }
}
