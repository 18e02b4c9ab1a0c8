//! Properties checked on generated inputs (proptest): what `xhubd sign` prints always
//! verifies; one flipped bit of the body or of the signature header is always refused;
//! and, against the real binary, the body forwarded upstream is byte for byte the body
//! that was accepted.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use xhubd::cli::SignArgs;
use xhubd::secret::Secret;
use xhubd::webhook::signature::{verify, SignatureError};

use common::{Options, Upstream, Xhubd, APP_SECRET};

/// Signs `body` the way `xhubd sign --secret SECRET FILE` does.
fn sign_file(dir: &tempfile::TempDir, secret: &str, body: &[u8]) -> String {
    let file = dir.path().join("body");
    std::fs::write(&file, body).expect("write the body to sign");
    xhubd::sign::run(&SignArgs {
        secret: Some(secret.to_owned()),
        secret_file: None,
        file: Some(file),
    })
    .expect("xhubd sign reads the file")
}

/// An App Secret: what Meta issues is 32 hex digits, but any text must work that the
/// rule for secrets keeps as it is (no surrounding whitespace, no comma or line end,
/// which separate the secrets of a list).
fn secret() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{32}",
        any::<String>().prop_filter("a secret the rule keeps whole", |s| {
            !s.is_empty() && s.trim() == s && !s.contains([',', '\n'])
        })
    ]
}

proptest! {
    #![proptest_config(Config::with_cases(256))]

    /// What `xhubd sign` prints verifies under its secret, alone or among others, in
    /// either case, and under no other secret.
    #[test]
    fn signed_bodies_verify(
        key in secret(),
        others in prop::collection::vec(secret(), 0..3),
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let header = sign_file(&dir, &key, &body);
        prop_assert!(header.starts_with("sha256=") && header.len() == 71, "{header}");
        let mut secrets: Vec<Secret> =
            others.iter().map(|s| Secret::new(s.as_bytes())).collect();
        let without = verify(Some(header.as_bytes()), &body, &secrets);
        // Two different texts are different HMAC keys, except when one is the other
        // with NUL bytes added at the end (HMAC pads keys with zeros).
        let same_key = |o: &String| o.trim_end_matches('\0') == key.trim_end_matches('\0');
        if !others.iter().any(same_key) {
            prop_assert_eq!(without, Err(SignatureError::Mismatch));
        }
        let at = secrets.len() / 2;
        secrets.insert(at, Secret::new(key.as_bytes()));
        prop_assert_eq!(verify(Some(header.as_bytes()), &body, &secrets), Ok(()));
        let upper = format!("sha256={}", header["sha256=".len()..].to_uppercase());
        prop_assert_eq!(verify(Some(upper.as_bytes()), &body, &secrets), Ok(()));
    }

    /// One flipped bit anywhere in the body is refused.
    #[test]
    fn a_flipped_body_bit_is_refused(
        key in secret(),
        body in prop::collection::vec(any::<u8>(), 1..2048),
        bit in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let header = sign_file(&dir, &key, &body);
        let secrets = [Secret::new(key.as_bytes())];
        let bit = bit.index(body.len() * 8);
        let mut changed = body.clone();
        changed[bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(
            verify(Some(header.as_bytes()), &changed, &secrets),
            Err(SignatureError::Mismatch)
        );
    }

    /// Each of the 568 single-bit flips of the header is refused, except those that
    /// only change the case of a hex letter: the contract accepts either case, and
    /// such a header carries the same digest.
    #[test]
    fn every_flipped_header_bit_is_refused(
        key in secret(),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let header = sign_file(&dir, &key, &body).into_bytes();
        let secrets = [Secret::new(key.as_bytes())];
        let mut case_only = 0;
        for bit in 0..header.len() * 8 {
            let mut changed = header.clone();
            changed[bit / 8] ^= 1 << (bit % 8);
            let outcome = verify(Some(&changed), &body, &secrets);
            let in_digits = bit / 8 >= "sha256=".len();
            if in_digits && changed.eq_ignore_ascii_case(&header) {
                case_only += 1;
                prop_assert_eq!(outcome, Ok(()), "bit {}", bit);
            } else {
                prop_assert!(
                    outcome.is_err(),
                    "bit {} verified: {:?}",
                    bit,
                    String::from_utf8_lossy(&changed)
                );
            }
        }
        // One case bit per hex letter (a-f) among the 64 digits.
        let letters = header[7..].iter().filter(|b| b.is_ascii_alphabetic()).count();
        prop_assert_eq!(case_only, letters);
    }
}

// ---------------------------------------------------------------- generated JSON text

/// Whitespace JSON allows between tokens.
fn ws() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![Just(" "), Just("\t"), Just("\n"), Just("\r\n")],
        0..3,
    )
    .prop_map(|parts| parts.concat())
}

/// One character of a JSON string, written raw or escaped as Meta and others do:
/// `\u00e9` with either case of hex, surrogate pairs, `\/`, and the short escapes.
fn string_piece() -> impl Strategy<Value = String> {
    let raw = any::<char>().prop_filter_map("needs escaping", |c| {
        (c != '"' && c != '\\' && !c.is_control()).then(|| c.to_string())
    });
    let unicode = (any::<char>(), any::<bool>()).prop_map(|(c, upper)| {
        let mut units = [0u16; 2];
        c.encode_utf16(&mut units)
            .iter()
            .map(|u| {
                let hex = format!("\\u{u:04x}");
                if upper {
                    hex.to_uppercase().replace("\\U", "\\u")
                } else {
                    hex
                }
            })
            .collect::<String>()
    });
    let short = prop::sample::select(vec![
        "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t",
    ])
    .prop_map(str::to_owned);
    prop_oneof![4 => raw, 2 => unicode, 1 => short, 1 => "[a-z0-9/_.]{1,8}"]
}

fn json_string() -> impl Strategy<Value = String> {
    prop::collection::vec(string_piece(), 0..12).prop_map(|p| format!("\"{}\"", p.concat()))
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,2})?",
    ]
}

/// Any JSON value as text, nested a few levels, with whitespace between tokens.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        json_number(),
        json_string(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone(), ws()), 0..6).prop_map(|items| {
                let items: Vec<String> = items.into_iter().map(|(a, v, b)| a + &v + &b).collect();
                format!("[{}]", items.join(","))
            }),
            members(inner).prop_map(|m| format!("{{{m}}}")),
        ]
    })
}

/// The members of an object, without the braces.
fn members(value: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop::collection::vec((ws(), json_string(), ws(), ws(), value, ws()), 0..6).prop_map(
        |members| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                .collect();
            members.join(",")
        },
    )
}

/// A JSON object body: leading and trailing whitespace, a first member that makes it
/// unique (filled in by the test), then generated members.
fn json_object_parts() -> impl Strategy<Value = (String, String, String)> {
    (ws(), members(json_value()), ws())
}

/// How long one forwarded body may take to reach the upstream.
const DELIVERY_LIMIT: Duration = Duration::from_secs(10);

/// Signed JSON object bodies sent to the real daemon reach the upstream byte for byte,
/// with Meta's signature header unchanged.
#[test]
fn forwarded_body_equals_accepted_body() {
    let upstream = Upstream::start();
    let xhubd = Xhubd::start(Options::new(&upstream.url("/events")));
    let sent = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&json_object_parts(), |(before, members, after)| {
        // Every attempt, shrinking included, is a new event: the daemon must not take
        // it for a retry of an earlier one.
        let n = sent.fetch_add(1, Ordering::SeqCst);
        let separator = if members.is_empty() { "" } else { "," };
        let body = format!("{before}{{\"case\":{n}{separator}{members}}}{after}").into_bytes();
        prop_assert!(
            matches!(
                serde_json::from_slice(&body),
                Ok(serde_json::Value::Object(_))
            ),
            "the generator made something that is not a JSON object: {}",
            String::from_utf8_lossy(&body)
        );
        let before = upstream.count();
        let answer = xhubd.target.post_signed(&body);
        prop_assert_eq!(answer.status, 200, "{}", answer.text());

        let deadline = Instant::now() + DELIVERY_LIMIT;
        let received = loop {
            let received = upstream.received();
            if received.len() > before {
                break received;
            }
            if Instant::now() > deadline {
                return Err(TestCaseError::fail(format!(
                    "the event was not delivered within {DELIVERY_LIMIT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        prop_assert_eq!(
            received.len(),
            before + 1,
            "one delivery per accepted event"
        );
        let last = &received[before];
        prop_assert!(
            last.body.as_ref() == body.as_slice(),
            "forwarded {:?}\naccepted  {:?}",
            String::from_utf8_lossy(&last.body),
            String::from_utf8_lossy(&body)
        );
        let signature = common::sign(APP_SECRET, &body);
        prop_assert_eq!(last.header("x-hub-signature-256"), Some(signature.as_str()));
        prop_assert_eq!(last.header("content-type"), Some("application/json"));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{}", xhubd.logs());
    }
    assert_eq!(upstream.count(), 48, "every case delivered once");
}
