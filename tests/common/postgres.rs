//! A throw-away PostgreSQL cluster for the tests: Debian's `postgresql` package
//! (installed by scripts/test.sh), `initdb` and `pg_ctl` from
//! `/usr/lib/postgresql/<version>/bin`, run as the `postgres` user when the tests run as
//! root (PostgreSQL refuses root), in a temporary directory on a free port and a Unix
//! socket in that directory. Connections over TCP need the password
//! ([`PG_PASSWORD`], SCRAM); over the socket they are trusted (for the tests' own SQL).
//! [`PgCluster::start_with_tls`] starts one with TLS and the test's own `pg_hba.conf`
//! lines for TCP.
//! The package's own cluster, if any, is left alone. Dropping the cluster stops it and
//! removes its directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::free_port;

/// The superuser's password over TCP.
pub const PG_PASSWORD: &str = "pg-test-pw-51c0";

/// A running cluster.
pub struct PgCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    as_postgres: bool,
    /// The server options that switch TLS on, when it is.
    tls_options: Option<String>,
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
        let dir = tempfile::Builder::new()
            .prefix("xhubd-pg")
            .tempdir()
            .unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).unwrap();
        let tls_options = tls.map(|tls| {
            use std::os::unix::fs::PermissionsExt;
            let copy = |from: &Path, name: &str| {
                let to = dir.path().join(name);
                std::fs::copy(from, &to).unwrap();
                to.display().to_string()
            };
            let cert = copy(tls.cert, "server.crt");
            let key = copy(tls.key, "server.key");
            // PostgreSQL refuses a key that others may read.
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            let ca = copy(tls.client_ca, "client-ca.crt");
            let hba = dir.path().join("pg_hba.conf");
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
                .arg(dir.path())
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
        self.dir.path().join("data").display().to_string()
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command of the server's, as the cluster's owner.
    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
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
            self.dir.path().display()
        );
        if let Some(tls) = &self.tls_options {
            options = format!("{options} {tls}");
        }
        let log = self.dir.path().join("server.log");
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
            .arg(self.dir.path())
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
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// Whether the tests run as root (then the cluster runs as `postgres`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
