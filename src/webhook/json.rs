//! A notification body as a JSON object, by RFC 8259's grammar.
//!
//! The grammar (RFC 8259 section 7) allows any `\uXXXX` escape in a string, including a
//! UTF-16 surrogate that has no partner (a truncated emoji, `"\ud83d"`); serde_json
//! refuses those, because such a string is not Unicode. Meta signs and sends what it
//! has, and a refused event is retried for hours and then lost. So a body that fails to
//! parse only because of lone surrogates is parsed again from a copy in which each of
//! them reads `\ufffd` (the replacement character, an escape of the same length); the
//! stored and forwarded bytes stay the original ones.

use serde_json::{Map, Value};

/// Why a body is not a JSON object.
#[derive(Debug)]
pub enum JsonError {
    /// Valid JSON, but not an object (an array, a string, ...).
    NotAnObject,
    /// Not JSON at all.
    Invalid(serde_json::Error),
}

/// Parses `raw` as a JSON object.
pub fn parse_object(raw: &[u8]) -> Result<Map<String, Value>, JsonError> {
    let parsed = match serde_json::from_slice::<Value>(raw) {
        Err(first) => match without_lone_surrogates(raw) {
            Some(copy) => serde_json::from_slice::<Value>(&copy).map_err(|_| first),
            None => Err(first),
        },
        ok => ok,
    };
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(JsonError::NotAnObject),
        Err(e) => Err(JsonError::Invalid(e)),
    }
}

/// Parses any JSON value by the same grammar, `None` when it is not JSON.
pub fn parse_value(raw: &[u8]) -> Option<Value> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(v) => Some(v),
        Err(_) => serde_json::from_slice::<Value>(&without_lone_surrogates(raw)?).ok(),
    }
}

/// A copy of `raw` with every lone surrogate escape replaced by `\ufffd`, or `None`
/// when it has none. A `\` always starts a two-character escape or a `\uXXXX` one, so
/// scanning from one backslash to the next never mistakes `\\u` for an escape.
fn without_lone_surrogates(raw: &[u8]) -> Option<Vec<u8>> {
    let mut copy: Option<Vec<u8>> = None;
    let mut at = 0;
    while let Some(found) = raw
        .get(at..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\\'))
    {
        let start = at + found;
        let Some(unit) = escaped_unit(raw, start) else {
            at = start + 2;
            continue;
        };
        at = start + 6;
        let lone = match unit {
            0xD800..=0xDBFF => match escaped_unit(raw, start + 6) {
                Some(0xDC00..=0xDFFF) => {
                    at = start + 12;
                    false
                }
                _ => true,
            },
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            copy.get_or_insert_with(|| raw.to_vec())[start..start + 6].copy_from_slice(b"\\ufffd");
        }
    }
    copy
}

/// The code unit of a `\uXXXX` escape starting at `at`, if there is one.
fn escaped_unit(raw: &[u8], at: usize) -> Option<u16> {
    let escape = raw.get(at..at + 6)?;
    if escape[0] != b'\\' || escape[1] != b'u' {
        return None;
    }
    let hex = std::str::from_utf8(&escape[2..]).ok()?;
    u16::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(raw: &str) -> String {
        match parse_object(raw.as_bytes()) {
            Ok(map) => map["t"].as_str().unwrap_or_default().to_owned(),
            Err(e) => panic!("{raw}: {e:?}"),
        }
    }

    #[test]
    fn lone_surrogates_are_read_as_replacement_characters() {
        assert_eq!(text(r#"{"t":"a\ud83d"}"#), "a\u{fffd}");
        assert_eq!(text(r#"{"t":"\udc00x"}"#), "\u{fffd}x");
        assert_eq!(text(r#"{"t":"\ud83d\ud83d\ude00"}"#), "\u{fffd}😀");
        assert_eq!(text(r#"{"t":"\uD83D"}"#), "\u{fffd}");
    }

    #[test]
    fn everything_else_is_read_as_written() {
        assert_eq!(
            text(r#"{"t":"\ud83d\ude00 caf\u00e9 \/ \\ud83d"}"#),
            "😀 café / \\ud83d"
        );
        assert!(without_lone_surrogates(br#"{"t":"\ud83d\ude00\\ud83d"}"#).is_none());
    }

    #[test]
    fn what_the_grammar_refuses_stays_refused() {
        for raw in [
            r#"{"t":"\ud83d"#,
            r#"{"t":"\u12"}"#,
            r#"{"t":"\ud83d",}"#,
            r#"{"t":"\x"}"#,
            r#"\ud83d"#,
            "",
            "\\",
            r#"{"a":"\"#,
            r#"{"a":"x\u"#,
            r#"{"a":"\ud83d\"#,
        ] {
            assert!(
                matches!(parse_object(raw.as_bytes()), Err(JsonError::Invalid(_))),
                "{raw}"
            );
        }
        assert!(matches!(
            parse_object(br#"["\ud83d"]"#),
            Err(JsonError::NotAnObject)
        ));
    }
}
