//! What makes two notifications "the same event" (DESIGN.md, README "What counts as the
//! same event"): the SHA-256 of the raw body, and, when every item of the body carries
//! one, the items' own ids, each together with what makes it a different event about
//! the same message (Meta reuses a message's id for its echo, its unsend and its edits).
//!
//! The rule for every variant, from Meta's Messenger, Instagram messaging and WhatsApp
//! webhook references:
//!
//! | item | identity |
//! |---|---|
//! | WhatsApp `messages[]` | `wa.msg:<id>`; `wa.msg.edit:<id>` / `wa.msg.revoke:<id>` for `type` `edit` / `revoke` |
//! | WhatsApp `statuses[]` | `wa.status:<id>:<status>` (`sent`, `delivered`, `read`, `failed` are four events), and `:<recipient_participant_id>` when present (a group message's status per member) |
//! | WhatsApp `message_echoes[]` | `wa.echo:<id>:<type>` |
//! | `messaging[].message` | `mid:<mid>`; `mid.echo:`, `mid.deleted:`, `mid.echo.deleted:` when `is_echo` / `is_deleted` is true |
//! | `messaging[].message_edit` | `mid.edit:<mid>:<num_edit>` |
//!
//! Everything else is an item without an id: reactions (a user may react, unreact and
//! react again with the same content), postbacks (Meta does not say whether their `mid`
//! is the tap's or the message's that held the button), reads, deliveries, optins, referrals, standby,
//! `changed_fields`, Graph `changes[]`, a WhatsApp value holding `errors` or any member
//! not named above, Threads payloads, and an id that is empty or not a string. One such
//! item turns item dedup off for the whole body: it is only dropped when byte-identical.
//! The text forms of the table never change for a variant whose meaning is unchanged,
//! so keys stored by an earlier release keep matching (the spool stores their hashes).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::items;
use crate::types::{DedupKey, DedupKeys};

/// The dedup identities of one notification, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `body:<sha256 hex>` of the raw bytes.
    pub body_key: String,
    /// The item identities, present only when the body has at least one item and every
    /// item carries an id. A notification is a retry when all of them were seen before.
    pub item_keys: Option<Vec<String>>,
}

impl Identity {
    /// The identity of a body already parsed as a JSON object.
    pub fn of(raw: &[u8], doc: &Map<String, Value>) -> Identity {
        Identity {
            body_key: body_key(raw),
            item_keys: item_keys(doc),
        }
    }

    /// The keys as the spool stores them.
    pub fn keys(&self) -> DedupKeys {
        DedupKeys {
            body: DedupKey::of(&self.body_key),
            items: self
                .item_keys
                .as_ref()
                .map(|keys| keys.iter().map(|k| DedupKey::of(k)).collect()),
        }
    }
}

/// What the notification is about, for operators: its `object` (`threads` for a
/// Threads body, as `match` names it) and its first item's field as `match` names it:
/// `changes[].field`, `changed_fields[]`, a `messaging[]` element's field (`messages`,
/// `message_reads`, ...; `messaging` when none is known; of two event members in one
/// element, the first in alphabetical order), `standby`, or a Threads value's `field`
/// (its `topic` when it has none).
pub fn describe(doc: &Map<String, Value>) -> (String, String) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let entry = doc
        .get("entry")
        .and_then(Value::as_array)
        .and_then(|e| e.first());
    let object = match doc.get("object") {
        None if doc.get("entry").is_none() => "threads".to_owned(),
        object => text(object),
    };
    let field = match entry {
        Some(entry) => {
            if let Some(change) = entry.get("changes").and_then(|c| c.get(0)) {
                text(change.get("field"))
            } else if let Some(first) = entry.get("changed_fields").and_then(|c| c.get(0)) {
                text(Some(first))
            } else if let Some(messaging) = entry.get("messaging") {
                messaging
                    .get(0)
                    .and_then(|element| {
                        let order: Vec<String> = element.as_object()?.keys().cloned().collect();
                        items::messaging_field(element, &object, &order)
                    })
                    .unwrap_or("messaging")
                    .to_owned()
            } else if entry.get("standby").is_some() {
                "standby".to_owned()
            } else {
                String::new()
            }
        }
        None => {
            let values = doc.get("values");
            let value = values.and_then(|v| v.get(0)).or(values);
            match value.and_then(|v| v.get("field")).and_then(Value::as_str) {
                Some(field) => field.to_owned(),
                None => text(doc.get("topic")),
            }
        }
    };
    (object, field)
}

/// `body:` and the hex SHA-256 of the raw bytes.
pub fn body_key(raw: &[u8]) -> String {
    format!("body:{}", hex::encode(Sha256::digest(raw)))
}

/// Members of an entry besides its item arrays. An entry with any other member (e.g.
/// `standby`, `changed_fields`) holds items without ids.
const ENTRY_MEMBERS: [&str; 4] = ["id", "time", "changes", "messaging"];

/// Members of a WhatsApp change `value` whose items carry ids, or that hold no item
/// (`contacts` describes the senders of `messages`). `errors`, or any member Meta adds
/// later, is an item without an id.
const WHATSAPP_VALUE_MEMBERS: [&str; 6] = [
    "messaging_product",
    "metadata",
    "contacts",
    "messages",
    "statuses",
    "message_echoes",
];

/// Members of a `messaging[]` element besides its one event member.
const ELEMENT_MEMBERS: [&str; 3] = ["sender", "recipient", "timestamp"];

/// The identity of every item in the notification, or `None` as soon as one item has
/// no id (such a body is only ever de-duplicated when byte-identical).
pub fn item_keys(doc: &Map<String, Value>) -> Option<Vec<String>> {
    let entries = doc.get("entry")?.as_array()?;
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.as_object()?;
        if entry.keys().any(|k| !ENTRY_MEMBERS.contains(&k.as_str())) {
            return None;
        }
        let changes = entry.get("changes");
        let messaging = entry.get("messaging");
        if changes.is_none() && messaging.is_none() {
            return None; // the entry itself is an item, without an id
        }
        for change in items(changes)? {
            change_keys(change, &mut keys)?;
        }
        for element in items(messaging)? {
            keys.push(messaging_key(element)?);
        }
    }
    (!keys.is_empty()).then_some(keys)
}

/// The elements of an optional array member: none when absent, `None` when it is not
/// an array.
fn items(member: Option<&Value>) -> Option<&[Value]> {
    match member {
        None => Some(&[]),
        Some(v) => v.as_array().map(Vec::as_slice),
    }
}

/// A member that is a non-empty string: an id. An empty string is not one.
fn id(object: &Value, name: &str) -> Option<String> {
    object
        .get(name)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A boolean flag: absent, `null` or `false` is false, `true` is true; anything else
/// makes the item's variant unknown (`None`).
fn flag(object: &Map<String, Value>, name: &str) -> Option<bool> {
    match object.get(name) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Some(false),
        Some(Value::Bool(true)) => Some(true),
        Some(_) => None,
    }
}

/// The identities of one `changes[]` item: a WhatsApp value with `messages`,
/// `statuses` and/or `message_echoes`, and nothing else that holds items.
fn change_keys(change: &Value, keys: &mut Vec<String>) -> Option<()> {
    let value = change.get("value")?.as_object()?;
    if value
        .keys()
        .any(|k| !WHATSAPP_VALUE_MEMBERS.contains(&k.as_str()))
    {
        return None;
    }
    let before = keys.len();
    for message in items(value.get("messages"))? {
        let id = id(message, "id")?;
        keys.push(match message.get("type").and_then(Value::as_str) {
            Some(variant @ ("edit" | "revoke")) => format!("wa.msg.{variant}:{id}"),
            _ => format!("wa.msg:{id}"),
        });
    }
    for status in items(value.get("statuses"))? {
        let (id, state) = (id(status, "id")?, id(status, "status")?);
        keys.push(match status.get("recipient_participant_id") {
            None => format!("wa.status:{id}:{state}"),
            Some(_) => {
                let member = self::id(status, "recipient_participant_id")?;
                format!("wa.status:{id}:{state}:{member}")
            }
        });
    }
    for echo in items(value.get("message_echoes"))? {
        let (id, variant) = (id(echo, "id")?, id(echo, "type")?);
        keys.push(format!("wa.echo:{id}:{variant}"));
    }
    // A change whose lists are empty is an item without an id.
    (keys.len() > before).then_some(())
}

/// The identity of one `messaging[]` element: its one event member decides.
fn messaging_key(element: &Value) -> Option<String> {
    let element = element.as_object()?;
    let mut events = element
        .iter()
        .filter(|(name, _)| !ELEMENT_MEMBERS.contains(&name.as_str()));
    let (member, event) = events.next()?;
    if events.next().is_some() {
        return None;
    }
    let mid = id(event, "mid")?;
    let event = event.as_object()?;
    match member.as_str() {
        "message" => Some(
            match (flag(event, "is_echo")?, flag(event, "is_deleted")?) {
                (false, false) => format!("mid:{mid}"),
                (true, false) => format!("mid.echo:{mid}"),
                (false, true) => format!("mid.deleted:{mid}"),
                (true, true) => format!("mid.echo.deleted:{mid}"),
            },
        ),
        "message_edit" => {
            let edit = event.get("num_edit")?.as_u64()?;
            Some(format!("mid.edit:{mid}:{edit}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: Value) -> Option<Vec<String>> {
        item_keys(v.as_object().unwrap())
    }

    fn strings(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn whatsapp_messages_and_statuses() {
        let v = json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
            {"field":"messages","value":{"messaging_product":"whatsapp",
              "metadata":{"phone_number_id":"7"},"contacts":[{"wa_id":"16505551234"}],
              "messages":[{"id":"wamid.A","type":"text"},{"id":"wamid.B"}],
              "statuses":[{"id":"wamid.C","status":"read"}]}}]}]});
        assert_eq!(
            keys(v),
            strings(&["wa.msg:wamid.A", "wa.msg:wamid.B", "wa.status:wamid.C:read"])
        );
    }

    #[test]
    fn a_group_message_s_status_is_one_event_per_member() {
        let status = |member: Option<&str>| {
            let mut s = json!({"id":"wamid.G","status":"read","recipient_id":"120363000000000001"});
            if let Some(m) = member {
                s["recipient_participant_id"] = json!(m);
            }
            keys(json!({"entry":[{"changes":[{"value":{"statuses":[s]}}]}]}))
        };
        assert_eq!(status(None), strings(&["wa.status:wamid.G:read"]));
        assert_eq!(
            status(Some("16505551234")),
            strings(&["wa.status:wamid.G:read:16505551234"])
        );
        assert_eq!(status(Some("")), None);
    }

    #[test]
    fn whatsapp_edits_revokes_and_echoes_are_their_own_variants() {
        let v = json!({"entry":[{"changes":[{"value":{"messages":[
            {"id":"wamid.E","type":"edit","edit":{"original_message_id":"wamid.A"}},
            {"id":"wamid.R","type":"revoke","revoke":{"original_message_id":"wamid.A"}}],
            "message_echoes":[{"id":"wamid.S","type":"text"}]}}]}]});
        assert_eq!(
            keys(v),
            strings(&[
                "wa.msg.edit:wamid.E",
                "wa.msg.revoke:wamid.R",
                "wa.echo:wamid.S:text"
            ])
        );
    }

    #[test]
    fn messenger_and_instagram_variants_of_one_mid_differ() {
        let element = |message: Value| {
            json!({"object":"instagram","entry":[{"id":"1","time":1,
            "messaging":[{"sender":{"id":"2"},"recipient":{"id":"1"},"timestamp":1,"message":message}]}]})
        };
        let plain = keys(element(json!({"mid":"m_1","text":"hi"})));
        let unsend = keys(element(json!({"mid":"m_1","is_deleted":true})));
        let echo = keys(element(json!({"mid":"m_1","text":"hi","is_echo":true})));
        let echo_unsend = keys(element(
            json!({"mid":"m_1","is_echo":true,"is_deleted":true}),
        ));
        assert_eq!(plain, strings(&["mid:m_1"]));
        assert_eq!(unsend, strings(&["mid.deleted:m_1"]));
        assert_eq!(echo, strings(&["mid.echo:m_1"]));
        assert_eq!(echo_unsend, strings(&["mid.echo.deleted:m_1"]));
        // Explicit false is the plain variant; a flag of another type has no id.
        assert_eq!(keys(element(json!({"mid":"m_1","is_echo":false}))), plain);
        assert_eq!(keys(element(json!({"mid":"m_1","is_deleted":"yes"}))), None);
    }

    #[test]
    fn edits_carry_ids_reactions_and_postbacks_do_not() {
        let one = |member: &str, event: Value| {
            let mut element = json!({"sender":{"id":"2"},"recipient":{"id":"1"},"timestamp":1});
            element[member] = event;
            keys(json!({"object":"page","entry":[{"id":"1","messaging":[element]}]}))
        };
        assert_eq!(
            one(
                "message_edit",
                json!({"mid":"m_1","text":"hi!","num_edit":1})
            ),
            strings(&["mid.edit:m_1:1"])
        );
        assert_eq!(
            one("message_edit", json!({"mid":"m_1","num_edit":2})),
            strings(&["mid.edit:m_1:2"])
        );
        assert_eq!(one("message_edit", json!({"mid":"m_1"})), None);
        for member in [
            "reaction", "postback", "read", "delivery", "optin", "referral",
        ] {
            assert_eq!(
                one(member, json!({"mid":"m_1","action":"react","watermark":1})),
                None,
                "{member}"
            );
        }
        // Two event members in one element: unknown, no id.
        let v =
            json!({"entry":[{"messaging":[{"message":{"mid":"m_1"},"reaction":{"mid":"m_1"}}]}]});
        assert_eq!(keys(v), None);
    }

    #[test]
    fn an_empty_string_is_not_an_id() {
        let v =
            json!({"entry":[{"changes":[{"value":{"messages":[{"id":"","text":{"body":"a"}}]}}]}]});
        assert_eq!(keys(v), None);
        let v = json!({"entry":[{"changes":[{"value":{"statuses":[{"id":"w","status":""}]}}]}]});
        assert_eq!(keys(v), None);
        let v = json!({"entry":[{"messaging":[{"message":{"mid":""}}]}]});
        assert_eq!(keys(v), None);
        let v = json!({"entry":[{"changes":[{"value":{"messages":[{"id":7}]}}]}]});
        assert_eq!(keys(v), None);
    }

    #[test]
    fn one_item_without_id_disables_item_dedup() {
        // A WhatsApp value-level error next to a seen message.
        let v = json!({"entry":[{"changes":[{"field":"messages","value":{
            "messages":[{"id":"wamid.A"}],"errors":[{"code":131051}]}}]}]});
        assert_eq!(keys(v), None);
        // Any member of a value that xhubd does not know may hold items.
        let v = json!({"entry":[{"changes":[{"value":{"messages":[{"id":"wamid.A"}],"calls":[{"id":"c"}]}}]}]});
        assert_eq!(keys(v), None);
        // A Graph change (no ids) next to a WhatsApp message.
        let v = json!({"object":"x","entry":[{"changes":[
            {"field":"messages","value":{"messages":[{"id":"wamid.A"}]}},
            {"field":"photos","value":{"verb":"update"}}]}]});
        assert_eq!(keys(v), None);
        // A Messenger read receipt has no id.
        let v = json!({"object":"page","entry":[{"messaging":[
            {"message":{"mid":"m_1"}},{"read":{"watermark":1}}]}]});
        assert_eq!(keys(v), None);
        // Standby items next to messaging ones.
        let v = json!({"object":"page","entry":[{"id":"1","messaging":[{"message":{"mid":"m_1"}}],
            "standby":[{"message":{"mid":"m_2"}}]}]});
        assert_eq!(keys(v), None);
        // A status without its status field.
        let v = json!({"entry":[{"changes":[{"value":{"statuses":[{"id":"w"}]}}]}]});
        assert_eq!(keys(v), None);
        // Empty lists, changed_fields, an entry without items, Threads payloads.
        assert_eq!(
            keys(json!({"entry":[{"changes":[{"value":{"messages":[]}}]}]})),
            None
        );
        assert_eq!(
            keys(json!({"object":"user","entry":[{"changed_fields":["photos"]}]})),
            None
        );
        assert_eq!(
            keys(json!({"entry":[{"id":"1"},{"messaging":[{"message":{"mid":"m"}}]}]})),
            None
        );
        assert_eq!(
            keys(json!({"app_id":"1","topic":"moderate","values":{}})),
            None
        );
        assert_eq!(keys(json!({"entry":[]})), None);
        assert_eq!(keys(json!({"entry":"nonsense"})), None);
    }

    #[test]
    fn keys_are_the_hashes_of_the_identities() {
        let raw = br#"{"entry":[{"messaging":[{"message":{"mid":"m_1"}}]}]}"#;
        let doc: Map<String, Value> = serde_json::from_slice(raw).unwrap();
        let keys = Identity::of(raw, &doc).keys();
        assert_eq!(keys.body, DedupKey::of(&body_key(raw)));
        assert_eq!(keys.items, Some(vec![DedupKey::of("mid:m_1")]));
    }

    #[test]
    fn describes_object_and_field() {
        let d = |v: Value| describe(v.as_object().unwrap());
        assert_eq!(
            d(
                json!({"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages"}]}]})
            ),
            ("whatsapp_business_account".into(), "messages".into())
        );
        assert_eq!(
            d(json!({"object":"user","entry":[{"changed_fields":["photos"]}]})),
            ("user".into(), "photos".into())
        );
        assert_eq!(
            d(json!({"object":"page","entry":[{"messaging":[]}]})),
            ("page".into(), "messaging".into())
        );
        assert_eq!(
            d(json!({"object":"instagram","entry":[{"messaging":[{"message":{"mid":"m"}}]}]})),
            ("instagram".into(), "messages".into())
        );
        assert_eq!(
            d(json!({"object":"instagram","entry":[{"messaging":[{"read":{"mid":"m"}}]}]})),
            ("instagram".into(), "messaging_seen".into())
        );
        assert_eq!(
            d(json!({"app_id":"1","topic":"moderate"})),
            ("threads".into(), "moderate".into())
        );
        assert_eq!(
            d(json!({"app_id":"1","topic":"moderate","values":[{"field":"replies"}]})),
            ("threads".into(), "replies".into())
        );
        assert_eq!(
            d(json!({"object":"page","entry":[{"standby":[{"message":{}}]}]})),
            ("page".into(), "standby".into())
        );
        assert_eq!(d(json!({"object":7})), ("".into(), "".into()));
    }

    #[test]
    fn body_key_is_the_hash_of_the_raw_bytes() {
        assert_ne!(body_key(b"{\"a\":1}"), body_key(b"{\"a\": 1}"));
        assert_eq!(
            body_key(b""),
            "body:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
