//! The HTTPS client that pushes batches to the collector with this node's
//! client certificate. One kept-alive connection, moved to the next endpoint
//! when the current one fails.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use prost::Message;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tierwatch_protocol::{Ack, CONTENT_TYPE as BATCH_CONTENT_TYPE, PUSH_PATH};
use tierwatch_runtime::http_client::{HttpConn, Tls};
use tierwatch_runtime::tls::{load_certs, load_key, load_roots, provider, TlsError};
use tokio_rustls::TlsConnector;

/// A collector endpoint, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As written, for logs.
    pub url: String,
    pub host: String,
    pub port: u16,
}

/// Parses `https://host[:port]` (IPv6 in brackets; port 7443 unless given).
pub fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let u = tierwatch_runtime::url::parse(url, Some(7443))?;
    if !u.https {
        return Err(format!("{url:?} must start with https:// (pushes are always mutually authenticated TLS)"));
    }
    if !u.is_root() {
        return Err(format!("{url:?}: give only scheme, host and port; the push path is fixed"));
    }
    Ok(Endpoint { url: url.to_string(), host: u.host, port: u.port })
}

/// Why a push did not get an acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Worth retrying: network, TLS, timeout, 5xx. `unreachable`: it failed
    /// before a TCP connection stood (the path or the collector is down),
    /// so a bare connection attempt tells when it is back.
    #[error("{endpoint}: {reason}")]
    Transient { endpoint: String, reason: String, unreachable: bool },
    /// The collector refused this batch; sending it again cannot succeed.
    #[error("{endpoint} refused the batch with {status}: {reason}")]
    Refused { endpoint: String, status: StatusCode, reason: String },
}

/// Builds the client TLS config: the collector verified against our CA
/// (`ca`), our certificate (`cert`, `key`) presented.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca)?;
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A push client over the configured endpoints.
pub struct Pusher {
    endpoints: Vec<Endpoint>,
    conns: Vec<HttpConn>,
    timeout: Duration,
    current: usize,
}

impl Pusher {
    /// A client for `endpoints` (tried in turn on failure), verifying
    /// `server_name` (default: each endpoint's host), waiting `timeout` for an answer.
    pub fn new(endpoints: Vec<Endpoint>, server_name: Option<&str>, timeout: Duration, tls: Arc<ClientConfig>) -> Self {
        let connector = TlsConnector::from(tls);
        let conns = endpoints
            .iter()
            .map(|ep| {
                let name = server_name.map_or_else(|| ep.host.clone(), str::to_string);
                // Names are checked when the config is loaded; an odd one fails verification.
                let server_name =
                    ServerName::try_from(name).unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()));
                HttpConn::new(ep.host.clone(), ep.port, Some(Tls { connector: connector.clone(), server_name }))
            })
            .collect();
        Pusher { endpoints, conns, timeout, current: 0 }
    }

    /// Sends one encoded batch; on a transient failure the next call tries the next endpoint.
    pub async fn push(&mut self, body: Bytes) -> Result<Ack, PushError> {
        let i = self.current % self.endpoints.len();
        let endpoint = self.endpoints[i].url.clone();
        let conn = &mut self.conns[i];
        let req = Request::post(PUSH_PATH)
            .header(HOST, conn.authority())
            .header(CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .header(tierwatch_protocol::SENT_AT_HEADER, tierwatch_protocol::now_ms())
            .body(Full::new(body))
            .map_err(|e| PushError::Transient {
                endpoint: endpoint.clone(),
                reason: format!("building request: {e}"),
                unreachable: false,
            })?;
        let result = match tokio::time::timeout(self.timeout, conn.send(req)).await {
            Ok(r) => r,
            Err(_) => {
                conn.reset();
                Err(format!("no acknowledgement within {:?}: timed out {}", self.timeout, conn.phase().as_str()))
            }
        };
        let unreachable = conn.phase() == tierwatch_runtime::http_client::Phase::Connect;
        let reason = match result {
            Ok(reply) if reply.status.is_success() => match Ack::decode(reply.body) {
                Ok(ack) => return Ok(ack),
                Err(e) => format!("undecodable acknowledgement: {e}"),
            },
            Ok(reply) => {
                let text = String::from_utf8_lossy(&reply.body).trim().to_string();
                let status = reply.status;
                // 408 and 429 say "later", and 5xx is the collector's fault: retry those.
                if status.is_client_error()
                    && status != StatusCode::REQUEST_TIMEOUT
                    && status != StatusCode::TOO_MANY_REQUESTS
                {
                    return Err(PushError::Refused { endpoint, status, reason: text });
                }
                format!("{status}: {text}")
            }
            Err(reason) => reason,
        };
        self.current = (self.current + 1) % self.endpoints.len();
        Err(PushError::Transient { endpoint, reason, unreachable })
    }

    /// Whether the endpoint the next push goes to accepts a TCP connection
    /// within `within`: while backing off, a cheap sign the path is back.
    /// The connection is kept for that next push, so the collector sees no
    /// connection opened and dropped (it would count a failed handshake).
    /// On failure the next check (and push) tries the next endpoint; the
    /// error's kind comes along (a failed neighbour resolution is
    /// `HostUnreachable`).
    pub async fn check(&mut self, within: Duration) -> Result<(), (PushError, std::io::ErrorKind)> {
        let i = self.current % self.conns.len();
        self.conns[i].dial(within).await.map_err(|e| {
            self.current = (self.current + 1) % self.endpoints.len();
            let reason = match e.kind() {
                std::io::ErrorKind::TimedOut => e.to_string(),
                _ => format!("connect: {e}"),
            };
            (PushError::Transient { endpoint: self.endpoints[i].url.clone(), reason, unreachable: true }, e.kind())
        })
    }
}

/// A pusher to `127.0.0.1:port` trusting nobody, for tests of what happens
/// before a handshake could succeed.
#[cfg(test)]
pub(crate) fn test_pusher(port: u16, timeout: Duration) -> Pusher {
    let tls = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let ep = parse_endpoint(&format!("https://127.0.0.1:{port}")).expect("a loopback endpoint");
    Pusher::new(vec![ep], None, timeout, Arc::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pusher(port: u16) -> Pusher {
        test_pusher(port, Duration::from_millis(300))
    }

    /// A failed push says where it failed, and whether a connection stood.
    #[tokio::test]
    async fn push_errors_name_the_phase() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        match pusher(closed).push(Bytes::from_static(b"x")).await {
            Err(PushError::Transient { reason, unreachable: true, .. }) => {
                assert!(reason.starts_with("connect:"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Accepts, then never says a word: the TLS handshake times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let (c, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(c);
        });
        match pusher(port).push(Bytes::from_static(b"x")).await {
            Err(PushError::Transient { reason, unreachable: false, .. }) => {
                assert!(reason.contains("timed out in the TLS handshake"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        held.abort();
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(parse_endpoint("https://[::1]:7443").unwrap().host, "::1");
        assert_eq!(parse_endpoint("https://c.example").unwrap().port, 7443);
        assert!(parse_endpoint("https://c:0").is_err());
        assert!(parse_endpoint("https://c:7443/x").is_err());
    }
}
