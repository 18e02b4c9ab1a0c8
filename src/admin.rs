//! The admin listener (`--admin-listen`): `GET /healthz` (the process answers) and
//! `GET /readyz` (the spool takes commits and delivery runs; 503 with the reason
//! otherwise). Meant for loopback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::spool::SpoolHealth;
use crate::webhook::{text, Answer};

/// What the admin routes look at.
#[derive(Clone)]
pub struct Admin {
    /// The spool's health flags.
    pub spool: Arc<SpoolHealth>,
    /// Whether the delivery scheduler runs.
    pub delivery_running: Arc<AtomicBool>,
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(&self, request: Request<Incoming>) -> Answer {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed here");
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok"),
            "/readyz" => {
                if !self.spool.writer_running.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "spool writer not running")
                } else if !self.spool.last_commit_ok.load(Ordering::Relaxed) {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "spool: the last commit failed",
                    )
                } else if !self.delivery_running.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "delivery not running")
                } else {
                    text(StatusCode::OK, "ready")
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }
}
