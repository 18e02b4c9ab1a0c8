//! One rule for every secret and token, from every source, in every command: trailing
//! whitespace (spaces, tabs, CR, LF) removed, empty refused with exit 2. What `sign`,
//! `send-test` and `check` accept is what the daemon accepts.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Runs the binary with `args` and extra environment, returning (status, stdout,
/// stderr); the secrets' environment variables are only those given.
fn xhubd(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_xhubd"))
        .args(args)
        .env_remove("XHUBD_APP_SECRET")
        .env_remove("XHUBD_VERIFY_TOKEN")
        .env_remove("XHUBD_UPSTREAM")
        .env_remove("STATE_DIRECTORY")
        .env_remove("CREDENTIALS_DIRECTORY")
        // check reads the machine's /etc/default/xhubd otherwise.
        .env("XHUBD_ENVIRONMENT_FILE", "none")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before reading its input closes the pipe: that is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_no_secret("xhubd's output", &format!("{stdout}{stderr}"));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn verify_query(token: &str) -> String {
    format!("/webhook?hub.mode=subscribe&hub.challenge=4242&hub.verify_token={token}")
}

#[test]
fn sign_and_send_test_load_secrets_as_the_daemon_does() {
    let up = Upstream::start();
    let x = Xhubd::start(Options::new(&up.url("/")).tcp());
    let body = page_event(1);
    let with_newline = format!("{APP_SECRET}\n");
    // The environment, and a file holding the secret and trailing blanks.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{APP_SECRET}  \r\n\n")).unwrap();
    let file = file.display().to_string();
    let signed_env = xhubd(&["sign"], &[("XHUBD_APP_SECRET", &with_newline)], &body);
    let signed_file = xhubd(&["sign", "--secret-file", &file], &[], &body);
    for (code, out, err) in [signed_env, signed_file] {
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), sign(APP_SECRET, &body));
        let answer = x.target.request(
            "POST",
            "/webhook",
            &[("X-Hub-Signature-256", out.trim())],
            &body,
        );
        assert_eq!(answer.status, 200);
    }
    // An empty secret is refused, as serve refuses it.
    for args in [&["sign", "--secret", ""][..], &["sign", "--secret", " \n"]] {
        let (code, out, err) = xhubd(args, &[], &body);
        assert_eq!((code, out.as_str()), (2, ""), "{err}");
        assert!(err.contains("empty") && err.lines().count() == 1, "{err}");
    }

    let Target::Tcp(addr) = &x.target else {
        unreachable!()
    };
    let url = format!("http://{addr}/webhook");
    let token_newline = format!("{VERIFY_TOKEN}\n");
    let (code, out, err) = xhubd(
        &["send-test", "--url", &url],
        &[
            ("XHUBD_APP_SECRET", &with_newline),
            ("XHUBD_VERIFY_TOKEN", &token_newline),
        ],
        b"",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("all steps passed"), "{out}");
    // From files, with no secret on the command line or in the environment.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{VERIFY_TOKEN} \n")).unwrap();
    let (code, out, err) = xhubd(
        &[
            "send-test",
            "--url",
            &url,
            "--app-secret-file",
            &file,
            "--verify-token-file",
            &token_file.display().to_string(),
        ],
        &[],
        b"",
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_verify_token_with_trailing_whitespace_verifies_from_every_source() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{VERIFY_TOKEN}  \n")).unwrap();
    let file = file.display().to_string();
    let spaced = format!("{VERIFY_TOKEN} \r\n");
    let starts = [
        Options::new(&up.url("/"))
            .omit("--verify-token")
            .arg("--verify-token")
            .arg(&spaced),
        Options::new(&up.url("/"))
            .omit("--verify-token")
            .env("XHUBD_VERIFY_TOKEN", &spaced),
        Options::new(&up.url("/"))
            .omit("--verify-token")
            .arg("--verify-token-file")
            .arg(&file),
    ];
    for opts in starts {
        let x = Xhubd::start(opts);
        let answer = x.target.get(&verify_query(VERIFY_TOKEN));
        assert_eq!((answer.status, answer.text()), (200, "4242".to_owned()));
        assert_eq!(x.target.get(&verify_query("wrong")).status, 403);
    }
    // check says ok for what serve accepts, and for what it refuses it fails.
    let state = dir.path().join("state");
    let check = |token_file: &str| {
        xhubd(
            &[
                "check",
                "--upstream",
                &up.url("/"),
                "--verify-token-file",
                token_file,
                "--app-secret",
                APP_SECRET,
                "--state-dir",
                &state.display().to_string(),
            ],
            &[],
            b"",
        )
    };
    let (code, out, _) = check(&file);
    assert_eq!(code, 0, "{out}");
    let blank = dir.path().join("blank");
    std::fs::write(&blank, "\n\n").unwrap();
    let (code, out, _) = check(&blank.display().to_string());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("FAIL configuration") && out.contains("empty"),
        "{out}"
    );
    assert!(!state.exists(), "check creates nothing");
}

#[test]
fn a_token_file_of_newlines_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank");
    std::fs::write(&blank, "\n\n").unwrap();
    let state = dir.path().join("state");
    let (code, _, err) = xhubd(
        &[
            "serve",
            "--listen",
            &format!("unix:{}", dir.path().join("s.sock").display()),
            "--upstream",
            "http://127.0.0.1:9/",
            "--verify-token-file",
            &blank.display().to_string(),
            "--app-secret",
            APP_SECRET,
            "--state-dir",
            &state.display().to_string(),
        ],
        &[],
        b"",
    );
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("verify token") && err.contains("empty"),
        "{err}"
    );
}
