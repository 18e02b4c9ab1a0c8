//! Waiting for SIGTERM (systemd's stop) or SIGINT (Ctrl-C).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals that stop xhubd, registered at start so that none is missed.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Registers the handlers.
    pub fn register() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal and returns its name.
    pub async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
