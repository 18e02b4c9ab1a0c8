//! A throw-away PKI made at run time: a server certificate for `localhost`, a stand-in
//! for Meta's client CA (root and intermediate) with a good client leaf, and the bad
//! cases Nginx must refuse; and another for a PostgreSQL server with TLS and its
//! clients ([`PgPki`]); and one for HTTPS backends behind a private CA ([`BackendPki`]).

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

pub const META_CN: &str = "client.webhooks.fbclientcerts.com";

/// A certificate with its key.
pub struct Issued {
    pub cert: Certificate,
    pub key: KeyPair,
}

/// A client identity on disk: the PEM chain to present (leaf first) and its key.
#[derive(Clone, Debug)]
pub struct ClientId {
    pub chain: PathBuf,
    pub key: PathBuf,
}

/// Every file the Nginx tests use.
pub struct Pki {
    pub server_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The trust anchor given to Nginx (stands in for Meta's CA file).
    pub client_ca: PathBuf,
    pub good: ClientId,
    pub cn_suffix: ClientId,
    pub cn_prefix: ClientId,
    pub cn_in_ou: ClientId,
    pub cn_escaped_in_o: ClientId,
    pub other_root: ClientId,
    pub expired: ClientId,
    pub too_deep: ClientId,
}

fn ca(name: &str, issuer: Option<&Issued>) -> Issued {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "xhubd tests");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2099, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = match issuer {
        None => params.self_signed(&key).unwrap(),
        Some(i) => params.signed_by(&key, &i.cert, &i.key).unwrap(),
    };
    Issued { cert, key }
}

fn leaf(
    dn: &[(DnType, &str)],
    sans: &[&str],
    client: bool,
    issuer: &Issued,
    expired: bool,
) -> Issued {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    for (t, v) in dn {
        params.distinguished_name.push(t.clone(), *v);
    }
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    } else {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    Issued { cert, key }
}

fn write(dir: &Path, name: &str, pems: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pems.concat()).unwrap();
    path
}

fn client(dir: &Path, name: &str, leaf: &Issued, chain: &[&Issued]) -> ClientId {
    let mut pems = vec![leaf.cert.pem()];
    pems.extend(chain.iter().map(|c| c.cert.pem()));
    let refs: Vec<&str> = pems.iter().map(String::as_str).collect();
    ClientId {
        chain: write(dir, &format!("{name}.chain.pem"), &refs),
        key: write(dir, &format!("{name}.key"), &[&leaf.key.serialize_pem()]),
    }
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        let server_root = ca("Test Server Root", None);
        let server = leaf(
            &[(DnType::CommonName, "localhost")],
            &["localhost", "127.0.0.1"],
            false,
            &server_root,
            false,
        );

        let root = ca("Test Meta Client Root", None);
        let inter = ca("Test Meta Client Intermediate", Some(&root));
        let meta = |dn: &[(DnType, &str)], expired: bool| leaf(dn, &[], true, &inter, expired);
        let good = meta(
            &[
                (DnType::CommonName, META_CN),
                (DnType::OrganizationName, "Meta Platforms, Inc."),
            ],
            false,
        );
        let suffix = meta(
            &[(
                DnType::CommonName,
                "client.webhooks.fbclientcerts.com.evil.example",
            )],
            false,
        );
        let prefix = meta(
            &[(DnType::CommonName, "evil.client.webhooks.fbclientcerts.com")],
            false,
        );
        let in_ou = meta(
            &[
                (DnType::OrganizationalUnitName, META_CN),
                (DnType::CommonName, "evil.example"),
            ],
            false,
        );
        let escaped = meta(
            &[
                (DnType::CommonName, "evil.example"),
                (
                    DnType::OrganizationName,
                    "x,CN=client.webhooks.fbclientcerts.com",
                ),
            ],
            false,
        );
        let expired = meta(&[(DnType::CommonName, META_CN)], true);

        let other = ca("Some Other Root", None);
        let other_leaf = leaf(&[(DnType::CommonName, META_CN)], &[], true, &other, false);

        // Root, then four intermediates: one more than ssl_verify_depth 3 allows.
        let i1 = ca("Deep 1", Some(&root));
        let i2 = ca("Deep 2", Some(&i1));
        let i3 = ca("Deep 3", Some(&i2));
        let i4 = ca("Deep 4", Some(&i3));
        let deep_leaf = leaf(&[(DnType::CommonName, META_CN)], &[], true, &i4, false);

        Pki {
            server_ca: write(dir, "server-ca.pem", &[&server_root.cert.pem()]),
            server_cert: write(
                dir,
                "server.pem",
                &[&server.cert.pem(), &server_root.cert.pem()],
            ),
            server_key: write(dir, "server.key", &[&server.key.serialize_pem()]),
            client_ca: write(dir, "meta-ca.pem", &[&root.cert.pem()]),
            good: client(dir, "good", &good, &[&inter]),
            cn_suffix: client(dir, "suffix", &suffix, &[&inter]),
            cn_prefix: client(dir, "prefix", &prefix, &[&inter]),
            cn_in_ou: client(dir, "in-ou", &in_ou, &[&inter]),
            cn_escaped_in_o: client(dir, "escaped", &escaped, &[&inter]),
            other_root: client(dir, "other-root", &other_leaf, &[&other]),
            expired: client(dir, "expired", &expired, &[&inter]),
            too_deep: client(dir, "too-deep", &deep_leaf, &[&i4, &i3, &i2, &i1]),
        }
    }
}

/// Files for a PostgreSQL server with TLS and its clients: a server CA signing the
/// server's certificate for `localhost` and `127.0.0.1`, another CA that signs nothing
/// the server presents, and a client CA signing client certificates whose CN is a
/// database user's name.
pub struct PgPki {
    /// The CA that signs the server's certificate (a client's `sslrootcert`).
    pub ca: PathBuf,
    /// A CA unrelated to the server (a wrong `sslrootcert`).
    pub other_ca: PathBuf,
    /// The server's certificate (leaf, then its CA) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The CA the server checks client certificates against (`ssl_ca_file`).
    pub client_ca: PathBuf,
    /// A client certificate for the user `postgres`.
    pub postgres: ClientId,
    /// A client certificate for the user `someone_else`.
    pub someone_else: ClientId,
}

impl PgPki {
    pub fn create(dir: &Path) -> PgPki {
        let server_root = ca("Test PostgreSQL Server Root", None);
        let server = leaf(
            &[(DnType::CommonName, "localhost")],
            &["localhost", "127.0.0.1"],
            false,
            &server_root,
            false,
        );
        let other = ca("Test Unrelated Root", None);
        let client_root = ca("Test PostgreSQL Client Root", None);
        let user = |name: &str| {
            leaf(
                &[(DnType::CommonName, name)],
                &[],
                true,
                &client_root,
                false,
            )
        };
        PgPki {
            ca: write(dir, "pg-ca.pem", &[&server_root.cert.pem()]),
            other_ca: write(dir, "pg-other-ca.pem", &[&other.cert.pem()]),
            server_cert: write(
                dir,
                "pg-server.pem",
                &[&server.cert.pem(), &server_root.cert.pem()],
            ),
            server_key: write(dir, "pg-server.key", &[&server.key.serialize_pem()]),
            client_ca: write(dir, "pg-client-ca.pem", &[&client_root.cert.pem()]),
            postgres: client(dir, "pg-user-postgres", &user("postgres"), &[]),
            someone_else: client(dir, "pg-user-someone-else", &user("someone_else"), &[]),
        }
    }
}

/// Files for HTTPS backends behind a private CA: server certificates it signs (one for
/// `localhost` and `127.0.0.1`, one for another name), another CA that signs nothing a
/// backend presents, and a client CA with a client certificate for backends that
/// require one.
pub struct BackendPki {
    /// The private CA (a destination's `ca_file`).
    pub ca: PathBuf,
    /// A CA unrelated to every backend (a wrong `ca_file`).
    pub other_ca: PathBuf,
    /// A server certificate for `localhost` and `127.0.0.1` (leaf, then the CA) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A server certificate from the same CA for `backend.invalid` only, and its key.
    pub wrong_name_cert: PathBuf,
    pub wrong_name_key: PathBuf,
    /// The CA a backend checks client certificates against.
    pub client_ca: PathBuf,
    /// A client certificate it signs.
    pub client: ClientId,
}

impl BackendPki {
    pub fn create(dir: &Path) -> BackendPki {
        let root = ca("Test Backend Private Root", None);
        let server =
            |sans: &[&str]| leaf(&[(DnType::CommonName, sans[0])], sans, false, &root, false);
        let good = server(&["localhost", "127.0.0.1"]);
        let wrong = server(&["backend.invalid"]);
        let other = ca("Test Unrelated Backend Root", None);
        let client_root = ca("Test Backend Client Root", None);
        let xhubd = leaf(
            &[(DnType::CommonName, "xhubd")],
            &[],
            true,
            &client_root,
            false,
        );
        BackendPki {
            ca: write(dir, "backend-ca.pem", &[&root.cert.pem()]),
            other_ca: write(dir, "backend-other-ca.pem", &[&other.cert.pem()]),
            server_cert: write(dir, "backend.pem", &[&good.cert.pem(), &root.cert.pem()]),
            server_key: write(dir, "backend.key", &[&good.key.serialize_pem()]),
            wrong_name_cert: write(
                dir,
                "backend-wrong-name.pem",
                &[&wrong.cert.pem(), &root.cert.pem()],
            ),
            wrong_name_key: write(dir, "backend-wrong-name.key", &[&wrong.key.serialize_pem()]),
            client_ca: write(dir, "backend-client-ca.pem", &[&client_root.cert.pem()]),
            client: client(dir, "backend-client", &xhubd, &[]),
        }
    }

    /// A backend's TLS settings (rustls, ring): it presents `cert` with `key` and, when
    /// `client_ca` is given, requires a client certificate that chains to it.
    pub fn server_config(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(cert.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        builder
            .with_single_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap()
    }
}
