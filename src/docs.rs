//! Man pages and shell completions, generated from the clap definitions so they never
//! drift from `--help` (`xhubd man --out-dir DIR`, `xhubd completions SHELL`).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "xhubd", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// Writes `xhubd.1` and `xhubd-<subcommand>.1` into `dir`.
pub fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let command = Cli::command();
    write_page(dir, "xhubd", command.clone())?;
    for sub in command.get_subcommands() {
        let name = format!("xhubd-{}", sub.get_name());
        write_page(dir, &name, sub.clone().name(name.clone()))?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, command: clap::Command) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut out)
        .context("cannot render the man page")?;
    out.extend_from_slice(extra_sections(name).as_bytes());
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// The sections clap does not write (man-pages(7) order: EXIT STATUS, ENVIRONMENT,
/// FILES, then SIGNALS for the daemon), in roff.
fn extra_sections(name: &str) -> String {
    let daemon = matches!(name, "xhubd" | "xhubd-serve");
    let mut roff = String::from(match name {
        "xhubd-send-test" => EXIT_SEND_TEST,
        "xhubd-check" => EXIT_CHECK,
        _ if daemon => EXIT_SERVE,
        _ => EXIT_OTHER,
    });
    roff.push_str(ENVIRONMENT);
    roff.push_str(FILES);
    if daemon {
        roff.push_str(SIGNALS);
    }
    roff
}

const EXIT_SERVE: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Stopped on SIGTERM or SIGINT, after requests and delivery attempts in flight finished
and the spool committed its last batch.
.TP
\fB2\fR
A start\-up error (an option, the config file, a secret file, the spool, an address in
use), told in one line on standard error. Also a bad command line, for every command.
"#;

const EXIT_CHECK: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Every check passed: \fBxhubd serve\fR would start with these options.
.TP
\fB2\fR
A check failed (each is one line of the report), or a bad command line.
"#;

const EXIT_SEND_TEST: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Both steps passed: the verification challenge was echoed and the signed event answered 200.
.TP
\fB1\fR
A step failed; the report says which and what was answered.
.TP
\fB2\fR
A usage problem (an unreadable certificate or secret, a bad URL, a bad command line).
"#;

const EXIT_OTHER: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Done.
.TP
\fB1\fR
Standard output could not be written.
.TP
\fB2\fR
An error, told in one line on standard error (a bad command line, an unreadable spool,
no such event).
"#;

const ENVIRONMENT: &str = r#".SH ENVIRONMENT
Every option of \fBxhubd serve\fR has a variable, named in OPTIONS of
\fBxhubd\-serve\fR(1) (\fBXHUBD_UPSTREAM\fR, \fBXHUBD_APP_SECRET_FILE\fR, ...); the
command line wins over the variable, and both over the config file.
.TP
\fBXHUBD_CONFIG\fR
The config file (routes and destinations); the unit sets /etc/xhubd/xhubd.toml.
.TP
\fBXHUBD_LOG\fR
What is logged, as a tracing filter: \fBinfo\fR (default), \fBdebug\fR, \fBwarn\fR,
\fBxhubd=debug\fR. \fBRUST_LOG\fR is read when it is unset.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Set by systemd for \fBLoadCredential=\fR: the credentials \fBapp_secret\fR,
\fBverify_token\fR and \fBadmin_token\fR are read from it when no option gives them,
and relative secret files of the config file are looked up in it first.
.TP
\fBSTATE_DIRECTORY\fR
Set by systemd for \fBStateDirectory=\fR: the spool directory when \fB\-\-state\-dir\fR
is not given.
.TP
\fBLISTEN_FDS\fR, \fBLISTEN_PID\fR
Set by systemd socket activation: xhubd serves the socket passed and ignores
\fB\-\-listen\fR.
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR
Set by systemd for Type=notify and WatchdogSec=: READY=1 once the spool is open and
the listener served, STOPPING=1 on SIGTERM, WATCHDOG=1 while the spool writer runs.
"#;

const FILES: &str = r#".SH FILES
.TP
/etc/xhubd/xhubd.toml
The config file of the packaged service: routes, destinations, and the secret files
they name (root:xhubd, 0640).
.TP
/etc/default/xhubd
The options of the packaged service, as variables (EnvironmentFile= of the unit).
.TP
/var/lib/xhubd
The spool (SQLite; \fB\-\-state\-dir\fR), /var/lib/private/xhubd on disk with the
service's dynamic user. Never deleted by the package, not even on purge.
.TP
/run/xhubd/xhubd.sock
The socket Nginx connects to (xhubd.socket, group www\-data).
.TP
/etc/nginx/sites\-available/xhubd
The shipped Nginx site: TLS, Meta's client certificate, the proxy to the socket.
"#;

const SIGNALS: &str = r#".SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop: no new connections; requests in flight finish (within \fB\-\-shutdown\-timeout\fR),
then delivery attempts in flight, then the spool commits its last batch. An event
answered 200 is in the spool; one not answered is retried by Meta.
.TP
\fBSIGHUP\fR
Reload the config file and the secret and certificate files it names
(\fBsystemctl reload xhubd\fR).
A valid file takes effect for new events without dropping a connection; an invalid one
is refused with a log line and the running configuration stays. Never stops the daemon.
"#;
