//! What `xhubd check` reads so that it checks what `xhubd.service` will run with: the
//! unit's config file (`Environment=XHUBD_CONFIG=/etc/xhubd/xhubd.toml`) and its file of
//! variables (`EnvironmentFile=-/etc/default/xhubd`), as systemd would pass them.

use std::path::Path;

use anyhow::Context;

/// The file of variables the packaged unit reads (`EnvironmentFile=`).
pub const ENVIRONMENT_FILE: &str = "/etc/default/xhubd";

/// The config file the packaged unit names (`Environment=XHUBD_CONFIG=`).
pub const UNIT_CONFIG: &str = "/etc/xhubd/xhubd.toml";

/// Sets, in this process's environment, each `XHUBD_*` variable of `file` that is not set
/// already (a flag still wins over it, as over any variable), then `XHUBD_CONFIG` to
/// [`UNIT_CONFIG`] when neither `config_given` nor the file set one and it exists: what
/// systemd does for the unit (its `EnvironmentFile=` overrides its `Environment=`).
/// Returns the report lines saying what was read; a missing file is not an error (the
/// unit's `-` prefix), an unreadable one is. Call before any thread starts.
///
/// The syntax is systemd's for `EnvironmentFile=`: `NAME=value` lines, `#` and `;`
/// comments, a value optionally in single or double quotes.
pub fn adopt(file: &Path, config_given: bool) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let mut names = Vec::new();
            for (name, value) in assignments(&text) {
                if std::env::var_os(name).is_none() {
                    std::env::set_var(name, value);
                    names.push(name);
                }
            }
            report.push(if names.is_empty() {
                format!(
                    "ok   {}: no variable set (every line commented)",
                    file.display()
                )
            } else {
                // Names only: values may be secrets.
                format!("ok   {}: read {}", file.display(), names.join(", "))
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.push(format!("ok   {}: not found, nothing read", file.display()));
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                "cannot read {} (the service's variables; run as root, or --environment-file none)",
                file.display()
            )
            })
        }
    }
    if !config_given
        && std::env::var_os("XHUBD_CONFIG").is_none()
        && Path::new(UNIT_CONFIG).exists()
    {
        std::env::set_var("XHUBD_CONFIG", UNIT_CONFIG);
        report.push(format!(
            "ok   {UNIT_CONFIG}: the service's config file, checked"
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
