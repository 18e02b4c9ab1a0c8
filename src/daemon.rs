//! `xhubd` from the command line to the running daemon: parse, validate, open the
//! spool, bind, start delivery and the listeners, then wait for SIGTERM/SIGINT and
//! stop in order (listeners, delivery, writer).

use std::fs::File;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Context};
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::Admin;
use crate::cli::{Cli, Command, ServeArgs};
use crate::config::routes::Route;
use crate::config::Config;
use crate::config::SpoolChoice;
use crate::delivery::fleet::Fleet;
use crate::listener::{take_systemd_socket, Listener, SystemdSocket};
use crate::metrics::Metrics;
use crate::notify;
use crate::output;
use crate::server::{self, ServerSettings};
use crate::shutdown::{Asked, StopSignals};
use crate::spool::postgres::{FirstConnection, PgStore};
use crate::spool::sqlite::SqliteStore;
use crate::spool::{Running, Store, WriterSettings};
use crate::types::DueDelivery;
use crate::webhook::client_cn::ClientCnCheck;
use crate::webhook::Webhook;

/// Exit status for a start-up error (bad option, unreadable secret, unusable state dir).
pub const EXIT_STARTUP: u8 = 2;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let mut cli = match parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    // `check` reads the service's variables, then the command line is read again with
    // them in the environment, so they count exactly as they do under systemd.
    let mut preface = Vec::new();
    if let Command::Check(args) = &cli.command {
        if args.environment_file.as_os_str() != "none" {
            match crate::service_env::adopt(&args.environment_file, args.serve.config.is_some()) {
                Ok(lines) => preface = lines,
                Err(e) => return startup_error(&e),
            }
            cli = match parse() {
                Ok(cli) => cli,
                Err(e) => return clap_error(e),
            };
        }
    }
    match cli.command {
        Command::Completions { shell } => output::print_and_exit(&crate::docs::completions(shell)),
        Command::Man { out_dir } => match crate::docs::man_pages(&out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => startup_error(&e),
        },
        Command::Events(args) => match crate::events_cli::run(args) {
            Ok(text) => output::print_and_exit(text.trim_end()),
            Err(e) => startup_error(&e),
        },
        Command::Spool(args) => match crate::spool_cli::run(&args) {
            Ok(text) => output::print_and_exit(&text),
            Err(e) => startup_error(&e),
        },
        Command::Check(args) => {
            let (report, ok) = crate::check::run(args.serve);
            let report: Vec<String> = preface.into_iter().chain(report).collect();
            match output::print(&report.join("\n")) {
                Ok(()) if ok => ExitCode::SUCCESS,
                Ok(()) => ExitCode::from(EXIT_STARTUP),
                Err(e) => startup_error(&anyhow!(e).context("cannot write the report")),
            }
        }
        Command::SendTest(args) => crate::send_test::main(&args),
        Command::Sign(args) => match crate::sign::run(&args) {
            Ok(header) => output::print_and_exit(&header),
            Err(e) => startup_error(&e),
        },
        Command::Serve(args) => {
            let args = *args;
            let config = match Config::from_args(args.clone()) {
                Ok(c) => c,
                Err(e) => return startup_error(&e),
            };
            // Before any thread exists: this edits the environment.
            let inherited = match take_systemd_socket() {
                Ok(s) => s,
                Err(e) => return startup_error(&e),
            };
            let logs = crate::logging::init(config.log_format);
            crate::fd_limit::raise_for(config.max_connections);
            let ran = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async move {
                    match Daemon::start(args, config, inherited).await {
                        Ok(daemon) => Ok(daemon.run().await),
                        Err(e) => Err(e),
                    }
                }),
                Err(e) => Err(anyhow!(e).context("cannot start the runtime")),
            };
            // Every line logged is written before the error line, and before exit.
            drop(logs);
            ran.unwrap_or_else(|e| startup_error(&e))
        }
    }
}

/// The command line (and the environment), with the options given as flags or
/// variables noted in the serve options.
fn parse() -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches()?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Some((_, sub)) = matches.subcommand() {
        match &mut cli.command {
            Command::Serve(args) => args.explicit = explicit_options(sub),
            Command::Check(args) => args.serve.explicit = explicit_options(sub),
            Command::Events(args) => {
                // Its options are global: given before or after the action.
                args.explicit = explicit_options(sub);
                if let Some((_, action)) = sub.subcommand() {
                    args.explicit.extend(explicit_options(action));
                }
            }
            _ => {}
        }
    }
    Ok(cli)
}

/// The ids of the options given on the command line or in the environment: the config
/// file does not override those.
fn explicit_options(matches: &clap::ArgMatches) -> std::collections::BTreeSet<String> {
    matches
        .ids()
        .filter(|id| {
            matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.as_str().to_owned())
        .collect()
}

/// Prints a start-up error as one line and returns exit status 2.
fn startup_error(e: &anyhow::Error) -> ExitCode {
    eprintln!("xhubd: {e:#}");
    ExitCode::from(EXIT_STARTUP)
}

/// Help and version go to stdout as usual; any other clap error becomes one line.
fn clap_error(e: clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let rendered = e.render().to_string();
    let line: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = line.join(" ");
    eprintln!(
        "xhubd: {} (see xhubd --help)",
        line.trim_start_matches("error: ")
    );
    ExitCode::from(EXIT_STARTUP)
}

/// The running daemon.
struct Daemon {
    signals: StopSignals,
    shutdown: CancellationToken,
    listeners: Vec<JoinHandle<()>>,
    fleet: Arc<Fleet>,
    routes: Arc<RwLock<Arc<Vec<Route>>>>,
    /// What was given to start, for a reload: the command line, and what a reload may
    /// not change.
    args: ServeArgs,
    fixed: Fixed,
    spool: Running,
    /// A stop asked for while waiting for the database at start.
    stop_asked: Option<&'static str>,
    _lock: Option<File>,
}

/// What only a restart changes: every option but the routes and destinations (and the
/// flags that are their defaults). A reload that changes one of these is refused, so
/// that "configuration reloaded" never hides an option that did not take effect.
#[derive(Debug, PartialEq)]
struct Fixed(Vec<(&'static str, String)>);

impl Fixed {
    fn of(c: &Config) -> Fixed {
        // The admin token by its hash: the text never holds a secret.
        let token = c.admin_token.as_ref().map(|t| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(t.expose()))
        });
        let entry = |name: &'static str, value: &dyn std::fmt::Debug| (name, format!("{value:?}"));
        Fixed(vec![
            entry("listen", &c.listen),
            entry("socket_mode", &c.socket_mode),
            entry("state_dir", &c.state_dir),
            entry("spool", &c.spool.describe()),
            // By its hash, like the admin token: a new password needs a restart.
            entry(
                "the spool's password",
                &match &c.spool {
                    SpoolChoice::Postgres(target) => target.password_digest(),
                    SpoolChoice::Sqlite => None,
                },
            ),
            entry("instance_name", &c.instance_name),
            entry("max_body_bytes", &c.max_body_bytes),
            entry("dedup_window", &c.dedup_window),
            entry("client_cn_header/client_cn", &c.client_cn),
            entry("admin_listen", &c.admin_listen),
            entry("admin_token", &token),
            entry("max_connections", &c.max_connections),
            entry("header_timeout", &c.header_timeout),
            entry("body_timeout", &c.body_timeout),
            entry("shutdown_timeout", &c.shutdown_timeout),
            entry("log_format", &c.log_format),
        ])
    }

    /// The names of the options whose values differ in `other`.
    fn changed(&self, other: &Fixed) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(&other.0)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }
}

impl Daemon {
    /// Opens the spool, binds the listeners and starts every task, in the order an event
    /// travels. Any error here is a start-up error.
    async fn start(
        args: ServeArgs,
        config: Config,
        inherited: Option<SystemdSocket>,
    ) -> anyhow::Result<Daemon> {
        let mut signals = StopSignals::register().context("cannot install signal handlers")?;
        let lock = match &config.spool {
            SpoolChoice::Sqlite => Some(lock_state_dir(&config)?),
            SpoolChoice::Postgres(_) => None,
        };
        for warning in crate::config::warnings(&config) {
            warn!("{warning}");
        }
        let (store, spool, fresh, first_connection) = open_spool(&config)?;
        let shutdown = CancellationToken::new();
        // From here on, a start-up error stops the spool before it is reported.
        let started = async {
            let listener = match inherited {
                Some(socket) => Listener::from_systemd(socket)?,
                None => Listener::bind(&config.listen, config.socket_mode).await?,
            };
            let admin_listener = match &config.admin_listen {
                Some(addr) => Some(
                    Listener::bind(addr, config.socket_mode)
                        .await
                        .context("--admin-listen")?,
                ),
                None => None,
            };
            let settings = ServerSettings {
                max_connections: config.max_connections,
                header_timeout: config.header_timeout,
                shutdown_timeout: config.shutdown_timeout,
            };
            let metrics = Arc::new(Metrics::new());
            let fleet = Arc::new(Fleet::new(
                store.clone(),
                metrics.clone(),
                fresh,
                shutdown.clone(),
                config.shutdown_timeout,
            ));
            fleet.apply(&config.routes)?;
            let destinations: Vec<String> = fleet
                .views()
                .iter()
                .map(|v| format!("{} -> {}", v.key, v.url))
                .collect();
            let routes = Arc::new(RwLock::new(Arc::new(config.routes.clone())));
            let webhook = Arc::new(webhook(&config, &routes, &store, &metrics));
            let listen_addr = listener.local_addr();
            let mut listeners = vec![tokio::spawn(server::serve(
                listener,
                move |request| {
                    let webhook = webhook.clone();
                    async move { webhook.handle(request).await }
                },
                settings,
                shutdown.clone(),
            ))];
            if let Some(admin_listener) = admin_listener {
                info!(addr = %admin_listener.local_addr(), "admin listener ready");
                let admin = Arc::new(Admin {
                    store: store.clone(),
                    fleet: fleet.clone(),
                    metrics,
                    token: config.admin_token.clone(),
                });
                listeners.push(tokio::spawn(server::serve(
                    admin_listener,
                    move |request| {
                        let admin = admin.clone();
                        admin.handle(request)
                    },
                    settings,
                    shutdown.clone(),
                )));
            }
            let mut stop_asked = None;
            if let Some(first) = first_connection {
                // Events get 503 and /readyz says why until the database answers; systemd
                // hears READY=1 only once it does.
                tokio::select! {
                    outcome = first => match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err(reason)) => {
                            shutdown.cancel();
                            bail!("--spool {}: {reason}", config.spool.describe());
                        }
                        Err(_) => bail!("the spool writer stopped before connecting"),
                    },
                    name = stop_signal(&mut signals) => stop_asked = Some(name),
                }
            }
            // Asked to stop while waiting for the database: it never was ready.
            if stop_asked.is_none() {
                info!(
                    listen = %listen_addr,
                    destinations = %destinations.join(", "),
                    spool = %store.describe(),
                    state_dir = %config.state_dir.display(),
                    "xhubd ready"
                );
                // Everything is spawned and the listener is bound: tell systemd.
                notify::ready(&listen_addr);
            }
            notify::spawn_watchdog(store.health().clone(), shutdown.clone());
            Ok((listeners, fleet, routes, stop_asked))
        }
        .await;
        let (listeners, fleet, routes, stop_asked) = match started {
            Ok(parts) => parts,
            Err(e) => {
                shutdown.cancel();
                // SQLite's writer is a thread of its own: it is stopped and joined, so
                // that it logs nothing after the log is closed. PostgreSQL's writers are
                // tasks, which end with the runtime (stopping one that waits for an
                // unreachable database would delay the error by a connection attempt).
                if matches!(spool, Running::Sqlite(_)) {
                    spool.stop().await;
                }
                return Err(e);
            }
        };
        Ok(Daemon {
            signals,
            shutdown,
            listeners,
            fleet,
            routes,
            args,
            fixed: Fixed::of(&config),
            spool,
            stop_asked,
            _lock: lock,
        })
    }

    /// Waits for a stop signal, then stops in order: listeners (requests in flight
    /// finish), delivery (attempts in flight finish), and the spool (last batch
    /// committed).
    async fn run(mut self) -> ExitCode {
        let signal = loop {
            if let Some(name) = self.stop_asked.take() {
                break name;
            }
            match self.signals.wait().await {
                Asked::Stop(name) => break name,
                Asked::Reload => self.reload(),
            }
        };
        info!(
            signal,
            "stopping: no new connections; finishing requests in flight"
        );
        notify::stopping();
        self.shutdown.cancel();
        for listener in self.listeners {
            let _ = listener.await;
        }
        self.fleet.join().await;
        self.spool.stop().await;
        info!("stopped");
        ExitCode::SUCCESS
    }
}

impl Daemon {
    /// Reloads the config file (SIGHUP): a valid one takes effect for new events, with
    /// no connection or event dropped; an invalid one, or one that changes what only a
    /// restart changes, is refused with a log line and the running configuration stays.
    fn reload(&mut self) {
        let Some(file) = self.args.config.clone() else {
            warn!("SIGHUP: no --config file to reload; nothing changed");
            return;
        };
        let args = self.args.clone();
        let config = match Config::from_args(args) {
            Ok(config) => config,
            Err(e) => {
                error!(file = %file.display(), error = %format!("{e:#}"), "reload refused: the running configuration stays");
                return;
            }
        };
        let changed = self.fixed.changed(&Fixed::of(&config));
        if !changed.is_empty() {
            error!(file = %file.display(), changed = %changed.join(", "), "reload refused: a restart changes {}, not a reload (which changes routes and destinations); the running configuration stays", changed.join(", "));
            return;
        }
        if let Err(e) = self.fleet.apply(&config.routes) {
            error!(file = %file.display(), error = %format!("{e:#}"), "reload refused: the running configuration stays");
            return;
        }
        for warning in crate::config::matching::warnings(&config) {
            warn!(file = %file.display(), "{warning}");
        }
        let names: Vec<String> = config
            .routes
            .iter()
            .map(|r| format!("{} ({} destination(s))", r.name, r.destinations.len()))
            .collect();
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config.routes);
        info!(file = %file.display(), routes = %names.join(", "), "configuration reloaded");
    }
}

/// The request handler of the webhook listener.
fn webhook(
    config: &Config,
    routes: &Arc<RwLock<Arc<Vec<Route>>>>,
    store: &Store,
    metrics: &Arc<Metrics>,
) -> Webhook {
    Webhook {
        routes: routes.clone(),
        max_body_bytes: config.max_body_bytes,
        body_timeout: config.body_timeout,
        client_cn: config
            .client_cn
            .clone()
            .map(|(header, cn)| ClientCnCheck::new(header, cn)),
        store: store.clone(),
        metrics: metrics.clone(),
    }
}

/// Opens the spool, upgrading one an earlier release wrote. An upgrade recomputes each
/// stored event's dedup keys, which on a large spool takes a while: every few seconds it
/// logs how far it is and extends systemd's start timeout, so the unit is not killed
/// (and the upgrade rolled back) half-way.
#[allow(clippy::type_complexity)]
fn open_spool(
    config: &Config,
) -> anyhow::Result<(
    Store,
    Running,
    tokio::sync::mpsc::Receiver<DueDelivery>,
    Option<FirstConnection>,
)> {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    let done = std::cell::Cell::new(0u64);
    let last = std::cell::Cell::new(std::time::Instant::now());
    let rekey = |body: &[u8]| {
        done.set(done.get() + 1);
        if last.get().elapsed() >= EVERY {
            last.set(std::time::Instant::now());
            info!(
                events = done.get(),
                "upgrading the spool: dedup keys recomputed so far"
            );
            notify::still_starting("upgrading the spool", EVERY * 6);
        }
        crate::webhook::stored_keys(body)
    };
    let settings = WriterSettings {
        dedup_window: config.dedup_window,
    };
    if let SpoolChoice::Postgres(target) = &config.spool {
        let (store, running, fresh, first) =
            PgStore::open((**target).clone(), &config.instance_name, settings)?;
        return Ok((
            Store::Postgres(store),
            Running::Postgres(running),
            fresh,
            Some(first),
        ));
    }
    let (store, running, fresh) = SqliteStore::open(&config.state_dir, settings, &rekey)?;
    if done.get() > 0 {
        info!(
            events = done.get(),
            "spool upgraded: dedup keys recomputed for every stored event"
        );
    }
    Ok((Store::Sqlite(store), Running::Sqlite(running), fresh, None))
}

/// Waits for a stop signal, answering reloads meanwhile with a log line (the routes are
/// not running yet). Returns the stop signal's name.
async fn stop_signal(signals: &mut StopSignals) -> &'static str {
    loop {
        match signals.wait().await {
            Asked::Stop(name) => return name,
            Asked::Reload => {
                warn!("SIGHUP while waiting for the spool's database: nothing reloaded")
            }
        }
    }
}

/// Takes an exclusive lock on the state directory so two daemons never share a spool.
fn lock_state_dir(config: &Config) -> anyhow::Result<File> {
    crate::spool::sqlite::schema::lock(&config.state_dir)?.ok_or_else(|| {
        anyhow!(
            "--state-dir {} is in use by another xhubd",
            config.state_dir.display()
        )
    })
}
