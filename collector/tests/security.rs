//! Security events through the real ingest path over mTLS: stored once with
//! their evidence (a resent batch adds nothing), listed by the API, counted
//! in `/metrics` across a restart, and paged through the shipped rules.
// A failed setup is a failed test (or bench): unwrapping says where.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::time::Duration;

use common::Lab;
use prost::Message;
use tierwatch_protocol::{Batch, Event, Severity, PROTOCOL_VERSION};

fn batch(seq: u64, events: Vec<Event>) -> Vec<u8> {
    Batch {
        version: PROTOCOL_VERSION,
        node_id: "nui-cam".into(),
        agent_version: "t".into(),
        boot_id: vec![7; 16],
        sequence: seq,
        config_hash: vec![0; 32],
        created_ms: tierwatch_protocol::now_ms(),
        series: vec![],
        events,
        push_interval_ms: 1000,
    }
    .encode_to_vec()
}

fn event(kind: &str, severity: Severity, attrs: &[(&str, &str)]) -> Event {
    Event::new(kind, severity, tierwatch_protocol::now_ms(), attrs.iter().copied())
}

async fn events(lab: &Lab, query: &str) -> Vec<serde_json::Value> {
    let (status, body) = lab.get(&format!("/api/v1/security/events{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["events"].as_array().cloned().unwrap()
}

const SCAN: &str = r#"tierwatch_security_events_total{kind="port_scan",node="nui-cam",parent="an-giang",province="an-giang",severity="warning",tier="commune"}"#;

#[tokio::test]
async fn events_are_stored_once_listed_counted_and_paged() {
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/rules.yaml")).unwrap();
    let mut lab = Lab::start_full_with_files("", "rules: rules.yaml\n", &[("rules.yaml", &rules)]).await;
    let client = lab.client(&lab.pki, "nui-cam");
    let scan = event(
        "port_scan",
        Severity::Warning,
        &[
            ("src", "10.2.1.50"),
            ("src_mac", "02:00:00:00:01:32"),
            ("attempts", "31"),
            ("window_s", "900"),
            ("ports", "22,23,80,443"),
        ],
    );
    let spoof = event("arp_spoof", Severity::Critical, &[("src", "10.2.1.1"), ("src_mac", "02:00:00:00:06:66")]);
    let body = batch(1, vec![scan, spoof]);
    lab.push(client.clone(), body.clone()).await.unwrap();
    // The same batch again (a lost acknowledgement): stored nothing.
    lab.push(client.clone(), body).await.unwrap();

    let all = events(&lab, "").await;
    assert_eq!(all.len(), 2, "{all:?}");
    let scans = events(&lab, "?kind=port_scan&node=nui-cam").await;
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0]["attributes"]["src"], "10.2.1.50");
    assert_eq!(scans[0]["attributes"]["ports"], "22,23,80,443");
    assert_eq!(scans[0]["severity"], "warning");
    assert!(events(&lab, "?node=giang-thanh").await.is_empty());
    assert_eq!(lab.metric(SCAN).await, Some(1.0));

    // The shipped rules page it: one incident for the node, the critical spoof and the scan in it.
    let mut open = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, body) = lab.get("/api/v1/alerts").await;
        open = serde_json::from_str(&body).unwrap();
        if open["incidents"].as_array().is_some_and(|a| a.iter().any(|i| i["key"] == "nui-cam/security")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let inc = open["incidents"].as_array().and_then(|a| a.iter().find(|i| i["key"] == "nui-cam/security")).cloned();
    let inc = &inc.unwrap_or_default();
    assert_eq!(inc["key"], "nui-cam/security", "{open}");
    assert_eq!(inc["severity"], "critical");
    let rules: Vec<&str> = inc["alerts"].as_array().unwrap().iter().filter_map(|a| a["rule"].as_str()).collect();
    assert_eq!(rules.len(), 2, "{inc}");

    // Counters continue after a restart.
    lab.restart().await;
    assert_eq!(lab.metric(SCAN).await, Some(1.0));
    lab.stop().await;
}

fn batch_of(node: &str, boot: u8, seq: u64, created_ms: i64, config: u8) -> Vec<u8> {
    Batch {
        version: PROTOCOL_VERSION,
        node_id: node.into(),
        agent_version: "t".into(),
        boot_id: vec![boot; 16],
        sequence: seq,
        config_hash: vec![config; 32],
        created_ms,
        series: vec![],
        events: vec![],
        push_interval_ms: 1000,
    }
    .encode_to_vec()
}

#[tokio::test]
async fn the_collector_reports_impersonation_handshake_storms_config_changes_and_skew() {
    let topology = format!("{}  - id: trung-tam\n    tier: central\n    name: Trung tâm\n", common::TOPOLOGY);
    let mut lab = Lab::start_full_with_files("", "", &[("topology.yaml", &topology)]).await;
    let now = tierwatch_protocol::now_ms();
    let client = lab.client(&lab.pki, "nui-cam");
    // Configuration: boot 1 with A, boot 1's backlog after boot 2 with B: one change.
    lab.push(client.clone(), batch_of("nui-cam", 1, 1, now - 5000, 0xA)).await.unwrap();
    lab.push(client.clone(), batch_of("nui-cam", 2, 1, now - 1000, 0xB)).await.unwrap();
    lab.push(client.clone(), batch_of("nui-cam", 1, 2, now - 4000, 0xA)).await.unwrap();
    // A lower sequence of boot 2 created after a higher one: rewound.
    lab.push(client.clone(), batch_of("nui-cam", 2, 5, now - 900, 0xB)).await.unwrap();
    lab.push(client.clone(), batch_of("nui-cam", 2, 4, now + 9_000, 0xB)).await.unwrap();
    // A clock ten minutes ahead.
    lab.push(client.clone(), batch_of("nui-cam", 2, 6, now + 600_000, 0xB)).await.unwrap();
    // An hour of backlog sent by a clock that is right: no skew. Then a
    // clock ten minutes behind: only its send time shows it.
    let gt = lab.client(&lab.pki, "giang-thanh");
    lab.push_sent_at(gt.clone(), batch_of("giang-thanh", 7, 1, now - 3_600_000, 0), None).await.unwrap();
    lab.push_sent_at(gt.clone(), batch_of("giang-thanh", 7, 2, now - 3_500_000, 0), Some(now)).await.unwrap();
    lab.push_sent_at(gt, batch_of("giang-thanh", 7, 3, now - 600_000, 0), Some(now - 600_000)).await.unwrap();
    // nui-cam's certificate pushing for giang-thanh: refused, and reported.
    let (status, _) = lab.push(client.clone(), batch_of("giang-thanh", 9, 1, now, 0)).await.unwrap();
    assert_eq!(status, 403);
    // A storm of handshakes with a foreign CA's certificate.
    let evil = lab.client(&lab.dir.path().join("evil"), "nui-cam");
    for i in 0..12 {
        assert!(lab.push(evil.clone(), batch_of("nui-cam", 3, i, now, 0)).await.is_err());
    }
    let mut got = Vec::new();
    for _ in 0..50 {
        got = events(&lab, "").await;
        if got.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kinds: Vec<(&str, &str)> =
        got.iter().map(|e| (e["kind"].as_str().unwrap_or(""), e["node"].as_str().unwrap_or(""))).collect();
    for want in [
        ("config_changed", "nui-cam"),
        ("clock_skew", "nui-cam"),
        ("clock_skew", "giang-thanh"),
        ("sequence_rewound", "nui-cam"),
        ("node_impersonation", "nui-cam"),
        ("tls_handshake_failures", "trung-tam"),
    ] {
        assert_eq!(kinds.iter().filter(|k| **k == want).count(), 1, "{want:?} once in {kinds:?}");
    }
    let skew = |node: &str| got.iter().find(|e| e["kind"] == "clock_skew" && e["node"] == node).unwrap();
    assert!(skew("nui-cam")["attributes"]["ahead_s"].as_str().is_some_and(|s| s.parse::<i64>().unwrap() >= 599));
    let behind = &skew("giang-thanh")["attributes"]["behind_s"];
    assert!(behind.as_str().is_some_and(|s| s.parse::<i64>().unwrap() >= 599), "{behind}");
    let imp = got.iter().find(|e| e["kind"] == "node_impersonation").unwrap();
    assert_eq!(imp["attributes"]["claimed_node"], "giang-thanh");
    assert_eq!(imp["severity"], "critical");
    let storm = got.iter().find(|e| e["kind"] == "tls_handshake_failures").unwrap();
    assert_eq!(storm["attributes"]["src"], "127.0.0.1");
    lab.stop().await;
}

/// An event the collector cannot store (an attribute name no Prometheus
/// label may have) is refused alone: the batch is accepted, the Ack marks
/// the refusal as an event's, the collector counts it for the node, files
/// `events_refused` under the node and the shipped rules page it as a
/// collector problem, not a security incident. Over-long evidence is cut,
/// not refused.
#[tokio::test]
async fn refused_evidence_is_counted_filed_and_paged_and_long_evidence_is_cut() {
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/rules.yaml")).unwrap();
    let mut lab = Lab::start_full_with_files("", "rules: rules.yaml\n", &[("rules.yaml", &rules)]).await;
    let client = lab.client(&lab.pki, "nui-cam");
    let bad = event("port_scan", Severity::Warning, &[("src", "10.2.1.50"), ("not a name!", "x")]);
    let issuer = format!("CN={}", "Tổ chức cấp giả mạo ".repeat(100));
    let long = event("certificate_changed", Severity::Warning, &[("src", "portal"), ("issuer", &issuer)]);
    let (status, body) = lab.push(client.clone(), batch(1, vec![bad, long])).await.unwrap();
    assert_eq!(status, 200);
    let ack = tierwatch_protocol::Ack::decode(body).unwrap();
    assert_eq!((ack.accepted_events, ack.rejected.len(), ack.truncated_attributes), (1, 1, 1), "{ack:?}");
    assert!(ack.rejected[0].event && ack.rejected[0].reason.contains("not a name!"), "{ack:?}");

    let changed = events(&lab, "?kind=certificate_changed").await;
    let cut = changed[0]["attributes"]["issuer"].as_str().unwrap();
    assert!(cut.len() <= 1024 && cut.ends_with(&format!("…[truncated, {} bytes]", issuer.len())), "{cut}");
    // The collector's own findings are stored by the ledger's next group commit.
    let mut refused = Vec::new();
    for _ in 0..50 {
        refused = events(&lab, "?kind=events_refused&node=nui-cam").await;
        if !refused.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["attributes"]["refused"], "1");
    assert!(refused[0]["attributes"]["first"].as_str().unwrap().contains("not a name!"));
    assert_eq!(
        lab.metric(r#"tierwatch_collector_node_refusals_total{node="nui-cam",reason="event"}"#).await,
        Some(1.0)
    );
    let mut incidents = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, body) = lab.get("/api/v1/alerts").await;
        incidents = serde_json::from_str(&body).unwrap();
        if incidents["incidents"].as_array().is_some_and(|a| a.iter().any(|i| i["key"] == "nui-cam/collector")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let keys: Vec<&str> = incidents["incidents"].as_array().unwrap().iter().filter_map(|i| i["key"].as_str()).collect();
    assert!(keys.contains(&"nui-cam/collector"), "paged as a collector problem: {keys:?}");
    assert!(!keys.contains(&"nui-cam/security"), "not as an attack: {keys:?}");
    lab.stop().await;
}

/// The collector's own findings always have a home and page: with no
/// central node in the topology a handshake storm is filed under the
/// province (the node without a parent), and a certificate used for
/// another node pages for its own node although that node never pushed.
#[tokio::test]
async fn findings_page_without_a_central_node_and_for_a_node_never_heard_from() {
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/rules.yaml")).unwrap();
    let mut lab = Lab::start_full_with_files("", "rules: rules.yaml\n", &[("rules.yaml", &rules)]).await;
    let now = tierwatch_protocol::now_ms();
    // giang-thanh has never pushed; its certificate claims nui-cam.
    let gt = lab.client(&lab.pki, "giang-thanh");
    let (status, _) = lab.push(gt, batch_of("nui-cam", 9, 1, now, 0)).await.unwrap();
    assert_eq!(status, 403);
    let evil = lab.client(&lab.dir.path().join("evil"), "nui-cam");
    for i in 0..12 {
        assert!(lab.push(evil.clone(), batch_of("nui-cam", 3, i + 1, now, 0)).await.is_err());
    }
    let mut keys: Vec<String> = Vec::new();
    for _ in 0..100 {
        let (_, body) = lab.get("/api/v1/alerts").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        keys = v["incidents"].as_array().unwrap().iter().filter_map(|i| i["key"].as_str().map(String::from)).collect();
        if keys.contains(&"giang-thanh/security".to_string()) && keys.contains(&"an-giang/security".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(keys.contains(&"giang-thanh/security".to_string()), "impersonation paged: {keys:?}");
    assert!(keys.contains(&"an-giang/security".to_string()), "handshake storm paged under the province: {keys:?}");
    let storms = events(&lab, "?kind=tls_handshake_failures").await;
    assert_eq!(storms[0]["node"], "an-giang");
    lab.stop().await;
}
