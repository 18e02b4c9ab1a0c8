//! systemd notifications (`Type=notify`): `READY=1` once the spool is open and the
//! listener accepts, `STOPPING=1` on shutdown, and watchdog keep-alives while the spool
//! writer runs. Without `NOTIFY_SOCKET` (not under systemd) these do nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::spool::SpoolHealth;

/// Tells systemd that xhubd is ready, with a status line.
pub fn ready(listen: &str) {
    let status = format!("accepting webhooks on {listen}");
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        warn!(error = %e, "cannot notify systemd of readiness");
    }
}

/// Tells systemd that a long start-up step (`what`, the spool's upgrade) is still
/// making progress, so the start timeout (`TimeoutStartSec=`) is extended by `more`.
pub fn still_starting(what: &str, more: std::time::Duration) {
    let micros = u32::try_from(more.as_micros()).unwrap_or(u32::MAX);
    let _ = sd_notify::notify(&[
        NotifyState::ExtendTimeoutUsec(micros),
        NotifyState::Status(what),
    ]);
}

/// Tells systemd that xhubd is stopping.
pub fn stopping() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]) {
        warn!(error = %e, "cannot notify systemd of the stop");
    }
}

/// When systemd's watchdog is on (`WatchdogSec=`), pings it at half the interval for as
/// long as the spool writer runs; a writer that died stops the pings, and systemd
/// restarts the service.
pub fn spawn_watchdog(health: Arc<SpoolHealth>, shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = interval / 2;
    debug!(?period, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if health.writer_running.load(Ordering::Relaxed) {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            } else {
                warn!("spool writer stopped: no more watchdog pings");
            }
        }
    });
}
