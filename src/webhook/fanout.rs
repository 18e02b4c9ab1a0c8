//! Which destinations of a route get which items of an event, and what each is sent
//! (DESIGN.md "What a destination receives"): all of its items, the body as Meta sent
//! it with Meta's signatures; some, a narrowed body signed anew (with the App Secret
//! that verified the request, or the destination's `sign_secret_file`; `sha1=` too when
//! Meta sent one); none, nothing. `split = "item"`: one request per item. Decided when
//! the event is accepted, and stored with it.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::items::{ItemFacts, Notification};
use super::signature;
use crate::config::routes::{Destination, Match, Order, Route, Split};
use crate::secret::Secret;
use crate::types::{DestinationKey, NewDelivery};

/// The deliveries of one event, and how many of its items no destination takes.
#[derive(Debug)]
pub struct Plan {
    /// One per destination (and part).
    pub deliveries: Vec<NewDelivery>,
    /// Items stored but delivered nowhere (`xhubd_items_unrouted_total`).
    pub unrouted: usize,
}

/// Plans the deliveries of an event on `route` (`raw`, parsed as `doc`). `secret`
/// verified the request; `meta_sha1` says whether Meta sent an `X-Hub-Signature`. When
/// every destination takes every event whole (no `match`, `fallback`, `split`, signing
/// secret or `order` of its own), the items are not even looked at. A destination with
/// `order = "conversation"` gets with each delivery the conversation keys of the items
/// it holds.
pub fn plan(
    route: &Route,
    raw: &[u8],
    doc: &serde_json::Map<String, serde_json::Value>,
    secret: &Secret,
    meta_sha1: bool,
) -> Plan {
    if route.destinations.iter().all(takes_every_event_whole) {
        return Plan {
            deliveries: route
                .destinations
                .iter()
                .map(|d| NewDelivery {
                    destination: DestinationKey::new(&route.name, &d.name),
                    part: None,
                    body: None,
                    signature: None,
                    signature_sha1: None,
                    conversations: Vec::new(),
                })
                .collect(),
            unrouted: 0,
        };
    }
    let notification = Notification::parse(raw, doc);
    let notification = &notification;
    let items = &notification.items;
    // For each item, the destinations that take it.
    let mut takers: Vec<Vec<usize>> = Vec::with_capacity(items.len());
    let mut unrouted = 0;
    for item in items {
        let direct: Vec<usize> = route
            .destinations
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.fallback && allows(&d.matches, &item.facts))
            .map(|(i, _)| i)
            .collect();
        let chosen = if direct.is_empty() {
            route
                .destinations
                .iter()
                .enumerate()
                .filter(|(_, d)| d.fallback && allows(&d.matches, &item.facts))
                .map(|(i, _)| i)
                .collect()
        } else {
            direct
        };
        if chosen.is_empty() {
            unrouted += 1;
        }
        takers.push(chosen);
    }
    let mut deliveries = Vec::new();
    for (index, destination) in route.destinations.iter().enumerate() {
        let keep: Vec<bool> = takers.iter().map(|t| t.contains(&index)).collect();
        if !keep.iter().any(|k| *k) {
            continue;
        }
        let key = DestinationKey::new(&route.name, &destination.name);
        let all = keep.iter().all(|k| *k);
        let ordered = destination.order == Order::Conversation;
        match destination.split {
            Split::Item => {
                let parts = notification.split(&keep);
                let n = parts.len() as u32;
                // Part i holds the i-th item kept.
                let kept = keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i);
                for ((i, bytes), item) in parts.into_iter().enumerate().zip(kept) {
                    let whole = all && n == 1;
                    let mut planned = delivery(
                        &key,
                        Some((i as u32 + 1, n)),
                        bytes,
                        whole,
                        destination,
                        notification.raw(),
                        secret,
                        meta_sha1,
                    );
                    if ordered {
                        planned.conversations = notification.conversations_of_item(item);
                    }
                    deliveries.push(planned);
                }
            }
            Split::None => {
                let bytes = if all {
                    Vec::new()
                } else {
                    notification.narrowed(&keep)
                };
                let mut planned = delivery(
                    &key,
                    None,
                    bytes,
                    all,
                    destination,
                    notification.raw(),
                    secret,
                    meta_sha1,
                );
                if ordered {
                    planned.conversations = notification.conversations(&keep);
                }
                deliveries.push(planned);
            }
        }
    }
    Plan {
        deliveries,
        unrouted,
    }
}

/// One delivery. `whole`: it sends the event's body as Meta sent it (`bytes` unused),
/// with Meta's signatures unless the destination signs with its own secret.
#[allow(clippy::too_many_arguments)]
fn delivery(
    key: &DestinationKey,
    part: Option<(u32, u32)>,
    bytes: Vec<u8>,
    whole: bool,
    destination: &Destination,
    raw: &[u8],
    secret: &Secret,
    meta_sha1: bool,
) -> NewDelivery {
    if whole && destination.sign_secret.is_none() {
        return NewDelivery {
            destination: key.clone(),
            part,
            body: None,
            signature: None,
            signature_sha1: None,
            conversations: Vec::new(),
        };
    }
    let secret = destination.sign_secret.as_ref().unwrap_or(secret);
    let signed: &[u8] = if whole { raw } else { &bytes };
    NewDelivery {
        destination: key.clone(),
        part,
        signature: Some(signature::sign(secret.expose(), signed)),
        signature_sha1: meta_sha1.then(|| sign_sha1(secret.expose(), signed)),
        body: (!whole).then(|| Bytes::from(bytes)),
        conversations: Vec::new(),
    }
}

/// The `X-Hub-Signature` value (`sha1=` and the hex HMAC-SHA1) of `body` with `secret`,
/// as Meta's older header is computed.
pub fn sign_sha1(secret: &[u8], body: &[u8]) -> String {
    match Hmac::<Sha1>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// Whether a destination takes every event as Meta sent it.
fn takes_every_event_whole(d: &Destination) -> bool {
    d.matches == Match::default()
        && !d.fallback
        && d.split == Split::None
        && d.sign_secret.is_none()
        && d.order == Order::None
}

/// Whether a destination's `match` allows an item: every key given must hold.
pub fn allows(m: &Match, item: &ItemFacts) -> bool {
    let any_of = |list: &Option<Vec<String>>, value: Option<&str>| match list {
        None => true,
        Some(list) => value.is_some_and(|v| list.iter().any(|l| l == v)),
    };
    let any_in = |list: &Option<Vec<String>>, values: &[String]| match list {
        None => true,
        Some(list) => values.iter().any(|v| list.contains(v)),
    };
    any_of(&m.object, Some(&item.object))
        && any_of(&m.entry_id, item.entry_id.as_deref())
        && any_in(&m.field, &item.fields)
        && any_in(&m.value_has, &item.value_has)
        && any_of(&m.phone_number_id, item.phone_number_id.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_a_known_vector() {
        // RFC 2202, test case 2.
        assert_eq!(
            sign_sha1(b"Jefe", b"what do ya want for nothing?"),
            "sha1=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn an_ordered_destination_gets_the_conversations_of_what_each_delivery_holds() {
        use crate::config::routes::{default_route, Defaults};
        use std::time::Duration;
        let second = Duration::from_secs(1);
        let defaults = Defaults {
            concurrency: 1,
            timeout: second,
            retry_for: second,
            retry_initial: second,
            retry_max_delay: second,
            order: Order::Conversation,
            order_hold: second,
            rate: None,
        };
        let url = url::Url::parse("http://127.0.0.1:1/").unwrap();
        let secret = Secret::new("s");
        let mut route = default_route(Secret::new("t"), vec![secret.clone()], url, None, defaults);
        let raw = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messages":[{"from":"111","id":"a"}]}},{"field":"messages","value":{"statuses":[{"id":"b","status":"read","recipient_id":"222"}]}}]}]}"#;
        let doc = serde_json::from_slice(raw).unwrap();
        let conversations = |route: &Route| -> Vec<Vec<String>> {
            plan(route, raw, &doc, &secret, false)
                .deliveries
                .into_iter()
                .map(|d| d.conversations)
                .collect()
        };
        // Whole: every item's user; the body is still Meta's, unsigned anew.
        let whole = plan(&route, raw, &doc, &secret, false);
        assert!(whole.deliveries[0].body.is_none() && whole.deliveries[0].signature.is_none());
        assert_eq!(
            conversations(&route),
            [vec!["whatsapp:111".to_owned(), "whatsapp:222".to_owned()]]
        );
        // Split: each part its own item's user.
        route.destinations[0].split = Split::Item;
        assert_eq!(
            conversations(&route),
            [
                vec!["whatsapp:111".to_owned()],
                vec!["whatsapp:222".to_owned()]
            ]
        );
        // Narrowed to the statuses: only that user.
        route.destinations[0].split = Split::None;
        route.destinations[0].matches.value_has = Some(vec!["statuses".into()]);
        assert_eq!(conversations(&route), [vec!["whatsapp:222".to_owned()]]);
        // Not ordered: no keys.
        route.destinations[0].order = Order::None;
        assert_eq!(conversations(&route), [Vec::<String>::new()]);
    }

    #[test]
    fn every_given_key_must_hold() {
        let item = ItemFacts {
            object: "whatsapp_business_account".into(),
            entry_id: Some("1".into()),
            fields: vec!["messages".into()],
            value_has: vec!["statuses".into()],
            phone_number_id: Some("111".into()),
        };
        let list = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        assert!(allows(&Match::default(), &item));
        assert!(allows(
            &Match {
                field: list(&["messages"]),
                phone_number_id: list(&["222", "111"]),
                ..Match::default()
            },
            &item
        ));
        assert!(!allows(
            &Match {
                field: list(&["messages"]),
                value_has: list(&["messages"]),
                ..Match::default()
            },
            &item
        ));
        let no_field = ItemFacts {
            fields: vec![],
            ..item.clone()
        };
        assert!(!allows(
            &Match {
                field: list(&["messages"]),
                ..Match::default()
            },
            &no_field
        ));
        assert!(allows(&Match::default(), &no_field));
    }
}
