//! The planner's statistics, kept current while a spool grows fast. Statements are
//! prepared once per connection and their plans cached; a plan made while the tables
//! were small (a young spool) scans whole tables once they are large, until the
//! statistics change. PostgreSQL's autovacuum refreshes them only after a share of a
//! table has changed and at most once a minute; the events writer also asks for an
//! `ANALYZE` each time its instance has stored twice as many events as at the last one
//! (1,000, 2,000, 4,000, … then every 1,000,000), which replaces every session's cached
//! plans. One instance at a time analyses (an advisory lock), on a connection of its
//! own, so no accept waits for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{debug, warn};

use super::connect::{error_text, PgTarget};
use super::schema::{ANALYZE_LOCK, LOCK_CLASS};

/// New events before the first analysis of this run.
const FIRST: u64 = 1_000;
/// New events between two analyses, at most.
const MOST: u64 = 1_000_000;

/// What this instance has stored since the last analysis it asked for.
pub(super) struct Growth {
    since: u64,
    next: u64,
    running: Arc<AtomicBool>,
}

impl Growth {
    pub(super) fn new() -> Growth {
        Growth {
            since: 0,
            next: FIRST,
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Counts `stored` new events; once there are enough since the last analysis (and
    /// none runs), starts one in the background.
    pub(super) fn grew(&mut self, stored: usize, target: &Arc<PgTarget>) {
        self.since += stored as u64;
        if self.since < self.next || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.since = 0;
        self.next = (self.next * 2).min(MOST);
        let running = self.running.clone();
        let target = target.clone();
        tokio::spawn(async move {
            analyze(&target).await;
            running.store(false, Ordering::Release);
        });
    }
}

/// Analyses the spool's tables unless another instance is doing it.
async fn analyze(target: &PgTarget) {
    let run = async {
        let client = target.connect().await.map_err(|e| e.to_string())?;
        let mine: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&LOCK_CLASS, &ANALYZE_LOCK],
            )
            .await
            .map_err(|e| error_text(&e))?
            .get(0);
        if mine {
            client
                .batch_execute(
                    "ANALYZE events, bodies, deliveries, delivery_bodies, attempts, dedup",
                )
                .await
                .map_err(|e| error_text(&e))?;
        }
        // The session's lock goes with the connection.
        Ok::<_, String>(mine)
    };
    match run.await {
        Ok(true) => debug!("analysed the PostgreSQL spool's tables"),
        Ok(false) => debug!("another instance is analysing the PostgreSQL spool's tables"),
        Err(e) => {
            warn!(error = %e, "cannot analyse the PostgreSQL spool's tables; PostgreSQL's autovacuum will")
        }
    }
}
