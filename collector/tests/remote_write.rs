//! remote_write against a local receiver that records what it gets and
//! answers as told: the spec's headers and encoding, original timestamps,
//! identity labels, retries on 5xx, drops on 4xx, and a queue that survives
//! a collector restart while the receiver is down.
// A failed setup is a failed test (or bench): unwrapping says where.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::Lab;
use prost::Message;
use tierwatch_collector::remote_write::proto::WriteRequest;
use tierwatch_protocol::{Batch, Label, MetricKind, Point, Series, PROTOCOL_VERSION};

#[derive(Default)]
struct Receiver {
    /// Statuses to answer with, in order; 204 when empty.
    script: Vec<u16>,
    got: Vec<(HeaderMap, WriteRequest)>,
    attempts: usize,
}

type Shared = Arc<Mutex<Receiver>>;

async fn write(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut r = r.lock().unwrap();
    r.attempts += 1;
    let status = if r.script.is_empty() { 204 } else { r.script.remove(0) };
    if status == 204 {
        let raw = snap::raw::Decoder::new().decompress_vec(&body).expect("snappy block format");
        r.got.push((headers, WriteRequest::decode(raw.as_slice()).expect("WriteRequest")));
    }
    StatusCode::from_u16(status).unwrap()
}

async fn receiver_on(listener: tokio::net::TcpListener, script: Vec<u16>) -> Shared {
    let shared: Shared = Arc::new(Mutex::new(Receiver { script, ..Default::default() }));
    let app = axum::Router::new().route("/api/v1/write", post(write)).with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    shared
}

async fn receiver(script: Vec<u16>) -> (SocketAddr, Shared) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (addr, receiver_on(l, script).await)
}

fn batch(seq: u64, ts: i64) -> Vec<u8> {
    Batch {
        version: PROTOCOL_VERSION,
        node_id: "nui-cam".into(),
        agent_version: "t".into(),
        boot_id: vec![5; 16],
        sequence: seq,
        config_hash: vec![0; 32],
        created_ms: ts,
        series: vec![Series {
            name: "tierwatch_icmp_loss_ratio".into(),
            kind: MetricKind::Gauge as i32,
            labels: vec![Label::new("target", "gw")],
            points: vec![Point { timestamp_ms: ts, value: 0.25 }],
        }],
        events: vec![],
        push_interval_ms: 0,
    }
    .encode_to_vec()
}

fn config(addr: SocketAddr) -> String {
    format!("remote_write:\n  - name: test\n    url: http://{addr}/api/v1/write\n    timeout: 2s\n    max_samples_per_send: 2\n")
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn samples(r: &Shared) -> Vec<(i64, f64)> {
    let r = r.lock().unwrap();
    r.got
        .iter()
        .flat_map(|(_, w)| w.timeseries.iter().flat_map(|t| t.samples.iter().map(|s| (s.timestamp, s.value))))
        .collect()
}

#[tokio::test]
async fn samples_arrive_per_spec_with_original_timestamps_and_identity() {
    let (addr, rx) = receiver(vec![]).await;
    let mut lab = Lab::start_full("", &config(addr)).await;
    let client = lab.client(&lab.pki, "nui-cam");
    let t0 = tierwatch_protocol::now_ms() - 3_600_000;
    for i in 0..3 {
        lab.push(client.clone(), batch(i + 1, t0 + i as i64 * 1000)).await.unwrap();
    }
    until("3 samples", || samples(&rx).len() == 3).await;
    let (h, w) = rx.lock().unwrap().got[0].clone();
    assert_eq!(h["content-encoding"], "snappy");
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
    assert!(h["user-agent"].to_str().unwrap().starts_with("tierwatch-collector/"));
    let labels: Vec<(String, String)> =
        w.timeseries[0].labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
    let want = [
        ("__name__", "tierwatch_icmp_loss_ratio"),
        ("node", "nui-cam"),
        ("parent", "an-giang"),
        ("province", "an-giang"),
        ("target", "gw"),
        ("tier", "commune"),
    ];
    assert_eq!(labels, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(w.timeseries[0].samples[0].timestamp, t0, "the agent's timestamp, an hour old");
    lab.stop().await;
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_dropped() {
    let (addr, rx) = receiver(vec![503, 500]).await;
    let mut lab = Lab::start_full("", &config(addr)).await;
    let client = lab.client(&lab.pki, "nui-cam");
    let t0 = tierwatch_protocol::now_ms();
    lab.push(client.clone(), batch(1, t0)).await.unwrap();
    // 503, 500: retried; the third attempt gets through.
    until("the first sample after two retries", || samples(&rx).len() == 1).await;
    assert_eq!(rx.lock().unwrap().attempts, 3);
    rx.lock().unwrap().script = vec![400];
    lab.push(client.clone(), batch(2, t0 + 1)).await.unwrap();
    until("the 400", || rx.lock().unwrap().attempts == 4).await;
    lab.push(client.clone(), batch(3, t0 + 2)).await.unwrap();
    until("the next batch after a drop", || samples(&rx).len() == 2).await;
    assert_eq!(samples(&rx).iter().map(|s| s.0).collect::<Vec<_>>(), vec![t0, t0 + 2]);
    assert_eq!(
        lab.metric(r#"tierwatch_collector_remote_write_samples_total{remote="test",result="retried"}"#).await,
        Some(2.0)
    );
    assert_eq!(
        lab.metric(r#"tierwatch_collector_remote_write_samples_total{remote="test",result="dropped"}"#).await,
        Some(1.0)
    );
    assert_eq!(
        lab.metric(r#"tierwatch_collector_remote_write_samples_total{remote="test",result="sent"}"#).await,
        Some(2.0)
    );
    assert_eq!(
        lab.metric(r#"tierwatch_collector_remote_write_requests_total{code="503",remote="test"}"#).await,
        Some(1.0)
    );
    lab.stop().await;
}

#[tokio::test]
async fn the_queue_survives_a_restart_while_the_receiver_is_down() {
    // Reserve a port, then close it: the receiver is "down" until it binds again.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut lab = Lab::start_full("", &config(addr)).await;
    let client = lab.client(&lab.pki, "nui-cam");
    let t0 = tierwatch_protocol::now_ms();
    for i in 0..5 {
        lab.push(client.clone(), batch(i + 1, t0 + i as i64)).await.unwrap();
    }
    assert_eq!(lab.metric(r#"tierwatch_collector_remote_write_queue_batches{remote="test"}"#).await, Some(5.0));
    lab.restart().await;
    let rx = receiver_on(tokio::net::TcpListener::bind(addr).await.unwrap(), vec![]).await;
    until("the 5 queued samples", || samples(&rx).len() == 5).await;
    let mut ts: Vec<i64> = samples(&rx).iter().map(|s| s.0).collect();
    ts.sort();
    assert_eq!(ts, (0..5).map(|i| t0 + i).collect::<Vec<_>>(), "each once, in order");
    let mut left = None;
    for _ in 0..100 {
        left = lab.metric(r#"tierwatch_collector_remote_write_queue_batches{remote="test"}"#).await;
        if left == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, Some(0.0), "sent rows leave the queue");
    lab.stop().await;
}

fn batch_of(node: &str, seq: u64, ts: i64, series: usize) -> Vec<u8> {
    Batch {
        version: PROTOCOL_VERSION,
        node_id: node.into(),
        agent_version: "t".into(),
        boot_id: vec![6; 16],
        sequence: seq,
        config_hash: vec![0; 32],
        created_ms: ts,
        series: (0..series)
            .map(|i| Series {
                name: "tierwatch_icmp_loss_ratio".into(),
                kind: MetricKind::Gauge as i32,
                labels: vec![Label::new("target", format!("padding-target-with-a-long-name-{i:05}"))],
                points: vec![Point { timestamp_ms: ts, value: 0.5 }],
            })
            .collect(),
        events: vec![],
        push_interval_ms: 0,
    }
    .encode_to_vec()
}

/// One node pushing hard while the receiver is down fills the 1 MiB queue:
/// the rows dropped are its own oldest, never the other node's.
#[tokio::test]
async fn a_full_queue_drops_from_the_node_holding_the_most() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let conf = format!("remote_write:\n  - name: test\n    url: http://{addr}/api/v1/write\n    timeout: 2s\n    max_queue_bytes: 1048576\n");
    let mut lab = Lab::start_full("", &conf).await;
    let honest = lab.client(&lab.pki, "giang-thanh");
    let hostile = lab.client(&lab.pki, "nui-cam");
    let t0 = tierwatch_protocol::now_ms();
    for i in 0..5 {
        let (status, _) = lab.push(honest.clone(), batch_of("giang-thanh", i + 1, t0 + i as i64, 1)).await.unwrap();
        assert_eq!(status, 200);
    }
    // About 100 KB per row: 30 rows are three times the queue.
    for i in 0..30 {
        let (status, _) =
            lab.push(hostile.clone(), batch_of("nui-cam", i + 1, t0 + 100 + i as i64, 1500)).await.unwrap();
        assert_eq!(status, 200);
    }
    let dropped = lab.metric(r#"tierwatch_collector_remote_write_samples_total{remote="test",result="dropped"}"#).await;
    assert!(dropped.is_some_and(|d| d > 0.0), "the queue overflowed: {dropped:?}");
    let rx = receiver_on(tokio::net::TcpListener::bind(addr).await.unwrap(), vec![]).await;
    let honest_ts: Vec<i64> = (0..5).map(|i| t0 + i).collect();
    until("the honest node's 5 samples", || {
        let got: Vec<i64> = samples(&rx).iter().map(|s| s.0).filter(|t| honest_ts.contains(t)).collect();
        got.len() == 5
    })
    .await;
    lab.stop().await;
}
