//! `tierwatch-collector status`: the node table an operator reads in a
//! terminal, fetched from a running collector's `/api/v1/nodes`.

use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// A node as read back from the API.
#[derive(Debug, Deserialize)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub status: String,
    pub last_seen_age_seconds: Option<f64>,
    pub agent_version: Option<String>,
    #[serde(default)]
    pub probes: Vec<ProbeRow>,
}

/// A probe result as read back from the API.
#[derive(Debug, Deserialize)]
pub struct ProbeRow {
    pub probe: String,
    pub target: String,
    pub success: bool,
}

#[derive(Debug, Deserialize)]
struct NodesResponse {
    nodes: Vec<NodeRow>,
}

/// Fetches `/api/v1/nodes` from `base` (`http://host:port`).
pub async fn fetch(base: &str) -> anyhow::Result<Vec<NodeRow>> {
    let url = tierwatch_runtime::url::parse(base, None).map_err(|e| anyhow::anyhow!("--url: {e}"))?;
    anyhow::ensure!(!url.https, "--url {base:?} must start with http:// (the collector's HTTP port)");
    let authority = url.authority();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {authority}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get("/api/v1/nodes").header("host", authority).body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "{base}/api/v1/nodes answered {}", resp.status());
    let body = http_body_util::Limited::new(resp.into_body(), 16 * 1024 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading {base}/api/v1/nodes: {e}"))?
        .to_bytes();
    Ok(serde_json::from_slice::<NodesResponse>(&body)?.nodes)
}

/// Renders the node table.
pub fn render(nodes: &[NodeRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<34} {:<9} {:<8} {:>9}  {:<8} PROBES",
        "NODE", "NAME", "TIER", "STATUS", "LAST PUSH", "AGENT"
    );
    for n in nodes {
        let age = n.last_seen_age_seconds.map(|a| format!("{a:.0}s ago")).unwrap_or_else(|| "never".into());
        let failing: Vec<String> =
            n.probes.iter().filter(|p| !p.success).map(|p| format!("{}/{} FAIL", p.target, p.probe)).collect();
        let ok = n.probes.iter().filter(|p| p.success).count();
        let probes = if n.probes.is_empty() {
            "-".to_string()
        } else if failing.is_empty() {
            format!("{ok} ok")
        } else {
            format!("{ok} ok, {}", failing.join(", "))
        };
        // Pad by characters, not bytes: names are Vietnamese.
        let name: String = n.name.chars().take(34).collect();
        let pad = 34usize.saturating_sub(name.chars().count());
        let _ = writeln!(
            out,
            "{:<14} {}{} {:<9} {:<8} {:>9}  {:<8} {}",
            n.id,
            name,
            " ".repeat(pad),
            n.tier,
            n.status.to_uppercase(),
            age,
            n.agent_version.as_deref().unwrap_or("-"),
            probes
        );
    }
    out
}
