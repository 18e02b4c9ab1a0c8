//! Fuzzes the query-string check of the verification request (`GET
//! ?hub.mode=subscribe&hub.challenge=…&hub.verify_token=…`).
//!
//! Invariants: it never panics; its outcome is the contract's (400 naming the first
//! missing parameter, 403 for another mode or a wrong token, else the challenge),
//! judged against a form decoder written out here; the first copy of a repeated
//! parameter counts; a query built from arbitrary Unicode parameters gives back the
//! challenge exactly; nothing else of the query (the token above all) is ever returned.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use xhubd_fuzz::secret::Secret;
use xhubd_fuzz::webhook::challenge::{check, Challenge};

#[derive(Arbitrary, Debug)]
enum Param<'a> {
    Mode(&'a str),
    Challenge(&'a str),
    /// The configured token, or another value.
    Token(Option<&'a str>),
    Other(&'a str, &'a str),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    token: &'a str,
    /// A query string as a client may send it, taken as is.
    raw: &'a str,
    /// A query built from these parameters, percent-encoded.
    params: Vec<Param<'a>>,
}

/// `application/x-www-form-urlencoded` decoding, written out independently of the
/// `url` crate: `&`-separated pairs (empty ones skipped), split at the first `=`,
/// `+` as space, `%XX` as a byte (a `%` not followed by two hex digits stays),
/// then UTF-8 with replacement characters.
fn decode_form(query: &str) -> Vec<(String, String)> {
    fn hex(digit: u8) -> Option<u8> {
        char::from(digit)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    fn decode(part: &[u8]) -> String {
        let mut out = Vec::with_capacity(part.len());
        let mut i = 0;
        while i < part.len() {
            match part[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < part.len() => match (hex(part[i + 1]), hex(part[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(high << 4 | low);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .as_bytes()
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (decode(&pair[..eq]), decode(&pair[eq + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// The contract's answer for these decoded parameters.
fn expected(pairs: &[(String, String)], token: &str) -> Challenge {
    let first = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(mode) = first("hub.mode") else {
        return Challenge::Missing("hub.mode");
    };
    let Some(challenge) = first("hub.challenge").filter(|c| !c.is_empty()) else {
        return Challenge::Missing("hub.challenge");
    };
    let Some(given) = first("hub.verify_token") else {
        return Challenge::Missing("hub.verify_token");
    };
    if mode != "subscribe" {
        Challenge::WrongMode
    } else if given != token {
        Challenge::WrongToken
    } else {
        Challenge::Answer(challenge.to_owned())
    }
}

fuzz_target!(|input: Input<'_>| {
    let secret = Secret::new(input.token.as_bytes());

    // A raw query, as sent.
    let outcome = check(Some(input.raw), &secret);
    assert_eq!(outcome, expected(&decode_form(input.raw), input.token));
    if let Challenge::Answer(answer) = &outcome {
        assert!(!answer.is_empty());
    }
    assert_eq!(
        check(None, &secret),
        Challenge::Missing("hub.mode"),
        "no query at all"
    );

    // A query built from parameters: every value survives the encoding exactly.
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let mut pairs = Vec::new();
    for param in &input.params {
        let (key, value) = match *param {
            Param::Mode(v) => ("hub.mode", v),
            Param::Challenge(v) => ("hub.challenge", v),
            Param::Token(None) => ("hub.verify_token", input.token),
            Param::Token(Some(v)) => ("hub.verify_token", v),
            Param::Other(k, v) => (k, v),
        };
        query.append_pair(key, value);
        pairs.push((key.to_owned(), value.to_owned()));
    }
    let query = query.finish();
    let outcome = check(Some(&query), &secret);
    assert_eq!(outcome, expected(&pairs, input.token));
    if let Challenge::Answer(answer) = outcome {
        let challenge = pairs.iter().find(|(k, _)| k == "hub.challenge");
        assert_eq!(Some(answer.as_str()), challenge.map(|(_, v)| v.as_str()));
    }
});
