//! Where the sink's write connection goes ([`crate::sink::resp`]) and its TLS settings.

use std::sync::Arc;

use crate::sink::resp;

/// The server of the write connection and how to log in: no `Debug`, it holds the password.
pub(super) struct WriteTarget {
    pub(super) address: resp::Address,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) db: i64,
}

impl WriteTarget {
    /// The target of a single server's URL; `None` where the redis crate's connection
    /// writes instead: TLS without host name checks (`#insecure`), or TLS settings rustls
    /// refuses (that connection reports them).
    pub(super) fn of(info: &redis::ConnectionInfo, tls: Option<&TlsPems>) -> Option<Self> {
        let address = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => resp::Address::Tcp(host.clone(), *port),
            redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                ..
            } => resp::Address::Tls(host.clone(), *port, Arc::new(tls_config(tls)?)),
            redis::ConnectionAddr::Unix(path) => resp::Address::Unix(path.clone()),
            _ => return None,
        };
        let settings = info.redis_settings();
        Some(WriteTarget {
            address,
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
            db: settings.db(),
        })
    }
}

/// The PEM files' bytes for TLS, as read when the sink was made.
pub(super) struct TlsPems {
    pub(super) ca: Option<Vec<u8>>,
    pub(super) client: Option<(Vec<u8>, Vec<u8>)>,
}

/// rustls settings as the redis crate makes them: the CA of `redis_tls_ca_file` alone,
/// else Mozilla's roots; the client certificate when one is named.
fn tls_config(pems: Option<&TlsPems>) -> Option<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let roots = match pems.and_then(|p| p.ca.as_deref()) {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                roots.add(cert.ok()?).ok()?;
            }
            roots
        }
        None => rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots);
    match pems.and_then(|p| p.client.as_ref()) {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_slice(key).ok()?;
            builder.with_client_auth_cert(chain, key).ok()
        }
        None => Some(builder.with_no_client_auth()),
    }
}
