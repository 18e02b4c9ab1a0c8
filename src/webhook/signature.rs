//! `X-Hub-Signature-256`: parsing the header and checking it against every configured
//! App Secret, with HMAC-SHA256 over the raw body bytes, in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// The header is absent.
    Missing,
    /// The header is not `sha256=` followed by 64 hex digits.
    Malformed,
    /// The signature matches none of the App Secrets.
    Mismatch,
}

impl SignatureError {
    /// A short reason, for the answer body and the log line.
    pub fn reason(self) -> &'static str {
        match self {
            SignatureError::Missing => "missing X-Hub-Signature-256 header",
            SignatureError::Malformed => {
                "malformed X-Hub-Signature-256 header: expected sha256= and 64 hex digits"
            }
            SignatureError::Mismatch => "X-Hub-Signature-256 does not match the body",
        }
    }
}

/// Parses `sha256=<64 hex digits>` (either case) into the 32 digest bytes.
pub fn parse_header(value: &[u8]) -> Result<[u8; 32], SignatureError> {
    let hex_part = value
        .strip_prefix(b"sha256=")
        .ok_or(SignatureError::Malformed)?;
    if hex_part.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut digest).map_err(|_| SignatureError::Malformed)?;
    Ok(digest)
}

/// Checks the header value against the body with every secret. The comparison of
/// each candidate is constant-time.
pub fn verify(
    header: Option<&[u8]>,
    body: &[u8],
    secrets: &[Secret],
) -> Result<(), SignatureError> {
    verify_which(header, body, secrets).map(|_| ())
}

/// Like [`verify`], and says which secret made the signature (its index in `secrets`,
/// the first if several did): the one a narrowed body is signed with again. Every
/// secret is tried, whichever matches, so the time taken does not say which.
pub fn verify_which(
    header: Option<&[u8]>,
    body: &[u8],
    secrets: &[Secret],
) -> Result<usize, SignatureError> {
    let digest = parse_header(header.ok_or(SignatureError::Missing)?)?;
    let mut matched = None;
    for (index, secret) in secrets.iter().enumerate() {
        // HMAC accepts keys of any length, so this cannot fail; a failure counts as no match.
        if let Ok(mut mac) = HmacSha256::new_from_slice(secret.expose()) {
            mac.update(body);
            if mac.verify_slice(&digest).is_ok() && matched.is_none() {
                matched = Some(index);
            }
        }
    }
    matched.ok_or(SignatureError::Mismatch)
}

/// The header value Meta would send for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[&str]) -> Vec<Secret> {
        list.iter()
            .map(|s| Secret::new(s.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256 with key "key" of the classic pangram (RFC 4231 style check).
        let sig = sign(b"key", b"The quick brown fox jumps over the lazy dog");
        assert_eq!(
            sig,
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn accepts_lower_and_upper_case_hex() {
        let body = br#"{"object":"page"}"#;
        let sig = sign(b"s3cret", body);
        let upper = format!("sha256={}", sig["sha256=".len()..].to_uppercase());
        assert_eq!(
            verify(Some(sig.as_bytes()), body, &secrets(&["s3cret"])),
            Ok(())
        );
        assert_eq!(
            verify(Some(upper.as_bytes()), body, &secrets(&["s3cret"])),
            Ok(())
        );
    }

    #[test]
    fn any_configured_secret_is_accepted() {
        let body = b"{}";
        let sig = sign(b"new", body);
        assert_eq!(
            verify(Some(sig.as_bytes()), body, &secrets(&["old", "new"])),
            Ok(())
        );
        assert_eq!(
            verify(Some(sig.as_bytes()), body, &secrets(&["old"])),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let body = b"{}";
        let good = sign(b"k", body);
        let hex64 = &good["sha256=".len()..];
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"sha256=".to_vec(),
            b"sha256".to_vec(),
            hex64.as_bytes().to_vec(),
            format!("sha1={hex64}").into_bytes(),
            format!("sha1={}", &hex64[..40]).into_bytes(),
            format!("sha256={}", &hex64[..63]).into_bytes(),
            format!("sha256={hex64}0").into_bytes(),
            format!("sha256={}zz", &hex64[..62]).into_bytes(),
            format!("SHA256={hex64}").into_bytes(),
            format!("sha256= {}", &hex64[..63]).into_bytes(),
            format!("sha256:{hex64}").into_bytes(),
        ];
        for case in cases {
            assert_eq!(
                verify(Some(&case), body, &secrets(&["k"])),
                Err(SignatureError::Malformed),
                "{:?}",
                String::from_utf8_lossy(&case)
            );
        }
        assert_eq!(
            verify(None, body, &secrets(&["k"])),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn a_changed_body_or_digest_is_refused() {
        let body = br#"{"a":1}"#;
        let sig = sign(b"k", body);
        assert_eq!(
            verify(Some(sig.as_bytes()), br#"{"a":2}"#, &secrets(&["k"])),
            Err(SignatureError::Mismatch)
        );
        let mut flipped = sig.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            verify(Some(&flipped), body, &secrets(&["k"])),
            Err(SignatureError::Mismatch)
        );
    }
}
