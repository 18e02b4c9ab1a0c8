//! TLS client settings from files: which CAs to trust, how much of the server's
//! certificate to check, and which certificate to present. One builder for every
//! client xhubd makes on an operator's files (`send-test`'s `--cacert`/`--cert`/`--key`,
//! the PostgreSQL spool's `sslrootcert`/`sslcert`/`sslkey`), with rustls and ring;
//! errors name the option and the file.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

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

/// How a client checks the server's certificate. The handshake's signatures are
/// checked in every case, so the server holds the key of the certificate it shows.
#[derive(Debug, Clone, Copy)]
pub enum ServerCheck<'a> {
    /// It chains to `roots`, is valid now, and names the host connected to: what
    /// every HTTPS client does, and libpq's `verify-full`.
    Full(Roots<'a>),
    /// It chains to `roots` and is valid now, whatever names it bears: libpq's
    /// `verify-ca`.
    ChainOnly(Roots<'a>),
    /// Not at all: the connection is encrypted but the server is not authenticated,
    /// as libpq's `require` and `prefer` without a root certificate.
    Nothing,
}

/// A rustls client configuration (TLS 1.2 and 1.3, ring) checking the server as
/// `check` says and presenting `identity` when given. Errors name the option and the
/// file that is missing, unreadable or not PEM.
pub fn client_config(
    check: ServerCheck<'_>,
    identity: Option<ClientIdentity<'_>>,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?;
    let builder = match check {
        ServerCheck::Full(roots) => builder.with_root_certificates(root_store(roots)?),
        ServerCheck::ChainOnly(roots) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    roots: Some(root_store(roots)?),
                    algorithms,
                }))
        }
        ServerCheck::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient {
                roots: None,
                algorithms,
            })),
    };
    Ok(match identity {
        Some(id) => {
            let chain = CertificateDer::pem_file_iter(id.cert)
                .with_context(|| format!("{}: cannot read {}", id.cert_option, id.cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}: {}", id.cert_option, id.cert.display()))?;
            if chain.is_empty() {
                anyhow::bail!(
                    "{}: no certificate in {}",
                    id.cert_option,
                    id.cert.display()
                );
            }
            let key = PrivateKeyDer::from_pem_file(id.key).map_err(|e| match e {
                pem::Error::NoItemsFound => {
                    anyhow::anyhow!("{}: no private key in {}", id.key_option, id.key.display())
                }
                e => anyhow::Error::new(e).context(format!(
                    "{}: cannot read {}",
                    id.key_option,
                    id.key.display()
                )),
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                // rustls names our own certificate "the peer's" here.
                let debug = format!("{e:?}");
                let why = if debug.contains("UnsupportedCertVersion") {
                    "it is an X.509 version 1 certificate; TLS here needs version 3 (`openssl req -x509` makes one, and `openssl x509 -req` does with `-extfile`)".to_owned()
                } else if debug.contains("KeyMismatch") {
                    "the key is not the certificate's".to_owned()
                } else {
                    format!("the certificate and key are not usable together: {e}")
                };
                anyhow::anyhow!(
                    "{}/{} ({}, {}): {why}",
                    id.cert_option,
                    id.key_option,
                    id.cert.display(),
                    id.key.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    })
}

/// The CAs of `roots`.
fn root_store(roots: Roots<'_>) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
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
    Ok(store)
}

/// The checks of [`ServerCheck::ChainOnly`] (with `roots`) and [`ServerCheck::Nothing`]
/// (without): the chain through rustls's own function, never the name; the handshake's
/// signatures always.
#[derive(Debug)]
struct Lenient {
    roots: Option<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
