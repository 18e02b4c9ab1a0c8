//! Where the members of a JSON object and the elements of an array lie in the raw
//! bytes, so that a narrowed body can be put together from the bytes Meta sent, never
//! from re-serialised values (Meta's `\u00e9` and `\/` escapes must survive). Runs only
//! on bodies serde_json (or the tolerant parser) has already read, but never panics on
//! anything else: a malformed input is `None`.

use std::ops::Range;

/// A member of an object: its key, decoded, and where key and value lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The key, decoded (lossy for a key that is not Unicode).
    pub key: String,
    /// The key's bytes, quotes included.
    pub key_span: Range<usize>,
    /// The value's bytes.
    pub value: Range<usize>,
}

/// The members of the object at `span` (which must start with `{`), in order.
pub fn members(raw: &[u8], span: Range<usize>) -> Option<Vec<Member>> {
    let mut at = skip_ws(raw, span.start);
    if raw.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(raw, at + 1);
    let mut out = Vec::new();
    if raw.get(at) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let key_end = string_end(raw, at)?;
        let key_span = at..key_end;
        let key = serde_json::from_slice::<String>(raw.get(key_span.clone())?)
            .unwrap_or_else(|_| String::from_utf8_lossy(&raw[at + 1..key_end - 1]).into_owned());
        at = skip_ws(raw, key_end);
        if raw.get(at) != Some(&b':') {
            return None;
        }
        let start = skip_ws(raw, at + 1);
        let end = value_end(raw, start)?;
        out.push(Member {
            key,
            key_span,
            value: start..end,
        });
        at = skip_ws(raw, end);
        match raw.get(at)? {
            b',' => at = skip_ws(raw, at + 1),
            b'}' => return (at < span.end).then_some(out),
            _ => return None,
        }
    }
}

/// The elements of the array at `span` (which must start with `[`), in order.
pub fn elements(raw: &[u8], span: Range<usize>) -> Option<Vec<Range<usize>>> {
    let mut at = skip_ws(raw, span.start);
    if raw.get(at) != Some(&b'[') {
        return None;
    }
    at = skip_ws(raw, at + 1);
    let mut out = Vec::new();
    if raw.get(at) == Some(&b']') {
        return Some(out);
    }
    loop {
        let end = value_end(raw, at)?;
        out.push(at..end);
        at = skip_ws(raw, end);
        match raw.get(at)? {
            b',' => at = skip_ws(raw, at + 1),
            b']' => return (at < span.end).then_some(out),
            _ => return None,
        }
    }
}

/// Whether the value at `span` is an object.
pub fn is_object(raw: &[u8], span: &Range<usize>) -> bool {
    raw.get(span.start) == Some(&b'{')
}

/// Whether the value at `span` is an array.
pub fn is_array(raw: &[u8], span: &Range<usize>) -> bool {
    raw.get(span.start) == Some(&b'[')
}

fn skip_ws(raw: &[u8], mut at: usize) -> usize {
    while matches!(raw.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The end (exclusive) of the string starting at `at`.
fn string_end(raw: &[u8], at: usize) -> Option<usize> {
    if raw.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    loop {
        match raw.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The end (exclusive) of the JSON value starting at `at`.
fn value_end(raw: &[u8], at: usize) -> Option<usize> {
    match raw.get(at)? {
        b'"' => string_end(raw, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match raw.get(i)? {
                    b'"' => {
                        i = string_end(raw, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            // A number, true, false or null: up to the next delimiter.
            let mut i = at;
            while let Some(b) = raw.get(i) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                i += 1;
            }
            (i > at).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_elements_keep_their_bytes() {
        let raw = br#" { "a" : [1, {"x":"}]\""}] , "b\u00e9":"caf\u00e9 \/", "c":null } "#;
        let top = members(raw, 0..raw.len()).unwrap();
        let keys: Vec<&str> = top.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["a", "bé", "c"]);
        assert_eq!(&raw[top[1].value.clone()], br#""caf\u00e9 \/""#);
        assert_eq!(&raw[top[1].key_span.clone()], br#""b\u00e9""#);
        let items = elements(raw, top[0].value.clone()).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(&raw[items[1].clone()], br#"{"x":"}]\""}"#);
        assert_eq!(&raw[top[2].value.clone()], b"null");
        assert_eq!(members(b"{}", 0..2), Some(vec![]));
        assert_eq!(elements(b"[ ]", 0..3), Some(vec![]));
    }

    #[test]
    fn malformed_input_is_none_never_a_panic() {
        for bad in [
            &b"{"[..],
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\" 1}",
            b"[1,",
            b"\"",
            b"{\"a\":\"\\",
            b"{\"a\":[}",
        ] {
            assert!(members(bad, 0..bad.len()).is_none(), "{bad:?}");
            assert!(elements(bad, 0..bad.len()).is_none(), "{bad:?}");
        }
        assert!(members(b"{\"a\":1", 0..6).is_none());
        assert!(elements(b"[1,", 0..3).is_none());
    }
}
