//! The config file (`--config FILE`, `XHUBD_CONFIG`), as TOML: the raw shapes serde reads
//! (unknown keys refused), and the overlay of its top-level keys onto the command line,
//! where a flag or variable wins. DESIGN.md "Routes and destinations" is the contract.
//!
//! Errors name the file, the line and the key, never a value: a TOML parser's message
//! quotes the offending line and serde's quote the offending value, and either may be a
//! secret, so both are left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::Deserialize;

use crate::cli::{LogFormat, ServeArgs};

/// A size: bytes as an integer, or text with a unit (`"8MiB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Bytes.
    Bytes(u64),
    /// With a unit, as the command line takes it.
    Text(String),
}

impl Size {
    /// The command line's form.
    pub fn as_text(&self) -> String {
        match self {
            Size::Bytes(n) => n.to_string(),
            Size::Text(t) => t.clone(),
        }
    }
}

/// App Secrets: one string (one secret, never split at commas) or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretList {
    /// One secret.
    One(String),
    /// Several (rotation, several apps).
    Many(Vec<String>),
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--socket-mode`.
    pub socket_mode: Option<String>,
    /// `--upstream` (refused with routes).
    pub upstream: Option<String>,
    /// `--verify-token` (refused with routes).
    pub verify_token: Option<String>,
    /// `--verify-token-file` (refused with routes).
    pub verify_token_file: Option<PathBuf>,
    /// `--app-secret` (refused with routes).
    pub app_secret: Option<SecretList>,
    /// `--app-secret-file` (refused with routes).
    pub app_secret_file: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: Option<String>,
    /// `--spool`.
    pub spool: Option<String>,
    /// `--spool-password-file`.
    pub spool_password_file: Option<PathBuf>,
    /// `--instance-name`.
    pub instance_name: Option<String>,
    /// `--max-body-bytes`.
    pub max_body_bytes: Option<Size>,
    /// `--dedup-window`.
    pub dedup_window: Option<String>,
    /// `--retry-for`.
    pub retry_for: Option<String>,
    /// `--retry-initial`.
    pub retry_initial: Option<String>,
    /// `--retry-max-delay`.
    pub retry_max_delay: Option<String>,
    /// `--upstream-concurrency`.
    pub upstream_concurrency: Option<usize>,
    /// `--upstream-timeout`.
    pub upstream_timeout: Option<String>,
    /// `--upstream-rate-limit`.
    pub upstream_rate_limit: Option<f64>,
    /// `--upstream-rate-burst`.
    pub upstream_rate_burst: Option<u32>,
    /// `--upstream-order`.
    pub upstream_order: Option<String>,
    /// `--upstream-order-hold`.
    pub upstream_order_hold: Option<String>,
    /// `--upstream-ca-file` (refused with routes).
    pub upstream_ca_file: Option<PathBuf>,
    /// `--upstream-client-cert-file` (refused with routes).
    pub upstream_client_cert_file: Option<PathBuf>,
    /// `--upstream-client-key-file` (refused with routes).
    pub upstream_client_key_file: Option<PathBuf>,
    /// `--client-cn-header`.
    pub client_cn_header: Option<String>,
    /// `--client-cn`.
    pub client_cn: Option<String>,
    /// `--admin-listen`.
    pub admin_listen: Option<String>,
    /// `--admin-token`.
    pub admin_token: Option<String>,
    /// `--admin-token-file`.
    pub admin_token_file: Option<PathBuf>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--header-timeout`.
    pub header_timeout: Option<String>,
    /// `--body-timeout`.
    pub body_timeout: Option<String>,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// The routes, in file order.
    #[serde(default)]
    pub route: Vec<RouteFile>,
}

/// One `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// `[a-z0-9_-]`, unique.
    pub name: String,
    /// The exact request path, unique.
    pub path: String,
    /// The verify token.
    pub verify_token: Option<String>,
    /// A file holding it (relative: in `$CREDENTIALS_DIRECTORY`, else the file's folder).
    pub verify_token_file: Option<PathBuf>,
    /// The App Secret(s).
    pub app_secret: Option<SecretList>,
    /// A file holding them.
    pub app_secret_file: Option<PathBuf>,
    /// Routes with the same group share their dedup memory.
    pub dedup_group: Option<String>,
    /// Where its events go.
    #[serde(default)]
    pub destination: Vec<DestinationFile>,
}

/// One `[[route.destination]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationFile {
    /// Unique within its route.
    pub name: String,
    /// `http://` or `https://`.
    pub url: String,
    /// Which items it takes (all when absent).
    #[serde(rename = "match")]
    pub match_: Option<MatchFile>,
    /// `"none"` or `"item"`.
    pub split: Option<String>,
    /// `"none"` or `"conversation"`.
    pub order: Option<String>,
    /// How long a failing delivery holds its conversation (with `order`).
    pub order_hold: Option<String>,
    /// Takes what no other destination of the route matches.
    pub fallback: Option<bool>,
    /// Signs every request to it with this secret instead.
    pub sign_secret_file: Option<PathBuf>,
    /// Requests in flight at most.
    pub concurrency: Option<usize>,
    /// Time limit of one attempt.
    pub timeout: Option<String>,
    /// How long delivery is retried.
    pub retry_for: Option<String>,
    /// First retry delay.
    pub retry_initial: Option<String>,
    /// Longest retry delay.
    pub retry_max_delay: Option<String>,
    /// Extra request headers (values never logged).
    pub headers: Option<BTreeMap<String, String>>,
    /// Requests per second at most (every instance together).
    pub rate_limit: Option<f64>,
    /// Requests at once after a quiet time, with `rate_limit`.
    pub rate_burst: Option<u32>,
    /// CA bundle (PEM) trusted instead of the system's roots (`https://` only).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) to present, with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key_file: Option<PathBuf>,
}

/// A destination's `match` table: every given key must hold; a list means any of.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// The body's `object` (`threads` for a Threads body).
    pub object: Option<OneOrMany>,
    /// The item's `entry[].id` (a Threads body's `target_id`).
    pub entry_id: Option<OneOrMany>,
    /// The dashboard's name of the item's webhook field.
    pub field: Option<OneOrMany>,
    /// The change's `value` holds a non-empty array of this name.
    pub value_has: Option<OneOrMany>,
    /// A change's `value.metadata.phone_number_id`.
    pub phone_number_id: Option<OneOrMany>,
}

/// One text or a list of them; ids may be written as numbers (compared as text).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// Any of these (tried first: [`Scalar::Other`] would take a list whole).
    Many(Vec<Scalar>),
    /// One value.
    One(Scalar),
}

/// A match value: text, or an integer written without quotes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// Text.
    Text(String),
    /// An integer, taken as its decimal text.
    Integer(i64),
    /// Anything else TOML can write (a number with a fraction, a boolean, a date, a
    /// table), refused by [`OneOrMany::texts`] with a clear error. (An integer beyond 64
    /// bits is refused by the TOML parser, with its line.)
    Other(toml::Value),
}

impl OneOrMany {
    /// The values as text; an error for a value that is neither text nor a whole number
    /// of 64 bits (ids beyond that are written in quotes).
    pub fn texts(&self) -> Result<Vec<String>, String> {
        fn text(s: &Scalar) -> Result<String, String> {
            match s {
                Scalar::Text(t) => Ok(t.clone()),
                Scalar::Integer(n) => Ok(n.to_string()),
                Scalar::Other(v) => Err(format!(
                    "{v} is neither text nor a whole number: write ids in quotes, e.g. \"17841400000000001\""
                )),
            }
        }
        match self {
            OneOrMany::One(s) => Ok(vec![text(s)?]),
            OneOrMany::Many(list) => list.iter().map(text).collect(),
        }
    }
}

/// Reads and parses the file. The error names the file and the line, never a value.
pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str::<FileConfig>(&text).map_err(|e| {
        let line = e.span().map(|span| {
            text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        });
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        anyhow!("{}{at}: {}", path.display(), without_values(e.message()))
    })
}

/// serde's message without the value it quotes: "invalid type: string \"...\",
/// expected a map" and the like name the offending value, which may be a secret. Field
/// names (in "unknown field `x`") stay: they are what the operator must fix.
fn without_values(message: &str) -> String {
    let message = message.trim();
    let prefix = [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
    ]
    .into_iter()
    .find(|p| message.starts_with(p));
    let Some(prefix) = prefix else {
        return message.to_owned();
    };
    match message.find(", expected") {
        Some(expected) => format!("{prefix}: (value not shown){}", &message[expected..]),
        None => format!("{prefix}: (value not shown)"),
    }
}

/// Puts the file's top-level serve options into `args`, except where `explicit` (the
/// options given as flags or variables) already has them. Returns the keys it took, so
/// that an error in one of their values can name the file's key rather than the flag.
pub fn overlay(args: &mut ServeArgs, file: &FileConfig) -> Vec<&'static str> {
    let mut taken = Vec::new();
    macro_rules! take {
        ($($field:ident),* $(,)?) => {$(
            if !args.explicit.contains(stringify!($field)) {
                if let Some(v) = &file.$field {
                    args.$field = v.clone();
                    taken.push(stringify!($field));
                }
            }
        )*};
    }
    macro_rules! take_some {
        ($($field:ident),* $(,)?) => {$(
            if !args.explicit.contains(stringify!($field)) {
                if let Some(v) = &file.$field {
                    args.$field = Some(v.clone());
                    taken.push(stringify!($field));
                }
            }
        )*};
    }
    take!(
        listen,
        socket_mode,
        state_dir,
        spool,
        dedup_window,
        retry_for,
        retry_initial,
        retry_max_delay,
        upstream_concurrency,
        upstream_timeout,
        upstream_order,
        upstream_order_hold,
        client_cn,
        max_connections,
        header_timeout,
        body_timeout,
        shutdown_timeout,
        log_format,
    );
    take_some!(
        upstream,
        upstream_rate_limit,
        upstream_rate_burst,
        upstream_ca_file,
        upstream_client_cert_file,
        upstream_client_key_file,
        verify_token,
        verify_token_file,
        app_secret_file,
        client_cn_header,
        admin_listen,
        admin_token,
        admin_token_file,
        spool_password_file,
        instance_name,
    );
    if !args.explicit.contains("max_body_bytes") {
        if let Some(size) = &file.max_body_bytes {
            args.max_body_bytes = size.as_text();
            taken.push("max_body_bytes");
        }
    }
    if !args.explicit.contains("app_secret") {
        if let Some(secrets) = &file.app_secret {
            args.app_secret_list = Some(match secrets {
                SecretList::One(s) => vec![s.clone()],
                SecretList::Many(list) => list.clone(),
            });
            taken.push("app_secret");
        }
    }
    taken
}

/// `error` as the file's: when it names the flag of a key the file gave (`--retry-max-delay:
/// ...` for `retry_max_delay`), it names `path` and that key instead
/// (`xhubd.toml: retry_max_delay: ...`); other errors are returned as they are.
pub fn name_key(error: anyhow::Error, path: &Path, taken: &[&str]) -> anyhow::Error {
    let text = format!("{error:#}");
    for key in taken {
        let flag = format!("--{}", key.replace('_', "-"));
        if let Some(rest) = text.strip_prefix(&flag) {
            if rest.starts_with(':') || rest.starts_with(' ') {
                return anyhow::anyhow!("{}: {key}{rest}", path.display());
            }
        }
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<FileConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xhubd.toml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn routes_destinations_and_matches_parse() {
        let file = parse(
            r#"
            state_dir = "/tmp/x"
            max_body_bytes = "4MiB"
            [[route]]
            name = "wa"
            path = "/webhook/wa"
            verify_token = "t"
            app_secret = ["a", "b"]
              [[route.destination]]
              name = "bot"
              url = "http://127.0.0.1:8081/wa"
              match = { field = ["messages"], value_has = "messages", entry_id = 102290129340398 }
              headers = { Authorization = "Bearer x" }
            "#,
        )
        .unwrap();
        assert_eq!(file.route.len(), 1);
        let m = file.route[0].destination[0].match_.clone().unwrap();
        assert_eq!(m.field.unwrap().texts().unwrap(), ["messages"]);
        assert_eq!(m.value_has.unwrap().texts().unwrap(), ["messages"]);
        assert_eq!(m.entry_id.unwrap().texts().unwrap(), ["102290129340398"]);
        assert!(matches!(file.max_body_bytes, Some(Size::Text(_))));
    }

    #[test]
    fn errors_name_the_line_and_key_never_the_value() {
        let e = parse("[[route]]\nname = \"a\"\npath = \"/a\"\nverify_tokn = \"s3cret-value\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4") && e.contains("verify_tokn"), "{e}");
        assert!(!e.contains("s3cret-value"), "{e}");
        let e = parse("[[route]]\nname = \"a\"\npath = \"/a\"\napp_secret = 123456789\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("123456789"), "{e}");
        let e = parse("verify_token = [\"s3cret-value\"]\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret-value"), "{e}");
        let e = parse("[[route]]\nname = \"a\"\npath = \"/a\"\n[[route.destination]]\nname = \"d\"\nurl = \"http://x\"\nheaders = \"Bearer s3cret-value\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret-value") && e.contains("expected"), "{e}");
        let e = parse("log_format = \"s3cret-value\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret-value"), "{e}");
        let e = parse("[[route]]\nname = \"a\"\npath = \"/a\"\n[[route.destination]]\nname = \"d\"\nurl = \"http://x\"\nmatch = { feild = \"messages\" }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("feild"), "{e}");
    }
}
