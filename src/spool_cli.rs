//! `xhubd spool copy --from DIR --to URL`: moving from one machine (the SQLite spool in
//! a state directory) to several (a shared PostgreSQL spool). It takes the state
//! directory's lock, as the daemon does, so it never reads a spool that a running
//! daemon writes, and holds it while it copies; it reads only a spool at this build's
//! layout; the PostgreSQL password comes as for `xhubd events` and is never shown.
//! What is copied, and why running it twice is safe: [`crate::spool::copy`].

use anyhow::{bail, Context};

use crate::cli::{SpoolAction, SpoolArgs, SpoolCopyArgs};
use crate::config::{spool_choice, SpoolChoice};
use crate::spool::copy;
use crate::spool::postgres::connect::is_postgres_url;
use crate::spool::postgres::schema as pg_schema;
use crate::spool::sqlite::schema;

/// Runs one `spool` subcommand and returns what to print.
pub fn run(args: &SpoolArgs) -> anyhow::Result<String> {
    match &args.action {
        SpoolAction::Copy(copy) => copy_spool(copy),
    }
}

/// Copies the stopped spool in `--from` into the database of `--to`; returns the
/// summary line.
fn copy_spool(args: &SpoolCopyArgs) -> anyhow::Result<String> {
    if !is_postgres_url(&args.to) {
        bail!("--to must be a postgres:// or postgresql:// URL");
    }
    let SpoolChoice::Postgres(target) =
        spool_choice(&args.to, args.spool_password_file.as_deref())?
    else {
        bail!("--to must be a postgres:// or postgresql:// URL");
    };
    let from = &args.from;
    let file = from.join(schema::DB_FILE);
    if !file.exists() {
        bail!(
            "no spool at {} (is --from the state directory?)",
            file.display()
        );
    }
    let Some(_lock) = schema::lock(from)? else {
        bail!(
            "--from {} is in use by a running xhubd: stop it first (systemctl stop xhubd.socket xhubd)",
            from.display()
        );
    };
    let sqlite = schema::connect(from, schema::Access::ReadOnly)?;
    let origin = format!("copied from {}", host_name());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let shown = target.describe().to_owned();
    let copied = runtime.block_on(async {
        let mut client = target
            .connect()
            .await
            .with_context(|| format!("--to {shown}"))?;
        pg_schema::migrate(&mut client)
            .await
            .with_context(|| format!("--to {shown}"))?;
        copy::copy(&sqlite, &mut client, &origin)
            .await
            .with_context(|| format!("copying {} into {shown}", file.display()))
    })?;
    Ok(copied.to_string())
}

/// This machine's name.
fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}
