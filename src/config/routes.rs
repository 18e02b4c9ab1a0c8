//! Routes and destinations, validated: which request path belongs to which app (its
//! verify token and App Secrets), and where its events go. Without a config file the
//! flags make one route, `default`, on every path, with one destination, `default`
//! (DESIGN.md "Routes and destinations").

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http::{HeaderName, HeaderValue};
use url::Url;

use super::backend_tls::{BackendTls, TlsFiles, FILE_KEYS};
use super::file::{DestinationFile, RouteFile, SecretList};
use crate::duration::parse_duration;
use crate::secret::{load_app_secrets, load_token, load_verify_token, Secret, SecretSource};
use crate::types::RateLimit;

/// The name of the route and destination the flags make.
pub const DEFAULT: &str = "default";

/// One app's callback: a path, its secrets, its destinations.
#[derive(Debug, Clone)]
pub struct Route {
    /// `[a-z0-9_-]`, unique: in logs, metrics and pages.
    pub name: String,
    /// The exact request path; `None` (the flags' route): every path.
    pub path: Option<String>,
    /// The verify token of its verification requests.
    pub verify_token: Secret,
    /// The App Secrets its events may be signed with.
    pub app_secrets: Vec<Secret>,
    /// Whose dedup memory it shares: its own name, or its `dedup_group`.
    pub dedup_group: String,
    /// Where its events go, in file order.
    pub destinations: Vec<Destination>,
}

/// A backend.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Unique within its route.
    pub name: String,
    /// Where requests go (`user:password@` becomes HTTP Basic authentication).
    pub url: Url,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// How long delivery is retried before a delivery is dead.
    pub retry_for: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max_delay: Duration,
    /// Extra request headers (e.g. `Authorization`); values are never logged.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Which items it takes: every given key must hold (none given: every item).
    pub matches: Match,
    /// Takes the items no other (non-fallback) destination of the route takes.
    pub fallback: bool,
    /// One request per item (`split = "item"`), or one per event.
    pub split: Split,
    /// Whether deliveries that share a conversation go one at a time, in order.
    pub order: Order,
    /// With [`Order::Conversation`]: how long after its first failed attempt a delivery
    /// that keeps failing stops holding its conversation (it keeps retrying, out of
    /// order).
    pub order_hold: Duration,
    /// Signs every request to it with this secret instead of the App Secret.
    pub sign_secret: Option<Secret>,
    /// Its own CA bundle and client certificate (`https://` only); none: the system's
    /// roots, no client certificate.
    pub tls: Option<BackendTls>,
    /// Requests per second at most, by every instance together (`rate_limit`,
    /// `rate_burst`); none: as fast as the concurrency allows.
    pub rate: Option<RateLimit>,
}

/// A destination's `match` (DESIGN.md): each key given is a list, any of which must
/// equal the item's (ids compared as text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// The body's `object` (`threads` for a Threads body).
    pub object: Option<Vec<String>>,
    /// The item's `entry[].id` (a Threads body's `target_id`).
    pub entry_id: Option<Vec<String>>,
    /// The item's field, as the dashboard names the subscription.
    pub field: Option<Vec<String>>,
    /// A non-empty array in the change's `value` (WhatsApp `messages`, `statuses`, ...).
    pub value_has: Option<Vec<String>>,
    /// The change's `value.metadata.phone_number_id`.
    pub phone_number_id: Option<Vec<String>>,
}

/// How a destination receives what it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One request per event, holding its items (narrowed when it takes only some).
    None,
    /// One request per item, each one entry holding one item, with `X-Xhubd-Part: i/n`.
    Item,
}

/// In which order a destination receives deliveries (`order`, README "Order within a
/// conversation").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Any order (the default): as many at once as its `concurrency` allows.
    None,
    /// Deliveries that share a conversation key (decided at acceptance,
    /// `webhook::conversation`) go one at a time, in the order xhubd accepted them.
    Conversation,
}

impl Order {
    /// `"none"` or `"conversation"`; otherwise what is wrong with the value.
    pub fn parse(text: &str) -> Result<Order, String> {
        match text {
            "none" => Ok(Order::None),
            "conversation" => Ok(Order::Conversation),
            other => Err(format!(
                "{other:?} is neither \"none\" nor \"conversation\""
            )),
        }
    }
}

/// What a destination falls back to when it does not set a value: the flags.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// `--upstream-concurrency`.
    pub concurrency: usize,
    /// `--upstream-timeout`.
    pub timeout: Duration,
    /// `--retry-for`.
    pub retry_for: Duration,
    /// `--retry-initial`.
    pub retry_initial: Duration,
    /// `--retry-max-delay`.
    pub retry_max_delay: Duration,
    /// `--upstream-rate-limit` and `--upstream-rate-burst`.
    pub rate: Option<RateLimit>,
    /// `--upstream-order`.
    pub order: Order,
    /// `--upstream-order-hold`.
    pub order_hold: Duration,
}

impl Route {
    /// Whether a request for `path` belongs to this route.
    pub fn serves(&self, path: &str) -> bool {
        self.path.as_deref().is_none_or(|p| p == path)
    }
}

/// The route of a request path, if any.
pub fn route_for<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
    routes.iter().find(|r| r.serves(path))
}

/// The flags' route: every path, one destination.
pub fn default_route(
    verify_token: Secret,
    app_secrets: Vec<Secret>,
    upstream: Url,
    tls: Option<BackendTls>,
    defaults: Defaults,
) -> Route {
    Route {
        name: DEFAULT.to_owned(),
        path: None,
        verify_token,
        app_secrets,
        dedup_group: DEFAULT.to_owned(),
        destinations: vec![Destination {
            name: DEFAULT.to_owned(),
            url: upstream,
            concurrency: defaults.concurrency,
            timeout: defaults.timeout,
            retry_for: defaults.retry_for,
            retry_initial: defaults.retry_initial,
            retry_max_delay: defaults.retry_max_delay,
            headers: Vec::new(),
            matches: Match::default(),
            fallback: false,
            split: Split::None,
            order: defaults.order,
            order_hold: defaults.order_hold,
            sign_secret: None,
            tls,
            rate: defaults.rate,
        }],
    }
}

/// Validates the file's routes. `file` names the config file in errors; relative
/// secret files are looked up in `$CREDENTIALS_DIRECTORY` (systemd credentials) when it
/// is set, else next to the config file.
pub fn from_file(
    file: &Path,
    routes: &[RouteFile],
    defaults: Defaults,
) -> anyhow::Result<Vec<Route>> {
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    let mut out = Vec::new();
    for route in routes {
        let at = format!("{}: route {:?}", file.display(), route.name);
        valid_name(&route.name).with_context(|| format!("{at}: name"))?;
        if !names.insert(route.name.clone()) {
            bail!("{at}: name: another route has this name");
        }
        if !route.path.starts_with('/') || route.path.contains(['?', '#']) {
            bail!("{at}: path: must be a request path starting with /, without a query");
        }
        if !paths.insert(route.path.clone()) {
            bail!("{at}: path: another route has the path {}", route.path);
        }
        let verify_token = load_verify_token(
            &one(
                "verify_token",
                route.verify_token.as_deref(),
                route.verify_token_file.as_deref(),
                file,
            )
            .with_context(|| at.clone())?,
        )
        .with_context(|| format!("{at}: verify_token"))?;
        let app_secrets = match (&route.app_secret, &route.app_secret_file) {
            (Some(_), Some(_)) => bail!("{at}: give app_secret or app_secret_file, not both"),
            (Some(SecretList::One(s)), None) => vec![one_secret(s, &at)?],
            (Some(SecretList::Many(list)), None) if !list.is_empty() => list
                .iter()
                .map(|s| one_secret(s, &at))
                .collect::<anyhow::Result<_>>()?,
            (Some(SecretList::Many(_)), None) => bail!("{at}: app_secret: the list is empty"),
            (None, Some(f)) => load_app_secrets(&SecretSource::File(resolve(f, file)))
                .with_context(|| format!("{at}: app_secret_file"))?,
            (None, None) => bail!("{at}: app_secret or app_secret_file is required"),
        };
        if let Some(group) = &route.dedup_group {
            valid_name(group).with_context(|| format!("{at}: dedup_group"))?;
        }
        if route.destination.is_empty() {
            bail!("{at}: it has no [[route.destination]]: its events would go nowhere");
        }
        let mut destination_names = HashSet::new();
        let mut destinations = Vec::new();
        for d in &route.destination {
            let at = format!("{at}: destination {:?}", d.name);
            valid_name(&d.name).with_context(|| format!("{at}: name"))?;
            if !destination_names.insert(d.name.clone()) {
                bail!("{at}: name: another destination of this route has this name");
            }
            destinations.push(destination(d, defaults, file).with_context(|| at.clone())?);
        }
        out.push(Route {
            name: route.name.clone(),
            path: Some(route.path.clone()),
            verify_token,
            app_secrets,
            dedup_group: route
                .dedup_group
                .clone()
                .unwrap_or_else(|| route.name.clone()),
            destinations,
        });
    }
    Ok(out)
}

/// One destination, with the flags' values where it sets none.
fn destination(
    d: &DestinationFile,
    defaults: Defaults,
    file: &Path,
) -> anyhow::Result<Destination> {
    let split = match d.split.as_deref() {
        None | Some("none") => Split::None,
        Some("item") => Split::Item,
        Some(other) => bail!("split: {other:?} is neither \"none\" nor \"item\""),
    };
    let matches = d
        .match_
        .as_ref()
        .map(|m| {
            let list = |key: &str,
                        v: &Option<super::file::OneOrMany>|
             -> anyhow::Result<Option<Vec<String>>> {
                match v {
                    None => Ok(None),
                    Some(v) => {
                        let texts = v.texts().map_err(|e| anyhow!("match: {key}: {e}"))?;
                        if texts.is_empty() || texts.iter().any(String::is_empty) {
                            bail!("match: {key}: an empty list or value matches nothing");
                        }
                        Ok(Some(texts))
                    }
                }
            };
            Ok::<_, anyhow::Error>(Match {
                object: list("object", &m.object)?,
                entry_id: list("entry_id", &m.entry_id)?,
                field: list("field", &m.field)?,
                value_has: list("value_has", &m.value_has)?,
                phone_number_id: list("phone_number_id", &m.phone_number_id)?,
            })
        })
        .transpose()?
        .unwrap_or_default();
    let sign_secret = d
        .sign_secret_file
        .as_ref()
        .map(|f| {
            load_token(&SecretSource::File(resolve(f, file)), "signing secret")
                .map_err(|e| anyhow!("sign_secret_file: {e:#}"))
        })
        .transpose()?;
    let url = super::parse_url(&d.url).context("url")?;
    let (ca, client_cert, client_key) = (
        d.ca_file.as_ref().map(|f| resolve(f, file)),
        d.client_cert_file.as_ref().map(|f| resolve(f, file)),
        d.client_key_file.as_ref().map(|f| resolve(f, file)),
    );
    let tls = BackendTls::load(
        &url,
        TlsFiles {
            ca: ca.as_deref(),
            client_cert: client_cert.as_deref(),
            client_key: client_key.as_deref(),
        },
        FILE_KEYS,
    )?;
    let positive = |key: &str, value: &Option<String>, default: Duration| match value {
        None => Ok(default),
        Some(text) => match parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(anyhow!("{key}: must be more than 0")),
            Err(e) => Err(anyhow!("{key}: {e}")),
        },
    };
    let order = match d.order.as_deref() {
        None => defaults.order,
        Some(text) => Order::parse(text).map_err(|e| anyhow!("order: {e}"))?,
    };
    let order_hold = positive("order_hold", &d.order_hold, defaults.order_hold)?;
    if d.order_hold.is_some() && order == Order::None {
        bail!("order_hold: has no effect without order = \"conversation\"");
    }
    let concurrency = d.concurrency.unwrap_or(defaults.concurrency);
    if concurrency == 0 {
        bail!("concurrency: must be at least 1");
    }
    let mut headers = Vec::new();
    for (name, value) in d.headers.iter().flatten() {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| anyhow!("headers: {name:?} is not a header name"))?;
        let reserved = ["content-type", "content-length", "host"];
        let lower = header.as_str();
        if reserved.contains(&lower) || lower.starts_with("x-hub-") || lower.starts_with("x-xhubd-")
        {
            bail!("headers: {name} is set by xhubd and may not be set here");
        }
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| anyhow!("headers: the value of {name} is not a valid header value"))?;
        value.set_sensitive(true);
        headers.push((header, value));
    }
    Ok(Destination {
        name: d.name.clone(),
        url,
        concurrency,
        timeout: positive("timeout", &d.timeout, defaults.timeout)?,
        retry_for: positive("retry_for", &d.retry_for, defaults.retry_for)?,
        retry_initial: positive("retry_initial", &d.retry_initial, defaults.retry_initial)?,
        retry_max_delay: positive(
            "retry_max_delay",
            &d.retry_max_delay,
            defaults.retry_max_delay,
        )?,
        headers,
        matches,
        fallback: d.fallback.unwrap_or(false),
        split,
        order,
        order_hold,
        sign_secret,
        tls,
        rate: match d.rate_limit {
            Some(_) => rate_limit("rate_limit", d.rate_limit, d.rate_burst)?,
            None if d.rate_burst.is_some() => bail!("rate_burst: needs rate_limit"),
            None => defaults.rate,
        },
    })
}

/// A rate limit of `per_second` requests per second, with bursts of `burst` (default:
/// the rate, rounded up); `key` names the setting in errors. `None` without a rate.
pub fn rate_limit(
    key: &str,
    per_second: Option<f64>,
    burst: Option<u32>,
) -> anyhow::Result<Option<RateLimit>> {
    let Some(per_second) = per_second else {
        return Ok(None);
    };
    let burst = match burst {
        Some(b) => {
            NonZeroU32::new(b).ok_or_else(|| anyhow!("{key}: the burst must be at least 1"))?
        }
        None => NonZeroU32::new(per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
            .unwrap_or(NonZeroU32::MIN),
    };
    RateLimit::new(per_second, burst).map(Some).ok_or_else(|| {
        anyhow!("{key}: must be a number of requests per second above 0 (and at most 1000000000)")
    })
}

/// Route, destination and group names: `[a-z0-9_-]`, 1 to 64 characters.
fn valid_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        bail!("{name:?} must be 1 to 64 of a-z, 0-9, _ and -")
    }
}

/// One App Secret given in the file: the rule for secrets, and never split at commas.
fn one_secret(value: &str, at: &str) -> anyhow::Result<Secret> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        bail!("{at}: app_secret: a value is empty");
    }
    Ok(Secret::new(trimmed.as_bytes().to_vec()))
}

/// The one source of a route's verify token.
fn one<'a>(
    key: &str,
    value: Option<&'a str>,
    path: Option<&Path>,
    file: &Path,
) -> anyhow::Result<SecretSource<'a>> {
    match (value, path) {
        (Some(_), Some(_)) => bail!("give {key} or {key}_file, not both"),
        (Some(v), None) => Ok(SecretSource::Value(v)),
        (None, Some(p)) => Ok(SecretSource::File(resolve(p, file))),
        (None, None) => bail!("{key} or {key}_file is required"),
    }
}

/// A secret file named in the config file: absolute as given; relative, a systemd
/// credential of that name when one was passed (`$CREDENTIALS_DIRECTORY`), else next to
/// the config file (the packaged layout: `/etc/xhubd/`).
fn resolve(path: &Path, file: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let credential = PathBuf::from(dir).join(path);
        if credential.exists() {
            return credential;
        }
    }
    file.parent()
        .map(|p| p.join(path))
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("wa-bot_2").is_ok());
        for bad in ["", "Wa", "a b", "a/b", &"x".repeat(65)] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_flags_route_serves_every_path_a_file_route_its_own() {
        let defaults = Defaults {
            concurrency: 1,
            timeout: Duration::from_secs(1),
            retry_for: Duration::from_secs(1),
            retry_initial: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(1),
            rate: None,
            order: Order::None,
            order_hold: Duration::from_secs(600),
        };
        let url = Url::parse("http://127.0.0.1:1/").unwrap();
        let mut routes = vec![default_route(
            Secret::new("t"),
            vec![Secret::new("s")],
            url,
            None,
            defaults,
        )];
        assert_eq!(route_for(&routes, "/anything").unwrap().name, "default");
        routes[0].path = Some("/webhook/a".into());
        assert!(route_for(&routes, "/webhook/a").is_some());
        assert!(route_for(&routes, "/webhook/a/").is_none());
        assert!(route_for(&routes, "/webhook").is_none());
    }
}
