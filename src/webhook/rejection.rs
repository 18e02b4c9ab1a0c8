//! Why a request was not answered `200`: one type, mapped once to the HTTP status
//! (DESIGN.md's table of answers), the `outcome` label of `xhubd_requests_total` and
//! the short reason given in the answer body and the log line.

use http::StatusCode;

use crate::metrics::RequestOutcome;

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The client certificate subject check failed (`--client-cn-header`): 403.
    ClientSubject(&'static str),
    /// No route has the request's path: 404.
    UnknownPath,
    /// A method other than GET and POST: 405 with `Allow: GET, POST`.
    MethodNotAllowed,
    /// A verification request without `hub.mode`, `hub.challenge` or
    /// `hub.verify_token` (the name): 400.
    ChallengeMissing(&'static str),
    /// A verification request whose `hub.mode` is not `subscribe`: 403.
    ChallengeMode,
    /// A verification request with a wrong verify token: 403.
    ChallengeToken,
    /// The body is over `--max-body-bytes`: 413.
    TooLarge,
    /// The client went away or sent a broken body: 400.
    BrokenBody,
    /// The body did not arrive whole within `--body-timeout`: 408.
    BodyTimedOut,
    /// No, a malformed, or a non-matching `X-Hub-Signature-256`: 401.
    Signature(&'static str),
    /// Valid JSON but not an object: 400.
    NotAnObject,
    /// Not JSON: 400.
    NotJson,
    /// The spool could not commit: 503, so Meta retries.
    Spool,
}

impl Rejection {
    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::ClientSubject(_) | Rejection::ChallengeMode | Rejection::ChallengeToken => {
                StatusCode::FORBIDDEN
            }
            Rejection::UnknownPath => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::ChallengeMissing(_)
            | Rejection::BrokenBody
            | Rejection::NotAnObject
            | Rejection::NotJson => StatusCode::BAD_REQUEST,
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyTimedOut => StatusCode::REQUEST_TIMEOUT,
            Rejection::Signature(_) => StatusCode::UNAUTHORIZED,
            Rejection::Spool => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `outcome` label it is counted under.
    pub fn outcome(&self) -> RequestOutcome {
        match self {
            Rejection::ClientSubject(_) => RequestOutcome::ClientRefused,
            Rejection::UnknownPath => RequestOutcome::UnknownPath,
            Rejection::MethodNotAllowed => RequestOutcome::MethodNotAllowed,
            Rejection::ChallengeMissing(_)
            | Rejection::ChallengeMode
            | Rejection::ChallengeToken => RequestOutcome::ChallengeRefused,
            Rejection::TooLarge => RequestOutcome::TooLarge,
            Rejection::BrokenBody | Rejection::BodyTimedOut => RequestOutcome::IncompleteBody,
            Rejection::Signature(_) => RequestOutcome::SignatureRefused,
            Rejection::NotAnObject | Rejection::NotJson => RequestOutcome::BadJson,
            Rejection::Spool => RequestOutcome::SpoolError,
        }
    }

    /// The short reason, for the answer body and the log line; never a secret.
    pub fn reason(&self) -> String {
        match self {
            Rejection::ClientSubject(why) | Rejection::Signature(why) => (*why).to_owned(),
            Rejection::UnknownPath => "no webhook at this path".to_owned(),
            Rejection::MethodNotAllowed => "only GET and POST are allowed".to_owned(),
            Rejection::ChallengeMissing(param) => format!("missing {param}"),
            Rejection::ChallengeMode => "hub.mode must be subscribe".to_owned(),
            Rejection::ChallengeToken => "wrong verify token".to_owned(),
            Rejection::TooLarge => "body larger than --max-body-bytes".to_owned(),
            Rejection::BrokenBody => "could not read the body".to_owned(),
            Rejection::BodyTimedOut => "the body did not arrive within --body-timeout".to_owned(),
            Rejection::NotAnObject => "body must be a JSON object".to_owned(),
            Rejection::NotJson => "body is not valid JSON".to_owned(),
            Rejection::Spool => "could not store the event, try again".to_owned(),
        }
    }

    /// Every rejection, one of each kind (for tests that every outcome is reachable).
    #[cfg(test)]
    pub fn examples() -> Vec<Rejection> {
        vec![
            Rejection::ClientSubject("no CN"),
            Rejection::UnknownPath,
            Rejection::MethodNotAllowed,
            Rejection::ChallengeMissing("hub.challenge"),
            Rejection::ChallengeMode,
            Rejection::ChallengeToken,
            Rejection::TooLarge,
            Rejection::BrokenBody,
            Rejection::BodyTimedOut,
            Rejection::Signature("no match"),
            Rejection::NotAnObject,
            Rejection::NotJson,
            Rejection::Spool,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        let statuses: Vec<u16> = Rejection::examples()
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert_eq!(
            statuses,
            [403, 404, 405, 400, 403, 403, 413, 400, 408, 401, 400, 400, 503]
        );
    }

    #[test]
    fn no_reason_names_a_secret_and_every_one_is_short() {
        for r in Rejection::examples() {
            let reason = r.reason();
            assert!(!reason.is_empty() && reason.len() < 80, "{r:?}");
            assert!(!reason.contains("sha256="), "{r:?}");
        }
    }
}
