//! Test support: starts the real `xhubd` binary, a fake upstream backend that records
//! what it receives and fails on demand, and a small HTTP/1.1 client over Unix sockets
//! or TCP that sends exactly the bytes a test gives it.
//!
//! A test of behaviour both spools share runs on both: [`both_spools!`] makes of one
//! test function two tests, `NAME::on_sqlite` and `NAME::on_postgres`; the function
//! starts xhubd with `Options::spool(spool)` and reads the spool through
//! [`Xhubd::count`] (SQL on either engine: their tables mirror each other) and
//! [`Xhubd::spool_args`] (for `xhubd events`). On PostgreSQL each test gets a fresh
//! database on one cluster per test binary ([`postgres::shared`]).
#![allow(dead_code)]

pub mod faulty_upstream;
pub mod latency;
pub mod nginx;
pub mod pki;
pub mod postgres;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio_util::either::Either;

pub const APP_SECRET: &str = "app-secret-4f1d9c2b7e";
pub const OTHER_SECRET: &str = "second-secret-8a7b6c5d";
pub const VERIFY_TOKEN: &str = "verify-token-93jd8s";

/// The signature header Meta would send for `body` with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    xhubd::webhook::signature::sign(secret.as_bytes(), body)
}

// ---------------------------------------------------------------- the client

/// Where xhubd listens.
#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

impl Target {
    fn connect(&self) -> Box<dyn Conn> {
        match self {
            Target::Unix(p) => {
                let s = UnixStream::connect(p).expect("connect to xhubd's socket");
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                Box::new(s)
            }
            Target::Tcp(a) => {
                let s = TcpStream::connect(a).expect("connect to xhubd's port");
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                Box::new(s)
            }
        }
    }

    /// Sends raw request bytes (the request should say `Connection: close`) and
    /// parses the answer.
    pub fn raw(&self, request: &[u8]) -> Answer {
        let mut conn = self.connect();
        // The server may answer and close before reading a large body (413).
        let _ = conn.write_all(request);
        let mut out = Vec::new();
        let _ = conn.read_to_end(&mut out);
        parse_answer(&out)
    }

    /// Sends a request with the given extra headers and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if method != "GET" && method != "HEAD" || !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    pub fn get(&self, path: &str) -> Answer {
        self.request("GET", path, &[], b"")
    }

    /// POSTs `body` signed with the default App Secret.
    pub fn post_signed(&self, body: &[u8]) -> Answer {
        let sig = sign(APP_SECRET, body);
        self.request(
            "POST",
            "/webhook",
            &[
                ("X-Hub-Signature-256", &sig),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }
}

fn parse_answer(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no complete HTTP answer: {:?}",
                String::from_utf8_lossy(raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

// ---------------------------------------------------------------- the spool

/// The spool a test runs xhubd on.
#[derive(Clone, Debug)]
pub enum Spool {
    /// The default: `spool.sqlite3` in the daemon's state directory.
    Sqlite,
    /// A database of the test's own on the test binary's shared cluster.
    Postgres {
        /// The database's name on [`postgres::shared`].
        db: String,
        /// Its URL, with the password.
        url: String,
    },
}

impl Spool {
    pub fn sqlite() -> Spool {
        Spool::Sqlite
    }

    /// A fresh database on the shared cluster (started by the first test that asks).
    pub fn postgres() -> Spool {
        let (db, url) = postgres::shared().fresh_database();
        Spool::Postgres { db, url }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self, Spool::Sqlite)
    }
}

/// Runs each named test on both spools: `both_spools!(NAME);` above
/// `fn NAME(spool: &Spool) { .. }` makes the module `NAME` with the tests `on_sqlite`
/// and `on_postgres`, each calling the function with its [`Spool`] (a function and a
/// module of one name live side by side). The function stays an ordinary one, formatted
/// and linted as such.
#[macro_export]
macro_rules! both_spools {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn on_sqlite() {
                super::$name(&$crate::common::Spool::sqlite())
            }

            #[test]
            fn on_postgres() {
                super::$name(&$crate::common::Spool::postgres())
            }
        }
    )+};
}

// ---------------------------------------------------------------- the daemon

/// A running xhubd.
pub struct Xhubd {
    pub child: Option<Child>,
    pub env: Vec<(String, String)>,
    pub held: Option<std::os::unix::net::UnixListener>,
    pub wait_ready: bool,
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub target: Target,
    pub args: Vec<String>,
    /// The spool it runs on.
    pub spool: Spool,
    log_path: PathBuf,
    runs: usize,
}

/// Options of one start.
pub struct Options {
    pub upstream: String,
    pub tcp: bool,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The test binds the Unix socket and passes it as systemd does (fd 3,
    /// LISTEN_FDS=1, LISTEN_PID), keeping it open across restarts.
    pub held_socket: bool,
    /// Wait for the "xhubd ready" log line after each start.
    pub wait_ready: bool,
    /// The state directory, when not the default one in the temporary directory.
    pub state_dir: Option<PathBuf>,
    /// `--retry-initial` and `--retry-max-delay` (short by default, so tests are quick).
    pub retry: (String, String),
    /// Options of the usual command line left out (with their values), e.g.
    /// `--verify-token` when the test gives the token another way.
    pub omit: Vec<String>,
    /// The spool (SQLite by default).
    pub spool: Spool,
}

impl Options {
    pub fn new(upstream: &str) -> Options {
        Options {
            upstream: upstream.to_owned(),
            tcp: false,
            extra: vec![],
            env: vec![],
            held_socket: false,
            wait_ready: true,
            state_dir: None,
            retry: ("200ms".into(), "1s".into()),
            omit: vec![],
            spool: Spool::Sqlite,
        }
    }
    /// Options for a daemon configured by the config file at `path` (its routes bring
    /// their own secrets and destinations): no --upstream, --verify-token or
    /// --app-secret-file.
    pub fn config(path: &str) -> Options {
        Options::new("unused")
            .omit("--upstream")
            .omit("--verify-token")
            .omit("--app-secret-file")
            .arg("--config")
            .arg(path)
    }
    pub fn omit(mut self, flag: &str) -> Self {
        self.omit.push(flag.to_owned());
        self
    }
    pub fn retry(mut self, initial: &str, max_delay: &str) -> Self {
        self.retry = (initial.to_owned(), max_delay.to_owned());
        self
    }
    /// Runs on `spool` (`--spool URL` for PostgreSQL).
    pub fn spool(mut self, spool: &Spool) -> Self {
        self.spool = spool.clone();
        self
    }
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_owned());
        self
    }
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }
    pub fn held_socket(mut self) -> Self {
        self.held_socket = true;
        self
    }
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_owned());
        self
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Xhubd {
    pub fn start(opts: Options) -> Xhubd {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let secret_file = dir.path().join("app_secret");
        std::fs::write(&secret_file, format!("{APP_SECRET}\n{OTHER_SECRET}\n")).unwrap();
        let (listen, target) = if opts.tcp {
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            (addr.to_string(), Target::Tcp(addr))
        } else {
            let sock = dir.path().join("xhubd.sock");
            (format!("unix:{}", sock.display()), Target::Unix(sock))
        };
        let mut args = vec![
            "serve".to_owned(),
            "--listen".into(),
            listen,
            "--upstream".into(),
            opts.upstream.clone(),
            "--verify-token".into(),
            VERIFY_TOKEN.into(),
            "--app-secret-file".into(),
            secret_file.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--retry-initial".into(),
            opts.retry.0.clone(),
            "--retry-max-delay".into(),
            opts.retry.1.clone(),
        ];
        for flag in &opts.omit {
            if let Some(at) = args.iter().position(|a| a == flag) {
                args.drain(at..at + 2);
            }
        }
        if let Spool::Postgres { url, .. } = &opts.spool {
            args.extend(["--spool".to_owned(), url.clone()]);
        }
        args.extend(opts.extra);
        let log_path = dir.path().join("xhubd.log");
        let held = match (&target, opts.held_socket) {
            (Target::Unix(path), true) => {
                Some(std::os::unix::net::UnixListener::bind(path).unwrap())
            }
            _ => None,
        };
        let mut x = Xhubd {
            child: None,
            env: opts.env,
            held,
            wait_ready: opts.wait_ready,
            dir,
            state_dir,
            target,
            args,
            spool: opts.spool,
            log_path,
            runs: 0,
        };
        x.spawn();
        x
    }

    /// Starts (again) the binary with the same arguments and state dir.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut command = match &self.held {
            None => Command::new(env!("CARGO_BIN_EXE_xhubd")),
            Some(listener) => {
                use command_fds::{CommandFdExt, FdMapping};
                // As systemd does: the socket as fd 3, and LISTEN_PID naming the
                // daemon's own pid (exec keeps the shell's pid).
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
                    .arg(env!("CARGO_BIN_EXE_xhubd"));
                c.fd_mappings(vec![FdMapping {
                    parent_fd: std::os::fd::OwnedFd::from(listener.try_clone().unwrap()),
                    child_fd: 3,
                }])
                .unwrap();
                c
            }
        };
        let child = command
            .args(&self.args)
            .env_remove("XHUBD_APP_SECRET")
            .env_remove("XHUBD_VERIFY_TOKEN")
            .env_remove("XHUBD_UPSTREAM")
            .env_remove("STATE_DIRECTORY")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("XHUBD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start xhubd");
        self.child = Some(child);
        self.runs += 1;
        if self.wait_ready {
            self.wait_ready();
        }
    }

    /// Waits for this run's "xhubd ready" log line (written once the listener is served).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("xhubd exited at start ({status}): {}", self.logs());
            }
            if self.logs().matches("xhubd ready").count() >= self.runs {
                // A test meant for PostgreSQL never passes on SQLite unnoticed.
                if !self.spool.is_sqlite() {
                    let logs = self.logs();
                    assert!(
                        logs.contains("spool=postgresql"),
                        "not on PostgreSQL: {logs}"
                    );
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("xhubd did not become ready: {}", self.logs());
    }

    /// Everything xhubd logged so far (all runs).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGHUP: a reload of the config file (`systemctl reload xhubd`).
    pub fn sighup(&self) {
        let pid = self
            .child
            .as_ref()
            .expect("xhubd is running")
            .id()
            .to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("xhubd is running");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_exit(&mut child, Duration::from_secs(30))
    }

    /// SIGKILL: the process dies at once, wherever it is.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("xhubd is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The SQLite spool's file.
    pub fn db_path(&self) -> PathBuf {
        assert!(self.spool.is_sqlite(), "a SQLite file on {:?}", self.spool);
        self.state_dir.join("spool.sqlite3")
    }

    /// Runs a query on the spool (read only), returning one integer. The SQL must read
    /// the same on both engines: their tables and columns mirror each other
    /// (src/spool/postgres/schema.rs).
    pub fn count(&self, sql: &str) -> i64 {
        match &self.spool {
            Spool::Sqlite => {
                let conn = rusqlite::Connection::open_with_flags(
                    self.db_path(),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .unwrap();
                conn.query_row(sql, [], |r| r.get(0)).unwrap()
            }
            Spool::Postgres { db, .. } => postgres::shared().count(db, sql),
        }
    }

    /// Changes the spool under the running daemon (a test's set-up, e.g. retries put
    /// far off); the SQL must read the same on both engines.
    pub fn execute(&self, sql: &str) {
        match &self.spool {
            Spool::Sqlite => {
                let conn = rusqlite::Connection::open(self.db_path()).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                conn.execute_batch(sql).unwrap();
            }
            Spool::Postgres { db, .. } => {
                postgres::shared().psql(db, sql);
            }
        }
    }

    /// The options that point `xhubd events` (and `check`) at this daemon's spool:
    /// `--state-dir DIR`, or `--spool URL`.
    pub fn spool_args(&self) -> Vec<String> {
        match &self.spool {
            Spool::Sqlite => vec!["--state-dir".into(), self.state_dir.display().to_string()],
            Spool::Postgres { url, .. } => vec!["--spool".into(), url.clone()],
        }
    }

    /// Runs `xhubd ARGS` with [`Self::spool_args`] appended.
    pub fn run_on_spool(&self, args: &[&str]) -> (i32, String, String) {
        let spool = self.spool_args();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(spool.iter().map(String::as_str));
        run_xhubd(&all, None)
    }

    /// Asserts that no secret appears in the logs.
    pub fn assert_no_secret_in_logs(&self) {
        assert_no_secret("the logs", &self.logs());
    }
}

impl Drop for Xhubd {
    /// Stops the daemon, and checks every line it logged in this test for the secrets;
    /// if the test is failing, prints the end of the log instead.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // The failing test's output shows what xhubd logged last.
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_ON_FAILURE)..];
            eprintln!(
                "--- the last {} lines xhubd logged ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        } else {
            self.assert_no_secret_in_logs();
        }
    }
}

/// Lines of xhubd's log a failing test prints.
const LOG_TAIL_ON_FAILURE: usize = 80;

pub fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("xhubd did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary to completion with `args`, returning (status, stdout, stderr).
pub fn run_xhubd(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    run_xhubd_with(args, stdin, &[])
}

/// `xhubd send-test` of route `route` of the config file `config`, against an xhubd
/// listening on TCP at `addr`; returns (status, stdout, stderr).
pub fn send_test_route(addr: &SocketAddr, config: &Path, route: &str) -> (i32, String, String) {
    run_xhubd(
        &[
            "send-test",
            "--url",
            &format!("http://{addr}/"),
            "--config",
            config.to_str().unwrap(),
            "--route",
            route,
        ],
        None,
    )
}

/// A config file's route `r` at `/webhook` (the test token and App Secret) with one
/// destination `d` at `upstream`; top-level keys go before it.
pub fn one_route_config(upstream: &str) -> String {
    format!(
        "[[route]]\nname = \"r\"\npath = \"/webhook\"\nverify_token = \"{VERIFY_TOKEN}\"\napp_secret = \"{APP_SECRET}\"\n[[route.destination]]\nname = \"d\"\nurl = \"{upstream}\"\n"
    )
}

/// [`run_xhubd`] with these variables set in its environment.
pub fn run_xhubd_with(
    args: &[&str],
    stdin: Option<&[u8]>,
    vars: &[(&str, &str)],
) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xhubd"))
        .args(args)
        .envs(vars.iter().copied())
        .env_remove("XHUBD_APP_SECRET")
        .env_remove("XHUBD_VERIFY_TOKEN")
        .env_remove("XHUBD_UPSTREAM")
        .env_remove("STATE_DIRECTORY")
        // check reads the machine's /etc/default/xhubd otherwise.
        .env("XHUBD_ENVIRONMENT_FILE", "none")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_no_secret("xhubd's output", &format!("{stdout}{stderr}"));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// Fails when any of the test secrets appears in `text`.
pub fn assert_no_secret(what: &str, text: &str) {
    for secret in [APP_SECRET, OTHER_SECRET, VERIFY_TOKEN] {
        assert!(
            !text.contains(secret),
            "a secret appears in {what}:\n{text}"
        );
    }
}

/// Polls `cond` until it holds or `limit` passes.
/// The admin listener on loopback `port` (`--admin-listen 127.0.0.1:PORT`).
pub fn admin_target(port: u16) -> Target {
    Target::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The most of `arrivals` in any one-second window (windows start at each arrival):
/// what a backend behind a rate limit sees at worst.
pub fn busiest_second(arrivals: &[Instant]) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    let mut most = 0;
    let mut end = 0;
    for start in 0..sorted.len() {
        while end < sorted.len() && sorted[end] - sorted[start] < Duration::from_secs(1) {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

/// Environment that runs a process with its wall clock moved by what `file` says
/// (libfaketime's `FAKETIME_TIMESTAMP_FILE`, e.g. `-90s`, read again each second, so
/// rewriting it makes the clock jump; the monotonic clock is left alone), or a loud
/// failure naming the package (scripts/test.sh installs it).
pub fn clock_moved(file: &Path) -> Vec<(String, String)> {
    let library = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|arch| arch.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists())
        .expect(
            "libfaketime is missing: install the Debian package faketime (scripts/test.sh does)",
        );
    vec![
        ("LD_PRELOAD".into(), library.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Milliseconds since the Unix epoch, as the spool counts time.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

// ---------------------------------------------------------------- the fake upstream

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// What the fake upstream answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Script {
    received: Vec<Received>,
    /// Statuses to answer next, in order; then `default_status`.
    next: VecDeque<u16>,
    default_status: u16,
    /// Statuses for particular paths (after the scripted ones, before the default).
    by_path: std::collections::HashMap<String, u16>,
    /// Why each refused TLS handshake failed, as the backend saw it (TLS backends).
    handshake_errors: Vec<String>,
}

/// A fake backend on 127.0.0.1 that records requests and answers as scripted. It can
/// be stopped (connections refused) and started again on the same port. Started with
/// [`Upstream::start_tls`], it speaks HTTPS with the given server configuration (and so
/// checks client certificates when that configuration asks for them).
pub struct Upstream {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    runtime: tokio::runtime::Runtime,
    server: Option<tokio::task::JoinHandle<()>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::start_with(None)
    }

    /// An HTTPS backend: TLS with `config` on every connection, then the same HTTP.
    pub fn start_tls(config: rustls::ServerConfig) -> Upstream {
        Upstream::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let script = Arc::new(Mutex::new(Script {
            default_status: 200,
            ..Default::default()
        }));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut up = Upstream {
            addr,
            script,
            runtime,
            server: None,
            tls,
        };
        up.serve(listener);
        up
    }

    /// The URL to give xhubd: `https://` for a TLS backend.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, path)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let script = self.script.clone();
        let tls = self.tls.clone();
        self.server = Some(self.runtime.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let script = script.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    let stream = match tls {
                        None => Either::Left(stream),
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => Either::Right(stream),
                            Err(e) => {
                                script.lock().unwrap().handshake_errors.push(e.to_string());
                                return;
                            }
                        },
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let script = script.clone();
                        async move {
                            let path_and_query = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(n, v)| {
                                    (
                                        n.to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let status = {
                                let mut s = script.lock().unwrap();
                                let d = s
                                    .by_path
                                    .get(&path_and_query)
                                    .copied()
                                    .unwrap_or(s.default_status);
                                let status = s.next.pop_front().unwrap_or(d);
                                s.received.push(Received {
                                    path_and_query,
                                    headers,
                                    body,
                                    status,
                                });
                                status
                            };
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// Stops listening and drops every open connection: xhubd sees connection errors.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = self.runtime.block_on(server);
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let addr = self.addr;
        let listener = self
            .runtime
            .block_on(async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                socket.listen(1024)
            })
            .expect("rebind the fake upstream on its port");
        self.serve(listener);
    }

    /// Answers the next requests with these statuses, in order.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.script.lock().unwrap().next.extend(statuses);
    }

    /// Answers later requests for `path` (after the scripted ones) with `status`.
    pub fn answer_path(&self, path: &str, status: u16) {
        self.script
            .lock()
            .unwrap()
            .by_path
            .insert(path.to_owned(), status);
    }

    /// Answers every later request (after the scripted ones) with `status`.
    pub fn answer_always(&self, status: u16) {
        self.script.lock().unwrap().default_status = status;
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    pub fn count(&self) -> usize {
        self.script.lock().unwrap().received.len()
    }

    /// Why each TLS handshake the backend refused failed, oldest first.
    pub fn handshake_errors(&self) -> Vec<String> {
        self.script.lock().unwrap().handshake_errors.clone()
    }

    /// Waits until at least `n` requests arrived.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        wait_for(limit, &format!("{n} upstream requests"), || {
            self.count() >= n
        });
        self.received()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A small Graph-API style notification, different for each `n`.
pub fn page_event(n: usize) -> Vec<u8> {
    format!(r#"{{"object":"user","entry":[{{"id":"{n}","time":1700000000,"changed_fields":["photos"]}}]}}"#).into_bytes()
}

/// Checks `path` is a socket file.
pub fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

/// Whether a process listens on the Unix socket at `path`: the file appears at bind,
/// a moment before the listen that makes connections succeed.
pub fn listening(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}
