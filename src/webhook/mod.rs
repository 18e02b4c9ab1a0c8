//! One webhook request, read straight through: client certificate subject (POST only,
//! when configured), route (by path: 404 when none), method, size (413), signature (401), JSON
//! (400); then the event is committed to the spool before the 200. Every refusal is a
//! [`Rejection`], counted and logged in one place.
//!
//! - [`challenge`]: the verification GET.
//! - [`signature`]: the `X-Hub-Signature-256` header.
//! - [`client_cn`]: the subject DN check.
//! - [`body`]: reading the body within the size limit, and draining a refused one.
//! - [`json`]: the body as a JSON object, by RFC 8259's grammar.
//! - [`identity`]: what makes two notifications the same event.
//! - [`items`]: the items of a notification, what each is about, narrowed bodies
//!   ([`raw`]: where members and elements lie in the bytes), and the conversation each
//!   belongs to ([`conversation`]).
//! - [`fanout`]: which destinations take which items, and what each is sent.
//! - [`rejection`]: why a request was refused, as status, metric and reason.

pub mod body;
pub mod challenge;
pub mod client_cn;
pub mod conversation;
pub mod fanout;
pub mod identity;
pub mod items;
pub mod json;
pub mod raw;
pub mod rejection;
pub mod signature;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::{error, info, warn};

use crate::config::routes::{route_for, Route};
use crate::metrics::{Flow, Metrics, RequestOutcome};
use crate::spool::{NewEvent, Store, Stored};
use crate::types::{DedupKey, DedupKeys, DestinationKey};
use challenge::Challenge;
use client_cn::ClientCnCheck;
use identity::Identity;
use rejection::Rejection;

/// The answer type of every request.
pub type Answer = Response<Full<Bytes>>;

/// The request handler, shared by all connections.
pub(crate) struct Webhook {
    /// The routes: a request goes to the one whose path it has (the flags' route takes
    /// every path). A reload swaps the list; a request keeps the one it started with.
    pub routes: Arc<RwLock<Arc<Vec<Route>>>>,
    /// Largest accepted body.
    pub max_body_bytes: u64,
    /// Time allowed for a body to arrive whole once the headers are in.
    pub body_timeout: Duration,
    /// The client certificate subject check, when configured.
    pub client_cn: Option<ClientCnCheck>,
    /// Where events go.
    pub store: Store,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
}

/// A request answered `200`.
enum Done {
    /// The verification challenge, to echo.
    Verified(String),
    /// A new event, committed.
    Accepted,
    /// A retry of an event already accepted.
    Duplicate,
}

/// A refusal and whether the connection must close after it (the body was not read
/// to its end).
struct Refused {
    rejection: Rejection,
    close: bool,
}

impl From<Rejection> for Refused {
    fn from(rejection: Rejection) -> Refused {
        Refused {
            rejection,
            close: false,
        }
    }
}

impl Webhook {
    /// Answers one request, and counts it under exactly one outcome.
    pub async fn handle(&self, request: Request<Incoming>) -> Answer {
        let started = Instant::now();
        let (outcome, answer) = match self.answer(request).await {
            Ok(Done::Verified(challenge)) => {
                (RequestOutcome::Verified, challenge_answer(challenge))
            }
            Ok(Done::Accepted) => (
                RequestOutcome::Accepted,
                text(StatusCode::OK, "EVENT_RECEIVED"),
            ),
            Ok(Done::Duplicate) => (
                RequestOutcome::Duplicate,
                text(StatusCode::OK, "EVENT_RECEIVED"),
            ),
            Err(Refused { rejection, close }) => {
                let mut answer = text(rejection.status(), &rejection.reason());
                if rejection == Rejection::MethodNotAllowed {
                    answer
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
                }
                if close {
                    answer
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                (rejection.outcome(), answer)
            }
        };
        self.metrics.request(outcome);
        if matches!(
            outcome,
            RequestOutcome::Accepted | RequestOutcome::Duplicate
        ) {
            self.metrics.ack(started.elapsed().as_secs_f64());
        }
        answer
    }

    /// The checks, in the contract's order, and the commit of an event.
    async fn answer(&self, request: Request<Incoming>) -> Result<Done, Refused> {
        let (parts, incoming) = request.into_parts();
        // Meta documents its client certificate for event notifications (POST) only;
        // the verification GET is guarded by the verify token (DESIGN.md).
        if parts.method == Method::POST {
            if let Some(check) = &self.client_cn {
                if let Err(why) = check.check(&parts.headers) {
                    warn!(
                        reason = why.reason(),
                        path = parts.uri.path(),
                        "rejected: client certificate"
                    );
                    return Err(self
                        .refuse_early(
                            &parts.headers,
                            incoming,
                            Rejection::ClientSubject(why.reason()),
                        )
                        .await);
                }
            }
        }
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(route) = route_for(&routes, parts.uri.path()) else {
            warn!(path = parts.uri.path(), "rejected: no route has this path");
            return Err(self
                .refuse_early(&parts.headers, incoming, Rejection::UnknownPath)
                .await);
        };
        match parts.method {
            Method::GET => self.verify(route, parts.uri.query()).map_err(Refused::from),
            Method::POST => self.event(route, &parts.headers, incoming).await,
            _ => {
                warn!(route = %route.name, method = %parts.method, "rejected: method not allowed");
                Err(self
                    .refuse_early(&parts.headers, incoming, Rejection::MethodNotAllowed)
                    .await)
            }
        }
    }

    /// A refusal answered before the body was read: the body is read and dropped first
    /// (within bounds), so the answer reaches a client that is still sending it.
    async fn refuse_early(
        &self,
        headers: &http::HeaderMap,
        incoming: Incoming,
        rejection: Rejection,
    ) -> Refused {
        let drained =
            body::discard(headers, incoming, self.max_body_bytes, self.body_timeout).await;
        Refused {
            rejection,
            close: !drained,
        }
    }

    /// The verification request. The query string is never logged: it holds the token.
    fn verify(&self, route: &Route, query: Option<&str>) -> Result<Done, Rejection> {
        let refused = match challenge::check(query, &route.verify_token) {
            Challenge::Answer(value) => {
                info!(route = %route.name, "verification challenge answered");
                return Ok(Done::Verified(value));
            }
            Challenge::Missing(param) => {
                warn!(
                    route = %route.name,
                    missing = param,
                    "rejected: verification request without {param}"
                );
                Rejection::ChallengeMissing(param)
            }
            Challenge::WrongMode => {
                warn!(route = %route.name, "rejected: verification request with hub.mode other than subscribe");
                Rejection::ChallengeMode
            }
            Challenge::WrongToken => {
                warn!(route = %route.name, "rejected: verification request with a wrong verify token");
                Rejection::ChallengeToken
            }
        };
        Err(refused)
    }

    /// An event notification: size, signature, JSON, then the commit.
    async fn event(
        &self,
        route: &Route,
        headers: &http::HeaderMap,
        incoming: Incoming,
    ) -> Result<Done, Refused> {
        let raw = match body::read_limited(
            headers,
            incoming,
            self.max_body_bytes,
            self.body_timeout,
        )
        .await
        {
            Ok(raw) => raw,
            Err(body::BodyError::TooLarge { drained }) => {
                warn!(route = %route.name, limit = self.max_body_bytes, "rejected: body too large");
                return Err(Refused {
                    rejection: Rejection::TooLarge,
                    close: !drained,
                });
            }
            Err(body::BodyError::Read(e)) => {
                warn!(route = %route.name, error = %e, "rejected: could not read the body");
                return Err(Rejection::BrokenBody.into());
            }
            Err(body::BodyError::TimedOut) => {
                warn!(
                    route = %route.name,
                    timeout = ?self.body_timeout,
                    "rejected: the body did not arrive within --body-timeout"
                );
                return Err(Refused {
                    rejection: Rejection::BodyTimedOut,
                    close: true,
                });
            }
        };
        let signature_header = headers.get("x-hub-signature-256");
        let secret = match signature::verify_which(
            signature_header.map(|v| v.as_bytes()),
            &raw,
            &route.app_secrets,
        ) {
            Ok(index) => &route.app_secrets[index],
            Err(e) => {
                warn!(
                    route = %route.name,
                    reason = e.reason(),
                    bytes = raw.len(),
                    "rejected: signature"
                );
                return Err(Rejection::Signature(e.reason()).into());
            }
        };
        let doc = match json::parse_object(&raw) {
            Ok(doc) => doc,
            Err(json::JsonError::NotAnObject) => {
                warn!(
                    route = %route.name,
                    bytes = raw.len(),
                    "rejected: body is JSON but not an object"
                );
                return Err(Rejection::NotAnObject.into());
            }
            Err(json::JsonError::Invalid(e)) => {
                warn!(route = %route.name, bytes = raw.len(), error = %e, "rejected: body is not JSON");
                return Err(Rejection::NotJson.into());
            }
        };
        let identity = Identity::of(&raw, &doc);
        let (object, field) = identity::describe(&doc);
        let meta_sha1 = headers.get("x-hub-signature").is_some();
        let plan = fanout::plan(route, &raw, &doc, secret, meta_sha1);
        drop(doc);
        // The header passed the check above, so it is visible ASCII.
        let signature = signature_header
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // Meta's SHA-1 signature is never checked, only passed on for backends that
        // still check it; a value that is not visible ASCII is not passed on.
        let signature_sha1 = headers
            .get("x-hub-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = raw.len();
        let destinations: Vec<DestinationKey> = plan
            .deliveries
            .iter()
            .map(|d| d.destination.clone())
            .collect();
        let event = NewEvent {
            route: route.name.clone(),
            deliveries: plan.deliveries,
            body: raw,
            signature,
            signature_sha1,
            keys: identity.keys().in_group(&route.dedup_group),
            object: object.clone(),
            field,
            headers: headers_json(headers),
        };
        match self.store.accept(event).await {
            Ok(Stored::New(id)) => {
                for destination in &destinations {
                    self.metrics.flow(destination, Flow::Accepted, 1);
                }
                if plan.unrouted > 0 {
                    self.metrics.unrouted(&route.name, plan.unrouted);
                    info!(event_id = %id, route = %route.name, items = plan.unrouted, "items no destination takes: stored, delivered nowhere");
                }
                info!(event_id = %id, route = %route.name, bytes, object = %object, "accepted");
                Ok(Done::Accepted)
            }
            Ok(Stored::Duplicate(id)) => {
                info!(event_id = %id, route = %route.name, bytes, object = %object, "duplicate: already accepted, not delivered again");
                Ok(Done::Duplicate)
            }
            Err(e) => {
                error!(route = %route.name, error = %e, bytes, "spool error: event not stored, answered 503 so Meta retries");
                Err(Rejection::Spool.into())
            }
        }
    }
}

/// The dedup keys of a stored body under this build's identity rules: what the spool
/// recomputes when it upgrades a layout written with older rules.
pub fn stored_keys(raw: &[u8]) -> DedupKeys {
    match json::parse_object(raw) {
        Ok(doc) => Identity::of(raw, &doc).keys(),
        Err(_) => DedupKeys {
            body: DedupKey::of(&identity::body_key(raw)),
            items: None,
        },
    }
}

/// The `200` answer to a verification request: the challenge, exactly.
fn challenge_answer(challenge: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(challenge)));
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    answer
}

/// The request headers as a JSON object, for the status page, with the names in
/// order. Credentials a proxy might add are left out; repeated headers are joined
/// with ", ". A value that is not UTF-8 has its bad bytes replaced (U+FFFD). Written
/// from borrowed names and values: no string per header, but for a repeated one or one
/// that is not UTF-8.
fn headers_json(headers: &http::HeaderMap) -> String {
    let mut map: BTreeMap<&str, Cow<'_, str>> = BTreeMap::new();
    for name in headers.keys() {
        if matches!(
            name.as_str(),
            "authorization" | "proxy-authorization" | "cookie"
        ) {
            continue;
        }
        let mut values = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        let Some(mut joined) = values.next() else {
            continue;
        };
        for value in values {
            let all = joined.to_mut();
            all.push_str(", ");
            all.push_str(&value);
        }
        map.insert(name.as_str(), joined);
    }
    // A map of strings always serializes.
    serde_json::to_string(&map).unwrap_or_else(|_| String::from("{}"))
}

/// A short `text/plain` answer.
pub fn text(status: StatusCode, message: &str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_a_json_object_by_name_without_credentials() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-hub-signature-256", HeaderValue::from_static("sha256=ab"));
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        headers.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        headers.insert("cookie", HeaderValue::from_static("a=b"));
        headers.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic eDp5"),
        );
        headers.insert("user-agent", HeaderValue::from_static("a \"quoted\"\tname"));
        headers.insert(
            "content-type",
            HeaderValue::from_bytes(b"text/\xffplain").expect("obs-text is a valid value"),
        );
        assert_eq!(
            headers_json(&headers),
            concat!(
                "{\"content-type\":\"text/\u{fffd}plain\",",
                r#""user-agent":"a \"quoted\"\tname","#,
                r#""x-forwarded-for":"10.0.0.1, 10.0.0.2","#,
                r#""x-hub-signature-256":"sha256=ab"}"#
            )
        );
    }
}
