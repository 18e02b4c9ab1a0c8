//! What makes two notifications "the same event" (DESIGN.md): the SHA-256 of the raw
//! body, and, when every item of the body carries one, the items' own ids (WhatsApp
//! message ids, WhatsApp status id + status, Messenger/Instagram message `mid`).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The dedup keys of one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `body:<sha256 hex>` of the raw bytes.
    pub body_key: String,
    /// The item keys, present only when the body has at least one item and every item
    /// carries an id. A notification is a retry when all of them were seen before.
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
}

/// What the notification is about, for operators: its `object` and the first item's
/// field (`changes[].field`, `changed_fields[]`, `messaging`, or a Threads `topic`).
pub fn describe(doc: &Map<String, Value>) -> (String, String) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let object = text(doc.get("object"));
    let entry = doc
        .get("entry")
        .and_then(Value::as_array)
        .and_then(|e| e.first());
    let field = match entry {
        Some(entry) => {
            if let Some(change) = entry.get("changes").and_then(|c| c.get(0)) {
                text(change.get("field"))
            } else if let Some(first) = entry.get("changed_fields").and_then(|c| c.get(0)) {
                text(Some(first))
            } else if entry.get("messaging").is_some() {
                "messaging".to_owned()
            } else {
                String::new()
            }
        }
        None => text(doc.get("topic")),
    };
    (object, field)
}

/// `body:` and the hex SHA-256 of the raw bytes.
pub fn body_key(raw: &[u8]) -> String {
    format!("body:{}", hex::encode(Sha256::digest(raw)))
}

/// The id of every item in the notification, or `None` as soon as one item has no id
/// (such a body is only ever de-duplicated when byte-identical).
pub fn item_keys(doc: &Map<String, Value>) -> Option<Vec<String>> {
    let entries = doc.get("entry")?.as_array()?;
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.as_object()?;
        let changes = entry.get("changes");
        let messaging = entry.get("messaging");
        if changes.is_none() && messaging.is_none() {
            return None; // e.g. changed_fields, standby: items without ids
        }
        if let Some(changes) = changes {
            for change in changes.as_array()? {
                change_keys(change, &mut keys)?;
            }
        }
        if let Some(messaging) = messaging {
            for event in messaging.as_array()? {
                let mid = event.get("message")?.get("mid")?.as_str()?;
                keys.push(format!("mid:{mid}"));
            }
        }
    }
    if keys.is_empty() {
        None
    } else {
        Some(keys)
    }
}

/// The ids of one `changes[]` item: a WhatsApp value with `messages` and/or `statuses`.
fn change_keys(change: &Value, keys: &mut Vec<String>) -> Option<()> {
    let value = change.get("value")?.as_object()?;
    let messages = value.get("messages");
    let statuses = value.get("statuses");
    if messages.is_none() && statuses.is_none() {
        return None;
    }
    let before = keys.len();
    if let Some(messages) = messages {
        for message in messages.as_array()? {
            let id = message.get("id")?.as_str()?;
            keys.push(format!("wa.msg:{id}"));
        }
    }
    if let Some(statuses) = statuses {
        for status in statuses.as_array()? {
            let id = status.get("id")?.as_str()?;
            let state = status.get("status")?.as_str()?;
            keys.push(format!("wa.status:{id}:{state}"));
        }
    }
    // A change whose lists are empty is an item without an id.
    (keys.len() > before).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: Value) -> Option<Vec<String>> {
        item_keys(v.as_object().unwrap())
    }

    #[test]
    fn whatsapp_messages_and_statuses() {
        let v = json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
            {"field":"messages","value":{"messaging_product":"whatsapp",
              "messages":[{"id":"wamid.A","type":"text"},{"id":"wamid.B"}],
              "statuses":[{"id":"wamid.C","status":"read"}]}}]}]});
        assert_eq!(
            keys(v),
            Some(vec![
                "wa.msg:wamid.A".into(),
                "wa.msg:wamid.B".into(),
                "wa.status:wamid.C:read".into()
            ])
        );
    }

    #[test]
    fn messenger_and_instagram_mids() {
        let v = json!({"object":"page","entry":[{"id":"1","time":1,"messaging":[
            {"sender":{"id":"2"},"message":{"mid":"m_1","text":"hi"}},
            {"sender":{"id":"2"},"message":{"mid":"m_2"}}]}]});
        assert_eq!(keys(v), Some(vec!["mid:m_1".into(), "mid:m_2".into()]));
    }

    #[test]
    fn one_item_without_id_disables_item_dedup() {
        // A Graph change (no ids) next to a WhatsApp message.
        let v = json!({"object":"x","entry":[{"changes":[
            {"field":"messages","value":{"messages":[{"id":"wamid.A"}]}},
            {"field":"photos","value":{"verb":"update"}}]}]});
        assert_eq!(keys(v), None);
        // A Messenger read receipt has no mid.
        let v = json!({"object":"page","entry":[{"messaging":[
            {"message":{"mid":"m_1"}},{"read":{"watermark":1}}]}]});
        assert_eq!(keys(v), None);
        // A status without its status field.
        let v = json!({"entry":[{"changes":[{"value":{"statuses":[{"id":"w"}]}}]}]});
        assert_eq!(keys(v), None);
        // Empty lists, changed_fields, Threads payloads, no entry at all.
        assert_eq!(
            keys(json!({"entry":[{"changes":[{"value":{"messages":[]}}]}]})),
            None
        );
        assert_eq!(
            keys(json!({"object":"user","entry":[{"changed_fields":["photos"]}]})),
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
            d(json!({"app_id":"1","topic":"moderate"})),
            ("".into(), "moderate".into())
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
