//! Fuzzes the de-duplication identity of a notification: the body key and the item
//! ids, over arbitrary JSON and over Meta-shaped payloads built from arbitrary parts.
//!
//! Invariants: nothing panics (the tolerant JSON parser included, which accepts every
//! object serde_json accepts); the body key is `body:` and the SHA-256 of the raw
//! bytes; item keys exist only when every item has an id, and they are exactly the ids
//! the payload was built with; they do not depend on how the JSON is written (spacing,
//! `\u00e9` and `\/` escapes) nor on `time`; one item without an id turns them off, one
//! more item with an id adds exactly its key.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use xhubd_fuzz::webhook::identity::{describe, Identity};
use xhubd_fuzz::webhook::items::Notification;
use xhubd_fuzz::webhook::json::parse_object;

/// An id field as it may arrive: a string, something else, or absent.
#[derive(Arbitrary, Debug)]
enum Id<'a> {
    Text(&'a str),
    Number(i64),
    Absent,
}

impl Id<'_> {
    fn insert(&self, object: &mut Map<String, Value>, name: &str) -> Option<String> {
        match *self {
            Id::Text(t) => {
                object.insert(name.to_owned(), json!(t));
                // An empty string is not an id.
                (!t.is_empty()).then(|| t.to_owned())
            }
            Id::Number(n) => {
                object.insert(name.to_owned(), json!(n));
                None
            }
            Id::Absent => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Status<'a> {
    id: Id<'a>,
    status: Id<'a>,
}

#[derive(Arbitrary, Debug)]
struct Change<'a> {
    field: &'a str,
    messages: Option<Vec<Id<'a>>>,
    statuses: Option<Vec<Status<'a>>>,
}

#[derive(Arbitrary, Debug)]
enum Entry<'a> {
    Changes(Vec<Change<'a>>),
    Messaging(Vec<Option<Id<'a>>>),
    Both(Vec<Change<'a>>, Vec<Option<Id<'a>>>),
    ChangedFields(Vec<&'a str>),
}

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    /// Any bytes; most are not JSON, some are.
    Raw(&'a [u8]),
    /// A Meta-shaped notification.
    Built {
        object: &'a str,
        time: u32,
        entries: Vec<Entry<'a>>,
    },
}

/// Builds the `changes[]` of an entry; returns the keys it must give (None: an item
/// without an id).
fn changes(list: &[Change<'_>], keys: &mut Option<Vec<String>>) -> Value {
    let mut out = Vec::new();
    for change in list {
        let mut value = Map::new();
        value.insert("messaging_product".into(), json!("whatsapp"));
        let mut own = Vec::new();
        let mut complete = change.messages.is_some() || change.statuses.is_some();
        if let Some(messages) = &change.messages {
            let mut list = Vec::new();
            for id in messages {
                let mut message = Map::new();
                message.insert("type".into(), json!("text"));
                match id.insert(&mut message, "id") {
                    Some(id) => own.push(format!("wa.msg:{id}")),
                    None => complete = false,
                }
                list.push(Value::Object(message));
            }
            value.insert("messages".into(), Value::Array(list));
        }
        if let Some(statuses) = &change.statuses {
            let mut list = Vec::new();
            for status in statuses {
                let mut object = Map::new();
                let id = status.id.insert(&mut object, "id");
                let state = status.status.insert(&mut object, "status");
                match (id, state) {
                    (Some(id), Some(state)) => own.push(format!("wa.status:{id}:{state}")),
                    _ => complete = false,
                }
                list.push(Value::Object(object));
            }
            value.insert("statuses".into(), Value::Array(list));
        }
        // A change whose lists are all empty is an item without an id.
        if !complete || own.is_empty() {
            *keys = None;
        } else if let Some(keys) = keys {
            keys.extend(own);
        }
        out.push(json!({"field": change.field, "value": value}));
    }
    Value::Array(out)
}

/// Builds `messaging[]`; each event has a message with a `mid`, or (None) no message.
fn messaging(list: &[Option<Id<'_>>], keys: &mut Option<Vec<String>>) -> Value {
    let mut out = Vec::new();
    for event in list {
        let mut object = Map::new();
        object.insert("sender".into(), json!({"id": "1"}));
        match event {
            Some(mid) => {
                let mut message = Map::new();
                match mid.insert(&mut message, "mid") {
                    Some(mid) => {
                        if let Some(keys) = keys {
                            keys.push(format!("mid:{mid}"));
                        }
                    }
                    None => *keys = None,
                }
                object.insert("message".into(), Value::Object(message));
            }
            None => {
                object.insert("read".into(), json!({"watermark": 1}));
                *keys = None;
            }
        }
        out.push(Value::Object(object));
    }
    Value::Array(out)
}

/// JSON as Meta writes it: non-ASCII as `\uXXXX` (surrogate pairs beyond the BMP) and
/// `/` as `\/`. Both only ever occur inside strings, so the whole text can be mapped.
fn meta_escaped(doc: &Value) -> Vec<u8> {
    let mut out = String::new();
    for c in doc.to_string().chars() {
        if c == '/' {
            out.push_str("\\/");
        } else if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out.into_bytes()
}

/// The identity of `raw`, which must hold a JSON object.
fn identity(raw: &[u8]) -> Identity {
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(doc)) => Identity::of(raw, &doc),
        other => panic!("not a JSON object: {other:?}"),
    }
}

/// Items and narrowing: at least one item; keeping all gives the raw bytes; keeping any
/// other selection gives a JSON object; nothing panics.
fn check_items(raw: &[u8], doc: &Map<String, Value>) {
    let n = Notification::parse(raw, doc);
    assert!(!n.items.is_empty());
    let all = vec![true; n.items.len()];
    assert_eq!(n.narrowed(&all), raw);
    for pattern in [1usize, 2, 5] {
        let keep: Vec<bool> = (0..n.items.len()).map(|i| i % pattern == 0).collect();
        let narrowed = n.narrowed(&keep);
        match serde_json::from_slice::<Value>(&narrowed) {
            Ok(Value::Object(_)) => {}
            other => panic!(
                "narrowed to {:?}: {other:?}",
                String::from_utf8_lossy(&narrowed)
            ),
        }
    }
    for part in n.split(&all) {
        assert!(matches!(
            serde_json::from_slice::<Value>(&part),
            Ok(Value::Object(_))
        ));
    }
}

/// The invariants every JSON object must satisfy.
fn check_object(raw: &[u8], doc: &Map<String, Value>) {
    let id = Identity::of(raw, doc);
    let _ = describe(doc);
    assert_eq!(
        id.body_key,
        format!("body:{}", hex::encode(Sha256::digest(raw)))
    );
    if let Some(keys) = &id.item_keys {
        assert!(!keys.is_empty());
        for key in keys {
            assert!(
                [
                    "wa.msg:",
                    "wa.msg.edit:",
                    "wa.msg.revoke:",
                    "wa.status:",
                    "wa.echo:",
                    "mid:",
                    "mid.echo:",
                    "mid.deleted:",
                    "mid.echo.deleted:",
                    "mid.edit:"
                ]
                .iter()
                .any(|p| key.starts_with(p)),
                "{key:?}"
            );
        }
    }

    // The same object written otherwise, and sent again later: the same items.
    let mut later = Value::Object(doc.clone());
    if let Some(entries) = later.get_mut("entry").and_then(Value::as_array_mut) {
        for entry in entries.iter_mut().filter_map(Value::as_object_mut) {
            if entry.contains_key("time") {
                entry.insert("time".into(), json!(1_900_000_000u32));
            }
        }
    }
    for rewritten in [
        serde_json::to_vec(doc).unwrap_or_default(),
        serde_json::to_vec_pretty(&later).unwrap_or_default(),
        meta_escaped(&later),
    ] {
        let again = identity(&rewritten);
        assert_eq!(
            again.item_keys,
            id.item_keys,
            "{:?}",
            String::from_utf8_lossy(&rewritten)
        );
        assert_eq!(again.body_key == id.body_key, rewritten == raw);
    }

    // One more entry without ids turns item keys off; one with an id adds its key.
    if let Some(entries) = doc.get("entry").and_then(Value::as_array) {
        let with = |entry: Value| {
            let mut doc = doc.clone();
            let mut entries = entries.clone();
            entries.push(entry);
            doc.insert("entry".into(), Value::Array(entries));
            identity(&serde_json::to_vec(&doc).unwrap_or_default()).item_keys
        };
        assert_eq!(with(json!({"id": "0", "changed_fields": ["photos"]})), None);
        let fresh = with(json!({"messaging": [{"message": {"mid": "m.fresh"}}]}));
        if let Some(keys) = &id.item_keys {
            let mut want = keys.clone();
            want.push("mid:m.fresh".into());
            assert_eq!(fresh, Some(want));
        }
    }
}

fuzz_target!(|input: Input<'_>| match input {
    Input::Raw(raw) => {
        // The tolerant parser never panics, and takes every object serde_json takes.
        let tolerant = parse_object(raw);
        if let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(raw) {
            assert_eq!(tolerant.ok().as_ref(), Some(&doc));
            check_object(raw, &doc);
            check_items(raw, &doc);
        }
    }
    Input::Built {
        object,
        time,
        entries,
    } => {
        let mut keys = Some(Vec::new());
        let mut list = Vec::new();
        for (n, entry) in entries.iter().enumerate() {
            let mut out = Map::new();
            out.insert("id".into(), json!(n.to_string()));
            out.insert("time".into(), json!(time));
            match entry {
                Entry::Changes(c) => {
                    out.insert("changes".into(), changes(c, &mut keys));
                }
                Entry::Messaging(m) => {
                    out.insert("messaging".into(), messaging(m, &mut keys));
                }
                Entry::Both(c, m) => {
                    out.insert("changes".into(), changes(c, &mut keys));
                    out.insert("messaging".into(), messaging(m, &mut keys));
                }
                Entry::ChangedFields(fields) => {
                    out.insert("changed_fields".into(), json!(fields));
                    keys = None;
                }
            }
            list.push(Value::Object(out));
        }
        let keys = keys.filter(|k| !k.is_empty());
        let doc = json!({"object": object, "entry": list});
        let raw = meta_escaped(&doc);
        assert_eq!(identity(&raw).item_keys, keys, "{doc}");
        if let Value::Object(doc) = doc {
            check_object(&raw, &doc);
        }
    }
});
