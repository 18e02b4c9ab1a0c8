//! The items of a notification (DESIGN.md "Items"), what each is about (the facts a
//! destination's `match` looks at), and the narrowed bodies made of some of them.
//!
//! Items are `entry[].changes[]`, `entry[].messaging[]` and `entry[].standby[]`
//! elements; an entry with none of these (e.g. `changed_fields`) is one item; a body
//! without `entry` (Threads) is one item, or one per element when its `values` is an
//! array. An item is never split further.
//!
//! A narrowed body keeps the members of the body and of each kept entry in their order,
//! with only the kept entries and items; an item array left empty is removed, an entry
//! left with no item is removed, and every kept value is the bytes Meta sent.

use std::ops::Range;

use serde_json::Value;

use super::conversation;
use super::raw::{self, Member};

/// What an item is about, for `match` (DESIGN.md): ids compare as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFacts {
    /// The body's `object`; `threads` for a Threads body.
    pub object: String,
    /// The item's `entry[].id`; a Threads body's `target_id`. A number by its text.
    pub entry_id: Option<String>,
    /// The webhook fields it belongs to, as the dashboard names the subscriptions (none:
    /// a member xhubd does not know).
    pub fields: Vec<String>,
    /// The names of the non-empty arrays in a change's `value`.
    pub value_has: Vec<String>,
    /// A change's `value.metadata.phone_number_id`, as text.
    pub phone_number_id: Option<String>,
}

/// Where an item lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Place {
    /// Element `element` of item array `group` of entry `entry`.
    Element {
        entry: usize,
        group: usize,
        element: usize,
    },
    /// Entry `entry`, whole (no item array).
    Entry(usize),
    /// Element of a Threads body's `values` array.
    Value(usize),
    /// The whole body.
    Whole,
}

/// One item.
#[derive(Debug, Clone)]
pub struct Item {
    place: Place,
    /// What it is about.
    pub facts: ItemFacts,
}

/// An entry: its members, and which of them are item arrays (with their elements).
#[derive(Debug)]
struct Entry {
    span: Range<usize>,
    members: Vec<Member>,
    groups: Vec<(usize, Vec<Range<usize>>)>,
}

/// How the body holds its items.
#[derive(Debug)]
enum Shape {
    /// `entry` (member index) and its entries.
    Entries(usize, Vec<Entry>),
    /// A Threads body's `values` (member index) array.
    Values(usize, Vec<Range<usize>>),
    /// One item, the whole body.
    Whole,
}

/// A notification, split into items.
#[derive(Debug)]
pub struct Notification<'a> {
    raw: &'a [u8],
    top: Vec<Member>,
    shape: Shape,
    /// Its items, in body order (at least one).
    pub items: Vec<Item>,
}

/// The item arrays of an entry, in DESIGN.md's words.
const ITEM_ARRAYS: [&str; 3] = ["changes", "messaging", "standby"];

impl<'a> Notification<'a> {
    /// Splits `raw` (a JSON object, already parsed as `doc`) into items.
    pub fn parse(raw: &'a [u8], doc: &serde_json::Map<String, Value>) -> Notification<'a> {
        let top = raw::members(raw, 0..raw.len()).unwrap_or_default();
        let object = match doc.get("object").and_then(Value::as_str) {
            Some(o) => o.to_owned(),
            None if doc.get("entry").is_none() => "threads".to_owned(),
            None => String::new(),
        };
        let whole = |facts: ItemFacts| Notification {
            raw,
            top: top.clone(),
            shape: Shape::Whole,
            items: vec![Item {
                place: Place::Whole,
                facts,
            }],
        };
        let find = |name: &str| top.iter().rposition(|m| m.key == name);
        // A key given twice where items live: what serde read (the last) and what a
        // narrowed body would copy (all) could differ, so such a body is never split.
        let twice = |members: &[Member], names: &[&str]| {
            names
                .iter()
                .any(|n| members.iter().filter(|m| m.key == *n).count() > 1)
        };
        if twice(&top, &["entry", "values", "object"]) {
            return whole(ItemFacts {
                object,
                ..ItemFacts::default()
            });
        }
        if let Some(entry_member) = find("entry") {
            let Some(spans) = raw::elements(raw, top[entry_member].value.clone()) else {
                return whole(ItemFacts {
                    object,
                    ..ItemFacts::default()
                });
            };
            let mut entries = Vec::new();
            let mut items = Vec::new();
            for (e, span) in spans.into_iter().enumerate() {
                let members = match raw::members(raw, span.clone()) {
                    Some(members) if !twice(&members, &ITEM_ARRAYS) => members,
                    // Not an object, or an item array named twice: no entry xhubd can
                    // narrow; the body goes whole.
                    _ => {
                        return whole(ItemFacts {
                            object,
                            ..ItemFacts::default()
                        })
                    }
                };
                let entry_id = text_of(raw, &members, "id");
                let mut groups = Vec::new();
                for name in ITEM_ARRAYS {
                    let Some(m) = members.iter().rposition(|m| m.key == name) else {
                        continue;
                    };
                    let Some(elements) = raw::elements(raw, members[m].value.clone()) else {
                        continue;
                    };
                    for (i, element) in elements.iter().enumerate() {
                        let value: Value =
                            super::json::parse_value(&raw[element.clone()]).unwrap_or(Value::Null);
                        let mut facts = ItemFacts {
                            object: object.clone(),
                            entry_id: entry_id.clone(),
                            ..ItemFacts::default()
                        };
                        match name {
                            "changes" => change_facts(raw, element, &value, &mut facts),
                            "messaging" => {
                                // Its members in body order: the first known one decides.
                                let order: Vec<String> = raw::members(raw, element.clone())
                                    .map(|m| m.into_iter().map(|m| m.key).collect())
                                    .unwrap_or_default();
                                facts.fields.extend(
                                    messaging_field(&value, &object, &order).map(str::to_owned),
                                )
                            }
                            _ => facts.fields.push("standby".to_owned()),
                        }
                        items.push(Item {
                            place: Place::Element {
                                entry: e,
                                group: groups.len(),
                                element: i,
                            },
                            facts,
                        });
                    }
                    groups.push((m, elements));
                }
                if groups.is_empty() {
                    let fields = members
                        .iter()
                        .rfind(|m| m.key == "changed_fields")
                        .and_then(|m| super::json::parse_value(&raw[m.value.clone()]))
                        .and_then(|v| v.as_array().cloned())
                        .map(|list| {
                            list.iter()
                                .filter_map(|f| f.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    items.push(Item {
                        place: Place::Entry(e),
                        facts: ItemFacts {
                            object: object.clone(),
                            entry_id,
                            fields,
                            ..ItemFacts::default()
                        },
                    });
                }
                entries.push(Entry {
                    span,
                    members,
                    groups,
                });
            }
            if items.is_empty() {
                return whole(ItemFacts {
                    object,
                    ..ItemFacts::default()
                });
            }
            return Notification {
                raw,
                top,
                shape: Shape::Entries(entry_member, entries),
                items,
            };
        }
        // Threads: {app_id, topic, target_id, time, values}.
        let target_id = text_of(raw, &top, "target_id");
        let fields_of = |value: &Value| -> Vec<String> {
            value
                .get("field")
                .and_then(Value::as_str)
                .map(|f| vec![f.to_owned()])
                .unwrap_or_default()
        };
        if let Some(values_member) = find("values") {
            if let Some(elements) = raw::elements(raw, top[values_member].value.clone()) {
                if !elements.is_empty() {
                    let items = elements
                        .iter()
                        .enumerate()
                        .map(|(i, span)| {
                            let value =
                                super::json::parse_value(&raw[span.clone()]).unwrap_or(Value::Null);
                            Item {
                                place: Place::Value(i),
                                facts: ItemFacts {
                                    object: object.clone(),
                                    entry_id: target_id.clone(),
                                    fields: fields_of(&value),
                                    ..ItemFacts::default()
                                },
                            }
                        })
                        .collect();
                    return Notification {
                        raw,
                        top,
                        shape: Shape::Values(values_member, elements),
                        items,
                    };
                }
            }
        }
        let fields = doc.get("values").map(fields_of).unwrap_or_default();
        whole(ItemFacts {
            object,
            entry_id: target_id,
            fields,
            ..ItemFacts::default()
        })
    }

    /// The body as Meta sent it.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The conversation keys of the items `keep` says (one flag per item, in order),
    /// each once, sorted: those of [`conversation::of_element`], or the item's entry
    /// when it names no user ([`conversation::of_entry`]).
    pub fn conversations(&self, keep: &[bool]) -> Vec<String> {
        let mut keys = std::collections::BTreeSet::new();
        for (item, _) in self.items.iter().zip(keep).filter(|(_, k)| **k) {
            keys.extend(self.conversations_of(item));
        }
        keys.into_iter().collect()
    }

    /// The conversation keys of item `index` alone (see [`Notification::conversations`]).
    pub fn conversations_of_item(&self, index: usize) -> Vec<String> {
        let mut keys = self
            .items
            .get(index)
            .map(|item| self.conversations_of(item))
            .unwrap_or_default();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The keys of one item, perhaps repeated.
    fn conversations_of(&self, item: &Item) -> Vec<String> {
        let users = match (&self.shape, item.place) {
            (
                Shape::Entries(_, entries),
                Place::Element {
                    entry,
                    group,
                    element,
                },
            ) => entries
                .get(entry)
                .and_then(|e| {
                    let (member, elements) = e.groups.get(group)?;
                    let array = &e.members.get(*member)?.key;
                    let span = elements.get(element)?.clone();
                    Some(conversation::of_element(
                        self.raw,
                        array,
                        span,
                        &item.facts.object,
                    ))
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if !users.is_empty() {
            return users;
        }
        let entry = item.facts.entry_id.as_deref().unwrap_or_default();
        conversation::of_entry(&item.facts.object, entry)
            .into_iter()
            .collect()
    }

    /// The body with only the items `keep` says (one flag per item, in order); the raw
    /// body itself when every item is kept.
    pub fn narrowed(&self, keep: &[bool]) -> Vec<u8> {
        if keep.iter().all(|k| *k) {
            return self.raw.to_vec();
        }
        let chosen: std::collections::HashSet<Place> = self
            .items
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(item, _)| item.place)
            .collect();
        let kept = |place: Place| chosen.contains(&place);
        let raw = self.raw;
        let mut out = Vec::with_capacity(raw.len());
        out.push(b'{');
        let mut first = true;
        for (index, member) in self.top.iter().enumerate() {
            let value: Option<Vec<u8>> = match &self.shape {
                Shape::Entries(entry_member, entries) if *entry_member == index => {
                    let mut list = Vec::new();
                    for (e, entry) in entries.iter().enumerate() {
                        if let Some(bytes) = narrowed_entry(raw, entry, e, &kept) {
                            list.push(bytes);
                        }
                    }
                    Some(join_array(&list))
                }
                Shape::Values(values_member, elements) if *values_member == index => {
                    let list: Vec<Vec<u8>> = elements
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| kept(Place::Value(*i)))
                        .map(|(_, span)| raw[span.clone()].to_vec())
                        .collect();
                    Some(join_array(&list))
                }
                _ => Some(raw[member.value.clone()].to_vec()),
            };
            if let Some(value) = value {
                member_out(&mut out, &mut first, &raw[member.key_span.clone()], &value);
            }
        }
        out.push(b'}');
        out
    }

    /// One body per kept item, each holding only that item (in its entry), each built
    /// in the time its own bytes take (a 1000-item batch is 1000 small copies).
    pub fn split(&self, keep: &[bool]) -> Vec<Vec<u8>> {
        if self.items.len() == 1 {
            return if keep.first().copied().unwrap_or(false) {
                vec![self.raw.to_vec()]
            } else {
                Vec::new()
            };
        }
        self.items
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(item, _)| self.part(item.place))
            .collect()
    }

    /// The body holding only the item at `place`.
    fn part(&self, place: Place) -> Vec<u8> {
        let raw = self.raw;
        let mut out = vec![b'{'];
        for (index, member) in self.top.iter().enumerate() {
            let value = match (&self.shape, place) {
                (Shape::Entries(entry_member, entries), Place::Element { entry, .. })
                | (Shape::Entries(entry_member, entries), Place::Entry(entry))
                    if *entry_member == index =>
                {
                    let bytes = entries
                        .get(entry)
                        .and_then(|e| entry_with_one(raw, e, place))
                        .unwrap_or_default();
                    join_array(&[bytes])
                }
                (Shape::Values(values_member, elements), Place::Value(i))
                    if *values_member == index =>
                {
                    let bytes = elements.get(i).map(|s| raw[s.clone()].to_vec());
                    join_array(&[bytes.unwrap_or_default()])
                }
                _ => raw[member.value.clone()].to_vec(),
            };
            member_out(
                &mut out,
                &mut (index == 0),
                &raw[member.key_span.clone()],
                &value,
            );
        }
        out.push(b'}');
        out
    }
}

/// An entry holding only the item at `place` (the whole entry for `Place::Entry`),
/// built without looking at its other items.
fn entry_with_one(raw: &[u8], entry: &Entry, place: Place) -> Option<Vec<u8>> {
    let Place::Element { group, element, .. } = place else {
        return Some(raw[entry.span.clone()].to_vec());
    };
    let (item_member, elements) = entry.groups.get(group)?;
    let mut out = vec![b'{'];
    let mut first = true;
    for (index, member) in entry.members.iter().enumerate() {
        let value = if index == *item_member {
            join_array(&[raw[elements.get(element)?.clone()].to_vec()])
        } else if entry.groups.iter().any(|(m, _)| *m == index) {
            continue; // the entry's other item arrays are left empty: removed
        } else {
            raw[member.value.clone()].to_vec()
        };
        member_out(&mut out, &mut first, &raw[member.key_span.clone()], &value);
    }
    out.push(b'}');
    Some(out)
}

/// An entry with only its kept items, or `None` when none is left.
fn narrowed_entry(
    raw: &[u8],
    entry: &Entry,
    e: usize,
    kept: &dyn Fn(Place) -> bool,
) -> Option<Vec<u8>> {
    if entry.groups.is_empty() {
        return kept(Place::Entry(e)).then(|| raw[entry.span.clone()].to_vec());
    }
    let mut any = false;
    let mut out = vec![b'{'];
    let mut first = true;
    for (index, member) in entry.members.iter().enumerate() {
        let value = match entry.groups.iter().position(|(m, _)| *m == index) {
            Some(g) => {
                let list: Vec<Vec<u8>> = entry.groups[g]
                    .1
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| {
                        kept(Place::Element {
                            entry: e,
                            group: g,
                            element: *i,
                        })
                    })
                    .map(|(_, span)| raw[span.clone()].to_vec())
                    .collect();
                if list.is_empty() {
                    continue; // an item array left empty is removed
                }
                any = true;
                join_array(&list)
            }
            None => raw[member.value.clone()].to_vec(),
        };
        member_out(&mut out, &mut first, &raw[member.key_span.clone()], &value);
    }
    out.push(b'}');
    any.then_some(out)
}

/// Appends `"key":value` to an object being written, after a comma unless `first`.
fn member_out(out: &mut Vec<u8>, first: &mut bool, key: &[u8], value: &[u8]) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.extend_from_slice(key);
    out.push(b':');
    out.extend_from_slice(value);
}

fn join_array(list: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, item) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    out
}

/// A member as text: a string decoded, a number by its bytes; `None` otherwise.
fn text_of(raw: &[u8], members: &[Member], name: &str) -> Option<String> {
    let member = members.iter().rfind(|m| m.key == name)?;
    let bytes = &raw[member.value.clone()];
    match bytes.first()? {
        b'"' => serde_json::from_slice::<String>(bytes).ok(),
        b'-' | b'0'..=b'9' => std::str::from_utf8(bytes).ok().map(str::to_owned),
        _ => None,
    }
}

/// A change's field, the arrays its value holds, and its phone number id.
fn change_facts(raw: &[u8], span: &Range<usize>, change: &Value, facts: &mut ItemFacts) {
    if let Some(field) = change.get("field").and_then(Value::as_str) {
        facts.fields.push(field.to_owned());
    }
    if let Some(value) = change.get("value").and_then(Value::as_object) {
        for (name, member) in value {
            if member.as_array().is_some_and(|a| !a.is_empty()) {
                facts.value_has.push(name.clone());
            }
        }
    }
    // The phone number id as text, a number by its bytes.
    let metadata = raw::members(raw, span.clone())
        .and_then(|m| {
            let value = m.iter().rfind(|m| m.key == "value")?.value.clone();
            raw::members(raw, value)
        })
        .and_then(|m| {
            let metadata = m.iter().rfind(|m| m.key == "metadata")?.value.clone();
            raw::members(raw, metadata)
        });
    if let Some(metadata) = metadata {
        facts.phone_number_id = text_of(raw, &metadata, "phone_number_id");
    }
}

/// The fields of `messaging[]` members that name one whatever the object, as Meta's
/// dashboard names the subscriptions (README keeps the table). `message` and `read`
/// depend on the object and are [`messaging_field`]'s own.
const MESSAGING_MEMBERS: &[(&str, &str)] = &[
    ("delivery", "message_deliveries"),
    ("postback", "messaging_postbacks"),
    ("reaction", "message_reactions"),
    ("optin", "messaging_optins"),
    ("referral", "messaging_referrals"),
    ("message_edit", "message_edits"),
    ("account_linking", "messaging_account_linking"),
    ("pass_thread_control", "messaging_handovers"),
    ("take_thread_control", "messaging_handovers"),
    ("request_thread_control", "messaging_handovers"),
    ("app_roles", "messaging_handovers"),
    ("policy_enforcement", "messaging_policy_enforcement"),
    ("game_play", "messaging_game_plays"),
    ("checkout_update", "messaging_checkout_updates"),
    ("payment", "messaging_payments"),
    ("pre_checkout", "messaging_pre_checkouts"),
    ("messaging_feedback", "messaging_feedback"),
];

/// The webhook field of a `messaging[]` element, as Meta's dashboard names the
/// subscription: its first event member that has one decides, in `order` (the
/// members' order in the body; README keeps the table).
pub fn messaging_field(element: &Value, object: &str, order: &[String]) -> Option<&'static str> {
    let element = element.as_object()?;
    let instagram = object == "instagram";
    order.iter().find_map(|member| {
        let value = element.get(member)?;
        match member.as_str() {
            "message" => {
                let echo = value.get("is_echo").and_then(Value::as_bool) == Some(true);
                // Instagram's echoes come with its `messages` subscription.
                Some(if echo && !instagram {
                    "message_echoes"
                } else {
                    "messages"
                })
            }
            "read" if instagram => Some("messaging_seen"),
            "read" => Some("message_reads"),
            other => MESSAGING_MEMBERS
                .iter()
                .find(|(name, _)| *name == other)
                .map(|(_, field)| *field),
        }
    })
}

/// Every field [`messaging_field`] can name (some more than once).
pub fn messaging_fields() -> impl Iterator<Item = &'static str> {
    [
        "messages",
        "message_echoes",
        "messaging_seen",
        "message_reads",
    ]
    .into_iter()
    .chain(MESSAGING_MEMBERS.iter().map(|(_, field)| *field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Notification<'_> {
        let doc: serde_json::Map<String, Value> = serde_json::from_slice(raw).unwrap();
        Notification::parse(raw, &doc)
    }

    #[test]
    fn a_whatsapp_batch_narrows_to_one_phone_number_with_the_bytes_sent() {
        let raw = br#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"111"},"messages":[{"id":"wamid.A","text":{"body":"caf\u00e9 \/"}}]},"field":"messages"},{"value":{"metadata":{"phone_number_id":222},"statuses":[{"id":"wamid.B","status":"read"}]},"field":"messages"}]}]}"#;
        let n = parse(raw);
        assert_eq!(n.items.len(), 2);
        assert_eq!(n.items[0].facts.phone_number_id.as_deref(), Some("111"));
        assert_eq!(n.items[1].facts.phone_number_id.as_deref(), Some("222"));
        assert_eq!(n.items[0].facts.value_has, ["messages"]);
        assert_eq!(n.items[1].facts.value_has, ["statuses"]);
        assert_eq!(
            n.items[0].facts.entry_id.as_deref(),
            Some("102290129340398")
        );
        let first = n.narrowed(&[true, false]);
        assert_eq!(
            String::from_utf8(first).unwrap(),
            r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"111"},"messages":[{"id":"wamid.A","text":{"body":"caf\u00e9 \/"}}]},"field":"messages"}]}]}"#
        );
        assert_eq!(n.narrowed(&[true, true]), raw.to_vec());
        assert_eq!(n.split(&[true, true]).len(), 2);
    }

    #[test]
    fn entries_left_without_items_go_and_changed_fields_stay_whole() {
        let raw = br#"{"entry":[{"id":1,"time":2,"messaging":[{"read":{"watermark":1}}]},{"id":3,"changed_fields":["name","photos"]}],"object":"page"}"#;
        let n = parse(raw);
        assert_eq!(n.items.len(), 2);
        assert_eq!(n.items[0].facts.fields, ["message_reads"]);
        assert_eq!(n.items[0].facts.entry_id.as_deref(), Some("1"));
        assert_eq!(n.items[1].facts.fields, ["name", "photos"]);
        assert_eq!(
            n.narrowed(&[false, true]),
            br#"{"entry":[{"id":3,"changed_fields":["name","photos"]}],"object":"page"}"#.to_vec()
        );
    }

    #[test]
    fn threads_bodies_route_by_target_and_field() {
        let raw = br#"{"app_id":"1","topic":"moderate","target_id":"99","time":1,"values":[{"value":{"id":"a"},"field":"replies"},{"value":{"id":"b"},"field":"mentions"}]}"#;
        let n = parse(raw);
        assert_eq!(n.items.len(), 2);
        assert_eq!(n.items[1].facts.object, "threads");
        assert_eq!(n.items[1].facts.entry_id.as_deref(), Some("99"));
        assert_eq!(n.items[1].facts.fields, ["mentions"]);
        assert_eq!(
            n.narrowed(&[false, true]),
            br#"{"app_id":"1","topic":"moderate","target_id":"99","time":1,"values":[{"value":{"id":"b"},"field":"mentions"}]}"#.to_vec()
        );
        let single = br#"{"app_id":"1","target_id":"99","values":{"value":{},"field":"replies"}}"#;
        let n = parse(single);
        assert_eq!(n.items.len(), 1);
        assert_eq!(n.items[0].facts.fields, ["replies"]);
    }

    #[test]
    fn messaging_fields_speak_the_dashboard_s_names() {
        let field = |element: Value, object: &str| {
            let order: Vec<String> = element
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            messaging_field(&element, object, &order)
        };
        assert_eq!(
            field(
                serde_json::json!({"sender":{},"message":{"mid":"x"}}),
                "page"
            ),
            Some("messages")
        );
        assert_eq!(
            field(
                serde_json::json!({"message":{"mid":"x","is_echo":true}}),
                "page"
            ),
            Some("message_echoes")
        );
        assert_eq!(
            field(
                serde_json::json!({"message":{"mid":"x","is_echo":true}}),
                "instagram"
            ),
            Some("messages")
        );
        assert_eq!(
            field(serde_json::json!({"read":{}}), "page"),
            Some("message_reads")
        );
        assert_eq!(
            field(serde_json::json!({"read":{}}), "instagram"),
            Some("messaging_seen")
        );
        assert_eq!(field(serde_json::json!({"unknown":{}}), "page"), None);
    }

    #[test]
    fn each_split_part_is_the_body_narrowed_to_its_item() {
        let raw = br#"{"object":"page","entry":[{"id":"1","messaging":[{"message":{"mid":"a"}},{"read":{"watermark":1}}],"standby":[{"message":{"mid":"s"}}]},{"id":"2","changed_fields":["name"]},{"id":"3","time":4,"changes":[{"field":"feed","value":{}}]}]}"#;
        let n = parse(raw);
        assert_eq!(n.items.len(), 5);
        let all = vec![true; 5];
        let parts = n.split(&all);
        for (i, part) in parts.iter().enumerate() {
            let only: Vec<bool> = (0..5).map(|j| j == i).collect();
            assert_eq!(
                String::from_utf8_lossy(part),
                String::from_utf8_lossy(&n.narrowed(&only)),
                "part {i}"
            );
        }
    }

    #[test]
    fn a_key_named_twice_where_items_live_keeps_the_body_whole() {
        let raw = br#"{"object":"page","entry":[{"id":"1","messaging":[{"message":{"mid":"a"}}]}],"entry":[{"id":"2","messaging":[{"read":{}}]}]}"#;
        let n = parse(raw);
        assert_eq!(n.items.len(), 1);
        assert_eq!(n.items[0].facts.fields, Vec::<String>::new());
        let raw = br#"{"object":"page","entry":[{"id":"1","messaging":[{"message":{"mid":"a"}}],"messaging":[{"read":{}}]}]}"#;
        assert_eq!(parse(raw).items.len(), 1);
    }

    #[test]
    fn the_first_member_in_the_body_decides_the_field() {
        // "read" sorts before "referral" but comes second here.
        let raw = br#"{"object":"page","entry":[{"id":"1","messaging":[{"referral":{"ref":"x"},"read":{"watermark":1}}]}]}"#;
        assert_eq!(parse(raw).items[0].facts.fields, ["messaging_referrals"]);
    }
}
