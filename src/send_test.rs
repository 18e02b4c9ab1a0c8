//! `xhubd send-test`: does what Meta's dashboard does, to check a deployment end to end
//! without waiting for Meta: a verification request (the challenge must come back), then
//! a signed sample event (or a batch), printing what happened at each step. With
//! `--cert/--key` it presents a client certificate, to test Nginx's mutual TLS.

use std::process::ExitCode;
use std::time::Duration;

use crate::tls::{client_config, ClientIdentity, Roots, ServerCheck};
use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::cli::SendTestArgs;
use crate::config::routes::Route;
use crate::delivery::upstream::error_chain;
use crate::secret::{self, load_app_secrets, load_token, Secret};
use crate::spool::clock::system_ms;
use crate::webhook::signature;

/// Prints a line of the report; a reader that went away (`| head`) ends nothing.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Runs the test; exit status 0 when both steps passed, 1 when one failed, 2 for a
/// usage problem (unreadable certificate, bad URL).
pub fn main(args: &SendTestArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xhubd: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("xhubd: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The URL, App Secret and verify token to test with, and the route tested: a route's
/// of the config file, or the options' (then no route).
fn target(args: &SendTestArgs) -> anyhow::Result<(url::Url, Secret, Secret, Option<Route>)> {
    let mut url = url::Url::parse(&args.url).map_err(|e| anyhow!("--url: {e}"))?;
    if let (Some(name), Some(path)) = (&args.route, &args.config) {
        let file = crate::config::file::load(path)?;
        let defaults = crate::config::routes::Defaults {
            concurrency: 1,
            timeout: Duration::from_secs(30),
            retry_for: Duration::from_secs(60),
            retry_initial: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(1),
            rate: None,
            // Nothing is delivered here: the default that refuses no destination's
            // order_hold.
            order: crate::config::routes::Order::Conversation,
            order_hold: Duration::from_secs(600),
        };
        let routes = crate::config::routes::from_file(path, &file.route, defaults)?;
        let route = routes
            .into_iter()
            .find(|r| &r.name == name)
            .ok_or_else(|| anyhow!("--route: no route {name:?} in {}", path.display()))?;
        url.set_path(route.path.as_deref().unwrap_or("/"));
        let secret = route
            .app_secrets
            .first()
            .cloned()
            .context("the route has no App Secret")?;
        let token = route.verify_token.clone();
        return Ok((url, secret, token, Some(route)));
    }
    // The daemon's rule for secrets, so a pass here means Meta's requests pass too.
    let app_secret = load_app_secrets(&secret::require(
        "--app-secret",
        args.app_secret.as_deref(),
        args.app_secret_file.as_deref(),
        "app_secret",
    )?)
    .context("App Secret")?
    .into_iter()
    .next()
    .context("no App Secret given: the value is empty")?;
    let verify_token = load_token(
        &secret::require(
            "--verify-token",
            args.verify_token.as_deref(),
            args.verify_token_file.as_deref(),
            "verify_token",
        )?,
        "verify token",
    )?;
    Ok((url, app_secret, verify_token, None))
}

async fn run(args: &SendTestArgs) -> anyhow::Result<bool> {
    let (url, app_secret, verify_token, route) = target(args)?;
    let verify_token = String::from_utf8_lossy(verify_token.expose()).into_owned();
    let client = client(args)?;
    let mut all_ok = true;

    // 1. Verification, as when "Verify and save" is clicked in the dashboard.
    let challenge = format!("{}", fastrand::u32(1_000_000..u32::MAX));
    let mut verify_url = url.clone();
    verify_url
        .query_pairs_mut()
        .append_pair("hub.mode", "subscribe")
        .append_pair("hub.challenge", &challenge)
        .append_pair("hub.verify_token", &verify_token);
    say!("1. verification: GET {} (hub.mode=subscribe, hub.challenge={challenge}, verify token not shown)", url);
    match exchange(&client, Method::GET, &verify_url, None, None).await {
        Ok((200, body)) if body == challenge.as_bytes() => {
            say!("   ok: 200, the challenge came back")
        }
        Ok((status, body)) => {
            all_ok = false;
            say!(
                "   FAILED: {status}, body {:?} (expected 200 and {challenge})",
                String::from_utf8_lossy(&body)
            );
        }
        Err(e) => {
            all_ok = false;
            say!("   FAILED: {e:#}");
        }
    }

    if args.phone_number_id.is_some()
        && (args.object.as_str(), args.field.as_str()) != ("whatsapp_business_account", "messages")
    {
        say!("   note: --phone-number-id goes only into the WhatsApp messages sample (--object whatsapp_business_account --field messages); this sample has none");
    }
    // 2. A signed sample event, as the dashboard's "Test" button sends.
    let body = sample(
        &args.object,
        &args.field,
        args.batch,
        args.phone_number_id.as_deref().unwrap_or("0"),
    );
    let sig = signature::sign(app_secret.expose(), body.as_bytes());
    say!(
        "2. event: POST {} ({} update(s), {} bytes, object {}, field {})",
        url,
        args.batch,
        body.len(),
        args.object,
        args.field
    );
    let takers = route
        .as_ref()
        .map(|r| (&r.name, takers(r, &body, &app_secret)));
    match exchange(&client, Method::POST, &url, Some(&sig), Some(body)).await {
        Ok((200, _)) => {
            say!("   ok: 200, the event was accepted");
            match takers {
                Some((name, takers)) if takers.is_empty() => say!(
                    "   note: no destination of route {name} takes this sample (object {}, field {}): it is stored and delivered nowhere; give --object and --field (and --phone-number-id) of events your destinations take",
                    args.object,
                    args.field
                ),
                Some((name, takers)) => say!(
                    "   the destinations of route {name} that take it: {}",
                    takers.join(", ")
                ),
                None => {}
            }
        }
        Ok((status, answer)) => {
            all_ok = false;
            say!(
                "   FAILED: {status}: {}",
                String::from_utf8_lossy(&answer).trim()
            );
        }
        Err(e) => {
            all_ok = false;
            say!("   FAILED: {e:#}");
        }
    }
    say!(
        "{}",
        if all_ok {
            "all steps passed"
        } else {
            "some steps failed"
        }
    );
    Ok(all_ok)
}

/// The destinations of `route` that take `body` (by the daemon's own plan), each named
/// once.
fn takers(route: &Route, body: &str, secret: &Secret) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(doc) = crate::webhook::json::parse_object(body.as_bytes()) {
        let plan = crate::webhook::fanout::plan(route, body.as_bytes(), &doc, secret, false);
        for delivery in plan.deliveries {
            let name = delivery.destination.as_str().to_owned();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// A notification of `batch` updates of `object` and `field`, unique to this run so the
/// daemon never takes it for a retry, shaped as Meta sends such updates, so that a
/// destination's `match` takes it as it would the real ones: a WhatsApp text message
/// (`whatsapp_business_account`, `messages`: in a change's `value.messages`, to
/// `phone_number_id`), a Messenger or Instagram message (`page` or `instagram`,
/// `messages`: a `messaging[]` element), else a Graph `changes[]` update.
fn sample(object: &str, field: &str, batch: usize, phone_number_id: &str) -> String {
    let now = system_ms();
    let run = fastrand::u64(..);
    let entries: Vec<String> = (0..batch.max(1))
        .map(|i| {
            let id = format!("{run}{i}");
            let entry = match (object, field) {
                ("whatsapp_business_account", "messages") => serde_json::json!({
                    "id": id,
                    "changes": [{"field": "messages", "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
                        "contacts": [{"profile": {"name": "xhubd send-test"}, "wa_id": "15550000001"}],
                        "messages": [{
                            "from": "15550000001",
                            "id": format!("wamid.xhubd-test-{id}"),
                            "timestamp": (now / 1000).to_string(),
                            "type": "text",
                            "text": {"body": "xhubd send-test"},
                        }],
                    }}],
                }),
                ("page" | "instagram", "messages") => serde_json::json!({
                    "id": id,
                    "time": now,
                    "messaging": [{
                        "sender": {"id": "1"},
                        "recipient": {"id": id},
                        "timestamp": now,
                        "message": {"mid": format!("m_xhubd-test-{id}"), "text": "xhubd send-test"},
                    }],
                }),
                _ => serde_json::json!({
                    "id": id,
                    "time": now / 1000,
                    "changes": [{"field": field, "value": {"verb": "update", "object_id": format!("{i}"), "test": true}}],
                }),
            };
            entry.to_string()
        })
        .collect();
    format!(
        r#"{{"object":{},"entry":[{}]}}"#,
        serde_json::Value::from(object),
        entries.join(",")
    )
}

fn client(args: &SendTestArgs) -> anyhow::Result<HttpsClient> {
    let roots = match &args.cacert {
        Some(path) => Roots::SystemAnd(path, "--cacert"),
        None => Roots::System,
    };
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(ClientIdentity {
            cert,
            cert_option: "--cert",
            key,
            key_option: "--key",
        }),
        _ => None,
    };
    let config = client_config(ServerCheck::Full(roots), identity)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

async fn exchange(
    client: &HttpsClient,
    method: Method,
    url: &url::Url,
    signature: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let uri: Uri = url.as_str().parse().context("the URL")?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::USER_AGENT, "facebookexternalua xhubd-send-test");
    if let Some(sig) = signature {
        request = request
            .header("x-hub-signature-256", sig)
            .header(header::CONTENT_TYPE, "application/json");
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .map_err(|_| anyhow!("no answer within 20 s"))?
        .map_err(|e| anyhow!("{}", error_chain(&e)))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), 1 << 20)
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::sample;
    use crate::webhook::items::Notification;

    /// What routing sees of the sample's first item: its fields, value arrays, phone
    /// number id.
    fn facts(body: &str) -> (Vec<String>, Vec<String>, Option<String>) {
        let doc = crate::webhook::json::parse_object(body.as_bytes()).unwrap();
        let n = Notification::parse(body.as_bytes(), &doc);
        assert_eq!(n.items.len(), 2, "{body}");
        let f = &n.items[0].facts;
        (
            f.fields.clone(),
            f.value_has.clone(),
            f.phone_number_id.clone(),
        )
    }

    #[test]
    fn message_samples_are_what_match_sees_in_meta_s() {
        let (fields, arrays, phone) =
            facts(&sample("whatsapp_business_account", "messages", 2, "77"));
        assert_eq!(fields, ["messages"]);
        assert!(arrays.contains(&"messages".to_owned()), "{arrays:?}");
        assert_eq!(phone.as_deref(), Some("77"));
        for object in ["page", "instagram"] {
            let (fields, _, _) = facts(&sample(object, "messages", 2, "0"));
            assert_eq!(fields, ["messages"], "{object}");
        }
        let (fields, _, _) = facts(&sample("user", "photos", 2, "0"));
        assert_eq!(fields, ["photos"]);
    }
}
