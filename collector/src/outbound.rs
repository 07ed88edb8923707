//! Outbound HTTP(S) to receivers (remote_write, webhooks, Telegram): URL
//! parsing and the TLS client, verified against a given CA or the system's
//! roots.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tierwatch_runtime::http_client::Tls;
use tokio_rustls::TlsConnector;

/// A URL split for [`tierwatch_runtime::http_client::HttpConn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Splits `http[s]://host[:port][/path]` (IPv6 hosts in brackets).
pub fn split_url(url: &str) -> Result<Url, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url:?} must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, p) = r.split_once(']').ok_or_else(|| format!("{url:?}: unclosed [ in IPv6 address"))?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let port = match port {
        None if https => 443,
        None => 80,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| format!("{url:?}: bad port {p:?}"))?,
    };
    Ok(Url { https, host, port, path: path.to_string() })
}

/// The TLS client for `host`: trusting `ca` (PEM) when given, else the system's roots.
pub fn client_tls(host: &str, ca: Option<&Path>) -> Result<Tls, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("http://127.0.0.1:9090/api/v1/write").unwrap(),
            Url { https: false, host: "127.0.0.1".into(), port: 9090, path: "/api/v1/write".into() }
        );
        assert_eq!(split_url("https://vm.example/insert/0/prometheus").unwrap().port, 443);
        assert_eq!(split_url("http://[::1]/w").unwrap().host, "::1");
        assert!(split_url("ftp://x").is_err());
        assert!(split_url("http://h:0/").is_err());
    }
}
