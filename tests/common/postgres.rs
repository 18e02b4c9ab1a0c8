//! A throw-away PostgreSQL cluster for the tests: Debian's `postgresql` package
//! (installed by scripts/test.sh), `initdb` and `pg_ctl` from
//! `/usr/lib/postgresql/<version>/bin`, run as the `postgres` user when the tests run as
//! root (PostgreSQL refuses root), in a temporary directory (`xhubd-pg*`) on a free port
//! and a Unix socket in that directory. Connections over TCP need the password
//! ([`PG_PASSWORD`], SCRAM); over the socket they are trusted (for the tests' own SQL).
//! [`PgCluster::start_with_tls`] starts one with TLS and the test's own `pg_hba.conf`
//! lines for TCP. The package's own cluster, if any, is left alone.
//!
//! Two ways to use one:
//! - [`PgCluster::start`]: a cluster of the test's own (tests/postgres.rs stops one
//!   under load); dropping it stops it and removes its directory.
//! - [`shared`]: one cluster per test binary, started by the first test that asks,
//!   for tests that run on both spools ([`super::Spool::postgres`] gives each its own
//!   fresh database on it). Statics are never dropped, so it is stopped otherwise.
//!
//! How no cluster outlives its test process, however that process ends: each cluster
//! has a *guardian*, a small `sh` child in a process group of its own (Ctrl-C and a
//! kill of the test's group leave it alone) that blocks reading a pipe whose only
//! writer is the test process. When the writer closes — on drop, or when the test
//! process exits, panics, aborts or is killed with SIGKILL, since the kernel then closes
//! its descriptors — the guardian stops the server (`pg_ctl stop -m immediate`) and
//! removes the directory. The test process waits for its guardians where it can: on
//! drop, and for the shared cluster in an `atexit` handler (it runs when the test
//! binary ends normally or after failures), so that no server is left running when
//! `cargo test` returns. Should a guardian itself be killed, the next start removes the
//! leftovers: a directory whose `owner` file names a process that no longer runs has
//! its server (if any) stopped and is deleted.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::free_port;

/// The superuser's password over TCP.
pub const PG_PASSWORD: &str = "pg-test-pw-51c0";

/// The prefix of every cluster's directory, in the temporary directory.
const DIR_PREFIX: &str = "xhubd-pg";

/// A running cluster.
pub struct PgCluster {
    bin: PathBuf,
    /// Removed by the guardian, not by us.
    dir: PathBuf,
    pub port: u16,
    as_postgres: bool,
    /// The server options that switch TLS on, when it is.
    tls_options: Option<String>,
    /// The write end of the guardian's pipe, and the guardian; taken by [`Self::stop`].
    guardian: Mutex<Option<(ChildStdin, Child)>>,
    /// Names the next fresh database.
    databases: AtomicUsize,
}

/// TLS for a cluster: PEM files (copied into the cluster's directory, the key with
/// mode 0600, all owned by the server's user) and what `pg_hba.conf` says about TCP.
pub struct PgTls<'a> {
    /// The server's certificate chain (`ssl_cert_file`).
    pub cert: &'a Path,
    /// Its key (`ssl_key_file`).
    pub key: &'a Path,
    /// The CA that client certificates must chain to (`ssl_ca_file`).
    pub client_ca: &'a Path,
    /// The lines after `local all all trust`, e.g.
    /// `hostssl all all 127.0.0.1/32 scram-sha-256`.
    pub hba: &'a [&'a str],
}

/// The newest installed server's binaries, or a loud failure naming the package.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL's server is missing: install the Debian package postgresql (scripts/test.sh does)")
}

/// A server's binary, run as the cluster's owner.
fn server_command(bin: &Path, tool: &str, as_postgres: bool) -> Command {
    let path = bin.join(tool);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// The command that stops the server of `dir` at once, whether it runs or not.
fn stop_command(bin: &Path, dir: &Path, as_postgres: bool) -> Command {
    let mut c = server_command(bin, "pg_ctl", as_postgres);
    c.arg("-D")
        .arg(dir.join("data"))
        .args(["-m", "immediate", "-w", "stop"]);
    c
}

/// Starts the guardian of the cluster in `dir`: once the returned pipe's write end is
/// closed (by us, or by the kernel when this process ends), it stops the server and
/// removes `dir`.
fn guard(bin: &Path, dir: &Path, as_postgres: bool) -> (ChildStdin, Child) {
    let stop = stop_command(bin, dir, as_postgres);
    let mut guardian = Command::new("sh");
    guardian
        .arg("-c")
        .arg(r#"read -r _; dir=$1; shift; "$@"; rm -rf -- "$dir""#)
        .arg("xhubd-pg-guardian")
        .arg(dir)
        .arg(stop.get_program())
        .args(stop.get_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Out of the test's process group: Ctrl-C or a kill of the group ends the
        // tests, and the guardian then cleans up after them.
        .process_group(0);
    let mut child = guardian.spawn().expect("start the cluster's guardian (sh)");
    let stdin = child.stdin.take().unwrap();
    (stdin, child)
}

/// Removes what clusters of test processes that are gone left behind (their guardian
/// was killed too): stops a server still running there, deletes the directory. A
/// directory without an `owner` file is being created, or not ours: left alone.
fn remove_stale(bin: &Path, as_postgres: bool) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let Some(owner) = std::fs::read_to_string(dir.join("owner"))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if dir.join("data/postmaster.pid").exists() {
            let _ = stop_command(bin, &dir, as_postgres).output();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

impl PgCluster {
    /// Creates and starts a cluster; waits until it takes connections.
    pub fn start() -> PgCluster {
        PgCluster::start_with(None)
    }

    /// Creates and starts a cluster with `ssl = on`, `tls`'s files and `pg_hba.conf`
    /// lines; waits until it takes connections.
    pub fn start_with_tls(tls: &PgTls) -> PgCluster {
        PgCluster::start_with(Some(tls))
    }

    fn start_with(tls: Option<&PgTls>) -> PgCluster {
        let bin = server_bin();
        let as_postgres = is_root();
        remove_stale(&bin, as_postgres);
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .unwrap()
            .keep();
        std::fs::write(dir.join("owner"), std::process::id().to_string()).unwrap();
        let guardian = guard(&bin, &dir, as_postgres);
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).unwrap();
        let tls_options = tls.map(|tls| {
            use std::os::unix::fs::PermissionsExt;
            let copy = |from: &Path, name: &str| {
                let to = dir.join(name);
                std::fs::copy(from, &to).unwrap();
                to.display().to_string()
            };
            let cert = copy(tls.cert, "server.crt");
            let key = copy(tls.key, "server.key");
            // PostgreSQL refuses a key that others may read.
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            let ca = copy(tls.client_ca, "client-ca.crt");
            let hba = dir.join("pg_hba.conf");
            let mut lines = vec!["local all all trust"];
            lines.extend(tls.hba);
            std::fs::write(&hba, lines.join("\n") + "\n").unwrap();
            format!(
                "-c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key} -c ssl_ca_file={ca} -c hba_file={}",
                hba.display()
            )
        });
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown of the cluster directory");
        }
        let cluster = PgCluster {
            bin,
            port: free_port(),
            dir,
            as_postgres,
            tls_options,
            guardian: Mutex::new(Some(guardian)),
            databases: AtomicUsize::new(0),
        };
        let data = cluster.data();
        cluster.run_ok(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        cluster.pg_ctl_start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A command of the server's, as the cluster's owner.
    fn command(&self, tool: &str) -> Command {
        server_command(&self.bin, tool, self.as_postgres)
    }

    fn run_ok(&self, tool: &str, args: &[&str]) -> Output {
        let out = self.command(tool).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn pg_ctl_start(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        if let Some(tls) = &self.tls_options {
            options = format!("{options} {tls}");
        }
        let log = self.dir.join("server.log");
        let out = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-o", &options, "-l"])
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once, as a crash would (`-m immediate`).
    pub fn stop_immediate(&self) {
        self.run_ok(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// Starts the server again after [`Self::stop_immediate`].
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// Creates a database and returns its URL with the password.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// Creates a database with a name not used before on this cluster; returns the
    /// name and its URL with the password.
    pub fn fresh_database(&self) -> (String, String) {
        let n = self.databases.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("spool_{n}");
        let url = self.database(&name);
        (name, url)
    }

    /// The URL of database `name` over TCP, with the password.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL on database `db` over the socket; returns what it printed (unaligned,
    /// tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .expect("psql (Debian package postgresql-client)");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// One integer from a query on database `db`.
    pub fn count(&self, db: &str, sql: &str) -> i64 {
        let text = self.psql(db, sql);
        text.parse()
            .unwrap_or_else(|_| panic!("{sql:?} gave {text:?}"))
    }

    /// Stops the server and removes its directory (through the guardian), once.
    fn stop(&self) {
        let taken = self
            .guardian
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some((pipe, mut guardian)) = taken {
            drop(pipe);
            let _ = guardian.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The cluster this test binary's tests share, started by the first that asks.
pub fn shared() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    extern "C" fn stop_shared() {
        if let Some(cluster) = SHARED.get() {
            cluster.stop();
        }
    }
    extern "C" {
        fn atexit(f: extern "C" fn()) -> std::os::raw::c_int;
    }
    SHARED.get_or_init(|| {
        let cluster = PgCluster::start();
        // SAFETY: registers a plain function with the C library, called once at exit.
        let registered = unsafe { atexit(stop_shared) };
        assert_eq!(registered, 0, "atexit");
        cluster
    })
}

/// Whether the tests run as root (then the cluster runs as `postgres`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
