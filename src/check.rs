//! `xhubd check`: validates a configuration the way `serve` would (secrets readable and
//! not empty, the spool readable) and that the upstream accepts connections. It creates,
//! writes and upgrades nothing, so it is safe next to a running daemon.

use std::time::Duration;

use crate::cli::ServeArgs;
use crate::config::SpoolChoice;
use crate::config::{redacted_url, Config};
use crate::spool::postgres::schema as pg_schema;
use crate::spool::postgres::PgTarget;
use crate::spool::sqlite::schema;

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
    let apps = config
        .routes
        .iter()
        .map(|r| {
            format!(
                "{} ({} App Secret(s), verify token, {} destination(s))",
                r.name,
                r.app_secrets.len(),
                r.destinations.len()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    report.push(format!(
        "ok   configuration: route(s) {apps}; state dir {}",
        config.state_dir.display()
    ));
    for warning in crate::config::warnings(&config) {
        report.push(format!("warn {warning}"));
    }
    let mut ok = true;
    if let SpoolChoice::Postgres(target) = &config.spool {
        match postgres_spool(target) {
            Ok(line) => report.push(format!("ok   spool: {line}")),
            Err(line) => {
                ok = false;
                report.push(format!("FAIL spool: {line}"));
            }
        }
    } else {
        sqlite_spool(&config, &mut report, &mut ok);
    }
    for route in &config.routes {
        for destination in &route.destinations {
            let what = format!("{}/{}", route.name, destination.name);
            match reachable(&destination.url) {
                Ok(line) => report.push(format!("ok   destination {what}: {line}")),
                // A backend that is down is where delivery's retries are for: a warning,
                // not a failure, once there are several.
                Err(line) if route.path.is_none() => {
                    ok = false;
                    report.push(format!("FAIL upstream: {line}"));
                }
                Err(line) => report.push(format!("warn destination {what}: {line}")),
            }
        }
    }
    (report, ok)
}

/// The SQLite spool in the state directory: none yet, upgradable, or opening.
fn sqlite_spool(config: &Config, report: &mut Vec<String>, ok: &mut bool) {
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
            *ok = false;
            report.push(format!("FAIL spool: {e:#}"));
        }
    }
}

/// The PostgreSQL spool: connects (the password never shown) and reads its schema
/// version, without creating or changing anything.
fn postgres_spool(target: &PgTarget) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = target
            .connect()
            .await
            .map_err(|e| format!("{}: {e}", target.describe()))?;
        let failed = |e: tokio_postgres::Error| format!("{}: {e}", target.describe());
        let created: bool = client
            .query_one("SELECT to_regclass('xhubd_schema') IS NOT NULL", &[])
            .await
            .map_err(failed)?
            .try_get(0)
            .map_err(failed)?;
        let version: Option<i32> = if created {
            client
                .query_one("SELECT max(version) FROM xhubd_schema", &[])
                .await
                .map_err(failed)?
                .try_get(0)
                .map_err(failed)?
        } else {
            None
        };
        Ok(match version {
            None => format!(
                "{}: connects; no tables yet, the daemon creates them when it starts",
                target.describe()
            ),
            Some(v) if v > pg_schema::SCHEMA_VERSION => {
                return Err(format!(
                    "{}: schema version {v} is newer than this xhubd's ({})",
                    target.describe(),
                    pg_schema::SCHEMA_VERSION
                ))
            }
            Some(v) => format!("{}: connects (schema version {v})", target.describe()),
        })
    })
}

/// Whether a backend accepts connections: the line to print either way.
fn reachable(url: &url::Url) -> Result<String, String> {
    let shown = redacted_url(url);
    match url.socket_addrs(|| None) {
        Ok(addrs) if !addrs.is_empty() => {
            let reached = addrs
                .iter()
                .any(|a| std::net::TcpStream::connect_timeout(a, Duration::from_secs(5)).is_ok());
            if reached {
                Ok(format!("{shown} accepts connections"))
            } else {
                Err(format!(
                    "cannot connect to {shown} (is the backend running?)"
                ))
            }
        }
        Ok(_) | Err(_) => Err(format!("cannot resolve {shown}")),
    }
}
