//! Security events through the real ingest path over mTLS: stored once with
//! their evidence (a resent batch adds nothing), listed by the API, counted
//! in `/metrics` across a restart, and paged through the shipped rules.

mod common;

use std::collections::BTreeMap;
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
    Event {
        kind: kind.into(),
        severity: severity as i32,
        timestamp_ms: tierwatch_protocol::now_ms(),
        attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }
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
