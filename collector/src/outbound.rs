//! Outbound HTTPS to receivers (remote_write, webhooks, Telegram): the TLS
//! client, verified against a given CA or the system's roots. Their URLs
//! are parsed by `tierwatch_runtime::url`.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tierwatch_runtime::http_client::Tls;
use tokio_rustls::TlsConnector;

/// The TLS client for `host`: trusting `ca` (PEM) when given, else the system's roots.
pub(crate) fn client_tls(host: &str, ca: Option<&Path>) -> Result<Tls, String> {
    let roots = match ca {
        Some(ca) => tierwatch_runtime::tls::load_roots(ca).map_err(|e| e.to_string())?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let mut c = ClientConfig::builder_with_provider(tierwatch_runtime::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = ServerName::try_from(host.to_string()).map_err(|e| format!("TLS name {host:?}: {e}"))?;
    Ok(Tls { connector: TlsConnector::from(Arc::new(c)), server_name })
}
