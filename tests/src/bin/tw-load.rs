//! Load generator (issue 19): the collector on loopback under N agents, each
//! with its own certificate (issued here, in memory, by the test CA), its
//! own TLS connection, boot id and sequence, pushing SERIES series every
//! INTERVAL seconds (starts spread over the interval), with the shipped
//! `config/rules.yaml`. After a warm-up of one interval it measures for
//! SECONDS: the collector's CPU (user + system, from /proc), its RSS, the
//! push latency (p50, p99, max), failed pushes; then SCRAPES back-to-back
//! `/metrics` scrapes (gzip, as Prometheus asks), each one's time and the
//! push latency while they run.
//!
//! `tw-load [AGENTS] [SERIES] [INTERVAL_S] [SECONDS] [SCRAPES]` (default
//! 3400 200 15 120 3). No root needed; needs `ulimit -n` above 2 × AGENTS.
//! Not yet: backlog mode and the paced Prometheus remote-write reference.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use tierwatch_protocol::{Batch, Label, MetricKind, Series, PROTOCOL_VERSION};
use tierwatch_tests::{bin, free_port, wait_for, Pki, Proc};

/// Push latencies (µs) and failures, split by whether a scrape was running.
#[derive(Default)]
struct Record {
    normal: Vec<u64>,
    scraping: Vec<u64>,
    failed: u64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> =
        std::env::args().skip(1).map(|a| a.parse().context("arguments are numbers")).collect::<Result<_, _>>()?;
    let arg = |i: usize, d: u64| args.get(i).copied().unwrap_or(d);
    let (agents, series, interval, seconds, scrapes) =
        (arg(0, 3400) as usize, arg(1, 200) as usize, Duration::from_secs(arg(2, 15)), arg(3, 120), arg(4, 3));
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let pki = Pki::new(&d.join("pki"))?;
    let nodes = topology(d, agents)?;
    eprintln!("issuing {} certificates", nodes.len());
    issue(&pki.dir, &nodes)?;
    let (ingest, http) = (free_port(), free_port());
    let rules = tierwatch_tests::workspace().join("config/rules.yaml");
    std::fs::write(
        d.join("collector.yaml"),
        format!(
            "log_level: warn\ntopology: topology.yaml\nrules: {}\ningest:\n  listen: 127.0.0.1:{ingest}\n  ca: pki/ca.crt\n  cert: pki/collector.crt\n  key: pki/collector.key\n  connections: {{max: {max}, per_source: {max}}}\nhttp:\n  listen: 127.0.0.1:{http}\nstate_dir: state\n",
            rules.display(),
            max = agents + 100,
        ),
    )?;
    let mut cmd = std::process::Command::new(bin("tierwatch-collector"));
    cmd.current_dir(d).args(["--config", "collector.yaml"]).stdout(std::process::Stdio::null());
    let collector = Proc::spawn_command("collector", &mut cmd, &d.join("collector.log"))?;
    let http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], http));
    wait_for(Duration::from_secs(30), "collector ready", || {
        tierwatch_tests::http_get(http_addr, "/readyz").ok().filter(|(c, _)| *c == 200)
    })
    .with_context(|| collector.log_text())?;

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let record = Arc::new(Mutex::new(Record::default()));
    let (stop, scraping, samples) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let communes: Vec<String> = nodes.iter().filter(|(_, parent)| parent.is_some()).map(|(id, _)| id.clone()).collect();
    for (i, node) in communes.iter().enumerate() {
        let offset = interval.mul_f64(i as f64 / communes.len() as f64);
        let a = Agent { node: node.clone(), pki: pki.dir.clone(), port: ingest, series, interval, offset };
        rt.spawn(a.run(record.clone(), stop.clone(), scraping.clone(), samples.clone()));
    }
    eprintln!("{} agents pushing {series} series every {interval:?}; warm-up", communes.len());
    std::thread::sleep(interval + Duration::from_secs(5));
    *record.lock().unwrap() = Record::default();
    let (cpu0, t0, n0) = (cpu_seconds(collector.pid())?, Instant::now(), samples.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs(seconds));
    let (cpu1, elapsed, n1) =
        (cpu_seconds(collector.pid())?, t0.elapsed().as_secs_f64(), samples.load(Ordering::Relaxed));
    let rss_before = rss_mib(collector.pid())?;
    let steady = std::mem::take(&mut *record.lock().unwrap());

    // Back-to-back scrapes.
    let mut scrape_times = Vec::new();
    let cpu_s0 = cpu_seconds(collector.pid())?;
    scraping.store(true, Ordering::Relaxed);
    for _ in 0..scrapes {
        let t = Instant::now();
        let size = scrape(http_addr)?;
        scrape_times.push((t.elapsed().as_secs_f64(), size));
    }
    scraping.store(false, Ordering::Relaxed);
    let cpu_s1 = cpu_seconds(collector.pid())?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss_mib(collector.pid())?;
    stop.store(true, Ordering::Relaxed);
    let during = std::mem::take(&mut *record.lock().unwrap());
    rt.shutdown_timeout(Duration::from_secs(5));

    let rate = (n1 - n0) as f64 / elapsed;
    let cpu = cpu1 - cpu0;
    println!(
        "tw-load: {} agents x {series} series / {interval:?}, measured {elapsed:.0} s, shipped rules",
        communes.len()
    );
    println!("  samples/s             {rate:.0}");
    println!(
        "  collector CPU         {:.3} cores, {:.2} CPU-s per million samples",
        cpu / elapsed,
        cpu / ((n1 - n0) as f64 / 1e6)
    );
    println!("  push latency          {}", latencies(&steady.normal, steady.failed));
    for (i, (t, size)) in scrape_times.iter().enumerate() {
        println!("  scrape {}              {t:.2} s, {:.1} MB gzip", i + 1, *size as f64 / 1e6);
    }
    println!("  scrapes' CPU          {:.2} CPU-s for {scrapes}", cpu_s1 - cpu_s0);
    println!("  push during scrapes   {}", latencies(&during.scraping, during.failed));
    println!("  collector RSS         {rss_before:.0} MiB before the scrapes, {rss_after:.0} MiB after");
    drop(collector);
    Ok(())
}

/// Writes topology.yaml: 34 provinces, `agents` communes spread over them.
/// Returns (id, parent) of every node.
fn topology(dir: &Path, agents: usize) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let mut nodes = Vec::new();
    let mut y = String::from("nodes:\n");
    for p in 1..=34 {
        let id = format!("p{p:02}");
        y.push_str(&format!("  - id: {id}\n    tier: province\n    name: Tỉnh {p}\n"));
        nodes.push((id, None));
    }
    for c in 0..agents {
        let (id, parent) = (format!("p{:02}-c{:04}", c % 34 + 1, c), format!("p{:02}", c % 34 + 1));
        y.push_str(&format!("  - id: {id}\n    tier: commune\n    name: Xã {c}\n    parent: {parent}\n"));
        nodes.push((id, Some(parent)));
    }
    std::fs::write(dir.join("topology.yaml"), y)?;
    Ok(nodes)
}

/// Issues a client certificate for every commune, as `pki issue` does, in
/// one process (thousands of CLI runs would take minutes).
fn issue(pki: &Path, nodes: &[(String, Option<String>)]) -> anyhow::Result<()> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key"))?)?;
    let ca =
        CertificateParams::from_ca_cert_pem(&std::fs::read_to_string(pki.join("ca.crt"))?)?.self_signed(&ca_key)?;
    for (id, _) in nodes.iter().filter(|(_, p)| p.is_some()) {
        let mut params = CertificateParams::new(vec![id.clone()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.as_str());
        dn.push(DnType::OrganizationName, "tierwatch");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        std::fs::write(pki.join(format!("{id}.key")), key.serialize_pem())?;
        std::fs::write(pki.join(format!("{id}.crt")), cert.pem())?;
    }
    Ok(())
}

/// One simulated agent.
struct Agent {
    node: String,
    pki: PathBuf,
    port: u16,
    series: usize,
    interval: Duration,
    offset: Duration,
}

impl Agent {
    async fn run(
        self,
        record: Arc<Mutex<Record>>,
        stop: Arc<AtomicBool>,
        scraping: Arc<AtomicBool>,
        samples: Arc<AtomicU64>,
    ) {
        use http_body_util::{BodyExt, Full};
        use hyper_util::rt::TokioIo;
        let tls = rustls::ClientConfig::builder_with_provider(tierwatch_runtime::tls::provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                let roots = tierwatch_runtime::tls::load_roots(&self.pki.join("ca.crt"))
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                let certs = tierwatch_runtime::tls::load_certs(&self.pki.join(format!("{}.crt", self.node)))
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                let key = tierwatch_runtime::tls::load_key(&self.pki.join(format!("{}.key", self.node)))
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                b.with_root_certificates(roots).with_client_auth_cert(certs, key)
            });
        let Ok(tls) = tls.map(Arc::new) else {
            record.lock().unwrap().failed += 1;
            return;
        };
        let boot: Vec<u8> = (0..16).map(|_| rand::random()).collect();
        let mut seq = 0u64;
        tokio::time::sleep(self.offset).await;
        let mut tick = tokio::time::interval(self.interval);
        let mut send = None;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if send.is_none() {
                let conn = async {
                    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
                    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").ok()?;
                    let s = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.ok()?;
                    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.ok()?;
                    tokio::spawn(conn);
                    Some(send)
                };
                send = conn.await;
            }
            let Some(s) = send.as_mut() else {
                record.lock().unwrap().failed += 1;
                continue;
            };
            seq += 1;
            let now = tierwatch_protocol::now_ms();
            let series = (0..self.series)
                .map(|i| {
                    let labels = vec![Label::new("probe", "tcp"), Label::new("target", format!("svc-{}", i / 2))];
                    if i % 2 == 0 {
                        Series::point("tierwatch_probe_success", MetricKind::Gauge, labels, now, 1.0)
                    } else {
                        Series::point("tierwatch_probe_duration_seconds", MetricKind::Gauge, labels, now, 0.01)
                    }
                })
                .collect();
            let b = Batch {
                version: PROTOCOL_VERSION,
                node_id: self.node.clone(),
                agent_version: "tw-load".into(),
                boot_id: boot.clone(),
                sequence: seq,
                config_hash: vec![0; 32],
                created_ms: now,
                series,
                events: Vec::new(),
                push_interval_ms: self.interval.as_millis() as u32,
            };
            let req = hyper::Request::post(tierwatch_protocol::PUSH_PATH)
                .header("host", "collector")
                .body(Full::new(bytes::Bytes::from(b.encode_to_vec())));
            let Ok(req) = req else { continue };
            let during = scraping.load(Ordering::Relaxed);
            let t = Instant::now();
            let ok = match s.send_request(req).await {
                Ok(r) => {
                    let ok = r.status().is_success();
                    let _ = r.into_body().collect().await;
                    ok
                }
                Err(_) => false,
            };
            let us = t.elapsed().as_micros() as u64;
            let mut rec = record.lock().unwrap();
            if ok {
                samples.fetch_add(self.series as u64, Ordering::Relaxed);
                if during || scraping.load(Ordering::Relaxed) {
                    rec.scraping.push(us);
                } else {
                    rec.normal.push(us);
                }
            } else {
                rec.failed += 1;
                send = None;
            }
        }
    }
}

/// One gzip scrape of `/metrics`; returns its size in bytes.
fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<usize> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: collector\r\nAccept-Encoding: gzip\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    anyhow::ensure!(
        body.starts_with(b"HTTP/1.1 200") || body.starts_with(b"HTTP/1.0 200"),
        "scrape: {:?}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
    Ok(body.len())
}

/// p50, p99 and max of push latencies `v` (µs), and the counts.
fn latencies(v: &[u64], failed: u64) -> String {
    let mut s = v.to_vec();
    s.sort_unstable();
    let q = |q: f64| match s.len() {
        0 => "-".to_string(),
        n => format!("{:.1} ms", s[((n - 1) as f64 * q).round() as usize] as f64 / 1000.0),
    };
    format!("p50 {} p99 {} max {} ({} pushes, {failed} failed)", q(0.5), q(0.99), q(1.0), s.len())
}

/// User + system CPU seconds of process `pid`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Resident memory of `pid`, MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}
