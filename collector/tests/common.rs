//! Helpers for the collector's loopback integration tests: a throw-away PKI,
//! a collector on ephemeral ports, and minimal HTTP(S) clients.
// A failed setup is a failed test (or bench): unwrapping says where.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tierwatch_collector::config::Config;
use tierwatch_collector::pki::{self, Usage};
use tierwatch_collector::server::{self, Running};
use tierwatch_protocol::NodeId;
use tierwatch_runtime::tls::{load_certs, load_key, load_roots, provider};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const TOPOLOGY: &str = include_str!("../../tests/fixtures/loopback-topology.yaml");

/// A collector with its PKI in a temporary directory.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub collector: Option<Running>,
    pub ingest: SocketAddr,
    pub http: SocketAddr,
}

impl Lab {
    /// PKI for the collector, `nui-cam`, `giang-thanh`, `ghost` (not in the
    /// topology), and a second CA with its own `nui-cam`; then starts the collector.
    pub async fn start() -> Lab {
        Self::start_with("").await
    }

    /// As [`Lab::start`], with extra YAML appended to `ingest:`.
    pub async fn start_with(ingest_extra: &str) -> Lab {
        Self::start_full(ingest_extra, "").await
    }

    /// As [`Lab::start`], with extra YAML appended to `ingest:` and at the top level.
    pub async fn start_full(ingest_extra: &str, top_extra: &str) -> Lab {
        Self::start_full_with_files(ingest_extra, top_extra, &[]).await
    }

    /// As [`Lab::start_full`], with extra files (name, content) beside collector.yaml.
    pub async fn start_full_with_files(ingest_extra: &str, top_extra: &str, files: &[(&str, &str)]) -> Lab {
        Self::start_custom(ingest_extra, "", top_extra, files).await
    }

    /// The most general start: extra YAML inside `ingest:` and `http:` and at the top level, extra files.
    pub async fn start_custom(ingest_extra: &str, http_extra: &str, top_extra: &str, files: &[(&str, &str)]) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        pki::init(&pki_dir, "test CA", 30, false).unwrap();
        pki::issue(
            &pki_dir,
            &id("collector"),
            &Usage::Server { sans: vec!["127.0.0.1".into(), "localhost".into()] },
            30,
            false,
        )
        .unwrap();
        for n in ["an-giang", "nui-cam", "giang-thanh", "ghost"] {
            pki::issue(&pki_dir, &id(n), &Usage::Client, 30, false).unwrap();
        }
        let evil = dir.path().join("evil");
        pki::init(&evil, "evil CA", 30, false).unwrap();
        pki::issue(&evil, &id("nui-cam"), &Usage::Client, 30, false).unwrap();
        std::fs::write(dir.path().join("topology.yaml"), TOPOLOGY).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let conf = format!(
            "topology: topology.yaml\ningest:\n  listen: 127.0.0.1:0\n  ca: pki/ca.crt\n  cert: pki/collector.crt\n  key: pki/collector.key\n{ingest_extra}http:\n  listen: 127.0.0.1:0\n{http_extra}state_dir: state\n{top_extra}"
        );
        std::fs::write(dir.path().join("collector.yaml"), conf).unwrap();
        let config = Config::load(&dir.path().join("collector.yaml")).unwrap();
        let running = server::start(config, CancellationToken::new()).await.unwrap();
        Lab { ingest: running.ingest_addr, http: running.http_addr, collector: Some(running), pki: pki_dir, dir }
    }

    /// TLS client config presenting `node`'s certificate from the PKI at `pki_dir`, trusting our CA.
    pub fn client(&self, pki_dir: &Path, node: &str) -> Arc<ClientConfig> {
        let c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(load_roots(&self.pki.join("ca.crt")).unwrap())
            .with_client_auth_cert(
                load_certs(&pki_dir.join(format!("{node}.crt"))).unwrap(),
                load_key(&pki_dir.join(format!("{node}.key"))).unwrap(),
            )
            .unwrap();
        Arc::new(c)
    }

    /// POSTs `body` to the push endpoint with `client`; Err when TLS or HTTP fails.
    pub async fn push(&self, client: Arc<ClientConfig>, body: Vec<u8>) -> Result<(StatusCode, Bytes), String> {
        self.push_sent_at(client, body, None).await
    }

    /// Pushes `body` saying it was sent at `sent_ms` by the agent's clock.
    pub async fn push_sent_at(
        &self,
        client: Arc<ClientConfig>,
        body: Vec<u8>,
        sent_ms: Option<i64>,
    ) -> Result<(StatusCode, Bytes), String> {
        push_to(self.ingest, client, body, sent_ms).await
    }

    /// GETs `path` from the HTTP listener.
    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        self.call("GET", path, "", None).await
    }

    /// Sends `method path` with a JSON `body` (and a bearer `token`) to the HTTP listener.
    pub async fn call(&self, method: &str, path: &str, body: &str, token: Option<&str>) -> (StatusCode, String) {
        let tcp = TcpStream::connect(self.http).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header("host", "collector");
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends `method path` with `body` and exactly the extra `headers` given (no content type of its own).
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let (status, _, body) = self.call_raw(method, path, body, headers).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// [`Lab::call_with`], answering the headers and the body's bytes.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let tcp = TcpStream::connect(self.http).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header("host", "collector");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = send.send_request(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.into_body().collect().await.unwrap().to_bytes())
    }

    /// Stops the collector and starts it again on the same configuration and state.
    pub async fn restart(&mut self) {
        self.stop().await;
        let config = Config::load(&self.dir.path().join("collector.yaml")).unwrap();
        let running = server::start(config, CancellationToken::new()).await.unwrap();
        self.ingest = running.ingest_addr;
        self.http = running.http_addr;
        self.collector = Some(running);
    }

    /// The value of the unlabelled-or-labelled sample line `series` in `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        sample(&text, series)
    }

    /// Stops the collector and waits for it.
    pub async fn stop(&mut self) {
        if let Some(c) = self.collector.take() {
            c.shutdown().await;
        }
    }
}

/// POSTs `body` to the push endpoint at `ingest` with `client` (and the agent's send time).
pub async fn push_to(
    ingest: SocketAddr,
    client: Arc<ClientConfig>,
    body: impl Into<Bytes>,
    sent_ms: Option<i64>,
) -> Result<(StatusCode, Bytes), String> {
    let tcp = TcpStream::connect(ingest).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::post(tierwatch_protocol::PUSH_PATH).header("host", "collector");
    if let Some(t) = sent_ms {
        req = req.header(tierwatch_protocol::SENT_AT_HEADER, t);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// The value of sample line `series` in an exposition `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

pub fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// Whether a tool is on PATH.
pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
