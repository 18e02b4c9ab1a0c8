//! One webhook request, on any path. Checks run in the contract's order: client
//! certificate subject (when configured), method, size (413), signature (401), JSON
//! (400); then the event is committed to the spool before the 200.
//!
//! - [`challenge`]: the verification GET.
//! - [`signature`]: the `X-Hub-Signature-256` header.
//! - [`client_cn`]: the subject DN check.
//! - [`identity`]: what makes two notifications the same event.
//! - [`body`]: reading the body within the size limit.

pub mod body;
pub mod challenge;
pub mod client_cn;
pub mod identity;
pub mod signature;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::{error, info, warn};

use crate::metrics::{Metrics, RequestOutcome};
use crate::secret::Secret;
use crate::spool::{DedupKeys, NewEvent, Spool, Stored};
use challenge::Challenge;
use client_cn::ClientCnCheck;
use identity::Identity;

/// The answer type of every request.
pub type Answer = Response<Full<Bytes>>;

/// The request handler, shared by all connections.
pub struct Webhook {
    /// The verify token.
    pub verify_token: Secret,
    /// Every accepted App Secret.
    pub app_secrets: Vec<Secret>,
    /// Largest accepted body.
    pub max_body_bytes: u64,
    /// Time allowed for a body to arrive whole once the headers are in.
    pub body_timeout: Duration,
    /// The client certificate subject check, when configured.
    pub client_cn: Option<ClientCnCheck>,
    /// Where events go.
    pub spool: Spool,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
}

impl Webhook {
    /// Answers one request.
    pub async fn handle(&self, request: Request<Incoming>) -> Answer {
        if let Some(check) = &self.client_cn {
            if let Err(why) = check.check(request.headers()) {
                warn!(
                    reason = why.reason(),
                    path = request.uri().path(),
                    "rejected: client certificate"
                );
                return text(StatusCode::FORBIDDEN, why.reason());
            }
        }
        match *request.method() {
            Method::GET => self.verify(&request),
            Method::POST => self.event(request).await,
            _ => {
                info!(method = %request.method(), "rejected: method not allowed");
                self.metrics.request(RequestOutcome::MethodNotAllowed);
                let mut answer = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only GET and POST are allowed",
                );
                answer
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
                answer
            }
        }
    }

    /// The verification request. The query string is never logged: it holds the token.
    fn verify(&self, request: &Request<Incoming>) -> Answer {
        let result = challenge::check(request.uri().query(), &self.verify_token);
        self.metrics.request(match result {
            Challenge::Answer(_) => RequestOutcome::Verified,
            _ => RequestOutcome::ChallengeRefused,
        });
        match result {
            Challenge::Answer(value) => {
                info!("verification challenge answered");
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(Full::new(Bytes::from(value)))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
            }
            Challenge::Missing(param) => {
                warn!(
                    missing = param,
                    "rejected: verification request without {param}"
                );
                text(StatusCode::BAD_REQUEST, &format!("missing {param}"))
            }
            Challenge::WrongMode => {
                warn!("rejected: verification request with hub.mode other than subscribe");
                text(StatusCode::FORBIDDEN, "hub.mode must be subscribe")
            }
            Challenge::WrongToken => {
                warn!("rejected: verification request with a wrong verify token");
                text(StatusCode::FORBIDDEN, "wrong verify token")
            }
        }
    }

    /// An event notification.
    async fn event(&self, request: Request<Incoming>) -> Answer {
        let started = Instant::now();
        let (outcome, answer) = self.store_event(request).await;
        self.metrics.request(outcome);
        if matches!(
            outcome,
            RequestOutcome::Accepted | RequestOutcome::Duplicate
        ) {
            self.metrics.ack(started.elapsed().as_secs_f64());
        }
        answer
    }

    /// The checks and the commit of a POST, with the outcome to count.
    async fn store_event(&self, request: Request<Incoming>) -> (RequestOutcome, Answer) {
        let (parts, incoming) = request.into_parts();
        let raw = match body::read_limited(
            &parts.headers,
            incoming,
            self.max_body_bytes,
            self.body_timeout,
        )
        .await
        {
            Ok(raw) => raw,
            Err(body::BodyError::TooLarge) => {
                warn!(limit = self.max_body_bytes, "rejected: body too large");
                let answer = closing(text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body larger than --max-body-bytes",
                ));
                return (RequestOutcome::TooLarge, answer);
            }
            Err(body::BodyError::Read(e)) => {
                warn!(error = %e, "rejected: could not read the body");
                return (
                    RequestOutcome::IncompleteBody,
                    text(StatusCode::BAD_REQUEST, "could not read the body"),
                );
            }
            Err(body::BodyError::TimedOut) => {
                warn!(
                    timeout = ?self.body_timeout,
                    "rejected: the body did not arrive within --body-timeout"
                );
                let answer = closing(text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive within --body-timeout",
                ));
                return (RequestOutcome::IncompleteBody, answer);
            }
        };
        let signature_header = parts.headers.get("x-hub-signature-256");
        if let Err(e) = signature::verify(
            signature_header.map(|v| v.as_bytes()),
            &raw,
            &self.app_secrets,
        ) {
            warn!(
                reason = e.reason(),
                bytes = raw.len(),
                "rejected: signature"
            );
            return (
                RequestOutcome::SignatureRefused,
                text(StatusCode::UNAUTHORIZED, e.reason()),
            );
        }
        let doc = match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => {
                warn!(
                    bytes = raw.len(),
                    "rejected: body is JSON but not an object"
                );
                return (
                    RequestOutcome::BadJson,
                    text(StatusCode::BAD_REQUEST, "body must be a JSON object"),
                );
            }
            Err(e) => {
                warn!(bytes = raw.len(), error = %e, "rejected: body is not JSON");
                return (
                    RequestOutcome::BadJson,
                    text(StatusCode::BAD_REQUEST, "body is not valid JSON"),
                );
            }
        };
        let identity = Identity::of(&raw, &doc);
        let (object, field) = identity::describe(&doc);
        drop(doc);
        // The header passed the check above, so it is visible ASCII.
        let signature = signature_header
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = raw.len();
        let event = NewEvent {
            body: raw,
            signature,
            keys: DedupKeys::of(&identity),
            object: object.clone(),
            field,
            headers: headers_json(&parts.headers),
        };
        match self.spool.accept(event).await {
            Ok(Stored::New(id)) => {
                info!(event_id = %id, bytes, object = %object, "accepted");
                (
                    RequestOutcome::Accepted,
                    text(StatusCode::OK, "EVENT_RECEIVED"),
                )
            }
            Ok(Stored::Duplicate(id)) => {
                info!(event_id = %id, bytes, object = %object, "duplicate: already accepted, not delivered again");
                (
                    RequestOutcome::Duplicate,
                    text(StatusCode::OK, "EVENT_RECEIVED"),
                )
            }
            Err(e) => {
                error!(error = %e, bytes, "spool error: event not stored, answered 503 so Meta retries");
                (
                    RequestOutcome::SpoolError,
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "could not store the event, try again",
                    ),
                )
            }
        }
    }
}

/// The request headers as a JSON object, for the status page. Credentials a proxy might
/// add are left out; repeated headers are joined with ", ".
fn headers_json(headers: &http::HeaderMap) -> String {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        if matches!(
            name.as_str(),
            "authorization" | "proxy-authorization" | "cookie"
        ) {
            continue;
        }
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        map.insert(
            name.as_str().to_owned(),
            serde_json::Value::String(values.join(", ")),
        );
    }
    serde_json::Value::Object(map).to_string()
}

/// `answer` with `Connection: close`: the rest of the request was not read, so the
/// connection cannot carry another one.
fn closing(mut answer: Answer) -> Answer {
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
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
