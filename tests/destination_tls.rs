//! Backends behind their own TLS, with a throw-away PKI: a destination's `ca_file` is
//! trusted instead of the system's roots, `client_cert_file`/`client_key_file` present
//! a client certificate, and the backend's certificate must name the URL's host. A
//! failed handshake is retried like a connection error and its reason is the
//! delivery's last error. The files are read at start (a bad one: exit 2, one line) and
//! at each reload (a bad one: the reload is refused and delivery goes on as before; a
//! renewed one: used from then on).

mod common;

use std::path::Path;
use std::time::Duration;

use common::pki::BackendPki;
use common::*;

/// Longest wait for something that should happen.
const WAIT: Duration = Duration::from_secs(20);

/// A route `wa` on `/wa` with these destinations.
fn route(destinations: &str) -> String {
    format!(
        "[[route]]\nname = \"wa\"\npath = \"/wa\"\nverify_token = \"t\"\napp_secret = \"{APP_SECRET}\"\n{destinations}"
    )
}

/// A destination with quick retries and `extra` keys.
fn destination(name: &str, url: &str, extra: &str) -> String {
    format!("[[route.destination]]\nname = \"{name}\"\nurl = \"{url}\"\nretry_initial = \"100ms\"\nretry_max_delay = \"300ms\"\n{extra}\n")
}

/// `ca_file = ...` (and the client certificate's keys when `client` is given).
fn tls_keys(ca: &Path, client: Option<&pki::ClientId>) -> String {
    let mut keys = format!("ca_file = {:?}\n", ca.display().to_string());
    if let Some(id) = client {
        keys.push_str(&format!(
            "client_cert_file = {:?}\nclient_key_file = {:?}\n",
            id.chain.display().to_string(),
            id.key.display().to_string()
        ));
    }
    keys
}

/// An xhubd on a config file the test may rewrite and reload.
struct Running {
    x: Xhubd,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(config: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xhubd.toml");
        std::fs::write(&path, config).unwrap();
        let x = Xhubd::start(Options::config(path.to_str().unwrap()));
        Running {
            x,
            config: path,
            _dir: dir,
        }
    }

    /// Writes `config`, sends SIGHUP and waits for the log line that answers it.
    fn reload(&self, config: &str, answer: &str) {
        let before = self.x.logs().matches(answer).count();
        std::fs::write(&self.config, config).unwrap();
        self.x.sighup();
        wait_for(WAIT, answer, || {
            self.x.logs().matches(answer).count() > before
        });
    }

    /// POSTs event `n` to the route and asserts `200`.
    fn post(&self, n: usize) {
        let body = page_event(n);
        let answer = self.x.target.request(
            "POST",
            "/wa",
            &[("X-Hub-Signature-256", &sign(APP_SECRET, &body))],
            &body,
        );
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
}

/// The one delivery of the only event to `destination`, as `xhubd events show --json`
/// shows it.
fn delivery(x: &Xhubd, destination: &str) -> serde_json::Value {
    let (code, out, err) = x.run_on_spool(&["events", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = list[0]["id"].as_str().expect("an event").to_owned();
    let (code, out, err) = x.run_on_spool(&["events", "show", &id, "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    shown["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == destination)
        .unwrap_or_else(|| panic!("no delivery to {destination}: {shown}"))
        .clone()
}

/// Waits until the delivery to `destination` has failed at least `attempts` times,
/// and returns it: still pending, no attempt answered, and the attempts' errors naming
/// `reason`. (Not every one: with TLS 1.3 the backend's refusal comes after the client
/// has finished its handshake, and a pooled connection may die of it before the
/// request is written, which the HTTP client reports as `connection was not ready`.)
fn failing(x: &Xhubd, destination: &str, attempts: i64, reason: &str) -> serde_json::Value {
    let named = |shown: &serde_json::Value| {
        shown["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["detail"].as_str().unwrap().contains(reason))
            .count() as i64
    };
    wait_for(
        WAIT,
        &format!("{attempts} attempts to {destination} naming {reason}"),
        || named(&delivery(x, destination)) >= attempts,
    );
    let shown = delivery(x, destination);
    assert_eq!(shown["state"], "pending", "retried, never dead: {shown}");
    for attempt in shown["history"].as_array().unwrap() {
        assert_eq!(attempt["result"], "pending", "{shown}");
        assert!(attempt["status"].is_null(), "no answer: {shown}");
    }
    shown
}

/// Waits until the backend has refused at least `n` handshakes (it may learn of one
/// after xhubd has recorded the attempt), and returns why each failed.
fn refused_handshakes(up: &Upstream, n: usize) -> Vec<String> {
    wait_for(WAIT, &format!("{n} refused handshakes"), || {
        up.handshake_errors().len() >= n
    });
    up.handshake_errors()
}

#[test]
fn a_backend_with_a_private_ca_is_trusted_with_its_ca_file_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let pki = BackendPki::create(dir.path());
    let up = Upstream::start_tls(BackendPki::server_config(
        &pki.server_cert,
        &pki.server_key,
        None,
    ));
    let url = up.url("/hook");
    let r = Running::start(&route(&format!(
        "{}{}",
        destination("private", &url, &tls_keys(&pki.ca, None)),
        destination("system", &url, ""),
    )));
    r.post(1);

    let got = up.wait_for(1, WAIT);
    assert_eq!(got[0].path_and_query, "/hook");
    wait_for(WAIT, "the delivery to private marked delivered", || {
        delivery(&r.x, "private")["state"] == "delivered"
    });
    // The system's roots do not hold the private CA: refused at every attempt, retried.
    let shown = failing(&r.x, "system", 3, "invalid peer certificate: UnknownIssuer");
    assert_eq!(
        up.count(),
        1,
        "only the destination with ca_file got through"
    );
    refused_handshakes(&up, 3);
    let (code, out, _) = r.x.run_on_spool(&["events", "list", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["state"], "pending", "{shown}");
    assert!(
        list[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("UnknownIssuer"),
        "{list}"
    );
    assert!(
        r.x.logs().contains("UnknownIssuer"),
        "the log line says why"
    );
}

#[test]
fn a_backend_that_requires_a_client_certificate_gets_one_and_refuses_its_absence() {
    let dir = tempfile::tempdir().unwrap();
    let pki = BackendPki::create(dir.path());
    let up = Upstream::start_tls(BackendPki::server_config(
        &pki.server_cert,
        &pki.server_key,
        Some(&pki.client_ca),
    ));
    let url = up.url("/hook");
    let r = Running::start(&route(&format!(
        "{}{}",
        destination("with-cert", &url, &tls_keys(&pki.ca, Some(&pki.client))),
        destination("without-cert", &url, &tls_keys(&pki.ca, None)),
    )));
    r.post(1);

    up.wait_for(1, WAIT);
    wait_for(
        WAIT,
        "the delivery with a certificate marked delivered",
        || delivery(&r.x, "with-cert")["state"] == "delivered",
    );
    // TLS 1.3: the client learns of the refusal from the backend's alert.
    failing(&r.x, "without-cert", 3, "CertificateRequired");
    assert_eq!(up.count(), 1, "no request without a certificate");
    let handshakes = refused_handshakes(&up, 3);
    assert!(
        handshakes
            .iter()
            .all(|e| e.contains("peer sent no certificates")),
        "{handshakes:?}"
    );
}

#[test]
fn a_certificate_for_another_name_is_refused_retried_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let pki = BackendPki::create(dir.path());
    let up = Upstream::start_tls(BackendPki::server_config(
        &pki.wrong_name_cert,
        &pki.wrong_name_key,
        None,
    ));
    let r = Running::start(&route(&destination(
        "misnamed",
        &up.url("/hook"),
        &tls_keys(&pki.ca, None),
    )));
    r.post(1);

    failing(&r.x, "misnamed", 3, "certificate not valid for name");
    assert_eq!(up.count(), 0, "nothing sent to a backend of another name");
    refused_handshakes(&up, 3);
}

#[test]
fn the_flags_destination_takes_the_same_settings() {
    let dir = tempfile::tempdir().unwrap();
    let pki = BackendPki::create(dir.path());
    let up = Upstream::start_tls(BackendPki::server_config(
        &pki.server_cert,
        &pki.server_key,
        Some(&pki.client_ca),
    ));
    let x = Xhubd::start(
        Options::new(&up.url("/flags"))
            .arg("--upstream-ca-file")
            .arg(pki.ca.to_str().unwrap())
            .arg("--upstream-client-cert-file")
            .arg(pki.client.chain.to_str().unwrap())
            .env(
                "XHUBD_UPSTREAM_CLIENT_KEY_FILE",
                pki.client.key.to_str().unwrap(),
            ),
    );
    assert_eq!(x.target.post_signed(&page_event(1)).status, 200);
    let got = up.wait_for(1, WAIT);
    assert_eq!(got[0].path_and_query, "/flags");
}

#[test]
fn bad_tls_settings_end_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = BackendPki::create(dir.path());
    let missing = dir.path().join("missing-ca.pem");
    let state = dir.path().join("state");
    let serve = |config: &str| {
        let path = dir.path().join("xhubd.toml");
        std::fs::write(&path, config).unwrap();
        let (code, _, err) = run_xhubd(
            &[
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--listen",
                &format!("unix:{}", dir.path().join("s.sock").display()),
            ],
            None,
        );
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        err
    };

    let err = serve(&route(&destination(
        "bad-ca",
        "https://127.0.0.1:9/hook",
        &tls_keys(&missing, None),
    )));
    assert!(
        err.contains("destination \"bad-ca\": ca_file: cannot read ")
            && err.contains("missing-ca.pem"),
        "{err}"
    );
    let err = serve(&route(&destination(
        "not-a-ca",
        "https://127.0.0.1:9/hook",
        &tls_keys(&pki.client.key, None),
    )));
    assert!(err.contains("ca_file: no certificate in "), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");
    let err = serve(&route(&destination(
        "half",
        "https://127.0.0.1:9/hook",
        &format!(
            "client_cert_file = {:?}\n",
            pki.client.chain.display().to_string()
        ),
    )));
    assert!(
        err.contains("client_cert_file and client_key_file go together"),
        "{err}"
    );
    let err = serve(&route(&destination(
        "plain",
        "http://127.0.0.1:9/hook",
        &tls_keys(&pki.ca, None),
    )));
    assert!(
        err.contains("ca_file: TLS settings apply to an https:// URL only"),
        "{err}"
    );

    // The flags' destination: the error names the flag.
    let (code, _, err) = run_xhubd(
        &[
            "serve",
            "--upstream",
            "https://127.0.0.1:9/hook",
            "--upstream-ca-file",
            missing.to_str().unwrap(),
            "--verify-token",
            VERIFY_TOKEN,
            "--app-secret",
            APP_SECRET,
            "--state-dir",
            state.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("--upstream-ca-file: cannot read "), "{err}");
    // With routes, the flags' TLS options are refused like --upstream.
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        route(&destination("d", "https://127.0.0.1:9/", "")),
    )
    .unwrap();
    let (code, _, err) = run_xhubd(
        &[
            "check",
            "--config",
            config.to_str().unwrap(),
            "--upstream-ca-file",
            pki.ca.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn tls_files_are_read_again_at_each_reload() {
    let dir = tempfile::tempdir().unwrap();
    let pki = BackendPki::create(dir.path());
    let up = Upstream::start_tls(BackendPki::server_config(
        &pki.server_cert,
        &pki.server_key,
        None,
    ));
    let url = up.url("/hook");
    let good = route(&destination("backend", &url, &tls_keys(&pki.ca, None)));
    let r = Running::start(&good);
    r.post(1);
    up.wait_for(1, WAIT);

    // A CA file that is not there: the reload is refused, naming it, and delivery goes
    // on with the CA read before.
    let missing = dir.path().join("gone-ca.pem");
    r.reload(
        &route(&destination("backend", &url, &tls_keys(&missing, None))),
        "reload refused",
    );
    let logs = r.x.logs();
    let refusal = logs.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        refusal.contains("ca_file: cannot read ") && refusal.contains("gone-ca.pem"),
        "{refusal}"
    );
    r.post(2);
    up.wait_for(2, WAIT);

    // The same config, its CA file replaced by one that does not sign the backend's
    // certificate: the reload reads it, and the next event is refused by the handshake.
    let ca = dir.path().join("rotating-ca.pem");
    std::fs::copy(&pki.other_ca, &ca).unwrap();
    let rotating = route(&destination("backend", &url, &tls_keys(&ca, None)));
    r.reload(&rotating, "configuration reloaded");
    r.post(3);
    refused_handshakes(&up, 1);
    assert_eq!(up.count(), 2);
    // The right CA under the same name, the same config: the reload picks it up.
    std::fs::copy(&pki.ca, &ca).unwrap();
    r.reload(&rotating, "configuration reloaded");
    up.wait_for(3, WAIT);
    assert!(r
        .x
        .logs()
        .lines()
        .all(|l| !l.contains("PRIVATE KEY") && !l.contains("BEGIN CERTIFICATE")));
}
