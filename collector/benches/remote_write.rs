//! remote_write throughput: agents' batches pushed over mTLS to a collector
//! in this process, forwarded by remote_write to a receiver, timed until the
//! receiver has every sample. Receivers: a sink in this process that only
//! decompresses and decodes (the collector's own ceiling), and Debian's
//! Prometheus with its remote-write receiver when installed (end to end).
//! Run: `cargo bench -p tierwatch-collector --bench remote_write`.
// A failed setup is a failed test (or bench): unwrapping says where.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use prost::Message;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tierwatch_collector::pki::{self, Usage};
use tierwatch_collector::remote_write::proto::WriteRequest;
use tierwatch_protocol::testing::typical_batch;
use tierwatch_protocol::NodeId;
use tierwatch_runtime::http_client::{HttpConn, Tls};
use tierwatch_runtime::tls::{load_certs, load_key, load_roots, provider};
use tokio_util::sync::CancellationToken;

const NODES: usize = 10;
const BATCHES_PER_NODE: u64 = 200;
const ROUNDS: usize = 4;

async fn sink(counter: Arc<AtomicU64>) -> SocketAddr {
    use axum::routing::post;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/api/v1/write",
        post(move |body: Bytes| {
            let c = counter.clone();
            async move {
                let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
                let w = WriteRequest::decode(raw.as_slice()).unwrap();
                c.fetch_add(w.timeseries.iter().map(|t| t.samples.len() as u64).sum(), Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn setup(root: &Path, remote: &str) {
    let p = root.join("pki");
    pki::init(&p, "bench CA", 2, false).unwrap();
    let id = |s: &str| NodeId::new(s).unwrap();
    pki::issue(&p, &id("collector"), &Usage::Server { sans: vec!["127.0.0.1".into()] }, 2, false).unwrap();
    let mut topo = String::from("nodes:\n  - id: an-giang\n    tier: province\n    name: P\n");
    for i in 0..NODES {
        pki::issue(&p, &id(&format!("c{i}")), &Usage::Client, 2, false).unwrap();
        topo.push_str(&format!("  - id: c{i}\n    tier: commune\n    name: C{i}\n    parent: an-giang\n"));
    }
    std::fs::write(root.join("topology.yaml"), topo).unwrap();
    std::fs::write(
        root.join("collector.yaml"),
        format!("log_level: warn\ntopology: topology.yaml\ningest:\n  listen: 127.0.0.1:0\n  ca: pki/ca.crt\n  cert: pki/collector.crt\n  key: pki/collector.key\nhttp:\n  listen: 127.0.0.1:0\nstate_dir: state\nremote_write:\n  - name: bench\n    url: {remote}\n"),
    )
    .unwrap();
}

fn client(root: &Path, node: &str) -> Arc<ClientConfig> {
    let p = root.join("pki");
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(load_roots(&p.join("ca.crt")).unwrap())
        .with_client_auth_cert(
            load_certs(&p.join(format!("{node}.crt"))).unwrap(),
            load_key(&p.join(format!("{node}.key"))).unwrap(),
        )
        .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// Pushes every node's batches (nodes in parallel) and returns the samples sent.
async fn push_all(root: &Path, ingest: SocketAddr) -> u64 {
    let mut tasks = Vec::new();
    for i in 0..NODES {
        let node = format!("c{i}");
        let tls =
            Tls { connector: client(root, &node).into(), server_name: ServerName::try_from("127.0.0.1").unwrap() };
        tasks.push(tokio::spawn(async move {
            let mut conn = HttpConn::new("127.0.0.1", ingest.port(), Some(tls));
            let mut samples = 0u64;
            for seq in 1..=BATCHES_PER_NODE {
                let mut b = typical_batch(ROUNDS);
                b.node_id = node.clone();
                b.sequence = seq;
                // Distinct timestamps per batch, so the TSDB keeps every sample.
                for s in &mut b.series {
                    for p in &mut s.points {
                        p.timestamp_ms -= seq as i64;
                    }
                }
                samples += b.series.iter().map(|s| s.points.len() as u64).sum::<u64>();
                let req = hyper::Request::post(tierwatch_protocol::PUSH_PATH)
                    .header("host", "collector")
                    .body(Full::new(Bytes::from(b.encode_to_vec())))
                    .unwrap();
                let r = conn.send(req).await.unwrap();
                assert!(r.status.is_success(), "{:?}", r.body);
            }
            samples
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

async fn run(label: &str, remote: &str, received: impl Fn() -> u64) {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), remote);
    let config = tierwatch_collector::config::Config::load(&dir.path().join("collector.yaml")).unwrap();
    let collector = tierwatch_collector::server::start(config, CancellationToken::new()).await.unwrap();
    let before = received();
    let t = Instant::now();
    let samples = push_all(dir.path(), collector.ingest_addr).await;
    let ingested = t.elapsed();
    while received() - before < samples {
        if t.elapsed() > Duration::from_secs(300) {
            panic!("{label}: only {} of {samples} samples arrived", received() - before);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all = t.elapsed();
    collector.shutdown().await;
    println!(
        "{label}: {samples} samples in {} batches from {NODES} nodes: ingest {:.0} samples/s, through remote_write {:.0} samples/s ({:.2} s)",
        NODES as u64 * BATCHES_PER_NODE,
        samples as f64 / ingested.as_secs_f64(),
        samples as f64 / all.as_secs_f64(),
        all.as_secs_f64()
    );
}

/// Samples Prometheus appended, from its own `/metrics` (it does not scrape itself here).
fn prometheus_samples(addr: SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return 0 };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        // In-order and out-of-order appends are counted apart.
        .filter(|l| {
            l.starts_with("prometheus_tsdb_head_samples_appended_total")
                || l.starts_with("prometheus_tsdb_head_out_of_order_samples_appended_total")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let counter = Arc::new(AtomicU64::new(0));
        let addr = sink(counter.clone()).await;
        run("sink (decode only)", &format!("http://{addr}/api/v1/write"), || counter.load(Ordering::Relaxed)).await;
    });
    let installed =
        std::process::Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success());
    if !installed {
        println!("Prometheus not installed: end-to-end figure skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    std::fs::write(dir.path().join("p.yml"), "global: {}\nstorage:\n  tsdb:\n    out_of_order_time_window: 1h\n")
        .unwrap();
    /// Kills Prometheus even when the bench panics.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prom = Guard(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("p.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-remote-write-receiver")
            .arg("--log.level=error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..300 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    rt.block_on(run("Prometheus 2.42 receiver", &format!("http://{addr}/api/v1/write"), || prometheus_samples(addr)));
}
