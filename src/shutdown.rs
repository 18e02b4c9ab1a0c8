//! The signals the daemon acts on: SIGTERM (systemd's stop) and SIGINT (Ctrl-C) stop
//! it; SIGHUP (`systemctl reload xhubd`) reloads its config file. All are registered at
//! start, so none is missed and SIGHUP never kills the daemon.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Stop (the signal's name).
    Stop(&'static str),
    /// Reload the config file.
    Reload,
}

/// The registered signals.
pub struct StopSignals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl StopSignals {
    /// Registers the handlers.
    pub fn register() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal.
    pub async fn wait(&mut self) -> Asked {
        tokio::select! {
            _ = self.term.recv() => Asked::Stop("SIGTERM"),
            _ = self.int.recv() => Asked::Stop("SIGINT"),
            _ = self.hup.recv() => Asked::Reload,
        }
    }
}
