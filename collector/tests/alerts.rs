//! The alert engine through the collector's API, with real pushes over
//! mTLS: a failed probe of a commune's WAN end opens one incident at once;
//! it survives a restart without being opened again; it resolves.

mod common;

use std::time::Duration;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::Lab;
use prost::Message;
use tierwatch_protocol::{Batch, Label, MetricKind, Point, Series, PROTOCOL_VERSION};

const RULES: &str = "grouping:\n  group_wait: 0s\nrules:\n  - name: wan_link_down\n    metric: tierwatch_probe_success\n    match: {tier: province, probe: icmp}\n    subject: target\n    below: 1\n    problem: unreachable\n    severity: critical\n    summary: \"WAN link to {{ target }} is down (seen from {{ node_name }})\"\n";

fn probe(seq: u64, boot: u8, target: &str, ok: bool) -> Vec<u8> {
    let now = tierwatch_protocol::now_ms();
    Batch {
        version: PROTOCOL_VERSION,
        node_id: "an-giang".into(),
        agent_version: "t".into(),
        boot_id: vec![boot; 16],
        sequence: seq,
        config_hash: vec![0; 32],
        created_ms: now,
        series: vec![Series {
            name: "tierwatch_probe_success".into(),
            kind: MetricKind::Gauge as i32,
            labels: vec![Label::new("probe", "icmp"), Label::new("target", target)],
            points: vec![Point { timestamp_ms: now, value: if ok { 1.0 } else { 0.0 } }],
        }],
        events: vec![],
        push_interval_ms: 1000,
    }
    .encode_to_vec()
}

async fn incidents(lab: &Lab) -> Vec<serde_json::Value> {
    let (_, body) = lab.get("/api/v1/alerts").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["incidents"].as_array().cloned().unwrap_or_default()
}

async fn history(lab: &Lab) -> Vec<String> {
    let (_, body) = lab.get("/api/v1/alerts/history").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|h| format!("{} {}", h["event"].as_str().unwrap(), h["incident"]["key"].as_str().unwrap()))
        .collect()
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

type Got = Arc<Mutex<Vec<(HeaderMap, serde_json::Value)>>>;

async fn hook(State(got): State<Got>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // The signature covers the exact body bytes.
    let sig = headers["x-tierwatch-signature"].to_str().unwrap().to_string();
    assert_eq!(sig, format!("sha256={}", tierwatch_collector::alert::notify::webhook::signature("s3cret", &body)));
    got.lock().unwrap().push((headers, v));
    StatusCode::OK
}

async fn receiver_on(addr: std::net::SocketAddr) -> Got {
    let got: Got = Arc::default();
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(got.clone());
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    got
}

fn events(got: &Got) -> Vec<String> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(_, v)| format!("{} {}", v["event"].as_str().unwrap(), v["incident"]["key"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn a_failed_probe_opens_one_incident_that_survives_a_restart_and_resolves() {
    // The webhook receiver is down when the incident opens: the page waits in the outbox.
    let hook_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let top = format!("rules: rules.yaml\nnotify:\n  - name: oncall\n    webhook:\n      url: http://{hook_addr}/hook\n      hmac_secret_file: hook.secret\n");
    let mut lab = Lab::start_full_with_files("", &top, &[("rules.yaml", RULES), ("hook.secret", "s3cret\n")]).await;
    let client = lab.client(&lab.pki, "an-giang");
    lab.push(client.clone(), probe(1, 1, "nui-cam", true)).await.unwrap();
    assert!(incidents(&lab).await.is_empty());
    let pushed = std::time::Instant::now();
    lab.push(client.clone(), probe(2, 1, "nui-cam", false)).await.unwrap();
    until("the incident", || async { !incidents(&lab).await.is_empty() }).await;
    let took = pushed.elapsed();
    let inc = incidents(&lab).await;
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0]["key"], "nui-cam/unreachable");
    assert_eq!(inc[0]["node_name"], "Xã Núi Cấm");
    assert_eq!(inc[0]["summary"], "WAN link to nui-cam is down (seen from Trung tâm Dữ liệu tỉnh An Giang)");
    assert!(took < Duration::from_secs(1), "evaluated on the push, not on a tick: {took:?}");

    lab.restart().await;
    let client = lab.client(&lab.pki, "an-giang");
    assert_eq!(incidents(&lab).await.len(), 1, "restored after the restart");
    // The receiver comes up: the page queued before the restart arrives, once.
    let got = receiver_on(hook_addr).await;
    until("the queued page", || async { !events(&got).is_empty() }).await;
    lab.push(client.clone(), probe(1, 2, "nui-cam", false)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(history(&lab).await, ["opened nui-cam/unreachable"], "not opened a second time");

    lab.push(client.clone(), probe(2, 2, "nui-cam", true)).await.unwrap();
    until("the resolve", || async { incidents(&lab).await.is_empty() }).await;
    assert_eq!(history(&lab).await, ["opened nui-cam/unreachable", "resolved nui-cam/unreachable"]);
    until("the resolve notification", || async { events(&got).len() == 2 }).await;
    assert_eq!(events(&got), ["opened nui-cam/unreachable", "resolved nui-cam/unreachable"]);
    let first = got.lock().unwrap()[0].1.clone();
    assert_eq!(first["status"], "firing");
    assert_eq!(first["incident"]["node_name"], "Xã Núi Cấm");
    assert_eq!(lab.metric(r#"tierwatch_collector_incidents_total{event="resolved"}"#).await, Some(1.0));
    lab.stop().await;
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on loopback.
struct Alertmanager {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    fn start() -> Option<Alertmanager> {
        let have = std::process::Command::new("prometheus-alertmanager")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            assert!(
                std::env::var("CI").is_err(),
                "prometheus-alertmanager must be installed in CI (scripts/test.sh installs it)"
            );
            eprintln!("SKIPPED: prometheus-alertmanager is not installed (scripts/test.sh installs it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("am.yml"), "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
            .unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = std::process::Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", dir.path().join("am.yml").display()))
            .arg(format!("--storage.path={}", dir.path().display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Some(Alertmanager { child, addr, _dir: dir })
    }

    async fn alerts(&self) -> Option<Vec<serde_json::Value>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        s.write_all(b"GET /api/v2/alerts HTTP/1.0\r\nHost: am\r\n\r\n").await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str::<Vec<serde_json::Value>>(body).ok()
    }
}

#[tokio::test]
async fn incidents_reach_a_real_alertmanager_and_resolve_there() {
    let Some(am) = Alertmanager::start() else { return };
    until("Alertmanager up", || async { am.alerts().await.is_some() }).await;
    let top = format!("rules: rules.yaml\nnotify:\n  - name: am\n    alertmanager:\n      url: http://{}\n", am.addr);
    let mut lab = Lab::start_full_with_files("", &top, &[("rules.yaml", RULES)]).await;
    let client = lab.client(&lab.pki, "an-giang");
    lab.push(client.clone(), probe(1, 1, "nui-cam", false)).await.unwrap();
    until("the alert in Alertmanager", || async { am.alerts().await.is_some_and(|a| !a.is_empty()) }).await;
    let alerts = am.alerts().await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["labels"]["alertname"], "tierwatch_unreachable");
    assert_eq!(a["labels"]["incident"], "nui-cam/unreachable");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["annotations"]["node_name"], "Xã Núi Cấm");
    assert_eq!(a["status"]["state"], "active");
    lab.push(client.clone(), probe(2, 1, "nui-cam", true)).await.unwrap();
    // A resolved alert leaves Alertmanager's list of alerts.
    until("the alert resolved in Alertmanager", || async { am.alerts().await.is_some_and(|a| a.is_empty()) }).await;
    lab.stop().await;
}
