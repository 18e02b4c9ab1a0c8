//! The optional admin token: `Authorization: Bearer <token>` for scripts, or HTTP Basic
//! with the token as the password (any user name) so a browser can prompt for it.
//! Compared in constant time. And a same-origin check for the replay form.

use base64::Engine;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use crate::secret::Secret;
use crate::webhook::{text, Answer};

/// Whether the request carries the token.
pub fn allowed(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(bearer) = value.strip_prefix("Bearer ") {
        return token.matches(bearer.trim().as_bytes());
    }
    if let Some(basic) = value.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        let password = match decoded.iter().position(|b| *b == b':') {
            Some(i) => &decoded[i + 1..],
            None => return false,
        };
        return token.matches(password);
    }
    false
}

/// 401 asking the browser for the token.
pub fn challenge() -> Answer {
    let mut answer = text(StatusCode::UNAUTHORIZED, "the admin token is required");
    answer.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"xhubd admin\", charset=\"UTF-8\""),
    );
    answer
}

/// Refuses state-changing requests that a browser sends from another site: the
/// browser's `Sec-Fetch-Site`, or else `Origin`, must say same origin when present.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_and_basic_carry_the_token() {
        let token = Secret::new(b"t0ken".to_vec());
        assert!(allowed(
            &headers(&[("authorization", "Bearer t0ken")]),
            &token
        ));
        assert!(!allowed(
            &headers(&[("authorization", "Bearer t0ke")]),
            &token
        ));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:t0ken");
        assert!(allowed(
            &headers(&[("authorization", &format!("Basic {basic}"))]),
            &token
        ));
        let wrong = base64::engine::general_purpose::STANDARD.encode("t0ken:");
        assert!(!allowed(
            &headers(&[("authorization", &format!("Basic {wrong}"))]),
            &token
        ));
        assert!(!allowed(&headers(&[]), &token));
    }

    #[test]
    fn cross_site_posts_are_refused() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:9090"),
            ("host", "127.0.0.1:9090")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:9090")
        ])));
        assert!(
            same_origin(&headers(&[("host", "127.0.0.1:9090")])),
            "curl sends neither"
        );
    }
}
