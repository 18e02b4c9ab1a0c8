//! The command line as clap parses it: raw options, not yet checked against each other
//! or the system. [`crate::config`] turns [`ServeArgs`] into a validated configuration.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// xhubd receives Meta Webhooks behind Nginx: it answers the verification challenge,
/// checks X-Hub-Signature-256, stores every genuine event durably, drops Meta's retries
/// and delivers each event to your backend with retries.
#[derive(Debug, Parser)]
#[command(name = "xhubd", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(Box<ServeArgs>),
    /// Print the X-Hub-Signature-256 header Meta would send for a body.
    Sign(SignArgs),
    /// Inspect, replay and purge stored events (works on --state-dir directly, safely
    /// while the daemon runs).
    Events(EventsArgs),
    /// Work on a whole spool: copy a stopped one-machine (SQLite) spool into a shared
    /// PostgreSQL one.
    Spool(SpoolArgs),
    /// Check a configuration (the options of serve): secrets readable, state dir
    /// writable, upstream reachable. With no option, what xhubd.service runs with.
    /// Exits 0, or 2 with the reasons.
    Check(Box<CheckArgs>),
    /// Do what Meta's dashboard does: a verification request, then a signed sample
    /// event, and print what happened at each step.
    SendTest(SendTestArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (xhubd.1 and one per subcommand) into a directory.
    Man {
        /// Where to write them.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Options of `xhubd check`: those of serve, and the service's file of variables.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The file of variables xhubd.service reads (EnvironmentFile=): each XHUBD_
    /// variable in it that is not set already counts, as for the service. When it exists
    /// and neither --config, XHUBD_CONFIG nor the file names a config file, the unit's
    /// /etc/xhubd/xhubd.toml is checked, as the service reads it. "none" reads neither.
    #[arg(
        long,
        value_name = "FILE",
        env = "XHUBD_ENVIRONMENT_FILE",
        default_value = crate::service_env::ENVIRONMENT_FILE
    )]
    pub environment_file: PathBuf,

    /// The options of serve.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Options of `xhubd serve`.
#[derive(Debug, Clone, Args)]
#[command(next_line_help = false)]
pub struct ServeArgs {
    /// A TOML config file: routes and destinations (several apps and backends), and
    /// any option below by its long name with _ for - (a flag or variable wins).
    #[arg(long, value_name = "FILE", env = "XHUBD_CONFIG")]
    pub config: Option<PathBuf>,

    /// The options given as flags or variables (their ids), which the config file does
    /// not override. Filled in after parsing.
    #[arg(skip)]
    pub explicit: std::collections::BTreeSet<String>,

    /// App Secrets given as a list in the config file (each one whole, never split at
    /// commas).
    #[arg(skip)]
    pub app_secret_list: Option<Vec<String>>,

    /// Where to listen: unix:/path/to.sock or HOST:PORT. Ignored when systemd passes a
    /// socket (LISTEN_FDS).
    #[arg(
        long,
        value_name = "ADDR",
        env = "XHUBD_LISTEN",
        default_value = "unix:/run/xhubd/xhubd.sock"
    )]
    pub listen: String,

    /// Permissions of the Unix socket file, in octal (0660 lets the socket's group, e.g.
    /// www-data, connect).
    #[arg(
        long,
        value_name = "MODE",
        env = "XHUBD_SOCKET_MODE",
        default_value = "0660"
    )]
    pub socket_mode: String,

    /// Where genuine events are POSTed: an http:// or https:// URL (path and query kept
    /// as given; user:password@ in the URL is sent as HTTP Basic authentication).
    #[arg(long, value_name = "URL", env = "XHUBD_UPSTREAM")]
    pub upstream: Option<String>,

    /// For an https:// --upstream: trust the CAs in this PEM file instead of the
    /// system's root certificates (the backend's certificate must still name its host).
    #[arg(long, value_name = "F", env = "XHUBD_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// For an https:// --upstream: present this client certificate (PEM chain, leaf
    /// first), with --upstream-client-key-file.
    #[arg(long, value_name = "F", env = "XHUBD_UPSTREAM_CLIENT_CERT_FILE")]
    pub upstream_client_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --upstream-client-cert-file.
    #[arg(long, value_name = "F", env = "XHUBD_UPSTREAM_CLIENT_KEY_FILE")]
    pub upstream_client_key_file: Option<PathBuf>,

    /// The verify token you entered in Meta's dashboard.
    #[arg(
        long,
        value_name = "T",
        env = "XHUBD_VERIFY_TOKEN",
        hide_env_values = true
    )]
    pub verify_token: Option<String>,

    /// A file holding the verify token (trailing whitespace is ignored).
    #[arg(long, value_name = "F", env = "XHUBD_VERIFY_TOKEN_FILE")]
    pub verify_token_file: Option<PathBuf>,

    /// The App Secret; a comma-separated list accepts a signature made with any of them
    /// (for rotation, or for several apps).
    #[arg(
        long,
        value_name = "S",
        env = "XHUBD_APP_SECRET",
        hide_env_values = true
    )]
    pub app_secret: Option<String>,

    /// A file holding the App Secret(s), one per line (whitespace around each ignored).
    #[arg(long, value_name = "F", env = "XHUBD_APP_SECRET_FILE")]
    pub app_secret_file: Option<PathBuf>,

    /// Directory of the spool (created if missing; must be writable).
    #[arg(
        long,
        value_name = "DIR",
        env = "STATE_DIRECTORY",
        default_value = "/var/lib/xhubd"
    )]
    pub state_dir: String,

    /// The spool: sqlite (a file in --state-dir, for one machine) or a PostgreSQL URL,
    /// postgres://USER@HOST:PORT/DATABASE?sslmode=verify-full, shared by several
    /// instances (its password is better given by --spool-password-file).
    #[arg(
        long,
        value_name = "URL",
        env = "XHUBD_SPOOL",
        default_value = "sqlite",
        hide_env_values = true
    )]
    pub spool: String,

    /// A file holding the PostgreSQL spool's password, when the URL has none (else the
    /// systemd credential spool_password, else PGPASSWORD).
    #[arg(long, value_name = "F", env = "XHUBD_SPOOL_PASSWORD_FILE")]
    pub spool_password_file: Option<PathBuf>,

    /// This instance's name on a shared spool, unique among the instances: kept with
    /// what it accepts, claims and attempts (default: the host name).
    #[arg(long, value_name = "NAME", env = "XHUBD_INSTANCE_NAME")]
    pub instance_name: Option<String>,

    /// Bodies larger than this get 413 (bytes, or with a unit: 8MiB).
    #[arg(
        long,
        value_name = "N",
        env = "XHUBD_MAX_BODY_BYTES",
        default_value = "8MiB"
    )]
    pub max_body_bytes: String,

    /// How long an accepted event's identity is remembered to drop Meta's retries.
    #[arg(
        long,
        value_name = "DUR",
        env = "XHUBD_DEDUP_WINDOW",
        default_value = "7d"
    )]
    pub dedup_window: String,

    /// How long delivery to the upstream is retried before the event becomes dead.
    #[arg(
        long,
        value_name = "DUR",
        env = "XHUBD_RETRY_FOR",
        default_value = "7d"
    )]
    pub retry_for: String,

    /// Delay before the first retry; each later retry waits about twice as long (with
    /// jitter), up to --retry-max-delay.
    #[arg(
        long,
        value_name = "DUR",
        env = "XHUBD_RETRY_INITIAL",
        default_value = "1s"
    )]
    pub retry_initial: String,

    /// The longest wait between two delivery attempts.
    #[arg(
        long,
        value_name = "DUR",
        env = "XHUBD_RETRY_MAX_DELAY",
        default_value = "5m"
    )]
    pub retry_max_delay: String,

    /// How many requests to the upstream may be in flight at once.
    #[arg(
        long,
        value_name = "N",
        env = "XHUBD_UPSTREAM_CONCURRENCY",
        default_value_t = 8
    )]
    pub upstream_concurrency: usize,

    /// Requests per second at most to each destination, by every instance together,
    /// retries and the catch-up after an outage included (a destination's `rate_limit`
    /// wins). Unset: as fast as the concurrency allows.
    #[arg(long, value_name = "N", env = "XHUBD_UPSTREAM_RATE_LIMIT")]
    pub upstream_rate_limit: Option<f64>,

    /// Requests that may go at once after a quiet time, with --upstream-rate-limit
    /// (a destination's `rate_burst` wins). Default: the rate limit, rounded up.
    #[arg(long, value_name = "N", env = "XHUBD_UPSTREAM_RATE_BURST")]
    pub upstream_rate_burst: Option<u32>,

    /// Time limit of one delivery attempt (connect, send, answer).
    #[arg(
        long,
        value_name = "DUR",
        env = "XHUBD_UPSTREAM_TIMEOUT",
        default_value = "30s"
    )]
    pub upstream_timeout: String,

    /// In which order deliveries go: none (as fast as --upstream-concurrency allows), or
    /// conversation (those that share a conversation, a WhatsApp or Messenger user, go
    /// one at a time, in the order they were accepted).
    #[arg(
        long,
        value_name = "ORDER",
        env = "XHUBD_UPSTREAM_ORDER",
        default_value = "none"
    )]
    pub upstream_order: String,

    /// With --upstream-order conversation: how long after its first failed attempt a
    /// delivery that keeps failing stops holding its conversation (it keeps retrying,
    /// out of order).
    #[arg(
        long,
        value_name = "DUR",
        env = "XHUBD_UPSTREAM_ORDER_HOLD",
        default_value = "10m"
    )]
    pub upstream_order_hold: String,

    /// When set, every event (POST) must carry this header holding a subject DN whose
    /// CN is exactly --client-cn (e.g. X-Client-Subject behind the shipped Nginx site,
    /// or X-Amzn-Mtls-Clientcert-Subject behind an AWS ALB); otherwise 403. The
    /// verification GET is exempt: the verify token guards it.
    #[arg(long, value_name = "NAME", env = "XHUBD_CLIENT_CN_HEADER")]
    pub client_cn_header: Option<String>,

    /// The common name expected in --client-cn-header.
    #[arg(
        long,
        value_name = "CN",
        env = "XHUBD_CLIENT_CN",
        default_value = "client.webhooks.fbclientcerts.com"
    )]
    pub client_cn: String,

    /// Address of the admin listener (unix:/path or HOST:PORT): health, readiness,
    /// metrics, the status page, but also event payloads and replay, so keep it on
    /// loopback or set --admin-token (a warning is logged at start otherwise). Off when
    /// unset.
    #[arg(long, value_name = "ADDR", env = "XHUBD_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Protects every admin route except /healthz and /readyz: send it as
    /// "Authorization: Bearer TOKEN", or as the password of HTTP Basic (browsers prompt).
    #[arg(
        long,
        value_name = "T",
        env = "XHUBD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// A file holding the admin token (trailing whitespace is ignored).
    #[arg(long, value_name = "F", env = "XHUBD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Most connections served at once; further clients wait in the listen backlog.
    #[arg(
        long,
        value_name = "N",
        env = "XHUBD_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub max_connections: usize,

    /// A client must send a request's headers within this time; idle keep-alive
    /// connections are closed after it.
    #[arg(
        long,
        value_name = "DUR",
        env = "XHUBD_HEADER_TIMEOUT",
        default_value = "30s"
    )]
    pub header_timeout: String,

    /// Once the headers are in, a request body must arrive whole within this time;
    /// otherwise the answer is 408 and the connection is closed.
    #[arg(
        long,
        value_name = "DUR",
        env = "XHUBD_BODY_TIMEOUT",
        default_value = "30s"
    )]
    pub body_timeout: String,

    /// On SIGTERM, how long requests in flight and delivery attempts may take to finish.
    #[arg(
        long,
        value_name = "DUR",
        env = "XHUBD_SHUTDOWN_TIMEOUT",
        default_value = "10s"
    )]
    pub shutdown_timeout: String,

    /// Log format.
    #[arg(long, value_enum, env = "XHUBD_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Options of `xhubd events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The daemon's TOML config file: its state_dir, spool and spool_password_file are
    /// taken where no flag or variable gives them.
    #[arg(long, value_name = "FILE", env = "XHUBD_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// The options given as flags or variables (their ids), which the config file does
    /// not override. Filled in after parsing.
    #[arg(skip)]
    pub explicit: std::collections::BTreeSet<String>,

    /// The spool directory of the daemon.
    #[arg(
        long,
        value_name = "DIR",
        env = "STATE_DIRECTORY",
        default_value = "/var/lib/xhubd",
        global = true
    )]
    pub state_dir: String,

    /// The spool: sqlite (in --state-dir) or the daemon's PostgreSQL URL.
    #[arg(
        long,
        value_name = "URL",
        env = "XHUBD_SPOOL",
        default_value = "sqlite",
        hide_env_values = true,
        global = true
    )]
    pub spool: String,

    /// A file holding the PostgreSQL spool's password, when the URL has none (else
    /// PGPASSWORD).
    #[arg(
        long,
        value_name = "F",
        env = "XHUBD_SPOOL_PASSWORD_FILE",
        global = true
    )]
    pub spool_password_file: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub action: EventsAction,
}

/// `xhubd events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// List the newest events.
    List {
        /// Only events with a delivery in this state (delivered: to every destination).
        #[arg(long, value_parser = ["pending", "delivered", "dead"])]
        state: Option<String>,
        /// Only events of this route.
        #[arg(long, value_name = "NAME")]
        route: Option<String>,
        /// Only events with a delivery to this destination: NAME (of --route, when
        /// given) or ROUTE/NAME, as logs and pages print it.
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one event: state, headers and payload.
    Show {
        /// The event id (X-Xhubd-Event-Id).
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a dead (or delivered) event pending again (each of its deliveries that is
    /// not), or one delivery, with a fresh retry period.
    Replay {
        /// The event id.
        #[arg(required_unless_present_any = ["all_dead", "delivery"], conflicts_with_all = ["all_dead", "delivery"])]
        id: Option<String>,
        /// Only this delivery (X-Xhubd-Delivery-Id).
        #[arg(long, value_name = "ID", conflicts_with = "all_dead")]
        delivery: Option<String>,
        /// Every dead delivery.
        #[arg(long)]
        all_dead: bool,
    },
    /// Delete delivered events, or dead ones, accepted more than DUR ago (an event with a
    /// pending delivery is never purged; purged events' identities stay remembered for
    /// the dedup window, so Meta's retries of them are still dropped).
    Purge {
        /// Events delivered to every destination, accepted more than DUR ago, e.g. 1d.
        #[arg(long, value_name = "DUR", required_unless_present = "dead_before")]
        delivered_before: Option<String>,
        /// Events with a dead delivery and none pending (given up: looked at and done
        /// with), accepted more than DUR ago, e.g. 7d. They can no longer be replayed.
        #[arg(long, value_name = "DUR")]
        dead_before: Option<String>,
    },
}

/// Options of `xhubd spool`.
#[derive(Debug, Args)]
pub struct SpoolArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: SpoolAction,
}

/// `xhubd spool` subcommands.
#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// Copy what a stopped xhubd's SQLite spool still has to deliver (events with a
    /// pending or dead delivery, those deliveries and their attempts) and its dedup
    /// memory into a PostgreSQL spool, in one transaction. Run again, it copies nothing
    /// twice. Refused while an xhubd runs on DIR. Prints one line: what was copied.
    Copy(SpoolCopyArgs),
}

/// Options of `xhubd spool copy`.
#[derive(Debug, Args)]
pub struct SpoolCopyArgs {
    /// The state directory of the stopped xhubd, holding spool.sqlite3 (e.g.
    /// /var/lib/xhubd).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,

    /// The PostgreSQL spool: postgres://USER@HOST:PORT/DATABASE?sslmode=verify-full, as
    /// given to the instances' --spool (its tables are created or upgraded if needed).
    #[arg(long, value_name = "URL")]
    pub to: String,

    /// A file holding the PostgreSQL spool's password, when the URL has none (else
    /// PGPASSWORD).
    #[arg(long, value_name = "F", env = "XHUBD_SPOOL_PASSWORD_FILE")]
    pub spool_password_file: Option<PathBuf>,
}

/// Options of `xhubd send-test`.
#[derive(Debug, Args)]
pub struct SendTestArgs {
    /// The callback URL, as entered in Meta's dashboard (https://…/webhook), or the
    /// daemon's own address (http://127.0.0.1:8080/). With --route, its path is the
    /// route's.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Test this route of the config file: its path, verify token and (first) App
    /// Secret, so no secret goes on the command line.
    #[arg(long, value_name = "NAME", requires = "config")]
    pub route: Option<String>,
    /// The config file holding --route.
    #[arg(long, value_name = "FILE", env = "XHUBD_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// The App Secret to sign with (of a list, the first).
    #[arg(
        long,
        value_name = "S",
        env = "XHUBD_APP_SECRET",
        hide_env_values = true
    )]
    pub app_secret: Option<String>,
    /// A file holding the App Secret to sign with (of several, the first).
    #[arg(long, value_name = "F", env = "XHUBD_APP_SECRET_FILE")]
    pub app_secret_file: Option<PathBuf>,
    /// The verify token.
    #[arg(
        long,
        value_name = "T",
        env = "XHUBD_VERIFY_TOKEN",
        hide_env_values = true
    )]
    pub verify_token: Option<String>,
    /// A file holding the verify token.
    #[arg(long, value_name = "F", env = "XHUBD_VERIFY_TOKEN_FILE")]
    pub verify_token_file: Option<PathBuf>,
    /// The sample's object.
    #[arg(long, default_value = "user")]
    pub object: String,
    /// The sample's field. With --field messages and --object whatsapp_business_account,
    /// page or instagram, the sample is a text message as Meta sends it.
    #[arg(long, default_value = "photos")]
    pub field: String,
    /// The WhatsApp sample's phone_number_id (the destination's match; 0 when not given).
    #[arg(long, value_name = "ID")]
    pub phone_number_id: Option<String>,
    /// Send N updates in one notification (Meta batches up to 1000).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub batch: usize,
    /// A client certificate (PEM, with its chain) to present, to test Nginx's mTLS.
    #[arg(long, value_name = "F", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "F", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Trust this CA (PEM) for the server's certificate, besides the system's roots.
    #[arg(long, value_name = "F")]
    pub cacert: Option<PathBuf>,
}

/// Options of `xhubd sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The App Secret to sign with (of a comma-separated list, the first: Meta signs
    /// with the one App Secret of the app).
    #[arg(
        long,
        value_name = "S",
        env = "XHUBD_APP_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,

    /// A file holding the App Secret to sign with (of several, the first).
    #[arg(long, value_name = "F", env = "XHUBD_APP_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// The body to sign; standard input when absent.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}
