//! An indented view of a JSON body for the event page that keeps everything but the
//! whitespace between tokens: members stay in the order Meta sent them and every value's
//! bytes stay as they were (`\u00e9` stays `\u00e9`), unlike a parse and re-serialise.

/// `body` with two-space indentation: a line break after `{`, `[` and `,`, and before
/// `}` and `]`, outside strings; an empty object or array stays `{}`/`[]`. Whitespace
/// between tokens is replaced; text that is not JSON comes out changed only in that way.
pub fn indent(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + body.len() / 4);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = body.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            ' ' | '\t' | '\n' | '\r' => {}
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|n| n.is_ascii_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::indent;

    #[test]
    fn keeps_order_and_bytes() {
        let body =
            r#"{"object":"page","entry":[{"id":"1","e":[],"o":{},"t":"caf\u00e9 \"x\" [,]"}]}"#;
        assert_eq!(
            indent(body),
            "{\n  \"object\": \"page\",\n  \"entry\": [\n    {\n      \"id\": \"1\",\n      \"e\": [],\n      \"o\": {},\n      \"t\": \"caf\\u00e9 \\\"x\\\" [,]\"\n    }\n  ]\n}"
        );
    }

    #[test]
    fn only_whitespace_outside_strings_changes() {
        let body = "{ \"a\" : [1, 2.50, {\"b\":\"x\\\\\"}],\n\"c\":null }";
        let squeeze = |s: &str| -> String {
            let v: serde_json::Value = serde_json::from_str(s).unwrap();
            v.to_string()
        };
        assert_eq!(squeeze(&indent(body)), squeeze(body));
        assert!(indent(body).contains("2.50"));
        // Not JSON: no panic, same characters but whitespace.
        let broken = "{\"a\":\"unterminated";
        assert_eq!(indent(broken), "{\n  \"a\": \"unterminated");
        assert_eq!(indent("]]}}"), "\n]\n]\n}\n}");
    }
}
