//! Soak on loopback (no root): the collector and two honest agents for
//! MINUTES (default 60) while
//! - a service both agents probe flaps (up 90 s, down 60 s), paging through
//!   a webhook;
//! - the collector restarts every 10 minutes (SIGTERM and SIGKILL in turn)
//!   and an agent every 7 (SIGTERM, every third a SIGKILL);
//! - a hostile node (a stolen `nui-cam` certificate) pushes at and over its
//!   quotas: 20 pushes a second, each with 2,000 invented series and 50
//!   events of invented kinds;
//! - a stranger holds 64 connections to the HTTP port, dripping headers.
//!
//! Reports the collector's RSS (after a 2-minute warm-up, the peak, the
//! end), checks every batch the honest agents spooled was stored exactly
//! once, and that no incident was paged twice (`opened` twice without a
//! `resolved` between, or one notification delivered twice). Exits non-zero
//! when a check fails.
//!
//! `bench/soak.sh [MINUTES]` builds the release binaries and runs it.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use tierwatch_protocol::{Batch, Event, Label, MetricKind, Series, Severity, PROTOCOL_VERSION};
use tierwatch_tests::evidence::exactly_once;
use tierwatch_tests::loopback::Loopback;
use tierwatch_tests::{http_get, wait_for, Proc};

const FLAP_UP: Duration = Duration::from_secs(90);
const FLAP_DOWN: Duration = Duration::from_secs(60);
const COLLECTOR_RESTART: Duration = Duration::from_secs(600);
const AGENT_RESTART: Duration = Duration::from_secs(420);
const WARM_UP: Duration = Duration::from_secs(120);

/// A period of the soak; ten times shorter with `TW_SOAK_FAST=1` (a try-out of the harness).
fn period(d: Duration) -> Duration {
    if std::env::var_os("TW_SOAK_FAST").is_some() {
        d / 10
    } else {
        d
    }
}

const RULES: &str = "grouping:
  group_wait: 2s
rules:
  - name: portal_down
    metric: tierwatch_probe_success
    match: {target: portal}
    below: 1
    for: 2s
    problem: service
    severity: critical
    summary: {en: \"portal down from {{ node_name }}\", vi: \"portal down from {{ node_name }}\"}
";

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A TCP service that accepts while `up`, refuses (closed port) while down.
fn flapping_service(up: Arc<AtomicBool>) -> anyhow::Result<u16> {
    let port = tierwatch_tests::free_port();
    std::thread::spawn(move || {
        let mut listener: Option<TcpListener> = None;
        loop {
            match (up.load(Ordering::Relaxed), &listener) {
                (true, None) => listener = TcpListener::bind(("127.0.0.1", port)).ok(),
                (false, Some(_)) => listener = None,
                _ => {}
            }
            if let Some(l) = &listener {
                let _ = l.set_nonblocking(true);
                while let Ok((s, _)) = l.accept() {
                    drop(s);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Ok(port)
}

/// A webhook receiver: records (id, event, incident key) of every POST.
fn webhook(got: Arc<Mutex<Vec<(String, String, String)>>>) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let got = got.clone();
            std::thread::spawn(move || serve_hook(stream, got));
        }
    });
    Ok(port)
}

fn serve_hook(stream: TcpStream, got: Arc<Mutex<Vec<(String, String, String)>>>) {
    let Ok(read) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read);
    let mut out = stream;
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).map_or(true, |n| n == 0) {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).map_or(true, |n| n == 0) {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
            let field = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap_or("").to_string();
            got.lock().unwrap().push((field("/id"), field("/event"), field("/incident/key")));
        }
        if out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}

/// The stolen certificate: a TLS connection kept alive, pushing invented
/// series and event kinds 20 times a second; counts answers by status.
async fn hostile(lb_ingest: u16, pki: PathBuf, stop: Arc<AtomicBool>, statuses: Arc<Mutex<HashMap<u16, u64>>>) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let load = || -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let c = rustls::ClientConfig::builder_with_provider(tierwatch_runtime::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(tierwatch_runtime::tls::load_roots(&pki.join("ca.crt"))?)
            .with_client_auth_cert(
                tierwatch_runtime::tls::load_certs(&pki.join("nui-cam.crt"))?,
                tierwatch_runtime::tls::load_key(&pki.join("nui-cam.key"))?,
            )?;
        Ok(Arc::new(c))
    };
    let Ok(tls) = load() else { return };
    let mut seq = 0u64;
    let boot: Vec<u8> = (0..16).map(|_| rand::random()).collect();
    while !stop.load(Ordering::Relaxed) {
        let conn = async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", lb_ingest)).await.ok()?;
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").ok()?;
            let s = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.ok()?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.ok()?;
            tokio::spawn(conn);
            Some(send)
        };
        let Some(mut send) = conn.await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let now = tierwatch_protocol::now_ms();
            let series = (0..2000)
                .map(|i| {
                    let labels = vec![Label::new("target", format!("invented-{seq}-{i}"))];
                    Series::point("tierwatch_probe_success", MetricKind::Gauge, labels, now, 1.0)
                })
                .collect();
            let events = (0..50)
                .map(|i| {
                    Event::new(
                        &format!("invented_{}", (seq * 50 + i) % 100_000),
                        Severity::Warning,
                        now,
                        [("src", "10.9.9.9")],
                    )
                })
                .collect();
            let b = Batch {
                version: PROTOCOL_VERSION,
                node_id: "nui-cam".into(),
                agent_version: "hostile".into(),
                boot_id: boot.clone(),
                sequence: seq,
                config_hash: vec![0; 32],
                created_ms: now,
                series,
                events,
                push_interval_ms: 0,
            };
            let req = hyper::Request::post(tierwatch_protocol::PUSH_PATH)
                .header("host", "collector")
                .body(Full::new(bytes::Bytes::from(b.encode_to_vec())));
            let Ok(req) = req else { break };
            let answer = match send.send_request(req).await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let _ = r.into_body().collect().await;
                    status
                }
                Err(_) => 0,
            };
            *statuses.lock().unwrap().entry(answer).or_default() += 1;
            if answer == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A stranger on eight addresses holding 64 connections to `to`, each
/// dripping a header that never ends; reopened when the collector cuts them.
async fn slow_headers(to: SocketAddr, stop: Arc<AtomicBool>, cut: Arc<AtomicU64>) {
    use tokio::io::AsyncWriteExt;
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let (stop, cut) = (stop.clone(), cut.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(sock) = tokio::net::TcpSocket::new_v4() else { return };
                if sock.bind(SocketAddr::from(([127, 0, 0, 2 + i % 8], 0))).is_err() {
                    return;
                }
                let Ok(mut s) = sock.connect(to).await else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                let mut ok = s.write_all(b"GET / HTTP/1.1\r\nHost: collector\r\nX-Pad: ").await.is_ok();
                while ok && !stop.load(Ordering::Relaxed) {
                    ok = s.write_all(&[b'a'; 512]).await.is_ok();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                cut.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Pages delivered twice, and incidents opened twice without a resolve between.
fn duplicate_pages(got: &[(String, String, String)]) -> (Vec<String>, Vec<String>) {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (id, _, _) in got {
        *ids.entry(id.as_str()).or_default() += 1;
    }
    let redelivered = ids.into_iter().filter(|(_, n)| *n > 1).map(|(id, n)| format!("{id} x{n}")).collect();
    let mut open: HashMap<&str, bool> = HashMap::new();
    let mut reopened = Vec::new();
    let mut seen_ids = std::collections::HashSet::new();
    for (id, event, key) in got {
        if !seen_ids.insert(id.as_str()) {
            continue;
        }
        match event.as_str() {
            "opened" if open.insert(key, true) == Some(true) => {
                reopened.push(format!("{key} opened again while open ({id})"));
            }
            "resolved" => {
                open.insert(key, false);
            }
            _ => {}
        }
    }
    (redelivered, reopened)
}

fn main() -> anyhow::Result<()> {
    let minutes: u64 = std::env::args().nth(1).map(|m| m.parse()).transpose().context("MINUTES")?.unwrap_or(60);
    let total = Duration::from_secs(minutes * 60);
    let lb = Loopback::new()?;
    let up = Arc::new(AtomicBool::new(true));
    let portal = flapping_service(up.clone())?;
    let pages = Arc::new(Mutex::new(Vec::new()));
    let hook = webhook(pages.clone())?;
    std::fs::write(lb.path("rules.yaml"), RULES)?;
    // The loopback configuration logs each stored batch (for the exactly-once check).
    let extra = format!(
        "rules: rules.yaml\nnotify:\n  - name: oncall\n    webhook:\n      url: http://127.0.0.1:{hook}/hook\n"
    );
    let start_collector = |n: usize| -> anyhow::Result<Proc> {
        let file = lb.collector_config(&extra)?;
        let mut cmd = std::process::Command::new(tierwatch_tests::bin("tierwatch-collector"));
        cmd.args(["--config", file.to_str().context("utf-8")?, "--log-format", "json"])
            .stdout(std::process::Stdio::null());
        let p = Proc::spawn_command("collector", &mut cmd, &lb.path(&format!("collector-{n}.log")))?;
        let addr = lb.http_addr();
        wait_for(Duration::from_secs(20), "collector /readyz", || {
            http_get(addr, "/readyz").ok().filter(|(c, _)| *c == 200)
        })?;
        Ok(p)
    };
    let target = format!("  - name: portal\n    probe: tcp\n    host: 127.0.0.1\n    port: {portal}\n    interval: 1s\n    timeout: 500ms\n");
    let configs: Vec<PathBuf> = ["an-giang", "giang-thanh"]
        .iter()
        .map(|n| lb.agent_config(n, "2s", "", None, &target))
        .collect::<anyhow::Result<_>>()?;
    let mut collector_logs = Vec::new();
    let mut agent_logs: Vec<PathBuf> = Vec::new();
    let mut collector = start_collector(0)?;
    collector_logs.push(lb.path("collector-0.log"));
    let mut agents: Vec<Proc> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let log = format!("agent-{i}-0.log");
        agents.push(lb.start_agent(&format!("agent-{i}"), c, &log)?);
        agent_logs.push(lb.path(&log));
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(HashMap::new()));
    let cut = Arc::new(AtomicU64::new(0));
    let h1 = rt.spawn(hostile(lb.ingest, lb.pki.dir.clone(), stop.clone(), statuses.clone()));
    let h2 = rt.spawn(slow_headers(lb.http_addr(), stop.clone(), cut.clone()));

    let began = Instant::now();
    let (mut next_flap, mut next_collector, mut next_agent) =
        (began + period(FLAP_UP), began + period(COLLECTOR_RESTART), began + period(AGENT_RESTART));
    let (mut collector_restarts, mut agent_restarts, mut flaps) = (0usize, 0usize, 0usize);
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut next_sample = began;
    while began.elapsed() < total {
        let now = Instant::now();
        if now >= next_sample {
            if let Some(kb) = rss_kb(collector.pid()) {
                samples.push((began.elapsed(), kb));
            }
            next_sample += Duration::from_secs(5);
        }
        if now >= next_flap {
            let was = up.fetch_xor(true, Ordering::Relaxed);
            next_flap = now + period(if was { FLAP_DOWN } else { FLAP_UP });
            flaps += 1;
        }
        if now >= next_collector {
            collector_restarts += 1;
            if collector_restarts % 2 == 0 {
                collector.kill();
            } else {
                collector.terminate(Duration::from_secs(30))?;
            }
            collector = start_collector(collector_restarts)?;
            collector_logs.push(lb.path(&format!("collector-{collector_restarts}.log")));
            next_collector = now + period(COLLECTOR_RESTART);
        }
        if now >= next_agent {
            agent_restarts += 1;
            let i = agent_restarts % agents.len();
            if agent_restarts % 3 == 0 {
                agents[i].kill();
            } else {
                agents[i].terminate(Duration::from_secs(30))?;
            }
            let log = format!("agent-{i}-{agent_restarts}.log");
            agents[i] = lb.start_agent(&format!("agent-{i}"), &configs[i], &log)?;
            agent_logs.push(lb.path(&log));
            next_agent = now + period(AGENT_RESTART);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The service back up, the agents' backlogs drained, then stop.
    up.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(15));
    for a in &mut agents {
        a.terminate(Duration::from_secs(30))?;
    }
    let end_rss = rss_kb(collector.pid());
    collector.terminate(Duration::from_secs(30))?;
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            let _ = h1.await;
            let _ = h2.await;
        })
        .await;
    });

    let warm: Vec<&(Duration, u64)> = samples.iter().filter(|(t, _)| *t >= period(WARM_UP)).collect();
    let start_rss = warm.first().map(|s| s.1).unwrap_or(0);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let last = samples.last().map(|s| s.1).unwrap_or(0);
    println!("soak: {minutes} min on loopback; {flaps} flaps, {collector_restarts} collector restarts, {agent_restarts} agent restarts");
    println!(
        "collector RSS: {:.1} MB after warm-up, peak {:.1} MB, end {:.1} MB (at stop {:?} kB)",
        start_rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        last as f64 / 1024.0,
        end_rss
    );
    let mut by_status: Vec<(u16, u64)> = statuses.lock().unwrap().iter().map(|(k, v)| (*k, *v)).collect();
    by_status.sort();
    println!("hostile node pushes by status: {by_status:?} (0: connection lost)");
    println!("slow-header connections cut by the collector: {}", cut.load(Ordering::Relaxed));
    let honest = exactly_once(&agent_logs, &collector_logs);
    match &honest {
        Ok((spooled, dups)) => {
            println!("honest batches: {spooled} spooled, all stored exactly once ({dups} resent copies acknowledged)")
        }
        Err(e) => println!("honest batches: LOST OR DOUBLED: {e}"),
    }
    let got = pages.lock().unwrap().clone();
    let (redelivered, reopened) = duplicate_pages(&got);
    let opened = got.iter().filter(|p| p.1 == "opened").count();
    let resolved = got.iter().filter(|p| p.1 == "resolved").count();
    println!(
        "pages: {} ({opened} opened, {resolved} resolved); delivered twice: {}; opened twice: {}",
        got.len(),
        redelivered.len(),
        reopened.len()
    );
    for d in redelivered.iter().chain(&reopened).take(10) {
        println!("  {d}");
    }
    let csv: String = samples.iter().map(|(t, kb)| format!("{},{kb}\n", t.as_secs())).collect();
    std::fs::write("target/soak-rss.csv", csv).ok();
    honest?;
    anyhow::ensure!(reopened.is_empty() && redelivered.is_empty(), "duplicate pages");
    anyhow::ensure!(opened > 0, "the flapping service paged nothing");
    Ok(())
}
