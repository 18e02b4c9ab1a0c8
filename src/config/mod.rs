//! Turns the raw [`ServeArgs`] (and the config file they name) into a [`Config`] whose
//! every field is already checked: secrets loaded, durations and sizes parsed, routes
//! and destinations validated, the state directory created and writable. Nothing later
//! re-checks these.
//!
//! - [`file`](mod@file): the TOML config file, and its overlay onto the command line.
//! - [`routes`]: routes and destinations, validated.
//! - [`backend_tls`]: an https destination's own CA bundle and client certificate.
//! - [`exposure`], [`matching`]: what a valid configuration may get wrong, warned of.

pub mod backend_tls;
pub mod exposure;
pub mod file;
pub mod matching;
pub mod routes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use url::Url;

use crate::cli::{LogFormat, ServeArgs};
use crate::duration::{parse_duration, parse_size};
use crate::listener::ListenAddr;
use crate::secret::{self, load_app_secrets, load_token, load_verify_token, Secret};
use crate::spool::postgres::connect::is_postgres_url;
use crate::spool::postgres::PgTarget;
use backend_tls::{BackendTls, TlsFiles};
use routes::{Defaults, Order, Route};

/// The validated configuration of `xhubd serve`.
#[derive(Debug)]
pub struct Config {
    /// Where the webhook listener binds (unless systemd passes a socket).
    pub listen: ListenAddr,
    /// Mode of the Unix socket file.
    pub socket_mode: u32,
    /// The config file, when one was given.
    pub config_file: Option<PathBuf>,
    /// The routes: the file's, or the one the flags make (`default`, every path).
    pub routes: Vec<Route>,
    /// The spool directory, created and writable (SQLite; unused with PostgreSQL).
    pub state_dir: PathBuf,
    /// Which engine holds the spool.
    pub spool: SpoolChoice,
    /// This instance's name (on a shared spool).
    pub instance_name: String,
    /// Largest accepted body, in bytes.
    pub max_body_bytes: u64,
    /// How long event identities are remembered.
    pub dedup_window: Duration,
    /// Header holding the client certificate subject, with the expected CN.
    pub client_cn: Option<(http::HeaderName, String)>,
    /// Admin listener address.
    pub admin_listen: Option<ListenAddr>,
    /// Token protecting the admin routes.
    pub admin_token: Option<Secret>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to receive a request's headers.
    pub header_timeout: Duration,
    /// Time allowed for a request body once its headers are in.
    pub body_timeout: Duration,
    /// Bound of the graceful shutdown.
    pub shutdown_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
}

/// What to do with the state directory while validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateDir {
    /// Create it if needed and prove it writable (`serve`).
    Prepare,
    /// Look only: it may not exist yet, and nothing is created (`check`).
    Inspect,
}

/// Everything a valid configuration may get wrong, one sentence each: what exposes
/// secrets or events ([`exposure`]), and `match` values Meta never sends ([`matching`]).
/// `serve` logs them as warnings at start, `check` reports them.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut found = exposure::warnings(config);
    found.extend(matching::warnings(config));
    found
}

impl Config {
    /// Validates every option for `serve`, creating the state directory. The error
    /// names the option and the problem, never a secret's value.
    pub fn from_args(args: ServeArgs) -> anyhow::Result<Config> {
        Config::build(args, StateDir::Prepare)
    }

    /// Validates every option as `serve` would, without creating or writing anything
    /// (`xhubd check`): the state directory need not exist yet.
    pub fn inspect(args: ServeArgs) -> anyhow::Result<Config> {
        Config::build(args, StateDir::Inspect)
    }

    fn build(mut args: ServeArgs, state: StateDir) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => Some((path.clone(), file::load(path)?)),
            None => None,
        };
        match file {
            Some((path, loaded)) => {
                let taken = file::overlay(&mut args, &loaded);
                Config::check(args, Some((path.clone(), loaded)), state)
                    .map_err(|e| file::name_key(e, &path, &taken))
            }
            None => Config::check(args, None, state),
        }
    }

    /// Validates `args` (with the file's options already in them) and the file's routes.
    fn check(
        args: ServeArgs,
        file: Option<(PathBuf, file::FileConfig)>,
        state: StateDir,
    ) -> anyhow::Result<Config> {
        let listen = ListenAddr::parse(&args.listen).context("--listen")?;
        let socket_mode = u32::from_str_radix(args.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                anyhow!(
                    "--socket-mode: {:?} is not an octal file mode such as 0660",
                    args.socket_mode
                )
            })?;
        let positive = |flag: &str, text: &str| -> anyhow::Result<Duration> {
            let d = parse_duration(text).map_err(|e| anyhow!("{flag}: {e}"))?;
            if d.is_zero() {
                bail!("{flag} must be more than 0");
            }
            Ok(d)
        };
        if args.upstream_concurrency == 0 {
            bail!("--upstream-concurrency must be at least 1");
        }
        let defaults = Defaults {
            concurrency: args.upstream_concurrency,
            timeout: positive("--upstream-timeout", &args.upstream_timeout)?,
            retry_for: positive("--retry-for", &args.retry_for)?,
            retry_initial: positive("--retry-initial", &args.retry_initial)?,
            retry_max_delay: positive("--retry-max-delay", &args.retry_max_delay)?,
            rate: match args.upstream_rate_limit {
                None if args.upstream_rate_burst.is_some() => {
                    bail!("--upstream-rate-burst needs --upstream-rate-limit")
                }
                per_second => routes::rate_limit(
                    "--upstream-rate-limit",
                    per_second,
                    args.upstream_rate_burst,
                )?,
            },
            order: Order::parse(&args.upstream_order)
                .map_err(|e| anyhow!("--upstream-order: {e}"))?,
            order_hold: positive("--upstream-order-hold", &args.upstream_order_hold)?,
        };
        let routes = match &file {
            Some((path, loaded)) if !loaded.route.is_empty() => {
                let single_app = args.upstream.is_some()
                    || args.upstream_ca_file.is_some()
                    || args.upstream_client_cert_file.is_some()
                    || args.upstream_client_key_file.is_some()
                    || args.verify_token.is_some()
                    || args.verify_token_file.is_some()
                    || args.app_secret.is_some()
                    || args.app_secret_list.is_some()
                    || args.app_secret_file.is_some();
                if single_app {
                    bail!(
                        "{}: with [[route]], --upstream, --upstream-*-file, --verify-token* and --app-secret* (flags, variables or top-level keys) are refused: each route has its own",
                        path.display()
                    );
                }
                routes::from_file(path, &loaded.route, defaults)?
            }
            _ => vec![flags_route(&args, defaults)?],
        };
        let spool = spool_choice(&args.spool, args.spool_password_file.as_deref())?;
        let state_dir = match (state, &spool) {
            (_, SpoolChoice::Postgres(_)) => state_dir_of(&args.state_dir)?,
            (StateDir::Prepare, SpoolChoice::Sqlite) => prepare_state_dir(&args.state_dir)?,
            (StateDir::Inspect, SpoolChoice::Sqlite) => inspect_state_dir(&args.state_dir)?,
        };
        let instance_name = match args.instance_name.as_deref() {
            Some(name) => instance_name_of(name)?,
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        let max_body_bytes =
            parse_size(&args.max_body_bytes).map_err(|e| anyhow!("--max-body-bytes: {e}"))?;
        if max_body_bytes == 0 {
            bail!("--max-body-bytes must be more than 0");
        }
        let client_cn = match args.client_cn_header {
            None => None,
            Some(name) => {
                let header = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| anyhow!("--client-cn-header: {name:?} is not a header name"))?;
                if args.client_cn.is_empty() {
                    bail!("--client-cn must not be empty");
                }
                Some((header, args.client_cn))
            }
        };
        let admin_listen = match args.admin_listen {
            None => None,
            Some(a) => Some(ListenAddr::parse(&a).context("--admin-listen")?),
        };
        let admin_token = secret::pick(
            "--admin-token",
            args.admin_token.as_deref(),
            args.admin_token_file.as_deref(),
            "admin_token",
        )?
        .map(|source| load_token(&source, "admin token"))
        .transpose()?;
        if args.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        Ok(Config {
            listen,
            socket_mode,
            config_file: file.map(|(path, _)| path),
            routes,
            state_dir,
            spool,
            instance_name,
            max_body_bytes,
            dedup_window: positive("--dedup-window", &args.dedup_window)?,
            client_cn,
            admin_listen,
            admin_token,
            max_connections: args.max_connections,
            header_timeout: positive("--header-timeout", &args.header_timeout)?,
            body_timeout: positive("--body-timeout", &args.body_timeout)?,
            shutdown_timeout: positive("--shutdown-timeout", &args.shutdown_timeout)?,
            log_format: args.log_format,
        })
    }
}

/// Which engine holds the spool.
#[derive(Debug)]
pub enum SpoolChoice {
    /// A SQLite file in the state directory.
    Sqlite,
    /// A PostgreSQL database, perhaps shared with other instances.
    Postgres(Box<PgTarget>),
}

impl SpoolChoice {
    /// How logs, pages and `check` show it: `sqlite`, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            SpoolChoice::Sqlite => "sqlite".to_owned(),
            SpoolChoice::Postgres(target) => target.describe().to_owned(),
        }
    }
}

/// `--spool`: exactly `sqlite`, or a `postgres://` URL whose password comes from the
/// URL, else `--spool-password-file` or the credential `spool_password`, else
/// `PGPASSWORD` (libpq's variable).
pub fn spool_choice(spool: &str, password_file: Option<&Path>) -> anyhow::Result<SpoolChoice> {
    if spool == "sqlite" {
        return Ok(SpoolChoice::Sqlite);
    }
    if !is_postgres_url(spool) {
        bail!("--spool must be sqlite or a postgres:// URL");
    }
    let password = match secret::pick("--spool-password", None, password_file, "spool_password")? {
        Some(source) => Some(load_token(&source, "spool password")?),
        None => std::env::var("PGPASSWORD")
            .ok()
            .map(|p| p.trim_end().to_owned())
            .filter(|p| !p.is_empty())
            .map(Secret::new),
    };
    Ok(SpoolChoice::Postgres(Box::new(PgTarget::parse(
        spool, password,
    )?)))
}

/// `--instance-name`: printable, no spaces or `/`, at most 64 bytes.
fn instance_name_of(name: &str) -> anyhow::Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !ok {
        bail!("--instance-name: {name:?} must be 1 to 64 letters, digits, '-', '_', '.' or ':'");
    }
    Ok(name.to_owned())
}

/// The route the flags make: `--upstream`, `--verify-token*`, `--app-secret*` (or their
/// variables, top-level keys or systemd credentials).
fn flags_route(args: &ServeArgs, defaults: Defaults) -> anyhow::Result<Route> {
    let text = args.upstream.as_deref().ok_or_else(|| {
        anyhow!("--upstream is required (or XHUBD_UPSTREAM, or routes in --config)")
    })?;
    let upstream = parse_url(text).context("--upstream")?;
    let tls = BackendTls::load(
        &upstream,
        TlsFiles {
            ca: args.upstream_ca_file.as_deref(),
            client_cert: args.upstream_client_cert_file.as_deref(),
            client_key: args.upstream_client_key_file.as_deref(),
        },
        backend_tls::FLAGS,
    )?;
    let verify_token = load_verify_token(&secret::require(
        "--verify-token",
        args.verify_token.as_deref(),
        args.verify_token_file.as_deref(),
        "verify_token",
    )?)
    .context("verify token")?;
    let app_secrets = match &args.app_secret_list {
        Some(list) if !args.explicit.contains("app_secret_file") => {
            secret::app_secrets_of(list.iter().map(String::as_str)).context("App Secret")?
        }
        _ => load_app_secrets(&secret::require(
            "--app-secret",
            args.app_secret.as_deref(),
            args.app_secret_file.as_deref(),
            "app_secret",
        )?)
        .context("App Secret")?,
    };
    Ok(routes::default_route(
        verify_token,
        app_secrets,
        upstream,
        tls,
        defaults,
    ))
}

/// Parses a backend's URL: http or https, with a host.
pub(crate) fn parse_url(text: &str) -> anyhow::Result<Url> {
    let url = Url::parse(text).map_err(|e| anyhow!("not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!(
            "scheme {:?} is not supported, use http:// or https://",
            url.scheme()
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("the URL has no host");
    }
    Ok(url)
}

/// The state directory named by `--state-dir`: systemd may pass several directories
/// separated by colons; the first is ours.
fn state_dir_of(text: &str) -> anyhow::Result<PathBuf> {
    let first = text.split(':').next().unwrap_or(text);
    if first.is_empty() {
        bail!("--state-dir is empty");
    }
    Ok(PathBuf::from(first))
}

/// The state directory, which must be a directory if it exists.
fn inspect_state_dir(text: &str) -> anyhow::Result<PathBuf> {
    let dir = state_dir_of(text)?;
    if dir.exists() && !dir.is_dir() {
        bail!("--state-dir: {} is not a directory", dir.display());
    }
    Ok(dir)
}

/// Creates the state directory if needed, for its owner only (mode 0700, as the unit's
/// `StateDirectoryMode=`: the spool holds events' payloads), and proves it is writable.
fn prepare_state_dir(text: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = state_dir_of(text)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("--state-dir: cannot create {}", dir.display()))?;
    let probe = dir.join(".xhubd-write-test");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("--state-dir: {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe)
        .with_context(|| format!("--state-dir: cannot remove files in {}", dir.display()))?;
    Ok(dir)
}

/// The upstream URL with any password removed, for logs.
pub fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("redacted"));
    }
    shown.to_string()
}
