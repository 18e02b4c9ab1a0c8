//! The checkpointer: copies the write-ahead log back into the database on a connection
//! of its own, so the writer's commits seldom pause for it. It runs PASSIVE checkpoints
//! (they never block the writer) fifty times a second. Under steady load new frames
//! arrive while it copies, so it never finishes on its own; the writer then copies the
//! short rest once the log passes its limit (see `writer`), the log starts over from
//! the beginning, and `journal_size_limit` trims the file: the log stays bounded.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tracing::warn;

use super::schema;

/// How often the log is copied back. Often, so that each copy (and its fsync of the
/// database file) is short and the writer's own copy of the rest, when the log passes
/// its limit, has little left to do: at 200 ms, commits that ran into it took up to
/// 30 ms and the acknowledgement p99 was twice as long.
const EVERY: Duration = Duration::from_millis(20);

/// The running checkpointer thread.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts it on its own connection to the spool in `state_dir`.
    pub fn start(state_dir: &Path) -> anyhow::Result<Checkpointer> {
        let conn = schema::connect(state_dir, schema::Access::ReadWrite)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spool-checkpoint".into())
            .spawn(move || run(&conn, &flag))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: &Connection, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(EVERY);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            warn!(error = %e, "checkpoint failed; will try again");
        }
    }
    // A last one, so a clean stop leaves a small log.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}
