//! Loopback integration tests of the ingest path with real TLS: what is
//! accepted, what is refused and how, and that refusals leave the collector serving.
// A failed setup is a failed test (or bench): unwrapping says where.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use common::Lab;
use hyper::StatusCode;
use prost::Message;
use tierwatch_protocol::{catalogue, Ack, Batch, Label, MetricKind, Point, Series, PROTOCOL_VERSION};

fn batch(node: &str, seq: u64, series: Vec<Series>) -> Batch {
    Batch {
        version: PROTOCOL_VERSION,
        node_id: node.into(),
        agent_version: "9.9.9-test".into(),
        boot_id: vec![3; 16],
        sequence: seq,
        config_hash: vec![1; 32],
        created_ms: tierwatch_protocol::now_ms(),
        series,
        events: vec![],
        push_interval_ms: 0,
    }
}

fn gauge(name: &str, labels: &[(&str, &str)], value: f64) -> Series {
    Series {
        name: name.into(),
        kind: MetricKind::Gauge as i32,
        labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
        points: vec![Point { timestamp_ms: tierwatch_protocol::now_ms(), value }],
    }
}

fn probe_ok(node: &str, seq: u64) -> Vec<u8> {
    batch(node, seq, vec![gauge(catalogue::PROBE_SUCCESS.name, &[("probe", "icmp"), ("target", "gw")], 1.0)])
        .encode_to_vec()
}

#[tokio::test]
async fn pushed_series_appear_with_identity_labels_from_topology() {
    let mut lab = Lab::start().await;
    let client = lab.client(&lab.pki, "nui-cam");
    let (status, body) = lab.push(client, probe_ok("nui-cam", 1)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let ack = Ack::decode(body).unwrap();
    assert_eq!((ack.sequence, ack.accepted_points), (1, 1));

    let (_, metrics) = lab.get("/metrics").await;
    let line = r#"tierwatch_probe_success{node="nui-cam",parent="an-giang",probe="icmp",province="an-giang",target="gw",tier="commune"} 1"#;
    assert!(metrics.contains(line), "{metrics}");
    assert!(metrics.contains("# HELP tierwatch_probe_success 1 if the last probe"), "{metrics}");
    assert!(
        metrics.contains(r#"tierwatch_node_up{node="nui-cam",parent="an-giang",province="an-giang",tier="commune"} 1"#)
    );
    assert!(metrics
        .contains(r#"tierwatch_node_up{node="giang-thanh",parent="an-giang",province="an-giang",tier="commune"} 0"#));
    assert!(metrics.contains(r#"name="Xã Núi Cấm""#), "UTF-8 names survive: {metrics}");
    assert!(metrics.contains(r#"tierwatch_collector_batches_total{result="accepted"} 1"#));

    let (status, nodes) = lab.get("/api/v1/nodes").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    let n = v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "nui-cam").unwrap().clone();
    assert_eq!(n["status"], "up");
    assert_eq!(n["agent_version"], "9.9.9-test");
    assert_eq!(n["tier"], "commune");
    assert_eq!(n["parent"], "an-giang");
    let g = v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "giang-thanh").unwrap().clone();
    assert_eq!(g["status"], "unknown");

    // `tierwatch-collector status --url` reads the same.
    let rows = tierwatch_collector::status::fetch(&format!("http://{}/", lab.http)).await.unwrap();
    let table = tierwatch_collector::status::render(&rows);
    assert!(table.lines().any(|l| l.contains("nui-cam") && l.contains(" UP ")), "{table}");
    assert!(tierwatch_collector::status::fetch(&format!("https://{}", lab.http)).await.is_err());
    lab.stop().await;
}

#[tokio::test]
async fn identity_labels_in_the_payload_are_refused_not_trusted() {
    let mut lab = Lab::start().await;
    let b = batch(
        "nui-cam",
        1,
        vec![
            gauge("tierwatch_probe_success", &[("probe", "tcp"), ("target", "x"), ("node", "giang-thanh")], 1.0),
            gauge("tierwatch_probe_success", &[("probe", "tcp"), ("target", "ok")], f64::NAN),
            gauge("tierwatch_probe_success", &[("probe", "tcp"), ("target", "ok")], 1.0),
        ],
    );
    let (status, body) = lab.push(lab.client(&lab.pki, "nui-cam"), b.encode_to_vec()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let ack = Ack::decode(body).unwrap();
    assert_eq!(ack.accepted_points, 1);
    let reasons: Vec<&str> = ack.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].starts_with("series 0 (") && reasons[0].contains("identity label"), "{reasons:?}");
    assert!(
        reasons[1].starts_with("series 1 (") && reasons[1].contains("point 0: value NaN is not finite"),
        "{reasons:?}"
    );
    let (_, metrics) = lab.get("/metrics").await;
    assert!(!metrics.contains(r#"target="x""#));
    assert!(metrics.contains(r#"tierwatch_collector_samples_total{result="rejected"} 2"#), "{metrics}");
    lab.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_at_the_handshake() {
    let mut lab = Lab::start().await;
    let evil = lab.dir.path().join("evil");
    let err = lab.push(lab.client(&evil, "nui-cam"), probe_ok("nui-cam", 1)).await.unwrap_err();
    // TLS 1.3 clients learn of the refusal on their first read.
    assert!(err.contains("handshake") || err.contains("request"), "{err}");
    let (_, metrics) = lab.get("/metrics").await;
    assert!(metrics.contains("tierwatch_collector_tls_handshake_failures_total 1"), "{metrics}");
    assert!(!metrics.contains("tierwatch_probe_success{"), "nothing stored");
    lab.stop().await;
}

#[tokio::test]
async fn no_client_certificate_is_refused_at_the_handshake() {
    let mut lab = Lab::start().await;
    let anon = rustls::ClientConfig::builder_with_provider(tierwatch_runtime::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(tierwatch_runtime::tls::load_roots(&lab.pki.join("ca.crt")).unwrap())
        .with_no_client_auth();
    assert!(lab.push(std::sync::Arc::new(anon), probe_ok("nui-cam", 1)).await.is_err());
    lab.stop().await;
}

#[tokio::test]
async fn valid_certificate_for_a_pushing_for_b_gets_403() {
    let mut lab = Lab::start().await;
    let (status, body) = lab.push(lab.client(&lab.pki, "nui-cam"), probe_ok("giang-thanh", 1)).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let reason = String::from_utf8_lossy(&body);
    assert!(
        reason.contains(r#"certificate is for node "nui-cam" but the batch claims node "giang-thanh""#),
        "{reason}"
    );
    let (_, metrics) = lab.get("/metrics").await;
    assert!(metrics.contains(r#"tierwatch_collector_batches_total{result="forbidden"} 1"#));
    assert!(metrics
        .contains(r#"tierwatch_node_up{node="giang-thanh",parent="an-giang",province="an-giang",tier="commune"} 0"#));
    lab.stop().await;
}

#[tokio::test]
async fn node_missing_from_topology_is_refused() {
    let mut lab = Lab::start().await;
    let (status, body) = lab.push(lab.client(&lab.pki, "ghost"), probe_ok("ghost", 1)).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains(r#"node "ghost" is not in topology.yaml"#));
    lab.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_refused_and_the_collector_keeps_serving() {
    let mut lab = Lab::start_with("  max_body_bytes: 4096\n").await;
    let client = lab.client(&lab.pki, "nui-cam");

    let (status, body) = lab.push(client.clone(), vec![0xff, 0xff, 0xff, 0x01, 0x02]).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).starts_with("malformed batch:"), "{body:?}");

    let big = batch(
        "nui-cam",
        2,
        (0..200)
            .map(|i| gauge("tierwatch_probe_success", &[("probe", "tcp"), ("target", &format!("t{i}"))], 1.0))
            .collect(),
    );
    let (status, body) = lab.push(client.clone(), big.encode_to_vec()).await.unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("exceeds ingest.max_body_bytes = 4096"), "{body:?}");

    let mut wrong_version = batch("nui-cam", 3, vec![]);
    wrong_version.version = 99;
    let (status, body) = lab.push(client.clone(), wrong_version.encode_to_vec()).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("unsupported protocol version 99"), "{body:?}");

    let (status, _) = lab.push(client, probe_ok("nui-cam", 4)).await.unwrap();
    assert_eq!(status, StatusCode::OK, "still serving after refusals");
    let (_, metrics) = lab.get("/metrics").await;
    for line in [
        r#"tierwatch_collector_batches_total{result="malformed"} 1"#,
        r#"tierwatch_collector_batches_total{result="too_large"} 1"#,
        r#"tierwatch_collector_batches_total{result="invalid"} 1"#,
        r#"tierwatch_collector_batches_total{result="accepted"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    assert_eq!(lab.get("/healthz").await.0, StatusCode::OK);
    lab.stop().await;
}

#[tokio::test]
async fn every_exposed_metric_is_documented() {
    let mut lab = Lab::start().await;
    lab.push(lab.client(&lab.pki, "nui-cam"), probe_ok("nui-cam", 1)).await.unwrap();
    let (_, metrics) = lab.get("/metrics").await;
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md")).unwrap();
    let mut names: Vec<&str> =
        metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    names.extend(catalogue::AGENT_METRICS.iter().map(|d| d.name));
    for name in names {
        assert!(docs.contains(&format!("`{name}`")), "docs/metrics.md does not document {name}");
    }
    lab.stop().await;
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    if !common::have("promtool") {
        assert!(
            std::env::var("CI").is_err(),
            "promtool is missing in CI: the test command installs the Debian package prometheus"
        );
        eprintln!("SKIPPED metrics_pass_promtool_check: promtool not installed (apt-get install prometheus)");
        return;
    }
    let mut lab = Lab::start().await;
    lab.push(lab.client(&lab.pki, "nui-cam"), probe_ok("nui-cam", 1)).await.unwrap();
    let (_, metrics) = lab.get("/metrics").await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    lab.stop().await;
}

#[tokio::test]
async fn a_batch_sent_twice_is_stored_once_even_across_a_restart() {
    let mut lab = Lab::start().await;
    let client = lab.client(&lab.pki, "nui-cam");
    let body = probe_ok("nui-cam", 7);
    let first = Ack::decode(lab.push(client.clone(), body.clone()).await.unwrap().1).unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.accepted_points, 1);
    let again = Ack::decode(lab.push(client.clone(), body.clone()).await.unwrap().1).unwrap();
    assert!(again.duplicate, "second copy is acknowledged as a duplicate");
    assert_eq!(again.accepted_points, 0);
    // A live-first replay: 9 arrives before 8; both are new.
    for seq in [9, 8] {
        assert!(!Ack::decode(lab.push(client.clone(), probe_ok("nui-cam", seq)).await.unwrap().1).unwrap().duplicate);
    }
    assert_eq!(lab.metric(r#"tierwatch_collector_samples_total{result="accepted"}"#).await, Some(3.0));
    assert_eq!(lab.metric(r#"tierwatch_collector_batches_total{result="duplicate"}"#).await, Some(1.0));

    lab.restart().await;
    let client = lab.client(&lab.pki, "nui-cam");
    for seq in [7, 8, 9] {
        let ack = Ack::decode(lab.push(client.clone(), probe_ok("nui-cam", seq)).await.unwrap().1).unwrap();
        assert!(ack.duplicate, "sequence {seq} remembered across the restart");
    }
    // Another boot of the same node starts its own sequence space.
    let mut other =
        batch("nui-cam", 7, vec![gauge(catalogue::PROBE_SUCCESS.name, &[("probe", "icmp"), ("target", "gw")], 1.0)]);
    other.boot_id = vec![4; 16];
    assert!(!Ack::decode(lab.push(client, other.encode_to_vec()).await.unwrap().1).unwrap().duplicate);
    assert_eq!(lab.metric(r#"tierwatch_collector_samples_total{result="accepted"}"#).await, Some(1.0));
    assert_eq!(lab.metric("tierwatch_collector_ledger_boots").await, Some(2.0));
    lab.stop().await;
}

#[tokio::test]
async fn metrics_are_gzipped_when_asked() {
    use std::io::Read;
    let mut lab = Lab::start().await;
    let (status, headers, zipped) = lab.call_raw("GET", "/metrics", "", &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("content-encoding").map(|v| v.to_str().unwrap()), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&zipped[..]).read_to_string(&mut text).unwrap();
    let (_, plain) = lab.get("/metrics").await;
    assert!(text.contains("tierwatch_collector_build_info"), "{text}");
    assert!(zipped.len() * 3 < plain.len(), "{} bytes gzipped of {}", zipped.len(), plain.len());
    let (_, headers, _) = lab.call_raw("GET", "/metrics", "", &[("accept-encoding", "gzip;q=0, identity")]).await;
    assert!(headers.get("content-encoding").is_none(), "q=0 refuses gzip");
    lab.stop().await;
}

/// A stolen commune box: its certificate is revoked with `pki revoke`, and
/// from the next reload on its handshakes are refused while the other
/// nodes push on; the attempt is counted for the node and filed as a
/// `revoked_certificate` event with the address it came from.
#[tokio::test]
async fn a_revoked_certificate_is_refused_at_the_next_handshake_and_reported() {
    use tierwatch_collector::pki;
    let mut lab = Lab::start_with("  crl: pki/revoked.crl\n").await;
    let stolen = lab.client(&lab.pki, "nui-cam");
    let (status, _) = lab.push(stolen.clone(), probe_ok("nui-cam", 1)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let r = pki::revoke(&lab.pki, &pki::Revoke::Node(common::id("nui-cam"))).unwrap();
    assert!(r.added);
    // The running configuration keeps its list until it is reloaded.
    let (status, _) = lab.push(stolen.clone(), probe_ok("nui-cam", 2)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    lab.restart().await;
    let refused = lab.push(stolen.clone(), probe_ok("nui-cam", 3)).await;
    assert!(refused.is_err(), "a revoked certificate got through: {refused:?}");
    let honest = lab.client(&lab.pki, "giang-thanh");
    let (status, _) = lab.push(honest, probe_ok("giang-thanh", 1)).await.unwrap();
    assert_eq!(status, StatusCode::OK, "other nodes are not affected");
    let mut found = None;
    for _ in 0..50 {
        let (_, body) = lab.get("/api/v1/security/events?kind=revoked_certificate").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        found = v["events"].as_array().and_then(|a| a.first().cloned());
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let e = found.expect("a revoked_certificate event");
    assert_eq!((e["node"].as_str(), e["severity"].as_str()), (Some("nui-cam"), Some("critical")), "{e}");
    assert_eq!(e["attributes"]["src"], "127.0.0.1");
    assert_eq!(
        lab.metric(r#"tierwatch_collector_node_refusals_total{node="nui-cam",reason="revoked"}"#).await,
        Some(1.0)
    );
    lab.stop().await;
}
