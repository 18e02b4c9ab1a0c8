//! What exposes secrets or events in a valid configuration: `serve` logs it as warnings
//! at start, `check` reports it. Never an error: a private network may be meant.

use std::os::unix::fs::PermissionsExt;

use super::{Config, SpoolChoice};
use crate::listener::ListenAddr;

/// One sentence per exposure (no secret in any): a config file others can read (it may
/// hold secrets), a state directory holding the SQLite spool that others can enter (the
/// spool holds events' payloads), and an admin listener beyond loopback without a token
/// (it shows payloads and replays events).
pub fn warnings(config: &Config) -> Vec<String> {
    let mut found = Vec::new();
    if matches!(config.spool, SpoolChoice::Sqlite) {
        let mode = std::fs::metadata(&config.state_dir)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o005 != 0 {
            found.push(format!(
                "the state directory {} is open to every user (mode {:o}); its spool holds the events' payloads: chmod 700 it",
                config.state_dir.display(),
                mode & 0o777
            ));
        }
    }
    if let Some(file) = &config.config_file {
        let mode = std::fs::metadata(file)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o004 != 0 {
            found.push(format!(
                "the config file {} is readable by every user (mode {:o}); it may hold secrets: chmod o-r it",
                file.display(),
                mode & 0o777
            ));
        }
    }
    if let (Some(ListenAddr::Tcp(addr)), None) = (&config.admin_listen, &config.admin_token) {
        let loopback = addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or_else(|_| addr.starts_with("localhost:"));
        if !loopback {
            found.push(format!(
                "the admin listener {addr} is reachable beyond loopback without --admin-token: it shows payloads and replays events"
            ));
        }
    }
    found
}
