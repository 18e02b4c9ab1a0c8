//! How the upstream is doing, as the status page shows it: the last success, the last
//! failure and its error, and how many attempts in a row have failed.

use std::sync::Mutex;

use serde::Serialize;

use crate::spool::now_ms;

/// A snapshot of the upstream's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpstreamSnapshot {
    /// When an attempt last succeeded (unix ms).
    pub last_success_at: Option<i64>,
    /// When an attempt last failed (unix ms).
    pub last_failure_at: Option<i64>,
    /// The last failure's error.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u64,
}

/// The shared, updated record.
#[derive(Debug, Default)]
pub struct UpstreamStatus(Mutex<UpstreamSnapshot>);

impl UpstreamStatus {
    fn update(&self, f: impl FnOnce(&mut UpstreamSnapshot)) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    /// Records a 2xx.
    pub fn success(&self) {
        self.update(|s| {
            s.last_success_at = Some(now_ms());
            s.consecutive_failures = 0;
        });
    }

    /// Records a failed attempt.
    pub fn failure(&self, error: &str) {
        self.update(|s| {
            s.last_failure_at = Some(now_ms());
            s.last_error = Some(error.to_owned());
            s.consecutive_failures += 1;
        });
    }

    /// The current state.
    pub fn snapshot(&self) -> UpstreamSnapshot {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
