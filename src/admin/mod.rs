//! The admin listener (`--admin-listen`, meant for loopback): health, metrics, a status
//! page, event inspection and replay.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs (never behind the token) |
//! | `GET /readyz` | 200 when the spool commits and delivery runs, else 503 and why (never behind the token) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /` | the status page (HTML) |
//! | `GET /event/{id}` | one event's page: headers and pretty-printed payload (HTML) |
//! | `GET /events?state=…&limit=…` | events as JSON |
//! | `GET /events/{id}` | one event as JSON |
//! | `POST /events/{id}/replay` | make a dead event pending again |
//!
//! - [`auth`]: the optional `--admin-token`.
//! - [`pages`]: the HTML; [`chart`]: a destination's last hour as inline SVG.
//! - [`verdict`]: whether something needs the operator's attention.

pub mod auth;
pub mod chart;
pub mod indent;
pub mod pages;
pub mod verdict;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use tracing::{info, warn};

use crate::delivery::fleet::Fleet;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::spool::views::{ListFilter, Replay};
use crate::spool::{SpoolError, Store};
use crate::types::EventState;
use crate::webhook::{text, Answer};

/// Events shown on the status page.
const STATUS_PAGE_EVENTS: usize = 100;

/// What the admin routes look at.
pub(crate) struct Admin {
    /// The spool.
    pub store: Store,
    /// The delivery schedulers, one per destination.
    pub fleet: Arc<Fleet>,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// When set, every route but the health checks requires it.
    pub token: Option<Secret>,
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Answer {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok"),
            (&Method::GET, "/readyz") => return self.readyz(),
            _ => {}
        }
        if let Some(token) = &self.token {
            if !auth::allowed(request.headers(), token) {
                warn!(path = %path, "admin: refused a request without the admin token");
                return auth::challenge();
            }
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["metrics"]) => self.metrics().await,
            (&Method::GET, [""]) => self.status_page().await,
            (&Method::GET, ["event", id]) => self.event_page(id).await,
            (&Method::GET, ["events"]) => self.events_json(request.uri().query()).await,
            (&Method::GET, ["events", id]) => self.event_json(id).await,
            (&Method::GET, ["events", id, "body"]) => self.event_body(id).await,
            (&Method::POST, ["deliveries", id, "replay"]) => {
                if !auth::same_origin(request.headers()) {
                    warn!("admin: refused a cross-site replay request");
                    return text(StatusCode::FORBIDDEN, "cross-site request refused");
                }
                match self.store.replay_delivery(id).await {
                    Ok(Replay::Replayed) => {
                        info!(delivery_id = %id, "replay of a delivery requested on the admin listener");
                        json(
                            StatusCode::OK,
                            &serde_json::json!({ "delivery": id, "replayed": true }),
                        )
                    }
                    Ok(Replay::AlreadyPending) => {
                        text(StatusCode::CONFLICT, "the delivery is already pending")
                    }
                    Ok(Replay::NotFound) => text(StatusCode::NOT_FOUND, "no such delivery"),
                    Err(e) => Self::unreadable(e),
                }
            }
            (&Method::POST, ["events", id, "replay"]) => {
                if !auth::same_origin(request.headers()) {
                    warn!("admin: refused a cross-site replay request");
                    return text(StatusCode::FORBIDDEN, "cross-site request refused");
                }
                let from_form = request
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| {
                        v.as_bytes()
                            .starts_with(b"application/x-www-form-urlencoded")
                    });
                self.replay(id, from_form).await
            }
            (
                _,
                ["metrics"]
                | [""]
                | ["event", _]
                | ["events"]
                | ["events", _]
                | ["events", _, "body"]
                | ["events", _, "replay"]
                | ["deliveries", _, "replay"],
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }

    fn readyz(&self) -> Answer {
        match self.readiness() {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        }
    }

    /// Ready, or why not: what `/readyz`, the status page and `xhubd_ready` say.
    fn readiness(&self) -> Result<(), &'static str> {
        let health = self.store.health();
        if !health.writer_running.load(Ordering::Relaxed) {
            Err("spool writer not running")
        } else if !health.last_commit_ok.load(Ordering::Relaxed) {
            Err("spool: the last commit failed")
        } else if !self.delivering() {
            Err("delivery not running")
        } else {
            Ok(())
        }
    }

    /// Whether every destination's scheduler runs.
    fn delivering(&self) -> bool {
        self.fleet.all_running()
    }

    /// The answer to a spool that could not be read.
    fn unreadable(e: SpoolError) -> Answer {
        warn!(error = %e, "admin: spool query failed");
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the spool could not be read",
        )
    }

    async fn metrics(&self) -> Answer {
        match self.store.stats().await.map_err(Self::unreadable) {
            Ok(stats) => {
                let views = self.fleet.views();
                let verdict = verdict::Verdict::of(&stats, &views);
                let configured: Vec<_> = views
                    .into_iter()
                    .map(|v| (v.key, v.status.down_since.is_none()))
                    .collect();
                respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics.render(
                        &stats,
                        &configured,
                        verdict.all_well(),
                        self.readiness().is_ok(),
                    ),
                )
            }
            Err(answer) => answer,
        }
    }

    async fn status_page(&self) -> Answer {
        let data = async {
            Ok((
                self.store.stats().await?,
                self.store
                    .list(ListFilter::default(), STATUS_PAGE_EVENTS)
                    .await?,
                self.store
                    .list(
                        ListFilter {
                            state: Some(EventState::Dead),
                            ..ListFilter::default()
                        },
                        STATUS_PAGE_EVENTS,
                    )
                    .await?,
            ))
        }
        .await
        .map_err(Self::unreadable);
        match data {
            Ok((stats, recent, dead)) => {
                let views = self.fleet.views();
                let verdict = verdict::Verdict::of(&stats, &views);
                let page = pages::status(&pages::Status {
                    stats: &stats,
                    recent: &recent,
                    dead: &dead,
                    destinations: &views
                        .into_iter()
                        .map(|v| pages::DestinationRow {
                            flows: self.metrics.flows_last_hour(&v.key),
                            key: v.key.to_string(),
                            url: v.url,
                            status: v.status,
                        })
                        .collect::<Vec<_>>(),
                    ready: self.readiness().is_ok(),
                    verdict: &verdict,
                    requests: &self.metrics.requests_last_hour(),
                    spool: &self.store.describe(),
                });
                respond(StatusCode::OK, "text/html; charset=utf-8", page)
            }
            Err(answer) => answer,
        }
    }

    async fn event_page(&self, id: &str) -> Answer {
        match self.store.show(id).await.map_err(Self::unreadable) {
            Ok(Some(event)) => respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                pages::event(&event),
            ),
            Ok(None) => text(StatusCode::NOT_FOUND, "no such event"),
            Err(answer) => answer,
        }
    }

    async fn events_json(&self, query: Option<&str>) -> Answer {
        let mut filter = ListFilter::default();
        let mut limit = 100usize;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "route" => filter.route = Some(v.into_owned()),
                "destination" => filter.destination = Some(v.into_owned()),
                "state" => match EventState::parse(&v) {
                    Some(s) => filter.state = Some(s),
                    None => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "state must be pending, delivered or dead",
                        )
                    }
                },
                "limit" => match v.parse::<usize>() {
                    Ok(n) if n > 0 => limit = n.min(10_000),
                    _ => return text(StatusCode::BAD_REQUEST, "limit must be a positive number"),
                },
                _ => {}
            }
        }
        match self
            .store
            .list(filter, limit)
            .await
            .map_err(Self::unreadable)
        {
            Ok(list) => json(StatusCode::OK, &list),
            Err(answer) => answer,
        }
    }

    /// The body as received, as a download: never rendered on the admin origin (which
    /// has Replay buttons), whatever it holds.
    async fn event_body(&self, id: &str) -> Answer {
        match self.store.show(id).await.map_err(Self::unreadable) {
            Ok(Some(event)) => {
                let mut answer = respond(StatusCode::OK, "application/octet-stream", event.body);
                let headers = answer.headers_mut();
                if let Ok(disposition) =
                    HeaderValue::from_str(&format!("attachment; filename=\"xhubd-{id}.json\""))
                {
                    headers.insert(header::CONTENT_DISPOSITION, disposition);
                }
                headers.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                answer
            }
            Ok(None) => text(StatusCode::NOT_FOUND, "no such event"),
            Err(answer) => answer,
        }
    }

    async fn event_json(&self, id: &str) -> Answer {
        match self.store.show(id).await.map_err(Self::unreadable) {
            Ok(Some(event)) => json(StatusCode::OK, &event),
            Ok(None) => text(StatusCode::NOT_FOUND, "no such event"),
            Err(answer) => answer,
        }
    }

    async fn replay(&self, id: &str, from_form: bool) -> Answer {
        let result = match self.store.replay(id).await {
            Ok(r) => r,
            Err(e) => return Self::unreadable(e),
        };
        match result {
            Replay::Replayed => {
                info!(event_id = %id, "replay requested on the admin listener");
                if from_form {
                    let mut answer = text(StatusCode::SEE_OTHER, "replayed");
                    if let Ok(location) = HeaderValue::from_str(&format!("/event/{id}")) {
                        answer.headers_mut().insert(header::LOCATION, location);
                    }
                    answer
                } else {
                    json(
                        StatusCode::OK,
                        &serde_json::json!({ "id": id, "replayed": true }),
                    )
                }
            }
            Replay::AlreadyPending => text(StatusCode::CONFLICT, "the event is already pending"),
            Replay::NotFound => text(StatusCode::NOT_FOUND, "no such event"),
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
    match serde_json::to_string_pretty(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}
