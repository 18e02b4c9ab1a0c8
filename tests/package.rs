//! The Debian package built by `scripts/package.sh` (which `scripts/test.sh` runs before
//! the tests) holds the binary, both units, the Nginx files, the conffiles, man pages,
//! completions, the Prometheus rules and the Grafana dashboard, and what it ships is
//! what this tree holds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deb() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let version = env!("CARGO_PKG_VERSION");
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    name.starts_with(&format!("xhubd_{version}")) && name.ends_with(".deb")
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        found.len(),
        1,
        "expected one xhubd_{version}_*.deb in {}: build it with `bash scripts/package.sh` (scripts/test.sh does)",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("dpkg-deb (Debian package dpkg)");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One file of the package's data.
fn packaged_file(deb: &Path, path: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(dir.path().join(path))
        .unwrap_or_else(|e| panic!("{path} not in the package: {e}"))
}

#[test]
fn the_package_holds_everything_an_operator_needs() {
    let deb = deb();
    let listing = dpkg_deb(&["-c"], &deb);
    for path in [
        "./usr/bin/xhubd",
        "./usr/lib/systemd/system/xhubd.service",
        "./usr/lib/systemd/system/xhubd.socket",
        "./etc/default/xhubd",
        "./etc/xhubd/xhubd.toml",
        "./etc/nginx/sites-available/xhubd",
        "./etc/nginx/snippets/xhubd-proxy.conf",
        "./usr/share/man/man1/xhubd.1.gz",
        "./usr/share/man/man1/xhubd-serve.1.gz",
        "./usr/share/man/man1/xhubd-sign.1.gz",
        "./usr/share/bash-completion/completions/xhubd",
        "./usr/share/zsh/vendor-completions/_xhubd",
        "./usr/share/fish/vendor_completions.d/xhubd.fish",
        "./usr/share/doc/xhubd/README.md",
        "./usr/share/xhubd/prometheus/xhubd.rules.yml",
        "./usr/share/xhubd/prometheus/xhubd.rules.test.yml",
        "./usr/share/xhubd/grafana/xhubd.json",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing from the package:\n{listing}"
        );
    }
    assert!(
        !listing.contains("sites-enabled"),
        "the Nginx site is shipped available, not enabled"
    );

    let control = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles")
        .output()
        .unwrap();
    let conffiles = String::from_utf8_lossy(&control.stdout);
    assert!(
        conffiles.contains("/etc/default/xhubd"),
        "conffiles: {conffiles}"
    );
    assert!(
        conffiles.contains("/etc/nginx/sites-available/xhubd"),
        "conffiles: {conffiles}"
    );
    assert!(
        conffiles.contains("/etc/xhubd/xhubd.toml"),
        "conffiles: {conffiles}"
    );
    // The config file may hold secrets: not readable by others.
    let mode = listing
        .lines()
        .find(|l| l.ends_with("./etc/xhubd/xhubd.toml"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert_eq!(mode, "-rw-r-----", "{listing}");
    // /etc/default/xhubd sets nothing: with routes, a set XHUBD_UPSTREAM would be refused.
    let default = String::from_utf8(
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/xhubd.default")).unwrap(),
    )
    .unwrap();
    assert!(
        default.lines().all(|l| l.is_empty() || l.starts_with('#')),
        "every line of /etc/default/xhubd is commented"
    );
    let postinst = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("postinst")
        .output()
        .unwrap();
    let postinst = String::from_utf8_lossy(&postinst.stdout);
    assert!(
        postinst.contains("install -d -m 0750 -o root -g xhubd /etc/xhubd")
            && postinst.contains("addgroup --system xhubd"),
        "postinst creates /etc/xhubd for the group the service reads it with: {postinst}"
    );
    // addgroup comes with adduser, which is not Essential: the package depends on it.
    let fields = Command::new("dpkg-deb")
        .arg("-f")
        .arg(&deb)
        .arg("Depends")
        .output()
        .unwrap();
    let depends = String::from_utf8_lossy(&fields.stdout);
    assert!(
        depends.split(',').any(|d| d.trim() == "adduser"),
        "Depends: {depends}"
    );
    // systemd refuses to start a DynamicUser= unit (status 217/USER) whose user name,
    // by default the unit's name, is already a static group's: the package's group
    // `xhubd` must not be the dynamic user's name.
    let unit =
        String::from_utf8(packaged_file(&deb, "usr/lib/systemd/system/xhubd.service")).unwrap();
    let setting = |name: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::trim)
            .map(str::to_owned)
    };
    assert_eq!(setting("DynamicUser").as_deref(), Some("yes"));
    let user = setting("User").unwrap_or_else(|| "xhubd".to_owned());
    let groups: Vec<&str> = postinst
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(3)
        .filter(|w| w[0] == "addgroup" && w[1] == "--system")
        .map(|w| w[2])
        .collect();
    assert_eq!(groups, ["xhubd"], "{postinst}");
    assert!(
        !groups.contains(&user.as_str()),
        "the dynamic user {user:?} has the name of the package's static group"
    );
    assert_eq!(setting("SupplementaryGroups").as_deref(), Some("xhubd"));

    // What is shipped is what this tree holds.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (packaged, ours) in [
        (
            "usr/lib/systemd/system/xhubd.service",
            "systemd/xhubd.service",
        ),
        (
            "usr/lib/systemd/system/xhubd.socket",
            "systemd/xhubd.socket",
        ),
        ("etc/nginx/sites-available/xhubd", "nginx/xhubd.conf"),
        ("etc/default/xhubd", "debian/xhubd.default"),
        ("etc/xhubd/xhubd.toml", "debian/xhubd.toml"),
        (
            "usr/share/xhubd/prometheus/xhubd.rules.yml",
            "contrib/prometheus/xhubd.rules.yml",
        ),
        (
            "usr/share/xhubd/prometheus/xhubd.rules.test.yml",
            "contrib/prometheus/xhubd.rules.test.yml",
        ),
        (
            "usr/share/xhubd/grafana/xhubd.json",
            "contrib/grafana/xhubd.json",
        ),
    ] {
        assert_eq!(
            packaged_file(&deb, packaged),
            std::fs::read(root.join(ours)).unwrap(),
            "{packaged} differs from {ours}: rebuild the package"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("xhubd-serve.1.gz");
    std::fs::write(
        &page,
        packaged_file(&deb, "usr/share/man/man1/xhubd-serve.1.gz"),
    )
    .unwrap();
    let man = Command::new("zcat").arg(&page).output().unwrap();
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.contains("XHUBD_UPSTREAM") && man.contains(".SH SIGNALS"),
        "the packaged man page documents the options and the signals"
    );
}

/// The man pages have the sections an operator looks for, each page its own exit
/// statuses, and only the daemon's a SIGNALS section.
#[test]
fn man_pages_tell_environment_files_exit_status_and_signals() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_xhubd"))
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let serve = page("xhubd-serve.1");
    for needle in [
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH SIGNALS",
        "XHUBD_LOG",
        "CREDENTIALS_DIRECTORY",
        "/etc/default/xhubd",
        "/etc/xhubd/xhubd.toml",
        "SIGHUP",
        "SIGTERM",
        "replay",
    ] {
        assert!(serve.contains(needle), "xhubd-serve.1 lacks {needle}");
    }
    assert!(page("xhubd.1").contains(".SH SIGNALS"));
    let sign = page("xhubd-sign.1");
    assert!(sign.contains(".SH \"EXIT STATUS\"") && sign.contains(".SH FILES"));
    assert!(!sign.contains(".SH SIGNALS"), "sign is not a daemon");
    assert!(page("xhubd-send-test.1").contains("A step failed"));
    assert!(page("xhubd-check.1").contains("Every check passed"));
}

#[test]
fn the_packaged_binary_runs() {
    let deb = deb();
    let dir = tempfile::tempdir().unwrap();
    assert!(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.path())
        .status()
        .unwrap()
        .success());
    let out = Command::new(dir.path().join("usr/bin/xhubd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("xhubd {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The postinst's upgrade of a one-app setup from the releases whose unit loaded the
/// secrets as credentials: run on a copy of /etc in a temporary directory (the group
/// and ownership commands stubbed), twice, as dpkg may.
#[test]
fn an_upgraded_one_app_setup_keeps_its_secrets() {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(etc.join("xhubd")).unwrap();
    std::fs::create_dir_all(etc.join("default")).unwrap();
    std::fs::write(etc.join("xhubd/app_secret"), "s\n").unwrap();
    std::fs::write(etc.join("xhubd/verify_token"), "t\n").unwrap();
    std::fs::write(
        etc.join("default/xhubd"),
        "XHUBD_UPSTREAM=http://127.0.0.1:8080/\n",
    )
    .unwrap();
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/postinst"))
            .unwrap()
            .replace("/etc/", &format!("{}/", etc.display()))
            .replace("getent group xhubd", "true")
            .replace("addgroup --system xhubd", "true")
            .replace("-o root -g xhubd ", "")
            .replace("chgrp xhubd", "true");
    let path = root.path().join("postinst");
    std::fs::write(&path, script).unwrap();
    for _ in 0..2 {
        let status = Command::new("sh")
            .arg(&path)
            .arg("configure")
            .status()
            .unwrap();
        assert!(status.success());
    }
    let default = std::fs::read_to_string(etc.join("default/xhubd")).unwrap();
    let app = format!("XHUBD_APP_SECRET_FILE={}/xhubd/app_secret", etc.display());
    let token = format!(
        "XHUBD_VERIFY_TOKEN_FILE={}/xhubd/verify_token",
        etc.display()
    );
    assert_eq!(default.matches(&app).count(), 1, "{default}");
    assert_eq!(default.matches(&token).count(), 1, "{default}");
    // A setup with routes (no XHUBD_UPSTREAM) is left alone.
    std::fs::write(etc.join("default/xhubd"), "#XHUBD_UPSTREAM=x\n").unwrap();
    assert!(Command::new("sh")
        .arg(&path)
        .arg("configure")
        .status()
        .unwrap()
        .success());
    assert_eq!(
        std::fs::read_to_string(etc.join("default/xhubd")).unwrap(),
        "#XHUBD_UPSTREAM=x\n"
    );
}

/// The postrm on purge: the enabled site, whose target dpkg has just deleted with the
/// conffiles, goes (else Nginx's next reload fails); an enabled site whose file is still
/// there (a plain remove, or a site of the operator's own) and the spool stay. Run on a
/// copy of /etc and /var/lib in a temporary directory.
#[test]
fn purging_removes_the_dangling_site_and_keeps_the_spool() {
    let deb = deb();
    let packaged = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("postrm")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&packaged.stdout).contains("/etc/nginx/sites-enabled/xhubd"),
        "the package's postrm is debian/postrm"
    );
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    let var = root.path().join("var/lib/");
    let enabled = etc.join("nginx/sites-enabled");
    let available = etc.join("nginx/sites-available");
    let spool = var.join("private/xhubd");
    for d in [&enabled, &available, &spool] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(spool.join("spool.db"), "events").unwrap();
    let site = enabled.join("xhubd");
    std::os::unix::fs::symlink("../sites-available/xhubd", &site).unwrap();
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/postrm"))
            .unwrap()
            .replace("/etc/", &format!("{}/", etc.display()))
            .replace("/var/lib/", &format!("{}/", var.display()));
    let path = root.path().join("postrm");
    std::fs::write(&path, script).unwrap();
    let run = |arg: &str| {
        let out = Command::new("sh").arg(&path).arg(arg).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // The site file is there: neither remove nor purge touches the link.
    std::fs::write(available.join("xhubd"), "server {}").unwrap();
    run("remove");
    run("purge");
    assert!(
        site.symlink_metadata().is_ok(),
        "a working enabled site stays"
    );

    // dpkg deleted the conffile: purge removes the dangling link, keeps the spool.
    std::fs::remove_file(available.join("xhubd")).unwrap();
    run("remove");
    assert!(site.symlink_metadata().is_ok(), "remove leaves it to purge");
    let said = run("purge");
    assert!(
        site.symlink_metadata().is_err(),
        "the dangling site is gone"
    );
    assert!(
        said.contains("reload Nginx") && said.contains("is kept"),
        "{said}"
    );
    assert_eq!(std::fs::read(spool.join("spool.db")).unwrap(), b"events");
    run("purge");
    // A dangling link of the same name to another file is not the package's: kept.
    std::os::unix::fs::symlink("../sites-available/elsewhere", &site).unwrap();
    run("purge");
    assert!(site.symlink_metadata().is_ok(), "another site's link stays");
}
