//! Secrets (App Secrets, verify tokens, the admin token): loaded from a flag, the
//! environment, a file or a systemd credential by one rule for every command, never
//! printed, compared in constant time.
//!
//! The rule (DESIGN.md): trailing whitespace (spaces, tabs, CR, LF) is removed from every
//! value, from every source; a value that is empty after that is refused. A list of App
//! Secrets is split at commas and line ends, each item trimmed, blank items skipped.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret value. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the bytes of a secret.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// The secret's bytes, for keying an HMAC.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Compares `candidate` with this secret in constant time. Both sides are hashed
    /// first so that the time taken does not depend on the secret's length either.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let ours = Sha256::digest(&self.0);
        let theirs = Sha256::digest(candidate);
        ours.ct_eq(&theirs).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where a secret comes from: given directly (flag or environment) or in a file.
#[derive(Debug)]
pub enum SecretSource<'a> {
    /// The value itself, from a flag or an environment variable.
    Value(&'a str),
    /// A file holding the value (a file option, or a systemd credential).
    File(PathBuf),
}

/// Picks the one source of a secret: the value (`flag`), or the file (`flag-file`), or
/// else the systemd credential `credential` (`LoadCredential=`, in
/// `$CREDENTIALS_DIRECTORY`). `None` when none is given; both the value and the file
/// is an error naming `flag`.
pub fn pick<'a>(
    flag: &str,
    value: Option<&'a str>,
    file: Option<&'a Path>,
    credential: &str,
) -> anyhow::Result<Option<SecretSource<'a>>> {
    Ok(match (value, file) {
        (Some(_), Some(_)) => bail!("give {flag} or {flag}-file, not both"),
        (Some(v), None) => Some(SecretSource::Value(v)),
        (None, Some(f)) => Some(SecretSource::File(f.to_path_buf())),
        (None, None) => std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|dir| PathBuf::from(dir).join(credential))
            .filter(|path| path.exists())
            .map(SecretSource::File),
    })
}

/// Like [`pick`], for a secret the command cannot do without.
pub fn require<'a>(
    flag: &str,
    value: Option<&'a str>,
    file: Option<&'a Path>,
    credential: &str,
) -> anyhow::Result<SecretSource<'a>> {
    pick(flag, value, file, credential)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{flag} or {flag}-file is required (or a systemd credential {credential} in $CREDENTIALS_DIRECTORY)"
        )
    })
}

/// Reads a source to text, as given (the rule is applied by the loaders).
fn read_source(source: &SecretSource<'_>, what: &str) -> anyhow::Result<String> {
    match source {
        SecretSource::Value(v) => Ok((*v).to_owned()),
        SecretSource::File(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} file {}", path.display())),
    }
}

/// Trailing whitespace as the rule removes it.
fn trim_trailing(text: &str) -> &str {
    text.trim_end_matches([' ', '\t', '\r', '\n'])
}

/// Loads one token (a verify token, the admin token; `what` names it in errors):
/// trailing whitespace removed, not empty.
pub fn load_token(source: &SecretSource<'_>, what: &str) -> anyhow::Result<Secret> {
    let text = read_source(source, what)?;
    let token = trim_trailing(&text);
    if token.is_empty() {
        bail!("the {what} is empty");
    }
    Ok(Secret::new(token.as_bytes().to_vec()))
}

/// Loads the verify token.
pub fn load_verify_token(source: &SecretSource<'_>) -> anyhow::Result<Secret> {
    load_token(source, "verify token")
}

/// Loads the App Secrets: a comma-separated list, or (in a file) one per line or
/// comma-separated. Each is trimmed; blank items are skipped; at least one must remain.
pub fn load_app_secrets(source: &SecretSource<'_>) -> anyhow::Result<Vec<Secret>> {
    let text = read_source(source, "App Secret")?;
    app_secrets_of(text.split([',', '\n']))
}

/// App Secrets from items already split: each is trimmed; blank items are skipped; at
/// least one must remain.
pub fn app_secrets_of<'a>(items: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Vec<Secret>> {
    let secrets: Vec<Secret> = items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Secret::new(s.as_bytes().to_vec()))
        .collect();
    if secrets.is_empty() {
        bail!("no App Secret given: the value is empty");
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new(b"hunter2".to_vec());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn matches_only_the_exact_value() {
        let s = Secret::new(b"token".to_vec());
        assert!(s.matches(b"token"));
        assert!(!s.matches(b"token "));
        assert!(!s.matches(b"toke"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn app_secrets_split_on_commas_and_lines() {
        let list = load_app_secrets(&SecretSource::Value("a, b,,c")).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[1].expose(), b"b");
        assert!(load_app_secrets(&SecretSource::Value(" , ")).is_err());
    }

    #[test]
    fn every_source_loses_trailing_whitespace_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        for text in [
            "tok en",
            "tok en\n",
            "tok en\r\n",
            "tok en  \n",
            "tok en\t\n\n",
        ] {
            std::fs::write(&path, text).unwrap();
            let from_file = load_verify_token(&SecretSource::File(path.clone())).unwrap();
            let from_value = load_verify_token(&SecretSource::Value(text)).unwrap();
            assert!(from_file.matches(b"tok en"), "{text:?}");
            assert!(from_value.matches(b"tok en"), "{text:?}");
        }
        // Leading whitespace is part of a token.
        assert!(load_verify_token(&SecretSource::Value(" t"))
            .unwrap()
            .matches(b" t"));
        std::fs::write(&path, "s1\ns2\n").unwrap();
        let list = load_app_secrets(&SecretSource::File(path.clone())).unwrap();
        assert_eq!(list.len(), 2);
        let list = load_app_secrets(&SecretSource::Value("s3cret\n")).unwrap();
        assert_eq!(list[0].expose(), b"s3cret");
        let missing = dir.path().join("missing");
        let err = load_verify_token(&SecretSource::File(missing)).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read the verify token file"));
    }

    #[test]
    fn empty_after_the_rule_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n\n").unwrap();
        for source in [
            SecretSource::File(path.clone()),
            SecretSource::Value(""),
            SecretSource::Value(" \r\n"),
        ] {
            let err = load_verify_token(&source).unwrap_err();
            assert!(format!("{err:#}").contains("empty"), "{source:?}");
            assert!(load_app_secrets(&source).is_err(), "{source:?}");
        }
    }

    #[test]
    fn one_source_at_a_time() {
        let p = Path::new("/x");
        assert!(pick("--verify-token", Some("a"), Some(p), "verify_token").is_err());
        assert!(matches!(
            pick("--verify-token", None, Some(p), "verify_token"),
            Ok(Some(SecretSource::File(_)))
        ));
        let err = require("--app-secret", None, None, "no_such_credential").unwrap_err();
        assert!(err
            .to_string()
            .contains("--app-secret or --app-secret-file"));
    }
}
