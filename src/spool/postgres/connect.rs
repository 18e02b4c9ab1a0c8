//! Where the PostgreSQL spool is and how to reach it: the `postgres://` URL (libpq's
//! form), its password from wherever the operator keeps it, and TLS as libpq does it.
//!
//! `sslmode` and `sslrootcert` mean what they mean to libpq
//! (<https://www.postgresql.org/docs/current/libpq-ssl.html>): `disable` never uses
//! TLS; `prefer` (the default) uses it when the server offers it; `require`,
//! `verify-ca` and `verify-full` insist on it. `verify-full` checks that the server's
//! certificate chains to a trusted CA and names the host; `verify-ca` only the chain;
//! `prefer` and `require` only the chain when `sslrootcert` names a file, and nothing
//! otherwise (encrypted, not authenticated). The trusted CAs are those of
//! `sslrootcert=FILE`, else the system's (libpq would read `~/.postgresql/root.crt`);
//! `sslrootcert=system` asks for `verify-full` and refuses a weaker mode, as libpq 16
//! does, and `verify-ca` needs a file (against the system's CAs, a certificate checked
//! without its name proves nothing). `sslcert` and `sslkey` present a client certificate. Unlike libpq, `prefer`
//! does not fall back to a plain connection when the TLS handshake fails.
//!
//! The password never leaves this module's [`Secret`]: [`PgTarget::describe`] shows the
//! URL without it, and errors come from tokio-postgres, which never prints it.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::secret::Secret;
use crate::tls::{client_config, ClientIdentity, Roots, ServerCheck};

/// How long a connection attempt may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A database to connect to.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    tls: MakeRustlsConnect,
    shown: String,
    /// TLS may be used without checking who the server is (libpq's `prefer` and
    /// `require` without `sslrootcert`).
    unchecked_tls: bool,
}

/// A connection's driver, to be polled (for notifications) or spawned.
pub type PgConnection = Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The database answered and refused: authentication, a database that does not
    /// exist, a certificate that does not verify, a password that is needed and
    /// missing. Waiting does not help: at start this ends xhubd with status 2.
    #[error("{0}")]
    Refused(String),
    /// No answer (down, unreachable, timed out, in recovery): xhubd waits for it.
    #[error("{0}")]
    Unreachable(String),
}

/// Whether `spool` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(spool: &str) -> bool {
    spool.starts_with("postgres://") || spool.starts_with("postgresql://")
}

/// The session setting that plans each prepared statement once, for all its values.
const GENERIC_PLANS: &str = "-c plan_cache_mode=force_generic_plan";

impl PgTarget {
    /// Parses a `postgres://` URL and its TLS parameters, reading the CA and client
    /// certificate files it names. `password` is used when the URL has none. Errors
    /// never include the URL's password.
    pub fn parse(url: &str, password: Option<Secret>) -> anyhow::Result<PgTarget> {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("--spool: not a valid postgres:// URL ({e})"))?;
        if !is_postgres_url(url) {
            bail!("--spool: a PostgreSQL URL starts with postgres:// or postgresql://");
        }
        let mut mode = None;
        let mut rootcert = None;
        let mut cert = None;
        let mut key = None;
        let mut rest = Vec::new();
        for (name, value) in parsed.query_pairs() {
            match &*name {
                "sslmode" => mode = Some(value.into_owned()),
                "sslrootcert" => rootcert = Some(value.into_owned()),
                "sslcert" => cert = Some(PathBuf::from(&*value)),
                "sslkey" => key = Some(PathBuf::from(&*value)),
                _ => rest.push((name.into_owned(), value.into_owned())),
            }
        }
        let (ssl_mode, check) = tls_checks(mode.as_deref(), rootcert.as_deref())?;
        let mut unchecked_tls = ssl_mode != SslMode::Disable && check == Check::Nothing;
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(&rest);
        }
        let has_password = parsed.password().is_some();
        let mut config =
            Config::from_str(parsed.as_str()).map_err(|e| anyhow::anyhow!("--spool: {e}"))?;
        config.ssl_mode(ssl_mode);
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives_idle(Duration::from_secs(30));
        // Each statement is planned once per connection, not at every run (planning
        // cost delivery's statements as much as running them); `statistics` keeps the
        // plans current while the spool grows.
        let options = match config.get_options() {
            Some(theirs) => format!("{theirs} {GENERIC_PLANS}"),
            None => GENERIC_PLANS.to_owned(),
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("xhubd");
        }
        if !has_password {
            if let Some(password) = password {
                config.password(password.expose());
            }
        }
        let root_path;
        let roots = match rootcert.as_deref() {
            None | Some("system") => Roots::System,
            Some(path) => {
                root_path = PathBuf::from(path);
                Roots::Only(&root_path, "--spool sslrootcert")
            }
        };
        let check = match check {
            Check::Nothing => ServerCheck::Nothing,
            Check::Chain => ServerCheck::ChainOnly(roots),
            Check::ChainAndName => ServerCheck::Full(roots),
        };
        let identity = match (&cert, &key) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert,
                cert_option: "--spool sslcert",
                key,
                key_option: "--spool sslkey",
            }),
            (None, None) => None,
            _ => bail!("--spool: give sslcert and sslkey together"),
        };
        let tls = MakeRustlsConnect::new(client_config(check, identity)?);
        let shown = describe(&parsed);
        // A Unix socket never carries TLS: nothing to warn about there.
        unchecked_tls &= config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(_)));
        Ok(PgTarget {
            config,
            tls,
            shown,
            unchecked_tls,
        })
    }

    /// Whether TLS, when used, goes without a check of the server's certificate (as
    /// libpq's `prefer` and `require` without `sslrootcert`): worth a warning, since
    /// anyone between xhubd and the database could then read the events.
    pub fn tls_unchecked(&self) -> bool {
        self.unchecked_tls
    }

    /// The URL without its password or query, for logs and pages:
    /// `postgres://user@host:port/database`.
    pub fn describe(&self) -> &str {
        &self.shown
    }

    /// The hex SHA-256 of the password it connects with (`None` without one): tells a
    /// changed password apart (a reload refuses it) without keeping or showing it.
    pub fn password_digest(&self) -> Option<String> {
        use sha2::Digest;
        self.config
            .get_password()
            .map(|p| hex::encode(sha2::Sha256::digest(p)))
    }

    /// Connects, and spawns the connection's driver. The session commits
    /// synchronously (`synchronous_commit` is raised to `on` when the server's default
    /// is `off`), so a commit that returned is on the database's disk.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let (client, connection) = self.connect_raw().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a PostgreSQL connection ended");
            }
        });
        let mode = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .map_err(classify)?;
        if mode.get::<_, String>(0) == "off" {
            client
                .batch_execute("SET synchronous_commit = on")
                .await
                .map_err(classify)?;
        }
        Ok(client)
    }

    /// Connects, returning the connection's driver for the caller to poll (the
    /// listener reads notifications from it).
    pub async fn connect_raw(&self) -> Result<(Client, PgConnection), ConnectError> {
        self.config
            .connect(self.tls.clone())
            .await
            .map_err(classify)
    }

    /// The settings of the pool of reading connections.
    pub(super) fn pool(&self, size: usize) -> anyhow::Result<deadpool_postgres::Pool> {
        let manager = deadpool_postgres::Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(size)
            .build()
            .context("cannot set up the PostgreSQL connection pool")
    }
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// What is checked of the server's certificate when TLS is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing: encrypted, not authenticated.
    Nothing,
    /// That it chains to a trusted CA (libpq's `verify-ca`).
    Chain,
    /// That it chains to a trusted CA and names the host (libpq's `verify-full`).
    ChainAndName,
}

/// libpq's meaning of `sslmode` and `sslrootcert` (a file, `system`, or none): whether
/// TLS is used, and what is checked of the server's certificate.
fn tls_checks(mode: Option<&str>, rootcert: Option<&str>) -> anyhow::Result<(SslMode, Check)> {
    let system = rootcert == Some("system");
    let mode = match mode {
        None if system => "verify-full",
        None => "prefer",
        Some(mode) => mode,
    };
    // A root file makes the weaker modes check the chain, as libpq's verify-ca.
    let weak = if rootcert.is_some() {
        Check::Chain
    } else {
        Check::Nothing
    };
    let chosen = match mode {
        "disable" => (SslMode::Disable, weak),
        "prefer" => (SslMode::Prefer, weak),
        "require" => (SslMode::Require, weak),
        "verify-ca" => (SslMode::Require, Check::Chain),
        "verify-full" => (SslMode::Require, Check::ChainAndName),
        "allow" => bail!(
            "--spool: sslmode=allow is not supported: use prefer, require, verify-ca or verify-full"
        ),
        _ => bail!("--spool: sslmode must be disable, prefer, require, verify-ca or verify-full"),
    };
    if system && chosen.1 != Check::ChainAndName {
        bail!("--spool: sslmode={mode} may not be used with sslrootcert=system (use verify-full)");
    }
    // Any certificate some public CA signed, whatever its name, would pass.
    if mode == "verify-ca" && rootcert.is_none() {
        bail!("--spool: sslmode=verify-ca needs sslrootcert=FILE, the CA that signs the database's certificate (or use verify-full)");
    }
    Ok(chosen)
}

/// The URL as shown: scheme, user, host, port and path; no password, no parameters.
fn describe(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.to_string()
}

/// An error and what caused it, in one line: tokio-postgres says only `db error` of
/// what the server said, which is in its source (`db error: ERROR: relation … does not
/// exist`).
///
/// Of what the server said, only its message and SQLSTATE: its DETAIL may quote a
/// row's values. Always one line.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let said = |cause: &(dyn std::error::Error + 'static)| match cause
        .downcast_ref::<tokio_postgres::error::DbError>()
    {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => cause.to_string(),
    };
    let mut text = said(e);
    let mut source = e.source();
    while let Some(cause) = source {
        let part = said(cause);
        if !text.ends_with(&part) {
            text = format!("{text}: {part}");
        }
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}

/// Tells a refusal (waiting does not help) from an outage (it may).
pub fn classify(e: tokio_postgres::Error) -> ConnectError {
    let detail = error_text(&e);
    if let Some(code) = e.code() {
        let refused = code.code().starts_with("28")
            || *code == SqlState::INVALID_CATALOG_NAME
            || *code == SqlState::INSUFFICIENT_PRIVILEGE;
        return if refused {
            ConnectError::Refused(detail)
        } else {
            ConnectError::Unreachable(detail)
        };
    }
    let tls = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(tls) = tls {
        return ConnectError::Refused(format!("{detail}{}", certificate_hint(tls)));
    }
    // A setting tokio-postgres refuses, or TLS required of a server without it: both
    // said in words only.
    if detail.contains("invalid configuration") || detail.contains("server does not support TLS") {
        ConnectError::Refused(detail)
    } else {
        ConnectError::Unreachable(detail)
    }
}

/// What rustls's name for a certificate problem means to the operator.
fn certificate_hint(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError::{NotValidForName, NotValidForNameContext, UnknownIssuer};
    match e {
        rustls::Error::InvalidCertificate(UnknownIssuer) => {
            " (the server's certificate is not signed by a CA of sslrootcert, or of the system when sslrootcert is not given)"
        }
        rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. }) => {
            " (the server's certificate does not name the URL's host: sslmode=verify-full checks the name, verify-ca only the CA)"
        }
        _ => "",
    }
}

/// An error on an open connection: whether the connection is gone (reconnect) or the
/// statement failed on a working one.
pub fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || e.as_db_error().is_none()
}

/// Waits `delay`, doubled each time up to `max`: for reconnection loops.
pub(super) async fn back_off(delay: &mut Duration, max: Duration) {
    tokio::time::sleep(*delay).await;
    *delay = (*delay * 2).min(max);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_says_what_caused_it_once() {
        let inner = std::io::Error::other("relation \"events\" does not exist");
        let outer = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        // io::Error shows its inner error as itself: said once, not twice.
        assert_eq!(error_text(&outer), "relation \"events\" does not exist");
        let lines = std::io::Error::other("failed\nDETAIL: more");
        assert_eq!(error_text(&lines), "failed DETAIL: more");
        let wrapped = anyhow::Error::from(outer).context("db error");
        let wrapped: &(dyn std::error::Error + 'static) = wrapped.as_ref();
        assert_eq!(
            error_text(wrapped),
            "db error: relation \"events\" does not exist"
        );
    }

    #[test]
    fn tls_that_checks_nothing_is_told_apart_over_tcp_only() {
        let unchecked = |url: &str| PgTarget::parse(url, None).unwrap().tls_unchecked();
        assert!(unchecked("postgres://x@db.internal/x"));
        assert!(unchecked("postgres://x@db.internal/x?sslmode=require"));
        assert!(!unchecked("postgres://x@db.internal/x?sslmode=disable"));
        assert!(!unchecked("postgres://x@%2Frun%2Fpostgresql/x"));
    }

    #[test]
    fn the_password_never_shows_and_tls_parameters_are_ours() {
        let target = PgTarget::parse(
            "postgres://xhubd:s3cret-pw@db.example:6432/spool?sslmode=verify-full&sslrootcert=system&application_name=x",
            None,
        )
        .unwrap();
        assert_eq!(target.describe(), "postgres://xhubd@db.example:6432/spool");
        assert!(!format!("{target:?}").contains("s3cret"));
        assert_eq!(target.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(target.config.get_application_name(), Some("x"));
        assert_eq!(target.config.get_password(), Some(&b"s3cret-pw"[..]));
    }

    #[test]
    fn a_password_from_a_file_is_used_only_when_the_url_has_none() {
        let file = Some(Secret::new("from-file"));
        let target = PgTarget::parse("postgresql://u@h/db", file.clone()).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"from-file"[..]));
        let target = PgTarget::parse("postgresql://u:inline@h/db", file).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"inline"[..]));
        assert_eq!(target.config.get_ssl_mode(), SslMode::Prefer);
    }

    #[test]
    fn malformed_urls_and_modes_are_refused_without_the_password() {
        for (url, expect) in [
            ("postgres://u:pw1@h/db?sslmode=sometimes", "sslmode must be"),
            ("postgres://u:pw1@h/db?sslmode=allow", "not supported"),
            (
                "postgres://u:pw1@h/db?sslcert=/x",
                "sslcert and sslkey together",
            ),
            ("postgres://u:pw1@h/db?nosuch=1", "--spool"),
            ("postgres://u:pw1@[::1/db", "not a valid postgres:// URL"),
            (
                "postgres://u:pw1@h/db?sslrootcert=/nonexistent/ca.pem",
                "sslrootcert: cannot read /nonexistent/ca.pem",
            ),
            (
                "postgres://u:pw1@h/db?sslmode=require&sslrootcert=system",
                "sslmode=require may not be used with sslrootcert=system (use verify-full)",
            ),
        ] {
            let error = format!("{:#}", PgTarget::parse(url, None).unwrap_err());
            assert!(error.contains(expect), "{url}: {error}");
            assert!(!error.contains("pw1"), "{url}: {error}");
        }
    }

    #[test]
    fn sslmode_and_sslrootcert_check_what_libpq_checks() {
        use Check::*;
        let file = Some("/etc/xhubd/db-ca.pem");
        for (mode, rootcert, expect) in [
            (None, None, (SslMode::Prefer, Nothing)),
            (Some("prefer"), None, (SslMode::Prefer, Nothing)),
            (Some("disable"), None, (SslMode::Disable, Nothing)),
            (Some("require"), None, (SslMode::Require, Nothing)),
            // A root file: the weak modes check the chain, as verify-ca.
            (None, file, (SslMode::Prefer, Chain)),
            (Some("require"), file, (SslMode::Require, Chain)),
            (Some("verify-ca"), file, (SslMode::Require, Chain)),
            (Some("verify-full"), None, (SslMode::Require, ChainAndName)),
            (Some("verify-full"), file, (SslMode::Require, ChainAndName)),
            // sslrootcert=system asks for verify-full.
            (None, Some("system"), (SslMode::Require, ChainAndName)),
            (
                Some("verify-full"),
                Some("system"),
                (SslMode::Require, ChainAndName),
            ),
        ] {
            assert_eq!(
                tls_checks(mode, rootcert).unwrap(),
                expect,
                "{mode:?} {rootcert:?}"
            );
        }
        for weak in ["disable", "prefer", "require", "verify-ca"] {
            let error = tls_checks(Some(weak), Some("system"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("use verify-full"), "{weak}: {error}");
        }
        // verify-ca against the system's CAs would take any certificate a public CA
        // signed, for any name.
        let error = tls_checks(Some("verify-ca"), None).unwrap_err().to_string();
        assert!(error.contains("needs sslrootcert=FILE"), "{error}");
    }
}
