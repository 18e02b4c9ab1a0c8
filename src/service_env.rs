//! What `xhubd check` reads so that it checks what `xhubd.service` will run with: the
//! unit's config file (`Environment=XHUBD_CONFIG=/etc/xhubd/xhubd.toml`) and its file of
//! variables (`EnvironmentFile=-/etc/default/xhubd`), as systemd would pass them.

use std::path::Path;

use anyhow::Context;

/// The file of variables the packaged unit reads (`EnvironmentFile=`).
pub const ENVIRONMENT_FILE: &str = "/etc/default/xhubd";

/// The config file the packaged unit names (`Environment=XHUBD_CONFIG=`).
pub const UNIT_CONFIG: &str = "/etc/xhubd/xhubd.toml";

/// Sets, in this process's environment, each `XHUBD_*` variable of `file` that was not
/// set before (a flag still wins over it, as over any variable; within the file the last
/// assignment of a name wins, as in systemd). When the file exists (a packaged install)
/// and neither `config_given` nor the file names a config file, `XHUBD_CONFIG` becomes
/// [`UNIT_CONFIG`] whether or not it exists, as the unit's `Environment=` does (its
/// `EnvironmentFile=` overrides it), so a missing one fails as the service would.
/// Returns the report lines saying what was read; a missing file is not an error (the
/// unit's `-` prefix) and then nothing is assumed; an unreadable one is. Call before any
/// thread starts.
///
/// The syntax is the common part of systemd's for `EnvironmentFile=`: `NAME=value`
/// lines, `#` and `;` comments, a value optionally in single or double quotes (no
/// escapes, no continued lines).
pub fn adopt(file: &Path, config_given: bool) -> anyhow::Result<Vec<String>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(vec![format!(
                "ok   {}: not found, nothing read (the options as given are checked)",
                file.display()
            )]);
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                "cannot read {} (the service's variables; run as root, or --environment-file none)",
                file.display()
            )
            })
        }
    };
    let mut before: Vec<&str> = Vec::new();
    for (name, _) in assignments(&text) {
        if std::env::var_os(name).is_some() && !before.contains(&name) {
            before.push(name);
        }
    }
    let mut taken: Vec<&str> = Vec::new();
    for (name, value) in assignments(&text) {
        if !before.contains(&name) {
            std::env::set_var(name, value);
            if !taken.contains(&name) {
                taken.push(name);
            }
        }
    }
    let mut report =
        vec![match (taken.is_empty(), before.is_empty()) {
            (true, true) => format!(
                "ok   {}: no variable set (every line commented)",
                file.display()
            ),
            // Names only: values may be secrets.
            (false, true) => format!("ok   {}: read {}", file.display(), taken.join(", ")),
            (_, false) => {
                format!(
            "ok   {}: read {}; kept this shell's {} (unset them to check the service's values)",
            file.display(),
            if taken.is_empty() { "nothing".into() } else { taken.join(", ") },
            before.join(", ")
        )
            }
        }];
    if !config_given && std::env::var_os("XHUBD_CONFIG").is_none() {
        std::env::set_var("XHUBD_CONFIG", UNIT_CONFIG);
        // Whether that file is there and valid is the configuration's line, below.
        report.push(format!(
            "ok   {}: names no config file; checking the one the unit names, {UNIT_CONFIG}",
            file.display()
        ));
    }
    Ok(report)
}

/// The `XHUBD_*` assignments of an environment file, in order.
fn assignments(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            return None;
        }
        let (name, value) = line.split_once('=')?;
        let name = name.trim();
        let valid = name.starts_with("XHUBD_")
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return None;
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
            .unwrap_or(value);
        Some((name, unquoted))
    })
}

#[cfg(test)]
mod tests {
    use super::assignments;

    #[test]
    fn reads_systemd_environment_file_syntax() {
        let text = "# comment\n; other\n\nXHUBD_UPSTREAM=http://a/\n  XHUBD_LOG_FORMAT = \"json\"\nXHUBD_X='a b'\nPATH=/bin\n#XHUBD_OFF=1\nnot an assignment\n";
        let found: Vec<_> = assignments(text).collect();
        assert_eq!(
            found,
            vec![
                ("XHUBD_UPSTREAM", "http://a/"),
                ("XHUBD_LOG_FORMAT", "json"),
                ("XHUBD_X", "a b"),
            ]
        );
    }
}
