//! A kept-alive HTTP/1.1 client connection to one server, plain or over
//! rustls. Used by the agent's push and the collector's remote_write; both
//! send one request at a time and want to know which stage failed.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Bytes of a response body read at most; a longer one is an error.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// TLS settings of a connection: the connector and the name to verify.
#[derive(Clone)]
pub struct Tls {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

/// Where an exchange is (or was when it failed or timed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening the TCP connection.
    Connect,
    Tls,
    /// HTTP/1.1 connection setup.
    Handshake,
    /// Sending the request and waiting for the response's head.
    Response,
    /// Reading the response's body.
    Body,
}

impl Phase {
    /// For error messages: "timed out {phase}".
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connecting (TCP)",
            Phase::Tls => "in the TLS handshake",
            Phase::Handshake => "in the HTTP handshake",
            Phase::Response => "waiting for the response (connected, TLS up)",
            Phase::Body => "reading the response body",
        }
    }
}

/// One server, one connection at a time, reconnected on demand.
pub struct HttpConn {
    host: String,
    port: u16,
    tls: Option<Tls>,
    sender: Option<SendRequest<Full<Bytes>>>,
    phase: Phase,
    /// A TCP connection [`HttpConn::dial`] opened, for the next request.
    dialed: Option<TcpStream>,
}

impl HttpConn {
    /// A client for `host:port`; `tls` of `None` means plain HTTP.
    pub fn new(host: impl Into<String>, port: u16, tls: Option<Tls>) -> Self {
        HttpConn { host: host.into(), port, tls, sender: None, phase: Phase::Connect, dialed: None }
    }

    /// The phase the last exchange reached: where it failed, or where it
    /// was when a caller's timeout dropped it.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Opens a TCP connection within `within` and keeps it for the next
    /// request: a cheap check that the server is reachable again which, when
    /// it is, the request then uses, so the server never sees a connection
    /// opened and dropped. A timeout is an error of kind `TimedOut`.
    pub async fn dial(&mut self, within: std::time::Duration) -> std::io::Result<()> {
        match tokio::time::timeout(within, TcpStream::connect((self.host.as_str(), self.port))).await {
            Ok(Ok(tcp)) => {
                self.dialed = Some(tcp);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no TCP connection within {within:?}")))
            }
        }
    }

    /// `host:port` as a Host header (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Drops the connection; the next request opens a new one.
    pub fn reset(&mut self) {
        self.sender = None;
        self.dialed = None;
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, String> {
        self.phase = Phase::Connect;
        let tcp = match self.dialed.take() {
            Some(tcp) => tcp,
            None => TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| format!("connect: {e}"))?,
        };
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = match &self.tls {
            Some(tls) => {
                self.phase = Phase::Tls;
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                self.phase = Phase::Handshake;
                let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP: {e}"))?;
                (s, tokio::spawn(c))
            }
            None => {
                let (s, c) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| format!("HTTP: {e}"))?;
                (s, tokio::spawn(c))
            }
        };
        // The connection task ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            if let Ok(Err(e)) = conn.await {
                tracing::debug!(error = %e, "HTTP client connection closed");
            }
        });
        Ok(sender)
    }

    /// Sends `req` on the kept connection (opening one if needed) and reads
    /// the whole response. On error the connection is dropped.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let result = self.exchange(req).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let reusable = match self.sender.take() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match reusable {
            Some(s) => s,
            None => self.connect().await?,
        };
        self.phase = Phase::Response;
        let resp = sender.send_request(req).await.map_err(|e| format!("sending: {e}"))?;
        self.phase = Phase::Body;
        let (parts, body) = resp.into_parts();
        // A receiver answers a few bytes; a hostile one could answer forever.
        let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading response (at most {MAX_RESPONSE_BYTES} bytes): {e}"))?
            .to_bytes();
        self.sender = Some(sender);
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }
}
