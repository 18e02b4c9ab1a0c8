//! The verification request: `GET ?hub.mode=subscribe&hub.challenge=…&hub.verify_token=…`.

use crate::secret::Secret;

/// The outcome of a verification request.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    /// All good: answer 200 with this body.
    Answer(String),
    /// A parameter is missing (400).
    Missing(&'static str),
    /// The mode is not `subscribe` (403).
    WrongMode,
    /// The verify token does not match (403).
    WrongToken,
}

/// Checks the query string of a verification request. The token is compared in
/// constant time; nothing of the query is returned except the challenge.
pub fn check(query: Option<&str>, token: &Secret) -> Challenge {
    let mut mode = None;
    let mut challenge = None;
    let mut given_token = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match key.as_ref() {
            "hub.mode" => &mut mode,
            "hub.challenge" => &mut challenge,
            "hub.verify_token" => &mut given_token,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(value.into_owned());
        }
    }
    let Some(mode) = mode else {
        return Challenge::Missing("hub.mode");
    };
    let Some(challenge) = challenge.filter(|c| !c.is_empty()) else {
        return Challenge::Missing("hub.challenge");
    };
    let Some(given_token) = given_token else {
        return Challenge::Missing("hub.verify_token");
    };
    // Check the token before the mode so that both refusals take the same time.
    let token_ok = token.matches(given_token.as_bytes());
    if mode != "subscribe" {
        return Challenge::WrongMode;
    }
    if !token_ok {
        return Challenge::WrongToken;
    }
    Challenge::Answer(challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Secret {
        Secret::new(b"tok&en".to_vec())
    }

    #[test]
    fn answers_the_challenge() {
        let q = "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=tok%26en";
        assert_eq!(
            check(Some(q), &token()),
            Challenge::Answer("1158201444".into())
        );
    }

    #[test]
    fn refuses_wrong_token_or_mode() {
        let q = "hub.mode=subscribe&hub.challenge=1&hub.verify_token=nope";
        assert_eq!(check(Some(q), &token()), Challenge::WrongToken);
        let q = "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=tok%26en";
        assert_eq!(check(Some(q), &token()), Challenge::WrongMode);
    }

    #[test]
    fn reports_missing_parameters() {
        assert_eq!(check(None, &token()), Challenge::Missing("hub.mode"));
        let q = "hub.mode=subscribe&hub.verify_token=tok%26en";
        assert_eq!(
            check(Some(q), &token()),
            Challenge::Missing("hub.challenge")
        );
        let q = "hub.mode=subscribe&hub.challenge=";
        assert_eq!(
            check(Some(q), &token()),
            Challenge::Missing("hub.challenge")
        );
        let q = "hub.mode=subscribe&hub.challenge=5";
        assert_eq!(
            check(Some(q), &token()),
            Challenge::Missing("hub.verify_token")
        );
    }
}
