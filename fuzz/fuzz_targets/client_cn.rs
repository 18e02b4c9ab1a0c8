//! Fuzzes the client-certificate subject check: the RFC 4514 DN parser and the exact
//! CN match, with arbitrary header bytes and with DNs built from arbitrary attributes.
//!
//! Invariants: nothing panics; a parsed DN written back out (escaped here) parses to
//! the same attributes; a DN built from attributes (escaped, quoted or hex-escaped,
//! any separator) parses to exactly those attributes; the check passes exactly when
//! the DN has one CN attribute and its value is the expected name byte for byte, so a
//! name with anything before or after it, or the name in another attribute, fails.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use xhubd_fuzz::webhook::client_cn::{parse_dn, single_cn, ClientCnCheck, CnError};

const META: &str = "client.webhooks.fbclientcerts.com";
const HEADER: &str = "x-client-subject";

#[derive(Arbitrary, Debug)]
enum Type<'a> {
    Cn,
    LowerCn,
    CommonName,
    Oid,
    PrefixedOid,
    Ou,
    O,
    C,
    Other(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Value<'a> {
    Meta,
    /// The expected name with something before and after it.
    AroundMeta(&'a str, &'a str),
    Any(&'a str),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Form {
    Escaped,
    Quoted,
    HexEscaped,
}

#[derive(Arbitrary, Debug)]
struct Attribute<'a> {
    kind: Type<'a>,
    value: Value<'a>,
    form: Form,
    /// Which separator follows this attribute, and with which spaces.
    separator: u8,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Header bytes, taken as they come.
    raw: &'a [u8],
    attributes: Vec<Attribute<'a>>,
}

/// The CN attribute types the contract names, written out here.
fn is_cn(attribute_type: &str) -> bool {
    ["cn", "commonname", "oid.2.5.4.3"].contains(&attribute_type.to_ascii_lowercase().as_str())
        || attribute_type == "2.5.4.3"
}

/// What the check must answer for a DN with these attributes.
fn oracle(attributes: &[(String, String)], expected: &str) -> Result<(), CnError> {
    let mut cns = attributes.iter().filter(|(t, _)| is_cn(t));
    let (_, value) = cns.next().ok_or(CnError::NoCn)?;
    if cns.next().is_some() {
        Err(CnError::SeveralCn)
    } else if value == expected {
        Ok(())
    } else {
        Err(CnError::Mismatch)
    }
}

/// An attribute value in RFC 4514 form.
fn write_value(value: &str, form: Form) -> String {
    match form {
        Form::HexEscaped => value.bytes().map(|b| format!("\\{b:02x}")).collect(),
        Form::Quoted => {
            let mut out = String::from("\"");
            for c in value.chars() {
                if matches!(c, '"' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            out
        }
        Form::Escaped => {
            let last = value.chars().count().saturating_sub(1);
            let mut out = String::new();
            for (i, c) in value.chars().enumerate() {
                let edge_space = c == ' ' && (i == 0 || i == last);
                if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
                    || edge_space
                    || (c == '#' && i == 0)
                {
                    out.push('\\');
                    out.push(c);
                } else if c == '\0' {
                    out.push_str("\\00");
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

/// Runs the check as the daemon does, on a request header.
fn check_header(dn: &[u8], expected: &str) -> Option<Result<(), CnError>> {
    let value = HeaderValue::from_bytes(dn).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(HEADER, value);
    let check = ClientCnCheck::new(HeaderName::from_static(HEADER), expected.to_owned());
    Some(check.check(&headers))
}

/// Checks `dn` whose attributes should be `attributes` (None: not a DN) against both
/// the expected name and the DN's own first CN, through the parser and the header.
fn check_all(dn: &str, attributes: Option<&[(String, String)]>) {
    let first_cn = attributes
        .and_then(|a| a.iter().find(|(t, _)| is_cn(t)))
        .map(|(_, v)| v.clone());
    for expected in [Some(META.to_owned()), first_cn].into_iter().flatten() {
        let want = match attributes {
            None => Err(CnError::Unparsable),
            Some(a) => oracle(a, &expected),
        };
        let direct = single_cn(dn).and_then(|cn| {
            if cn == expected {
                Ok(())
            } else {
                Err(CnError::Mismatch)
            }
        });
        assert_eq!(direct, want, "{dn:?} against {expected:?}");
        if let Some(through_header) = check_header(dn.as_bytes(), &expected) {
            let visible = dn.bytes().all(|b| b == b'\t' || (32..127).contains(&b));
            let want = if dn.is_empty() {
                Err(CnError::Missing)
            } else if !visible {
                Err(CnError::Unparsable)
            } else {
                want
            };
            assert_eq!(through_header, want, "{dn:?} against {expected:?}");
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    // Arbitrary bytes: never a panic; a parsed DN writes back out to itself.
    let _ = check_header(input.raw, META);
    if let Ok(dn) = std::str::from_utf8(input.raw) {
        let parsed = parse_dn(dn);
        if let Some(attributes) = &parsed {
            for (t, _) in attributes {
                assert!(!t.is_empty() && t.trim() == t, "type {t:?}");
                assert!(!t.contains(['=', ',', '+', ';', '\\', '"']), "type {t:?}");
            }
            let written: Vec<String> = attributes
                .iter()
                .map(|(t, v)| format!("{t}={}", write_value(v, Form::Escaped)))
                .collect();
            let written = written.join(",");
            assert_eq!(parse_dn(&written).as_ref(), Some(attributes), "{written:?}");
        }
        check_all(dn, parsed.as_deref());
    }

    // A DN built from attributes parses to exactly them.
    let mut dn = String::new();
    let mut attributes = Vec::new();
    for attribute in &input.attributes {
        let attribute_type = match attribute.kind {
            Type::Cn => "CN",
            Type::LowerCn => "cn",
            Type::CommonName => "commonName",
            Type::Oid => "2.5.4.3",
            Type::PrefixedOid => "OID.2.5.4.3",
            Type::Ou => "OU",
            Type::O => "O",
            Type::C => "C",
            Type::Other(t) => t,
        };
        if attribute_type.trim().is_empty()
            || attribute_type.contains(['=', ',', '+', ';', '\\', '"'])
        {
            continue;
        }
        let value = match attribute.value {
            Value::Meta => META.to_owned(),
            Value::AroundMeta(before, after) => format!("{before}{META}{after}"),
            Value::Any(v) => v.to_owned(),
        };
        if !dn.is_empty() {
            dn.push_str(match attribute.separator % 5 {
                0 => ",",
                1 => ", ",
                2 => ";",
                3 => "+",
                _ => " + ",
            });
        }
        dn.push_str(attribute_type);
        dn.push('=');
        dn.push_str(&write_value(&value, attribute.form));
        attributes.push((attribute_type.trim().to_owned(), value));
    }
    if !attributes.is_empty() {
        assert_eq!(parse_dn(&dn).as_ref(), Some(&attributes), "{dn:?}");
        check_all(&dn, Some(&attributes));
    }
});
