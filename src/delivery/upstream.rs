//! The HTTP client for the upstream: pooled keep-alive connections, http or https (with
//! the system's root certificates, or the destination's own CA bundle and client
//! certificate), one attempt with a time limit, and the contract's headers. A failed
//! TLS handshake (an unknown issuer, a certificate for another name, a client
//! certificate refused) is a connection error: retried, and kept as the last error.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

use crate::types::{AttemptReport, DueDelivery};

/// Upstream answer bodies are read up to this size (so the connection can be reused),
/// then dropped.
const ANSWER_BODY_MAX: usize = 64 * 1024;
/// Bytes of an answer's body kept in the attempt history (for a 4xx, usually why).
const ANSWER_HEAD: usize = 256;

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx.
    Delivered(StatusCode),
    /// Connection error, timeout, 408, 429 or 5xx: try again later.
    Retryable(String),
    /// Any other answer: the event becomes dead.
    Refused(String),
}

type PlainClient = Client<HttpConnector, Full<Bytes>>;
type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

enum Inner {
    Plain(PlainClient),
    Tls(TlsClient),
}

/// The upstream client.
pub struct Upstream {
    inner: Inner,
    uri: Uri,
    authorization: Option<HeaderValue>,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl Upstream {
    /// A client for `url`, keeping up to `pool` idle connections, sending `headers`
    /// (values marked sensitive) with every request. For an https `url`, `tls` is the
    /// destination's own TLS configuration (already checked); none: the system's roots.
    pub fn new(
        url: &Url,
        timeout: Duration,
        pool: usize,
        headers: Vec<(http::HeaderName, HeaderValue)>,
        tls: Option<rustls::ClientConfig>,
    ) -> anyhow::Result<Upstream> {
        let mut clean = url.clone();
        let authorization = basic_auth(url);
        let _ = clean.set_username("");
        let _ = clean.set_password(None);
        clean.set_fragment(None);
        let uri: Uri = clean
            .as_str()
            .parse()
            .context("--upstream is not a valid HTTP URI")?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        http.enforce_http(false);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(pool);
        let inner = if url.scheme() == "https" {
            let https = match tls {
                Some(config) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
                None => {
                    // The ring provider, named explicitly: never the process default.
                    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                    hyper_rustls::HttpsConnectorBuilder::new()
                        .with_provider_and_native_roots(provider)
                        .context(
                            "cannot load the system's root certificates for the https upstream",
                        )?
                }
            };
            let https = https.https_only().enable_http1().wrap_connector(http);
            Inner::Tls(builder.build(https))
        } else {
            Inner::Plain(builder.build(http))
        };
        Ok(Upstream {
            inner,
            uri,
            authorization,
            headers,
            timeout,
        })
    }

    /// Makes one attempt at a delivery: `delivery` says what to send. Returns how it
    /// went, and what to keep of it in the attempt history.
    pub async fn send(
        &self,
        delivery: &DueDelivery,
        attempt: i64,
        body: Bytes,
    ) -> (Attempt, AttemptReport) {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("xhubd/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-xhubd-event-id", &delivery.event_id)
            .header("x-xhubd-delivery-id", &delivery.id)
            .header("x-xhubd-attempt", attempt.to_string());
        if let Some((part, parts)) = delivery.part {
            request = request.header("x-xhubd-part", format!("{part}/{parts}"));
        }
        if !delivery.signature.is_empty() {
            request = request.header("x-hub-signature-256", &delivery.signature);
        }
        if let Some(sha1) = &delivery.signature_sha1 {
            request = request.header("x-hub-signature", sha1);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value.clone());
        }
        if let Some(auth) = &self.authorization {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let failed = |attempt: Attempt| {
            let detail = match &attempt {
                Attempt::Retryable(e) | Attempt::Refused(e) => e.clone(),
                Attempt::Delivered(_) => String::new(),
            };
            (
                attempt,
                AttemptReport {
                    status: None,
                    detail,
                },
            )
        };
        let request = match request.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return failed(Attempt::Refused(format!("cannot build the request: {e}"))),
        };
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(Ok((status, head))) => (
                classify(status),
                AttemptReport {
                    status: Some(status.as_u16()),
                    detail: head,
                },
            ),
            Ok(Err(e)) => failed(Attempt::Retryable(e)),
            Err(_) => failed(Attempt::Retryable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Sends the request; returns the answer's status and the first bytes of its body
    /// (as text), or the error.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, String), String> {
        let response = match &self.inner {
            Inner::Plain(c) => c.request(request).await,
            Inner::Tls(c) => c.request(request).await,
        };
        let response = response.map_err(|e| error_chain(&e))?;
        let status = response.status();
        // Read the answer so the connection returns to the pool; its head is kept.
        let body = Limited::new(response.into_body(), ANSWER_BODY_MAX)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let head = String::from_utf8_lossy(&body[..body.len().min(ANSWER_HEAD)]).into_owned();
        Ok((status, head))
    }
}

/// Sorts an upstream status into delivered, retryable or refused.
pub fn classify(status: StatusCode) -> Attempt {
    if status.is_success() {
        Attempt::Delivered(status)
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Attempt::Retryable(format!("upstream answered {status}"))
    } else {
        Attempt::Refused(format!("upstream answered {status}"))
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn basic_auth(url: &Url) -> Option<HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    use base64::Engine;
    let user = percent_decode(url.username());
    let password = url.password().map(percent_decode).unwrap_or_default();
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        assert!(matches!(classify(StatusCode::OK), Attempt::Delivered(_)));
        assert!(matches!(
            classify(StatusCode::NO_CONTENT),
            Attempt::Delivered(_)
        ));
        for s in [500, 502, 503, 504, 408, 429] {
            let code = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(code), Attempt::Retryable(_)), "{s}");
        }
        for s in [301, 302, 304, 400, 401, 403, 404, 410, 413, 422] {
            let code = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(code), Attempt::Refused(_)), "{s}");
        }
    }

    #[test]
    fn credentials_in_the_url_become_basic_auth() {
        let url = Url::parse("http://us%40er:p%2Bss+w@localhost/x").unwrap();
        let value = basic_auth(&url).unwrap();
        assert!(value.is_sensitive());
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&value.to_str().unwrap()["Basic ".len()..])
            .unwrap();
        assert_eq!(decoded, b"us@er:p+ss+w");
        assert!(basic_auth(&Url::parse("http://localhost/").unwrap()).is_none());
    }
}
