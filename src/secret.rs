//! Secrets (App Secrets, the verify token): loaded from a flag, the environment or a
//! file, never printed, compared in constant time.

use std::fmt;
use std::path::Path;

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
pub enum SecretSource<'a> {
    /// The value itself, from a flag or an environment variable.
    Value(&'a str),
    /// A file holding the value.
    File(&'a Path),
}

/// Reads a source to text. A trailing newline (`\n` or `\r\n`) in a file is ignored.
pub fn read_source(source: &SecretSource<'_>, what: &str) -> anyhow::Result<String> {
    match source {
        SecretSource::Value(v) => Ok((*v).to_owned()),
        SecretSource::File(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
            Ok(text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text)
                .to_owned())
        }
    }
}

/// Loads the verify token: one value, not empty.
pub fn load_verify_token(source: &SecretSource<'_>) -> anyhow::Result<Secret> {
    let text = read_source(source, "verify token")?;
    if text.is_empty() {
        bail!("the verify token is empty");
    }
    Ok(Secret::new(text.into_bytes()))
}

/// Loads the App Secrets: a comma-separated list, or (in a file) one per line or
/// comma-separated. Blank items are ignored; at least one must remain.
pub fn load_app_secrets(source: &SecretSource<'_>) -> anyhow::Result<Vec<Secret>> {
    let text = read_source(source, "App Secret")?;
    let secrets: Vec<Secret> = text
        .split([',', '\n'])
        .map(|s| s.trim())
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
    fn files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "tok en\r\n").unwrap();
        let t = load_verify_token(&SecretSource::File(&path)).unwrap();
        assert!(t.matches(b"tok en"));
        std::fs::write(&path, "s1\ns2\n").unwrap();
        let list = load_app_secrets(&SecretSource::File(&path)).unwrap();
        assert_eq!(list.len(), 2);
        let missing = dir.path().join("missing");
        let err = load_verify_token(&SecretSource::File(&missing)).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read the verify token file"));
    }
}
