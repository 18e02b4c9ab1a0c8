//! `xhubd check`: validates a configuration the way `serve` would (secrets readable and
//! not empty, the spool readable) and that the upstream accepts connections. It creates,
//! writes and upgrades nothing, so it is safe next to a running daemon.

use std::time::Duration;

use crate::cli::ServeArgs;
use crate::config::{redacted_url, Config};
use crate::spool::schema;

/// Runs the checks; returns the report lines and whether everything passed.
pub fn run(args: ServeArgs) -> (Vec<String>, bool) {
    let mut report = Vec::new();
    let config = match Config::inspect(args) {
        Ok(c) => c,
        Err(e) => {
            report.push(format!("FAIL configuration: {e:#}"));
            return (report, false);
        }
    };
    report.push(format!(
        "ok   configuration: {} App Secret(s), verify token, state dir {}",
        config.app_secrets.len(),
        config.state_dir.display()
    ));
    let mut ok = true;
    match schema::inspect(&config.state_dir) {
        Ok(None) => report.push(format!(
            "ok   spool: none yet in {}; the daemon creates it when it starts",
            config.state_dir.display()
        )),
        Ok(Some(layout)) if layout < schema::SCHEMA_VERSION => report.push(format!(
            "ok   spool: layout {layout}; this release's daemon upgrades it to {} when it starts",
            schema::SCHEMA_VERSION
        )),
        Ok(Some(layout)) => report.push(format!("ok   spool: opens (layout {layout})")),
        Err(e) => {
            ok = false;
            report.push(format!("FAIL spool: {e:#}"));
        }
    }
    let url = &config.upstream;
    let shown = redacted_url(url);
    match url.socket_addrs(|| None) {
        Ok(addrs) if !addrs.is_empty() => {
            let reached = addrs
                .iter()
                .any(|a| std::net::TcpStream::connect_timeout(a, Duration::from_secs(5)).is_ok());
            if reached {
                report.push(format!("ok   upstream: {shown} accepts connections"));
            } else {
                ok = false;
                report.push(format!(
                    "FAIL upstream: cannot connect to {shown} (is the backend running?)"
                ));
            }
        }
        Ok(_) | Err(_) => {
            ok = false;
            report.push(format!("FAIL upstream: cannot resolve {shown}"));
        }
    }
    (report, ok)
}
