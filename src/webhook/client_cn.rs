//! The client-certificate subject check behind Nginx or an AWS ALB: the configured
//! header must hold an RFC 4514 (RFC 2253) distinguished name whose CN attribute is
//! exactly the expected name. A CN that merely contains it, or the name in another
//! attribute (`OU=…`), fails.

use http::{HeaderMap, HeaderName};

/// Why the subject check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CnError {
    /// The header is absent (no client certificate reached the proxy).
    Missing,
    /// The header is not a readable DN.
    Unparsable,
    /// The DN has no CN attribute.
    NoCn,
    /// The DN has more than one CN attribute.
    SeveralCn,
    /// The CN is another name.
    Mismatch,
}

impl CnError {
    /// A short reason for the answer and the log line.
    pub fn reason(&self) -> &'static str {
        match self {
            CnError::Missing => "no client certificate subject header",
            CnError::Unparsable => "client certificate subject is not a valid DN",
            CnError::NoCn => "client certificate subject has no CN",
            CnError::SeveralCn => "client certificate subject has more than one CN",
            CnError::Mismatch => "client certificate CN is not the expected one",
        }
    }
}

/// The configured check: which header, which CN.
#[derive(Debug, Clone)]
pub struct ClientCnCheck {
    header: HeaderName,
    expected: String,
}

impl ClientCnCheck {
    /// A check of `header` against `expected`.
    pub fn new(header: HeaderName, expected: String) -> Self {
        ClientCnCheck { header, expected }
    }

    /// Checks a request's headers. Several copies of the header fail.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), CnError> {
        let mut values = headers.get_all(&self.header).iter();
        let value = values.next().ok_or(CnError::Missing)?;
        if values.next().is_some() {
            return Err(CnError::Unparsable);
        }
        let text = value.to_str().map_err(|_| CnError::Unparsable)?;
        if text.is_empty() {
            return Err(CnError::Missing);
        }
        let cn = single_cn(text)?;
        if cn == self.expected {
            Ok(())
        } else {
            Err(CnError::Mismatch)
        }
    }
}

/// Returns the value of the one CN attribute of a DN.
pub fn single_cn(dn: &str) -> Result<String, CnError> {
    let attributes = parse_dn(dn).ok_or(CnError::Unparsable)?;
    let mut cns = attributes.into_iter().filter(|(t, _)| is_cn_type(t));
    let (_, cn) = cns.next().ok_or(CnError::NoCn)?;
    if cns.next().is_some() {
        return Err(CnError::SeveralCn);
    }
    Ok(cn)
}

fn is_cn_type(attribute_type: &str) -> bool {
    attribute_type.eq_ignore_ascii_case("CN")
        || attribute_type.eq_ignore_ascii_case("commonName")
        || attribute_type == "2.5.4.3"
        || attribute_type.eq_ignore_ascii_case("OID.2.5.4.3")
}

/// Parses an RFC 4514 DN into (type, unescaped value) pairs, in order. RDN separators
/// are `,` (and `;`, which older formatters use) and `+` for multi-valued RDNs. Values
/// may be quoted or use `\` escapes (a special character or two hex digits). A value
/// in `#hex` form is kept as written, so it can never equal a plain name.
pub fn parse_dn(dn: &str) -> Option<Vec<(String, String)>> {
    let bytes = dn.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while pos < bytes.len() && bytes[pos] == b' ' {
            pos += 1;
        }
        let start = pos;
        while pos < bytes.len() && bytes[pos] != b'=' {
            if matches!(bytes[pos], b',' | b'+' | b';' | b'\\' | b'"') {
                return None;
            }
            pos += 1;
        }
        if pos >= bytes.len() {
            return None;
        }
        let attribute_type = dn[start..pos].trim().to_owned();
        if attribute_type.is_empty() {
            return None;
        }
        pos += 1; // '='
        let mut value = Vec::new();
        if bytes.get(pos) == Some(&b'"') {
            pos += 1;
            loop {
                match bytes.get(pos)? {
                    b'"' => {
                        pos += 1;
                        break;
                    }
                    b'\\' => {
                        pos = unescape(bytes, pos, &mut value)?;
                    }
                    c => {
                        value.push(*c);
                        pos += 1;
                    }
                }
            }
            while pos < bytes.len() && bytes[pos] == b' ' {
                pos += 1;
            }
        } else {
            let mut trailing_spaces = 0;
            while pos < bytes.len() && !matches!(bytes[pos], b',' | b'+' | b';') {
                if bytes[pos] == b'\\' {
                    pos = unescape(bytes, pos, &mut value)?;
                    trailing_spaces = 0;
                } else {
                    if bytes[pos] == b'"' {
                        return None;
                    }
                    trailing_spaces = if bytes[pos] == b' ' {
                        trailing_spaces + 1
                    } else {
                        0
                    };
                    value.push(bytes[pos]);
                    pos += 1;
                }
            }
            value.truncate(value.len() - trailing_spaces);
        }
        out.push((attribute_type, String::from_utf8(value).ok()?));
        match bytes.get(pos) {
            None => return Some(out),
            Some(b',' | b'+' | b';') => pos += 1,
            Some(_) => return None,
        }
    }
}

/// Reads the escape at `bytes[pos] == '\\'`, appends its byte, returns the next position.
fn unescape(bytes: &[u8], pos: usize, value: &mut Vec<u8>) -> Option<usize> {
    let first = *bytes.get(pos + 1)?;
    if first.is_ascii_hexdigit() {
        if let Some(second) = bytes.get(pos + 2).filter(|b| b.is_ascii_hexdigit()) {
            let mut byte = [0u8; 1];
            hex::decode_to_slice([first, *second], &mut byte).ok()?;
            value.push(byte[0]);
            return Some(pos + 3);
        }
    }
    if matches!(
        first,
        b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' | b'=' | b' ' | b'#'
    ) {
        value.push(first);
        return Some(pos + 2);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "client.webhooks.fbclientcerts.com";

    fn check(dn: &str) -> Result<(), CnError> {
        let mut headers = HeaderMap::new();
        headers.insert("x-client-subject", dn.parse().unwrap());
        ClientCnCheck::new(HeaderName::from_static("x-client-subject"), META.into()).check(&headers)
    }

    #[test]
    fn accepts_the_exact_cn_in_nginx_and_alb_forms() {
        assert_eq!(check("CN=client.webhooks.fbclientcerts.com,O=Meta Platforms\\, Inc.,L=Menlo Park,ST=California,C=US"), Ok(()));
        assert_eq!(
            check("C=US, O=Meta, CN=client.webhooks.fbclientcerts.com"),
            Ok(())
        );
        assert_eq!(check("cn=\"client.webhooks.fbclientcerts.com\""), Ok(()));
        assert_eq!(check("2.5.4.3=client.webhooks.fbclientcerts.com"), Ok(()));
    }

    #[test]
    fn refuses_lookalikes() {
        for dn in [
            "CN=client.webhooks.fbclientcerts.com.evil.example",
            "CN=evil.client.webhooks.fbclientcerts.com",
            "CN=clientXwebhooks.fbclientcerts.com",
            "CN=client.webhooks.fbclientcerts.com\\,O=x",
            "CN=#636c69656e74",
        ] {
            assert_eq!(check(dn), Err(CnError::Mismatch), "{dn}");
        }
        assert_eq!(
            check("OU=client.webhooks.fbclientcerts.com,O=x"),
            Err(CnError::NoCn)
        );
        assert_eq!(
            check("CN=client.webhooks.fbclientcerts.com+CN=other"),
            Err(CnError::SeveralCn)
        );
        assert_eq!(
            check("CN=client.webhooks.fbclientcerts.com,CN=x"),
            Err(CnError::SeveralCn)
        );
        assert_eq!(check("garbage"), Err(CnError::Unparsable));
        assert_eq!(check("CN=\"unterminated"), Err(CnError::Unparsable));
        assert_eq!(check(""), Err(CnError::Missing));
    }

    #[test]
    fn missing_or_repeated_header_fails() {
        let c = ClientCnCheck::new(HeaderName::from_static("x-client-subject"), META.into());
        assert_eq!(c.check(&HeaderMap::new()), Err(CnError::Missing));
        let mut h = HeaderMap::new();
        h.append("x-client-subject", format!("CN={META}").parse().unwrap());
        h.append("x-client-subject", format!("CN={META}").parse().unwrap());
        assert_eq!(c.check(&h), Err(CnError::Unparsable));
    }

    #[test]
    fn unescapes_hex_pairs_and_specials() {
        let parsed = parse_dn("CN=a\\2Cb,O=x\\+y ,OU= z").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("CN".into(), "a,b".into()),
                ("O".into(), "x+y".into()),
                ("OU".into(), " z".into())
            ]
        );
    }
}
