//! The TLS settings of an `https://` destination: a CA bundle trusted instead of the
//! system's roots (`ca_file`), and a client certificate to present (`client_cert_file`
//! with `client_key_file`); for the flags' destination, `--upstream-ca-file`,
//! `--upstream-client-cert-file` and `--upstream-client-key-file`. The files are read
//! when the configuration is validated, at start and at each reload, into the rustls
//! client configuration the destination's connections use ([`crate::tls`] builds it):
//! the backend's certificate must chain to those CAs, be valid now and name the URL's
//! host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use url::Url;

use crate::tls::{client_config, ClientIdentity, Roots, ServerCheck};

/// The names of the three settings, for errors: the config file's keys or the flags.
#[derive(Debug, Clone, Copy)]
pub struct TlsOptions {
    /// `ca_file`, `--upstream-ca-file`.
    pub ca: &'static str,
    /// `client_cert_file`, `--upstream-client-cert-file`.
    pub client_cert: &'static str,
    /// `client_key_file`, `--upstream-client-key-file`.
    pub client_key: &'static str,
}

/// A `[[route.destination]]`'s keys.
pub const FILE_KEYS: TlsOptions = TlsOptions {
    ca: "ca_file",
    client_cert: "client_cert_file",
    client_key: "client_key_file",
};

/// The flags' destination's options.
pub const FLAGS: TlsOptions = TlsOptions {
    ca: "--upstream-ca-file",
    client_cert: "--upstream-client-cert-file",
    client_key: "--upstream-client-key-file",
};

/// The TLS files a destination names (resolved), any of them absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFiles<'a> {
    /// The CA bundle (PEM) trusted instead of the system's roots.
    pub ca: Option<&'a Path>,
    /// The client certificate chain (PEM, leaf first).
    pub client_cert: Option<&'a Path>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<&'a Path>,
}

/// A destination's TLS settings, loaded. Two are equal when they name the same files
/// and those held the same bytes when read: a reload that finds a certificate renewed
/// on disk gives the destination a new client.
#[derive(Clone)]
pub struct BackendTls {
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    /// SHA-256 over the files' contents, as read before they were parsed (so a file
    /// replaced in between is seen as changed at the next reload, never missed).
    digest: [u8; 32],
    config: Arc<rustls::ClientConfig>,
}

impl BackendTls {
    /// Reads and checks the files `files` names for a destination at `url`. None when
    /// it names none (an `https://` URL then trusts the system's roots). The error
    /// names the option and the file, never the contents: a file that is missing,
    /// unreadable or holds no certificate (or key), a certificate without its key (or
    /// the reverse), a key that is not the certificate's, or any file for an `http://`
    /// URL, which would never use it.
    pub fn load(
        url: &Url,
        files: TlsFiles<'_>,
        options: TlsOptions,
    ) -> anyhow::Result<Option<BackendTls>> {
        let given: Vec<(&Path, &str)> = [
            (files.ca, options.ca),
            (files.client_cert, options.client_cert),
            (files.client_key, options.client_key),
        ]
        .into_iter()
        .filter_map(|(path, option)| path.map(|p| (p, option)))
        .collect();
        let Some((_, first)) = given.first() else {
            return Ok(None);
        };
        if url.scheme() != "https" {
            bail!(
                "{first}: TLS settings apply to an https:// URL only, and this one is {}://",
                url.scheme()
            );
        }
        let identity = match (files.client_cert, files.client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert,
                cert_option: options.client_cert,
                key,
                key_option: options.client_key,
            }),
            (None, None) => None,
            _ => bail!(
                "{} and {} go together: give both or neither",
                options.client_cert,
                options.client_key
            ),
        };
        let mut digest = Sha256::new();
        for (path, option) in &given {
            let bytes = std::fs::read(path)
                .with_context(|| format!("{option}: cannot read {}", path.display()))?;
            digest.update(option.as_bytes());
            digest.update((bytes.len() as u64).to_be_bytes());
            digest.update(&bytes);
        }
        let roots = match files.ca {
            Some(ca) => Roots::Only(ca, options.ca),
            None => Roots::System,
        };
        let config = client_config(ServerCheck::Full(roots), identity)?;
        Ok(Some(BackendTls {
            ca: files.ca.map(Path::to_path_buf),
            client_cert: files.client_cert.map(Path::to_path_buf),
            client_key: files.client_key.map(Path::to_path_buf),
            digest: digest.finalize().into(),
            config: Arc::new(config),
        }))
    }

    /// A copy of the rustls configuration, for a connector (which sets its ALPN).
    pub fn client_config(&self) -> rustls::ClientConfig {
        (*self.config).clone()
    }
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &BackendTls) -> bool {
        self.ca == other.ca
            && self.client_cert == other.client_cert
            && self.client_key == other.client_key
            && self.digest == other.digest
    }
}

impl Eq for BackendTls {}

/// The files only: never the key, nor the configuration that holds it.
impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, a client certificate it signs and that certificate's key, as PEM files in
    /// `dir`; and a key of another certificate.
    fn files(dir: &Path) -> [PathBuf; 4] {
        use rcgen::{CertificateParams, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["client".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        [
            write("ca.pem", ca.pem()),
            write("client.pem", cert.pem()),
            write("client.key", key.serialize_pem()),
            write("other.key", KeyPair::generate().unwrap().serialize_pem()),
        ]
    }

    fn https() -> Url {
        Url::parse("https://backend.internal/hook").unwrap()
    }

    fn error(url: &Url, files: TlsFiles<'_>) -> String {
        format!("{:#}", BackendTls::load(url, files, FILE_KEYS).unwrap_err())
    }

    #[test]
    fn no_file_means_the_system_roots() {
        assert!(BackendTls::load(&https(), TlsFiles::default(), FILE_KEYS)
            .unwrap()
            .is_none());
        let http = Url::parse("http://backend.internal/").unwrap();
        assert!(BackendTls::load(&http, TlsFiles::default(), FILE_KEYS)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_ca_and_a_client_certificate_load() {
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key, _] = files(dir.path());
        let loaded = BackendTls::load(
            &https(),
            TlsFiles {
                ca: Some(&ca),
                client_cert: Some(&cert),
                client_key: Some(&key),
            },
            FILE_KEYS,
        )
        .unwrap()
        .unwrap();
        assert!(loaded.client_config().client_auth_cert_resolver.has_certs());
        let shown = format!("{loaded:?}");
        assert!(shown.contains("client.key") && !shown.contains("PRIVATE KEY"));
        let ca_only = TlsFiles {
            ca: Some(&ca),
            ..TlsFiles::default()
        };
        let ca_only = BackendTls::load(&https(), ca_only, FILE_KEYS)
            .unwrap()
            .unwrap();
        assert!(!ca_only
            .client_config()
            .client_auth_cert_resolver
            .has_certs());
    }

    #[test]
    fn bad_settings_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key, other_key] = files(dir.path());
        let http = Url::parse("http://backend.internal/").unwrap();
        let e = error(
            &http,
            TlsFiles {
                client_cert: Some(&cert),
                client_key: Some(&key),
                ..TlsFiles::default()
            },
        );
        assert!(
            e.starts_with("client_cert_file: ") && e.contains("https://"),
            "{e}"
        );
        for half in [
            TlsFiles {
                client_cert: Some(&cert),
                ..TlsFiles::default()
            },
            TlsFiles {
                client_key: Some(&key),
                ..TlsFiles::default()
            },
        ] {
            let e = error(&https(), half);
            assert!(
                e.contains("client_cert_file and client_key_file go together"),
                "{e}"
            );
        }
        let missing = dir.path().join("missing.pem");
        let e = error(
            &https(),
            TlsFiles {
                ca: Some(&missing),
                ..TlsFiles::default()
            },
        );
        assert!(
            e.starts_with("ca_file: cannot read ") && e.contains("missing.pem"),
            "{e}"
        );
        // A key where the CA bundle belongs: no certificate in it.
        let e = error(
            &https(),
            TlsFiles {
                ca: Some(&key),
                ..TlsFiles::default()
            },
        );
        assert!(e.starts_with("ca_file: no certificate in "), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        let e = error(
            &https(),
            TlsFiles {
                client_cert: Some(&key),
                client_key: Some(&key),
                ..TlsFiles::default()
            },
        );
        assert!(e.starts_with("client_cert_file: no certificate in "), "{e}");
        let e = error(
            &https(),
            TlsFiles {
                client_cert: Some(&cert),
                client_key: Some(&ca),
                ..TlsFiles::default()
            },
        );
        assert!(e.starts_with("client_key_file: no private key in "), "{e}");
        let e = error(
            &https(),
            TlsFiles {
                client_cert: Some(&cert),
                client_key: Some(&other_key),
                ..TlsFiles::default()
            },
        );
        assert!(e.starts_with("client_cert_file/client_key_file ("), "{e}");
        assert!(e.ends_with("): the key is not the certificate's"), "{e}");
        let v1 = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/x509v1"
        ));
        let e = error(
            &https(),
            TlsFiles {
                client_cert: Some(&v1.join("client.pem")),
                client_key: Some(&v1.join("client.key")),
                ..TlsFiles::default()
            },
        );
        assert!(e.contains("it is an X.509 version 1 certificate"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
    }

    #[test]
    fn the_same_files_with_new_contents_are_new_settings() {
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key, _] = files(dir.path());
        let load = || {
            BackendTls::load(
                &https(),
                TlsFiles {
                    ca: Some(&ca),
                    client_cert: Some(&cert),
                    client_key: Some(&key),
                },
                FILE_KEYS,
            )
            .unwrap()
            .unwrap()
        };
        let first = load();
        assert_eq!(first, load());
        // A renewed CA bundle under the same name.
        let renewed = tempfile::tempdir().unwrap();
        std::fs::copy(&files(renewed.path())[0], &ca).unwrap();
        assert_ne!(first, load());
    }
}
