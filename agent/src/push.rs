//! The HTTPS client that pushes batches to the collector with this node's
//! client certificate. One kept-alive connection, moved to the next endpoint
//! when the current one fails.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tierwatch_protocol::{Ack, CONTENT_TYPE as BATCH_CONTENT_TYPE, PUSH_PATH};
use tierwatch_runtime::tls::{load_certs, load_key, load_roots, provider, TlsError};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Config, Endpoint};

/// Why a push did not get an acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Worth retrying: network, TLS, timeout, 5xx.
    #[error("{endpoint}: {reason}")]
    Transient { endpoint: String, reason: String },
    /// The collector refused this batch; sending it again cannot succeed.
    #[error("{endpoint} refused the batch with {status}: {reason}")]
    Refused { endpoint: String, status: StatusCode, reason: String },
}

/// Builds the client TLS config: the collector verified against our CA, our certificate presented.
pub fn client_config(config: &Config) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(&config.ca)?;
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&config.cert)?, load_key(&config.key)?)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A push client over the configured endpoints.
pub struct Pusher {
    endpoints: Vec<Endpoint>,
    server_name: Option<String>,
    connector: TlsConnector,
    timeout: Duration,
    current: usize,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Pusher {
    /// A client for `config`'s endpoints.
    pub fn new(config: &Config, tls: Arc<ClientConfig>) -> Self {
        Pusher {
            endpoints: config.endpoints.clone(),
            server_name: config.server_name.clone(),
            connector: TlsConnector::from(tls),
            timeout: config.push_timeout,
            current: 0,
            conn: None,
        }
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoints[self.current % self.endpoints.len()]
    }

    /// Sends one encoded batch; on a transient failure the next call tries the next endpoint.
    pub async fn push(&mut self, body: Bytes) -> Result<Ack, PushError> {
        let endpoint = self.endpoint().url.clone();
        let result = match tokio::time::timeout(self.timeout, self.attempt(body)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no acknowledgement within {:?}", self.timeout)),
        };
        match result {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err((status, reason))) => Err(PushError::Refused { endpoint, status, reason }),
            Err(reason) => {
                self.conn = None;
                self.current = (self.current + 1) % self.endpoints.len();
                Err(PushError::Transient { endpoint, reason })
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let ep = self.endpoint();
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port)).await.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = self.server_name.clone().unwrap_or_else(|| ep.host.clone());
        let server_name = ServerName::try_from(name.clone()).map_err(|e| format!("TLS server name {name:?}: {e}"))?;
        let tls = self.connector.connect(server_name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP: {e}"))?;
        // The connection task ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "push connection closed");
            }
        });
        Ok(sender)
    }

    /// Outer error: transient. Inner error: refused with status and reason.
    async fn attempt(&mut self, body: Bytes) -> Result<Result<Ack, (StatusCode, String)>, String> {
        let reusable = match self.conn.take() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match reusable {
            Some(s) => s,
            None => self.connect().await?,
        };
        let ep = self.endpoint();
        let req = Request::post(PUSH_PATH)
            .header(HOST, format!("{}:{}", ep.host, ep.port))
            .header(CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .body(Full::new(body))
            .map_err(|e| format!("building request: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| format!("sending: {e}"))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| format!("reading response: {e}"))?.to_bytes();
        self.conn = Some(sender);
        if status.is_success() {
            return Ack::decode(body).map(Ok).map_err(|e| format!("undecodable acknowledgement: {e}"));
        }
        let reason = String::from_utf8_lossy(&body).trim().to_string();
        // 408 and 429 say "later", and 5xx is the collector's fault: retry those.
        if status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT && status != StatusCode::TOO_MANY_REQUESTS
        {
            Ok(Err((status, reason)))
        } else {
            Err(format!("{status}: {reason}"))
        }
    }
}
