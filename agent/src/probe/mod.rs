//! Probes: each runs one measurement of a target and turns it into series.

pub mod icmp;
pub mod tcp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tierwatch_protocol::catalogue::{self, MetricDef};
use tierwatch_protocol::{Label, Point, Series};

use crate::config::{ProbeKind, ProbeSpec, Target};
use icmp::IcmpEngine;

/// The ICMP engine, or why there is none (reported by every ICMP probe).
#[derive(Clone)]
pub enum Icmp {
    Ready(Arc<IcmpEngine>),
    Unavailable(Arc<str>),
}

impl Icmp {
    /// Opens the engine, keeping the error for the probes to report.
    pub fn open() -> Icmp {
        match IcmpEngine::open() {
            Ok(e) => Icmp::Ready(Arc::new(e)),
            Err(e) => Icmp::Unavailable(e.to_string().into()),
        }
    }
}

/// What one probe run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: String,
    pub kind: ProbeKind,
    pub success: bool,
    pub duration: Duration,
    /// The series to push, stamped with the probe's start time.
    pub series: Vec<Series>,
    /// Human-readable lines for `tierwatch-agent probe`.
    pub detail: Vec<String>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

fn series(def: &MetricDef, labels: &[(&str, &str)], value: f64, ts: i64) -> Series {
    debug_assert_eq!(def.labels.len(), labels.len(), "{} labels", def.name);
    Series {
        name: def.name.to_string(),
        kind: def.kind as i32,
        labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
        points: vec![Point { timestamp_ms: ts, value }],
    }
}

/// Resolves a host name or address; IPv4 preferred.
pub async fn resolve(host: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, 0)).await.map_err(|e| format!("resolving {host}: {e}"))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| a.ip())
        .ok_or_else(|| format!("resolving {host}: no addresses"))
}

/// Runs one probe of `target`.
pub async fn run(target: &Target, icmp: &Icmp) -> Outcome {
    let started = Instant::now();
    let ts = tierwatch_protocol::now_ms();
    let name = target.name.as_str();
    let mut out = Outcome {
        target: target.name.clone(),
        kind: target.kind(),
        success: false,
        duration: Duration::ZERO,
        series: Vec::new(),
        detail: Vec::new(),
        error: None,
    };
    match resolve(&target.host).await {
        Err(e) => out.error = Some(e),
        Ok(ip) => {
            out.detail.push(format!("resolved {} to {ip}", target.host));
            match &target.spec {
                ProbeSpec::Icmp { count, spacing } => {
                    icmp_round(&mut out, icmp, ip, *count, *spacing, target.timeout, ts).await
                }
                ProbeSpec::Tcp { port } => tcp_connect(&mut out, SocketAddr::new(ip, *port), target.timeout, ts).await,
            }
        }
    }
    out.duration = started.elapsed();
    let probe = out.kind.as_str();
    out.series.push(series(
        &catalogue::PROBE_SUCCESS,
        &[("probe", probe), ("target", name)],
        out.success as u8 as f64,
        ts,
    ));
    out.series.push(series(
        &catalogue::PROBE_DURATION,
        &[("probe", probe), ("target", name)],
        out.duration.as_secs_f64(),
        ts,
    ));
    out
}

async fn icmp_round(
    out: &mut Outcome,
    icmp: &Icmp,
    ip: IpAddr,
    count: u32,
    spacing: Duration,
    timeout: Duration,
    ts: i64,
) {
    let engine = match icmp {
        Icmp::Ready(e) => e,
        Icmp::Unavailable(why) => {
            out.error = Some(why.to_string());
            return;
        }
    };
    out.detail.push(format!(
        "{count} echo requests {spacing:?} apart, timeout {timeout:?}, {} socket",
        engine.kind().as_str()
    ));
    let round = match engine.round(ip, count, spacing, timeout).await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e.to_string());
            return;
        }
    };
    for (i, rtt) in round.rtts.iter().enumerate() {
        out.detail.push(match rtt {
            Some(d) => format!("  seq {i}: reply in {:.3} ms", d.as_secs_f64() * 1000.0),
            None => format!("  seq {i}: no reply"),
        });
    }
    let name = out.target.as_str();
    let t = [("target", name)];
    let mut push = |def: &MetricDef, v: f64| out.series.push(series(def, &t, v, ts));
    push(&catalogue::ICMP_SENT, round.sent() as f64);
    match round.stats() {
        Some(s) => {
            push(&catalogue::ICMP_RECEIVED, s.received as f64);
            push(&catalogue::ICMP_LOSS, s.loss_ratio);
            push(&catalogue::ICMP_RTT_MEAN, s.mean.as_secs_f64());
            push(&catalogue::ICMP_RTT_STDDEV, s.stddev.as_secs_f64());
            push(&catalogue::ICMP_JITTER, s.jitter.as_secs_f64());
            push(&catalogue::ICMP_RTT_MIN, s.min.as_secs_f64());
            push(&catalogue::ICMP_RTT_MEDIAN, s.median.as_secs_f64());
            push(&catalogue::ICMP_RTT_P90, s.p90.as_secs_f64());
            push(&catalogue::ICMP_RTT_MAX, s.max.as_secs_f64());
            out.success = true;
        }
        None => {
            push(&catalogue::ICMP_RECEIVED, 0.0);
            push(&catalogue::ICMP_LOSS, 1.0);
            out.error = Some(
                round.first_error.clone().unwrap_or_else(|| format!("no reply to {} echo requests", round.sent())),
            );
        }
    }
}

async fn tcp_connect(out: &mut Outcome, addr: SocketAddr, timeout: Duration, ts: i64) {
    let c = tcp::connect(addr, timeout).await;
    let name = out.target.clone();
    for r in tcp::ConnectResult::ALL {
        let v = (r == c.result) as u8 as f64;
        out.series.push(series(&catalogue::TCP_RESULT, &[("result", r.as_str()), ("target", &name)], v, ts));
    }
    out.detail.push(format!("connect to {addr}: {} in {:.3} ms", c.result.as_str(), c.elapsed.as_secs_f64() * 1000.0));
    if c.result == tcp::ConnectResult::Ok {
        out.series.push(series(&catalogue::TCP_CONNECT, &[("target", &name)], c.elapsed.as_secs_f64(), ts));
        out.success = true;
    } else {
        out.error = Some(format!("{}: {}", c.result.as_str(), c.error.unwrap_or_default()));
    }
}
