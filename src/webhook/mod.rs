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

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::{error, info, warn};

use crate::secret::Secret;
use crate::spool::{NewEvent, Spool, Stored};
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
    /// The client certificate subject check, when configured.
    pub client_cn: Option<ClientCnCheck>,
    /// Where events go.
    pub spool: Spool,
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
        match challenge::check(request.uri().query(), &self.verify_token) {
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
        let (parts, incoming) = request.into_parts();
        let raw = match body::read_limited(&parts.headers, incoming, self.max_body_bytes).await {
            Ok(raw) => raw,
            Err(body::BodyError::TooLarge) => {
                warn!(limit = self.max_body_bytes, "rejected: body too large");
                let mut answer = text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body larger than --max-body-bytes",
                );
                answer
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return answer;
            }
            Err(body::BodyError::Read(e)) => {
                warn!(error = %e, "rejected: could not read the body");
                return text(StatusCode::BAD_REQUEST, "could not read the body");
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
            return text(StatusCode::UNAUTHORIZED, e.reason());
        }
        let doc = match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => {
                warn!(
                    bytes = raw.len(),
                    "rejected: body is JSON but not an object"
                );
                return text(StatusCode::BAD_REQUEST, "body must be a JSON object");
            }
            Err(e) => {
                warn!(bytes = raw.len(), error = %e, "rejected: body is not JSON");
                return text(StatusCode::BAD_REQUEST, "body is not valid JSON");
            }
        };
        let identity = Identity::of(&raw, &doc);
        let object = doc
            .get("object")
            .and_then(|o| o.as_str())
            .unwrap_or("")
            .to_owned();
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
            identity,
        };
        match self.spool.accept(event).await {
            Ok(Stored::New(id)) => {
                info!(event_id = %id, bytes, object = %object, "accepted");
                text(StatusCode::OK, "EVENT_RECEIVED")
            }
            Ok(Stored::Duplicate(id)) => {
                info!(event_id = %id, bytes, object = %object, "duplicate: already accepted, not delivered again");
                text(StatusCode::OK, "EVENT_RECEIVED")
            }
            Err(e) => {
                error!(error = %e, bytes, "spool error: event not stored, answered 503 so Meta retries");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "could not store the event, try again",
                )
            }
        }
    }
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
