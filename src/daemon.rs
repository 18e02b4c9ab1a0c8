//! `xhubd` from the command line to the running daemon: parse, validate, open the
//! spool, bind, start delivery and the listeners, then wait for SIGTERM/SIGINT and
//! stop in order (listeners, delivery, writer).

use std::fs::{File, TryLockError};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::Admin;
use crate::cli::{Cli, Command};
use crate::config::{redacted_url, Config};
use crate::delivery::backoff::RetryPolicy;
use crate::delivery::status::UpstreamStatus;
use crate::delivery::upstream::Upstream;
use crate::delivery::Delivery;
use crate::listener::{take_systemd_socket, Listener, SystemdSocket};
use crate::metrics::Metrics;
use crate::notify;
use crate::output;
use crate::server::{self, ServerSettings};
use crate::shutdown::StopSignals;
use crate::spool::{Running, Store, WriterSettings};
use crate::types::{DestinationKey, DueDelivery};
use crate::webhook::client_cn::ClientCnCheck;
use crate::webhook::Webhook;

/// Exit status for a start-up error (bad option, unreadable secret, unusable state dir).
pub const EXIT_STARTUP: u8 = 2;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return clap_error(e),
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    if let (Command::Serve(args) | Command::Check(args), Some((_, sub))) =
        (&mut cli.command, matches.subcommand())
    {
        args.explicit = explicit_options(sub);
    }
    match cli.command {
        Command::Completions { shell } => output::print_and_exit(&crate::docs::completions(shell)),
        Command::Man { out_dir } => match crate::docs::man_pages(&out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => startup_error(&e),
        },
        Command::Events(args) => match crate::events_cli::run(&args) {
            Ok(text) => output::print_and_exit(text.trim_end()),
            Err(e) => startup_error(&e),
        },
        Command::Check(args) => {
            let (report, ok) = crate::check::run(*args);
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
            let config = match Config::from_args(*args) {
                Ok(c) => c,
                Err(e) => return startup_error(&e),
            };
            crate::logging::init(config.log_format);
            crate::fd_limit::raise_for(config.max_connections);
            // Before any thread exists: this edits the environment.
            let inherited = match take_systemd_socket() {
                Ok(s) => s,
                Err(e) => return startup_error(&e),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return startup_error(&anyhow!(e).context("cannot start the runtime")),
            };
            runtime.block_on(async move {
                match Daemon::start(config, inherited).await {
                    Ok(daemon) => daemon.run().await,
                    Err(e) => startup_error(&e),
                }
            })
        }
    }
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
    delivery: Vec<JoinHandle<()>>,
    spool: Running,
    _lock: File,
}

impl Daemon {
    /// Opens the spool, binds the listeners and starts every task, in the order an event
    /// travels. Any error here is a start-up error.
    async fn start(config: Config, inherited: Option<SystemdSocket>) -> anyhow::Result<Daemon> {
        let signals = StopSignals::register().context("cannot install signal handlers")?;
        let lock = lock_state_dir(&config)?;
        let (store, spool, fresh) = open_spool(&config)?;
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
        let shutdown = CancellationToken::new();
        let settings = ServerSettings {
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            shutdown_timeout: config.shutdown_timeout,
        };
        let metrics = Arc::new(Metrics::new());
        let delivery = start_delivery(&config, &store, fresh, &metrics, shutdown.clone())?;
        let destinations: Vec<String> = delivery
            .destinations
            .iter()
            .map(|(key, url, _)| format!("{key} -> {url}"))
            .collect();
        let webhook = Arc::new(webhook(&config, &store, &metrics));
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
                delivery_running: delivery.running,
                metrics,
                destinations: delivery.destinations,
                token: config.admin_token,
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
        info!(
            listen = %listen_addr,
            destinations = %destinations.join(", "),
            state_dir = %config.state_dir.display(),
            "xhubd ready"
        );
        // Everything is spawned and the listener is bound: tell systemd.
        notify::ready(&listen_addr);
        notify::spawn_watchdog(store.health().clone(), shutdown.clone());
        Ok(Daemon {
            signals,
            shutdown,
            listeners,
            delivery: delivery.tasks,
            spool,
            _lock: lock,
        })
    }

    /// Waits for a stop signal, then stops in order: listeners (requests in flight
    /// finish), delivery (attempts in flight finish), and the spool (last batch
    /// committed).
    async fn run(mut self) -> ExitCode {
        let signal = self.signals.wait().await;
        info!(
            signal,
            "stopping: no new connections; finishing requests in flight"
        );
        notify::stopping();
        self.shutdown.cancel();
        for listener in self.listeners {
            let _ = listener.await;
        }
        for task in self.delivery {
            let _ = task.await;
        }
        self.spool.stop().await;
        info!("stopped");
        ExitCode::SUCCESS
    }
}

/// The request handler of the webhook listener.
fn webhook(config: &Config, store: &Store, metrics: &Arc<Metrics>) -> Webhook {
    Webhook {
        routes: config.routes.clone(),
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

/// The running delivery schedulers (one per destination), and what the admin listener
/// reads of them.
struct DeliveryTasks {
    tasks: Vec<JoinHandle<()>>,
    running: Vec<Arc<AtomicBool>>,
    destinations: Vec<(DestinationKey, String, Arc<UpstreamStatus>)>,
}

/// Starts one delivery scheduler per destination of every route. The writer hands new
/// deliveries over on one queue (`fresh`); a dispatcher passes each to its
/// destination's scheduler, and wakes the schedulers to scan the spool when one has no
/// room.
fn start_delivery(
    config: &Config,
    store: &Store,
    mut fresh: tokio::sync::mpsc::Receiver<DueDelivery>,
    metrics: &Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<DeliveryTasks> {
    let mut out = DeliveryTasks {
        tasks: Vec::new(),
        running: Vec::new(),
        destinations: Vec::new(),
    };
    let mut handovers = std::collections::HashMap::new();
    for route in &config.routes {
        for destination in &route.destinations {
            let key = DestinationKey::new(&route.name, &destination.name);
            let upstream = Upstream::new(
                &destination.url,
                destination.timeout,
                destination.concurrency,
                destination.headers.clone(),
            )
            .with_context(|| {
                format!("route {:?}: destination {:?}", route.name, destination.name)
            })?;
            let running = Arc::new(AtomicBool::new(false));
            let status = Arc::new(UpstreamStatus::default());
            let (tx, rx) = tokio::sync::mpsc::channel(FRESH_PER_DESTINATION);
            handovers.insert(key.clone(), tx);
            let delivery = Delivery {
                store: store.clone(),
                destination: key.clone(),
                upstream,
                policy: RetryPolicy {
                    initial: destination.retry_initial,
                    max_delay: destination.retry_max_delay,
                    retry_for: destination.retry_for,
                },
                concurrency: destination.concurrency,
                running: running.clone(),
                metrics: metrics.clone(),
                status: status.clone(),
            };
            out.tasks.push(tokio::spawn(delivery.run(
                rx,
                shutdown.clone(),
                config.shutdown_timeout,
            )));
            out.running.push(running);
            out.destinations
                .push((key, redacted_url(&destination.url), status));
        }
    }
    let store = store.clone();
    out.tasks.push(tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = fresh.recv() => match next {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            let taken = handovers
                .get(&delivery.destination)
                .is_some_and(|tx| tx.try_send(delivery).is_ok());
            if !taken {
                // Full, or a destination no longer configured: the spool has it.
                store.wake_delivery();
            }
        }
    }));
    Ok(out)
}

/// New deliveries waiting for one destination's scheduler in memory, at most.
const FRESH_PER_DESTINATION: usize = 512;

/// Opens the spool, upgrading one an earlier release wrote. An upgrade recomputes each
/// stored event's dedup keys, which on a large spool takes a while: every few seconds it
/// logs how far it is and extends systemd's start timeout, so the unit is not killed
/// (and the upgrade rolled back) half-way.
fn open_spool(
    config: &Config,
) -> anyhow::Result<(Store, Running, tokio::sync::mpsc::Receiver<DueDelivery>)> {
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
    let opened = Store::open(&config.state_dir, settings, &rekey)?;
    if done.get() > 0 {
        info!(
            events = done.get(),
            "spool upgraded: dedup keys recomputed for every stored event"
        );
    }
    Ok(opened)
}

/// Takes an exclusive lock on the state directory so two daemons never share a spool.
fn lock_state_dir(config: &Config) -> anyhow::Result<File> {
    let path = config.state_dir.join("xhubd.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(anyhow!(
            "--state-dir {} is in use by another xhubd",
            config.state_dir.display()
        )),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}
