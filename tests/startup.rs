//! Start-up: every configuration problem ends the process with exit status 2 and one
//! line naming it (never a secret); the Unix socket file is handled with care; `sign`.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

/// Runs `serve` with the given arguments and expects a start-up failure.
fn fails(args: &[&str]) -> String {
    let (code, _, stderr) = run_xhubd(args, None);
    assert_eq!(code, 2, "exit status for {args:?}; stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    for secret in [APP_SECRET, VERIFY_TOKEN] {
        assert!(!stderr.contains(secret), "secret in {stderr:?}");
    }
    stderr
}

fn base(dir: &std::path::Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--listen".into(),
        format!("unix:{}/x.sock", dir.display()),
        "--upstream".into(),
        "http://127.0.0.1:9/".into(),
        "--verify-token".into(),
        VERIFY_TOKEN.into(),
        "--app-secret".into(),
        APP_SECRET.into(),
        "--state-dir".into(),
        format!("{}/state", dir.display()),
    ]
}

fn with(dir: &std::path::Path, drop_flag: Option<&str>, extra: &[&str]) -> String {
    let mut args = base(dir);
    if let Some(flag) = drop_flag {
        let i = args.iter().position(|a| a == flag).unwrap();
        args.drain(i..i + 2);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&refs)
}

#[test]
fn missing_required_options_are_named() {
    let dir = tempfile::tempdir().unwrap();
    assert!(with(dir.path(), Some("--upstream"), &[]).contains("--upstream"));
    assert!(with(dir.path(), Some("--verify-token"), &[]).contains("--verify-token"));
    assert!(with(dir.path(), Some("--app-secret"), &[]).contains("--app-secret"));
}

#[test]
fn bad_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(with(d, None, &["--dedup-window", "7"]).contains("--dedup-window"));
    assert!(with(d, None, &["--retry-for", "soon"]).contains("--retry-for"));
    assert!(with(d, None, &["--max-body-bytes", "lots"]).contains("--max-body-bytes"));
    assert!(with(d, Some("--upstream"), &["--upstream", "ftp://x/"]).contains("--upstream"));
    assert!(with(d, Some("--upstream"), &["--upstream", "not a url"]).contains("--upstream"));
    assert!(with(d, Some("--listen"), &["--listen", "nowhere"]).contains("--listen"));
    assert!(with(d, None, &["--socket-mode", "999"]).contains("--socket-mode"));
    assert!(with(d, None, &["--no-such-option"]).contains("--no-such-option"));
    assert!(with(d, None, &["--upstream-concurrency", "many"]).contains("--upstream-concurrency"));
    assert!(with(d, None, &["--client-cn-header", "bad header"]).contains("--client-cn-header"));
}

#[test]
fn secret_files_and_the_state_dir_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("no-such-secret");
    let line = with(
        d,
        Some("--app-secret"),
        &["--app-secret-file", missing.to_str().unwrap()],
    );
    assert!(line.contains("no-such-secret"), "{line}");
    let both = with(d, None, &["--verify-token-file", missing.to_str().unwrap()]);
    assert!(both.contains("not both"), "{both}");
    let empty = d.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    assert!(with(
        d,
        Some("--verify-token"),
        &["--verify-token-file", empty.to_str().unwrap()]
    )
    .contains("empty"));

    // A state dir that is a file, and one that is read-only.
    let file = d.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let line = with(
        d,
        Some("--state-dir"),
        &["--state-dir", file.to_str().unwrap()],
    );
    assert!(line.contains("--state-dir"), "{line}");
    if !running_as_root() {
        let ro = d.join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        assert!(with(
            d,
            Some("--state-dir"),
            &["--state-dir", ro.to_str().unwrap()]
        )
        .contains("not writable"));
    }
    let proc_dir = with(
        d,
        Some("--state-dir"),
        &["--state-dir", "/proc/xhubd-state"],
    );
    assert!(proc_dir.contains("--state-dir"), "{proc_dir}");
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn a_file_that_is_not_a_socket_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sock");
    std::fs::write(&path, "precious").unwrap();
    let line = with(dir.path(), None, &[]);
    assert!(line.contains("not a socket"), "{line}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_left_alone() {
    let up = Upstream::start();
    let mut first = Xhubd::start(Options::new(&up.url("/")));
    let Target::Unix(sock) = first.target.clone() else {
        unreachable!()
    };
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "default socket mode");

    // A second daemon on the same socket refuses to start.
    let mut args: Vec<String> = first.args.clone();
    let state = args.iter().position(|a| a == "--state-dir").unwrap();
    args[state + 1] = first.dir.path().join("other-state").display().to_string();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(fails(&refs).contains("another process is listening"));

    // After SIGKILL the socket file stays behind; the next start replaces it.
    first.kill9();
    assert!(is_socket(&sock));
    first.spawn();
    assert_eq!(first.target.post_signed(&page_event(1)).status, 200);
}

#[test]
fn socket_mode_can_be_changed() {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")).arg("--socket-mode").arg("0600"));
    let Target::Unix(sock) = x.target.clone() else {
        unreachable!()
    };
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn two_daemons_never_share_a_state_dir() {
    let up = Upstream::start();
    let first = Xhubd::start(Options::new(&up.url("/")));
    let mut args = first.args.clone();
    let listen = args.iter().position(|a| a == "--listen").unwrap();
    args[listen + 1] = format!("unix:{}/second.sock", first.dir.path().display());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(fails(&refs).contains("in use by another xhubd"));
}

#[test]
fn sign_prints_the_header_meta_would_send() {
    let body = b"The quick brown fox jumps over the lazy dog";
    let (code, out, _) = run_xhubd(&["sign", "--secret", "key"], Some(body));
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, body).unwrap();
    let (code, from_file, _) =
        run_xhubd(&["sign", "--secret", "key", file.to_str().unwrap()], None);
    assert_eq!(code, 0);
    assert_eq!(from_file, out);
    let (code, _, err) = run_xhubd(&["sign", "--secret", "key", "/no/such/file"], None);
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/file"));
}

#[test]
fn secrets_come_from_the_environment_and_help_hides_them() {
    let (code, out, _) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xhubd"))
            .args(["serve", "--help"])
            .env("XHUBD_APP_SECRET", APP_SECRET)
            .env("XHUBD_VERIFY_TOKEN", VERIFY_TOKEN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            (),
        )
    };
    assert_eq!(code, Some(0));
    assert!(out.contains("--app-secret"));
    assert!(
        !out.contains(APP_SECRET) && !out.contains(VERIFY_TOKEN),
        "help shows a secret"
    );

    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("env.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xhubd"))
        .args(["serve", "--listen", &format!("unix:{}", sock.display())])
        .env("XHUBD_APP_SECRET", format!("{OTHER_SECRET},{APP_SECRET}"))
        .env("XHUBD_VERIFY_TOKEN", VERIFY_TOKEN)
        .env("XHUBD_UPSTREAM", up.url("/"))
        .env("STATE_DIRECTORY", dir.path().join("state"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(std::time::Duration::from_secs(10), "the socket", || {
        listening(&sock)
    });
    let t = Target::Unix(sock);
    assert_eq!(t.post_signed(&page_event(1)).status, 200);
    assert_eq!(
        t.get(&format!(
            "/?hub.mode=subscribe&hub.challenge=5&hub.verify_token={VERIFY_TOKEN}"
        ))
        .body,
        b"5"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_start_up_error_comes_after_every_line_logged_before_it() {
    // The listen address is taken, found once the spool is open: the spool's writer is
    // stopped, every line logged is written (the writer's last at debug), and only
    // then the one-line error, last.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut args = base(dir.path());
    let listen = args.iter().position(|a| a == "--listen").unwrap() + 1;
    args[listen] = format!("127.0.0.1:{port}");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = run_xhubd_with(&refs, None, &[("XHUBD_LOG", "debug")]);
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with("xhubd: ") && last.contains(&port.to_string()),
        "the error is the last line: {stderr}"
    );
    assert!(
        lines.iter().any(|l| l.contains("spool writer stopped")),
        "the writer's last line is written before the error: {stderr}"
    );
    assert_eq!(lines.iter().filter(|l| l.starts_with("xhubd: ")).count(), 1);
    drop(taken);
}
