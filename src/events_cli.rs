//! `xhubd events list|show|replay|purge`: the spool from the command line, on the state
//! directory (or the PostgreSQL database of `--spool`) directly, safe while the daemon
//! runs: `list` and `show` open the spool read-only, `replay` and `purge` change it in
//! short chunks (the daemon's writer never waits long for them), and none of them
//! creates or upgrades a spool. Tables for people, `--json` for scripts. `--config`
//! finds the spool where the daemon's config file says it is.

use std::path::Path;

use anyhow::{anyhow, bail, Context};

use crate::cli::{EventsAction, EventsArgs};
use crate::config::{spool_choice, SpoolChoice};
use crate::duration::parse_duration;
use crate::spool::now_ms;
use crate::spool::postgres::inspect as pg;
use crate::spool::sqlite::inspect;
use crate::spool::sqlite::schema;
use crate::spool::views::{EventDetail, EventSummary, Finished, ListFilter, Replay};
use crate::time::rfc3339;

/// The spool the command works on.
enum Spool {
    /// The SQLite file, opened read-only or read-write.
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL database, with a runtime for its client.
    Postgres(tokio::runtime::Runtime, tokio_postgres::Client),
}

impl Spool {
    fn open(args: &EventsArgs, access: schema::Access) -> anyhow::Result<Spool> {
        match spool_choice(&args.spool, args.spool_password_file.as_deref())? {
            SpoolChoice::Sqlite => Ok(Spool::Sqlite(schema::connect(
                Path::new(args.state_dir.split(':').next().unwrap_or(&args.state_dir)),
                access,
            )?)),
            SpoolChoice::Postgres(target) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the runtime")?;
                let client = runtime
                    .block_on(target.connect())
                    .with_context(|| format!("--spool {}", target.describe()))?;
                // Replays and purges write and compare the spool's times, which are the
                // database's.
                runtime
                    .block_on(crate::spool::postgres::clock::follow(&client))
                    .map_err(|e| {
                        anyhow!("--spool {}: cannot read its clock: {e}", target.describe())
                    })?;
                Ok(Spool::Postgres(runtime, client))
            }
        }
    }

    fn list(&self, filter: &ListFilter, limit: usize) -> anyhow::Result<Vec<EventSummary>> {
        Ok(match self {
            Spool::Sqlite(c) => inspect::list(c, filter, limit)?,
            Spool::Postgres(rt, c) => rt.block_on(pg::list(c, filter, limit))?,
        })
    }

    fn show(&self, id: &str) -> anyhow::Result<Option<EventDetail>> {
        Ok(match self {
            Spool::Sqlite(c) => inspect::show(c, id)?,
            Spool::Postgres(rt, c) => rt.block_on(pg::show(c, id))?,
        })
    }

    fn replay(&self, id: &str) -> anyhow::Result<Replay> {
        Ok(match self {
            Spool::Sqlite(c) => inspect::replay(c, id)?,
            Spool::Postgres(rt, c) => rt.block_on(pg::replay(c, id))?,
        })
    }

    fn replay_delivery(&self, id: &str) -> anyhow::Result<Replay> {
        Ok(match self {
            Spool::Sqlite(c) => inspect::replay_delivery(c, id)?,
            Spool::Postgres(rt, c) => rt.block_on(pg::replay_delivery(c, id))?,
        })
    }

    fn replay_all_dead(&self) -> anyhow::Result<usize> {
        Ok(match self {
            Spool::Sqlite(c) => inspect::replay_all_dead(c)?,
            Spool::Postgres(rt, c) => rt.block_on(pg::replay_all_dead(c))?,
        })
    }

    fn purge_before(&self, which: Finished, cutoff: i64) -> anyhow::Result<usize> {
        Ok(match self {
            Spool::Sqlite(c) => inspect::purge_before(c, which, cutoff)?,
            Spool::Postgres(rt, c) => rt.block_on(pg::purge_before(c, which, cutoff))?,
        })
    }
}

/// Runs one `events` subcommand and returns what to print. With `--config`, the spool
/// is the one the daemon's config file names, unless a flag or variable says otherwise.
pub fn run(mut args: EventsArgs) -> anyhow::Result<String> {
    let all_given = ["state_dir", "spool", "spool_password_file"]
        .iter()
        .all(|id| args.explicit.contains(*id));
    if let (Some(path), false) = (&args.config, all_given) {
        let file = crate::config::file::load(path)?;
        let given = |id: &str| args.explicit.contains(id);
        if let (false, Some(dir)) = (given("state_dir"), &file.state_dir) {
            args.state_dir = dir.clone();
        }
        if let (false, Some(spool)) = (given("spool"), &file.spool) {
            args.spool = spool.clone();
        }
        if let (false, Some(password)) = (given("spool_password_file"), &file.spool_password_file) {
            args.spool_password_file = Some(password.clone());
        }
    }
    let args = &args;
    let access = match &args.action {
        EventsAction::List { .. } | EventsAction::Show { .. } => schema::Access::ReadOnly,
        EventsAction::Replay { .. } | EventsAction::Purge { .. } => schema::Access::ReadWrite,
    };
    let conn = Spool::open(args, access)?;
    match &args.action {
        EventsAction::List {
            state,
            route,
            destination,
            limit,
            json,
        } => {
            if let (Some(route), Some((named, _))) = (
                route.as_deref(),
                destination.as_deref().and_then(|d| d.split_once('/')),
            ) {
                if route != named {
                    bail!("--destination names route {named:?}, but --route is {route:?}");
                }
            }
            let filter = ListFilter {
                state: state.as_deref().and_then(crate::types::EventState::parse),
                route: route.clone(),
                destination: destination.clone(),
            };
            let list = conn
                .list(&filter, *limit)
                .context("cannot read the spool")?;
            if *json {
                Ok(serde_json::to_string_pretty(&list)?)
            } else {
                let given: Vec<String> = [
                    ("--state", state),
                    ("--route", route),
                    ("--destination", destination),
                ]
                .into_iter()
                .filter_map(|(flag, v)| v.as_ref().map(|v| format!("{flag} {v}")))
                .collect();
                Ok(table(&list, &given))
            }
        }
        EventsAction::Show { id, json } => {
            let event = conn
                .show(id)
                .context("cannot read the spool")?
                .ok_or_else(|| anyhow!("no event {id}"))?;
            if *json {
                return Ok(serde_json::to_string_pretty(&event)?);
            }
            let s = &event.summary;
            let mut out = format!(
                "id:         {}\nstate:      {}\nreceived:   {}\nobject:     {}\nfield:      {}\nsize:       {} bytes\nattempts:   {}\n",
                s.id, s.state, rfc3339(s.received_at), s.object, s.field, s.size, s.attempts
            );
            if let Some(instance) = &s.accepted_by {
                out.push_str(&format!("accepted by: instance {instance}\n"));
            }
            if let Some(next) = s.next_attempt_at {
                out.push_str(&format!("next try:   {}\n", rfc3339(next)));
            }
            if let Some(error) = &s.last_error {
                out.push_str(&format!("last error: {error}\n"));
            }
            out.push_str("\ndeliveries:\n");
            for d in &event.deliveries {
                out.push_str(&format!(
                    "  {} to {}/{} (part {}/{}): {}, {} attempt(s)\n",
                    d.id, d.route, d.destination, d.part, d.parts, d.state, d.attempts
                ));
                if let Some(instance) = &d.claimed_by {
                    out.push_str(&format!(
                        "    taken by instance {instance} (lease running)\n"
                    ));
                }
                if !d.history.is_empty() {
                    out.push_str(&format!(
                        "    {:<20}  {:<9}  {:>6}  {}\n",
                        "attempt at (UTC)", "result", "status", "error or answer"
                    ));
                }
                for a in &d.history {
                    let status = a
                        .status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into());
                    let mut detail: String = a.detail.chars().take(120).collect();
                    if let Some(instance) = &a.instance {
                        detail = format!("({instance}) {detail}");
                    }
                    out.push_str(&format!(
                        "    {:<20}  {:<9}  {:>6}  {}\n",
                        rfc3339(a.at),
                        a.result,
                        status,
                        detail.replace(['\n', '\r'], " ")
                    ));
                }
            }
            out.push_str("\nheaders:\n");
            if let Some(headers) = event.headers.as_object() {
                for (name, value) in headers {
                    out.push_str(&format!(
                        "  {name}: {}\n",
                        value.as_str().unwrap_or_default()
                    ));
                }
            }
            // As received: the bytes that were signed and forwarded, never re-sorted.
            out.push_str("\npayload (as received):\n");
            out.push_str(&event.body);
            Ok(out)
        }
        EventsAction::Replay { id: Some(id), .. } => {
            match conn.replay(id).context("cannot update the spool")? {
                Replay::Replayed => Ok(format!(
                    "{id}: pending again; the daemon delivers it within a second"
                )),
                Replay::AlreadyPending => bail!("{id} is already pending"),
                Replay::NotFound => bail!("no event {id}"),
            }
        }
        EventsAction::Replay {
            delivery: Some(id), ..
        } => match conn
            .replay_delivery(id)
            .context("cannot update the spool")?
        {
            Replay::Replayed => Ok(format!(
                "delivery {id}: pending again; the daemon sends it within a second"
            )),
            Replay::AlreadyPending => bail!("delivery {id} is already pending"),
            Replay::NotFound => bail!("no delivery {id}"),
        },
        EventsAction::Replay { id: None, .. } => {
            let n = conn.replay_all_dead().context("cannot update the spool")?;
            Ok(format!("{n} dead event(s) pending again"))
        }
        EventsAction::Purge {
            delivered_before,
            dead_before,
        } => {
            let mut said = Vec::new();
            for (which, flag, age) in [
                (Finished::Delivered, "--delivered-before", delivered_before),
                (Finished::Dead, "--dead-before", dead_before),
            ] {
                let Some(age) = age else { continue };
                let age = parse_duration(age).map_err(|e| anyhow!("{flag}: {e}"))?;
                let cutoff = now_ms() - age.as_millis().min(i64::MAX as u128) as i64;
                let n = conn
                    .purge_before(which, cutoff)
                    .context("cannot update the spool")?;
                said.push(format!(
                    "{n} {} event(s) accepted before {} deleted",
                    which.as_str(),
                    rfc3339(cutoff)
                ));
            }
            Ok(said.join("\n"))
        }
    }
}

/// A plain table, one event a line; `filters` (`--route wa`, ...) are named when
/// nothing matched them, so that a misspelt name does not read as an empty spool.
fn table(list: &[EventSummary], filters: &[String]) -> String {
    // Columns as wide as their widest value, so long names never run into the next.
    let what: Vec<String> = list
        .iter()
        .map(|e| format!("{}/{}", e.object, e.field))
        .collect();
    let route_width = list.iter().map(|e| e.route.len()).max().unwrap_or(0).max(5);
    let what_width = what.iter().map(String::len).max().unwrap_or(0).max(12);
    let mut out = format!(
        "{:<20}  {:<36}  {:<route_width$}  {:<9}  {:>8}  {:>8}  {:<what_width$}  {}\n",
        "RECEIVED (UTC)", "ID", "ROUTE", "STATE", "ATTEMPTS", "SIZE", "OBJECT/FIELD", "LAST ERROR"
    );
    for (e, what) in list.iter().zip(&what) {
        let error: String = e
            .last_error
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect();
        out.push_str(&format!(
            "{:<20}  {:<36}  {:<route_width$}  {:<9}  {:>8}  {:>8}  {:<what_width$}  {}\n",
            rfc3339(e.received_at),
            e.id,
            e.route,
            e.state,
            e.attempts,
            e.size,
            what,
            error
        ));
    }
    match (list.is_empty(), filters.is_empty()) {
        (true, true) => out.push_str("(no events)\n"),
        (true, false) => out.push_str(&format!("(no events match {})\n", filters.join(" "))),
        _ => {}
    }
    out
}
