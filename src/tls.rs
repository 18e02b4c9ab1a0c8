//! TLS client settings from files: which CAs to trust and which certificate to present.
//! One builder for every client xhubd makes on an operator's files (`send-test`'s
//! `--cacert`/`--cert`/`--key`, the PostgreSQL spool's `sslrootcert`/`sslcert`/
//! `sslkey`), with rustls and ring; errors name the option and the file.

use std::path::Path;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Which certificate authorities a client trusts.
#[derive(Debug, Clone, Copy)]
pub enum Roots<'a> {
    /// The system's (`/etc/ssl/certs`, through rustls-native-certs).
    System,
    /// The system's and those in a PEM file (named by option `.1`).
    SystemAnd(&'a Path, &'a str),
    /// Only those in a PEM file (named by option `.1`), as libpq's `sslrootcert`.
    Only(&'a Path, &'a str),
}

/// A client certificate chain and its key, PEM files, with the options that named them.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    /// The certificate chain (leaf first).
    pub cert: &'a Path,
    /// Its option's name, for errors.
    pub cert_option: &'a str,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: &'a Path,
    /// Its option's name, for errors.
    pub key_option: &'a str,
}

/// A rustls client configuration (TLS 1.2 and 1.3, ring) trusting `roots` and
/// presenting `identity` when given. Errors name the option and the file that is
/// missing, unreadable or not PEM.
pub fn client_config(
    roots: Roots<'_>,
    identity: Option<ClientIdentity<'_>>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    if matches!(roots, Roots::System | Roots::SystemAnd(..)) {
        store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    }
    if let Roots::SystemAnd(path, option) | Roots::Only(path, option) = roots {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("{option}: cannot read {}", path.display()))?
        {
            store
                .add(cert.with_context(|| format!("{option}: {}", path.display()))?)
                .with_context(|| format!("{option}: {}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            anyhow::bail!("{option}: no certificate in {}", path.display());
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?
        .with_root_certificates(store);
    Ok(match identity {
        Some(id) => {
            let chain = CertificateDer::pem_file_iter(id.cert)
                .with_context(|| format!("{}: cannot read {}", id.cert_option, id.cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}: {}", id.cert_option, id.cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(id.key)
                .with_context(|| format!("{}: cannot read {}", id.key_option, id.key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .with_context(|| format!("{}/{}", id.cert_option, id.key_option))?
        }
        None => builder.with_no_client_auth(),
    })
}
