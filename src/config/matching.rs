//! `match` values that cannot be what Meta sends: a misspelt `object` or `field`
//! (`instagam`, `mesages`), a phone number where its id belongs. Such a destination
//! takes nothing, and no error says so: when another destination of the route takes
//! everything, nothing is even counted unrouted. `serve` logs these as warnings at start
//! and on reload, `check` reports them. Never an error: Meta adds objects and fields.

use super::routes::Match;
use super::Config;
use crate::webhook::items;

/// The `object` values of Meta's Webhooks (Graph API reference, "Webhooks": Application,
/// Certificate Transparency, Group, Instagram, Link, Page, Permissions, User, WhatsApp
/// Business Account, Workplace Security; the Marketing API's Ad Account), and `threads`,
/// xhubd's name for a Threads body.
const OBJECTS: &[&str] = &[
    "ad_account",
    "application",
    "certificate_transparency",
    "group",
    "instagram",
    "link",
    "page",
    "permissions",
    "threads",
    "user",
    "whatsapp_business_account",
    "workplace_security",
];

/// Webhook fields as Meta's dashboard names the subscriptions, as far as a misspelling
/// of one is worth a warning, besides the messaging fields routing names
/// ([`items::messaging_fields`]): the common fields of Pages, Instagram, WhatsApp and
/// Threads.
const FIELDS: &[&str] = &[
    "account_alerts",
    "account_review_update",
    "account_update",
    "business_capability_update",
    "comments",
    "delete",
    "email",
    "feed",
    "flows",
    "history",
    "leadgen",
    "live_comments",
    "live_videos",
    "mention",
    "mentions",
    "message_template_quality_update",
    "message_template_status_update",
    "phone_number_name_update",
    "phone_number_quality_update",
    "photos",
    "publish",
    "ratings",
    "replies",
    "security",
    "smb_app_state_sync",
    "smb_message_echoes",
    "standby",
    "story_insights",
    "template_category_update",
    "videos",
];

/// Every field name a misspelling of which is warned of.
fn fields() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().copied().chain(items::messaging_fields())
}

/// The arrays of a WhatsApp change's `value` that `value_has` looks for.
const VALUE_ARRAYS: &[&str] = &["contacts", "errors", "messages", "statuses"];

/// One sentence per suspicious `match` value (no secret in any), naming the route and
/// destination.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut found = Vec::new();
    for route in &config.routes {
        for destination in &route.destinations {
            for problem in problems(&destination.matches) {
                found.push(format!(
                    "destination {}/{}: match {problem} (a value Meta never sends matches nothing)",
                    route.name, destination.name
                ));
            }
        }
    }
    found
}

/// What is wrong with each value of `m`, if anything.
fn problems(m: &Match) -> Vec<String> {
    let mut found = Vec::new();
    let values = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
    for object in values(&m.object) {
        if !OBJECTS.contains(&object.as_str()) {
            found.push(format!(
                "object {object:?}: none of the objects Meta sends ({}){}",
                OBJECTS.join(", "),
                near(&object, OBJECTS.iter().copied())
            ));
        }
    }
    for field in values(&m.field) {
        if fields().any(|known| known == field) {
            continue;
        }
        if field
            .chars()
            .any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        {
            found.push(format!(
                "field {field:?}: not a webhook field's name (lower case, digits and _)"
            ));
        } else if let Some(known) = closest(&field, fields()) {
            found.push(format!(
                "field {field:?}: not a webhook field this release knows; did you mean {known:?}?"
            ));
        }
    }
    for array in values(&m.value_has) {
        if !VALUE_ARRAYS.contains(&array.as_str()) {
            if let Some(known) = closest(&array, VALUE_ARRAYS.iter().copied()) {
                found.push(format!("value_has {array:?}: did you mean {known:?}?"));
            }
        }
    }
    for (key, ids) in [
        ("phone_number_id", values(&m.phone_number_id)),
        ("entry_id", values(&m.entry_id)),
    ] {
        for id in ids {
            if !id.bytes().all(|b| b.is_ascii_digit()) {
                found.push(format!(
                    "{key} {id:?}: not an id, Meta's ids are digits only{}",
                    if key == "phone_number_id" {
                        " (the phone number's id in WhatsApp Manager, not the number)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    found
}

/// A known name at most two edits from `value` (a misspelling of it), if any.
fn closest(value: &str, known: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    known
        .map(|k| (strsim::damerau_levenshtein(value, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

/// `; did you mean X?` for a misspelling of a known name; nothing otherwise.
fn near(value: &str, known: impl Iterator<Item = &'static str>) -> String {
    closest(value, known)
        .map(|k| format!("; did you mean {k:?}?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{problems, Match};

    fn one(key: &str, value: &str) -> Match {
        let v = Some(vec![value.to_owned()]);
        match key {
            "object" => Match {
                object: v,
                ..Match::default()
            },
            "field" => Match {
                field: v,
                ..Match::default()
            },
            "value_has" => Match {
                value_has: v,
                ..Match::default()
            },
            "phone_number_id" => Match {
                phone_number_id: v,
                ..Match::default()
            },
            _ => Match {
                entry_id: v,
                ..Match::default()
            },
        }
    }

    #[test]
    fn misspelt_names_and_numbers_for_ids_are_found() {
        let said = |key: &str, value: &str| problems(&one(key, value)).join("; ");
        assert!(said("object", "instagam").contains("did you mean \"instagram\""));
        assert!(said("object", "shop").contains("none of the objects Meta sends"));
        assert!(said("field", "mesages").contains("did you mean \"messages\""));
        assert!(said("field", "Messages").contains("lower case"));
        assert!(said("value_has", "statuse").contains("did you mean \"statuses\""));
        assert!(said("phone_number_id", "+1 555-0100").contains("not the number"));
        assert!(said("entry_id", "17841400000000001x").contains("digits only"));
    }

    #[test]
    fn what_meta_sends_and_fields_unlike_any_known_pass() {
        for (key, value) in [
            ("object", "whatsapp_business_account"),
            ("object", "threads"),
            ("field", "messages"),
            ("field", "messaging_seen"),
            ("field", "some_new_field_meta_adds"),
            ("value_has", "statuses"),
            ("value_has", "reactions_of_tomorrow"),
            ("phone_number_id", "106540352242922"),
            ("entry_id", "17841400000000001"),
        ] {
            assert_eq!(
                problems(&one(key, value)),
                Vec::<String>::new(),
                "{key} {value}"
            );
        }
    }
}
