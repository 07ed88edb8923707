//! Probes: each runs one measurement of a target and turns it into series.
//! A [`Prober`] belongs to one target and keeps what must survive between
//! rounds (trust roots, the previous content fingerprint).

pub mod deface;
pub mod dns;
pub mod http;
pub mod icmp;
pub mod node_health;
pub mod spec;
pub mod tampering;
pub mod tcp;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use tierwatch_protocol::catalogue::{self, MetricDef};
use tierwatch_protocol::{Label, Point, Series};
use tokio::net::TcpStream;

use icmp::IcmpEngine;
pub use spec::{ProbeKind, ProbeSpec, Target};

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

/// Where a prober reports a failure found before its round ends (the
/// scheduler hands the batcher's inbox in as this): it must not block.
pub type EarlyReport = Arc<dyn Fn(Outcome) + Send + Sync>;

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
    /// Whether `detail` is filled (the `probe` command) or skipped (the agent).
    pub verbose: bool,
    /// Security events the probe found (a defaced page).
    pub events: Vec<tierwatch_protocol::Event>,
    /// A failure reported before its round ended; the round's own outcome follows.
    pub early: bool,
    /// Up turned down or back since the target's last report (the prober
    /// decides it, once; the batcher seals such news at once).
    pub flipped: bool,
}

impl Outcome {
    /// A failed run of `target` with nothing measured yet.
    pub fn new(target: String, kind: ProbeKind, verbose: bool) -> Outcome {
        Outcome {
            target,
            kind,
            success: false,
            duration: Duration::ZERO,
            series: Vec::new(),
            detail: Vec::new(),
            error: None,
            verbose,
            events: Vec::new(),
            early: false,
            flipped: false,
        }
    }

    /// Adds a security event the probe found, and says so in the detail.
    fn event(&mut self, e: tierwatch_protocol::Event) {
        self.note(|| {
            let why = e.attributes.get("why").map(String::as_str).unwrap_or("");
            format!("security event {}: {why}", e.kind)
        });
        self.events.push(e);
    }

    /// Adds a detail line; built only when someone will read it.
    fn note(&mut self, line: impl FnOnce() -> String) {
        if self.verbose {
            self.detail.push(line());
        }
    }

    fn push(&mut self, def: &MetricDef, extra: &[(&str, &str)], value: f64, ts: i64) {
        let mut labels = vec![Label::new("target", self.target.clone())];
        labels.extend(extra.iter().map(|(n, v)| Label::new(*n, *v)));
        debug_assert_eq!(def.labels.len(), labels.len(), "{} labels", def.name);
        self.series.push(Series {
            name: def.name.to_string(),
            kind: def.kind as i32,
            labels,
            points: vec![Point { timestamp_ms: ts, value }],
        });
    }

    /// A state set: 1 for `current`, 0 for every other of `all`.
    fn push_state(&mut self, def: &MetricDef, label: &str, all: &[&str], current: &str, ts: i64) {
        for v in all {
            self.push(def, &[(label, v)], (*v == current) as u8 as f64, ts);
        }
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

/// One target's prober.
pub struct Prober {
    target: Target,
    /// Trust roots of TLS-speaking probes, loaded once.
    roots: Option<Result<Arc<RootCertStore>, String>>,
    last_fingerprint: Option<u64>,
    /// The page's baseline, for defacement (http).
    deface: deface::Watch,
    /// The certificate last presented (tls, https).
    cert: tampering::CertWatch,
    /// Unexpected DNS answers reported (dns).
    dns: tampering::DnsWatch,
    verbose: bool,
    /// The target's round-trip times so far (icmp), for fast failure detection.
    rtt: RttEstimate,
    last_success: Option<bool>,
    /// Where an early failure goes, without waiting for the round.
    early: Option<EarlyReport>,
}

/// Smoothed round-trip time and its variation (RFC 6298), and from them the
/// time after which a reply is overdue.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RttEstimate {
    srtt: f64,
    rttvar: f64,
    samples: u64,
}

/// Below this a reply is never called overdue: scheduling on a busy host,
/// and the WAN's own queueing, take that much now and then.
const MIN_RTO: Duration = Duration::from_millis(250);
/// Requests sent at once to confirm that an overdue one means a silent target.
const CONFIRM: u32 = 3;

impl RttEstimate {
    /// Takes one measured round trip.
    pub fn add(&mut self, rtt: Duration) {
        let r = rtt.as_secs_f64();
        if self.samples == 0 {
            self.srtt = r;
            self.rttvar = r / 2.0;
        } else {
            self.rttvar = 0.75 * self.rttvar + 0.25 * (self.srtt - r).abs();
            self.srtt = 0.875 * self.srtt + 0.125 * r;
        }
        self.samples += 1;
    }

    /// When a reply is overdue: SRTT + 4 RTTVAR, within [250 ms, `timeout`];
    /// `None` before any round trip was measured.
    pub fn rto(&self, timeout: Duration) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_secs_f64(self.srtt + 4.0 * self.rttvar).max(MIN_RTO).min(timeout))
    }
}

impl Prober {
    /// A prober for `target`.
    pub fn new(target: Target) -> Self {
        let roots = match &target.spec {
            ProbeSpec::Http(h) => Some(tls::roots(h.ca.as_deref())),
            ProbeSpec::Tls { ca, .. } => Some(tls::roots(ca.as_deref())),
            _ => None,
        };
        Prober {
            target,
            roots,
            last_fingerprint: None,
            deface: deface::Watch::default(),
            cert: tampering::CertWatch::default(),
            dns: tampering::DnsWatch::default(),
            verbose: false,
            rtt: RttEstimate::default(),
            last_success: None,
            early: None,
        }
    }

    /// Reports early failures (a silent ICMP target) to `report` as they are found.
    pub fn reporting_early(mut self, report: EarlyReport) -> Self {
        self.early = Some(report);
        self
    }

    /// Fills `Outcome::detail` with human-readable lines (for `tierwatch-agent probe`).
    pub fn verbose(mut self) -> Self {
        self.verbose = true;
        self
    }

    /// The target it probes.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Runs one probe.
    pub async fn run(&mut self, icmp: &Icmp) -> Outcome {
        let started = Instant::now();
        let mut ts = tierwatch_protocol::now_ms();
        let t = &self.target;
        let mut out = Outcome::new(t.name.clone(), t.kind(), self.verbose);
        // Whether a failure was already reported for this round (the news the
        // round's own result is compared with).
        let mut reported_early = false;
        // Each kind's future is boxed: a thousand idle per-target tasks then
        // hold a small state machine, not the largest (HTTPS) one each.
        match &t.spec {
            ProbeSpec::Icmp { count, spacing, fast_down } => match resolve(&t.host).await {
                Ok(ip) => {
                    out.note(|| format!("resolved {} to {ip}", t.host));
                    // Only a target that was up can fall silent early.
                    let early = match (&self.early, self.rtt.rto(t.timeout)) {
                        (Some(tx), Some(rto)) if *fast_down && self.last_success == Some(true) => Some((rto, tx)),
                        _ => None,
                    };
                    let round = IcmpRound { ip, count: *count, spacing: *spacing, timeout: t.timeout, ts };
                    let early_ts = Box::pin(icmp_round(&mut out, icmp, round, early, &mut self.rtt)).await;
                    reported_early = early_ts.is_some();
                    // Stamped after its early report, so the round's result
                    // (perhaps the target answering again) is the newer one.
                    if let Some(e) = early_ts.filter(|e| *e >= ts) {
                        ts = e + 1;
                        for s in &mut out.series {
                            for p in &mut s.points {
                                p.timestamp_ms = ts;
                            }
                        }
                    }
                }
                Err(e) => out.error = Some(e),
            },
            ProbeSpec::Tcp { port } => match resolve(&t.host).await {
                Ok(ip) => Box::pin(tcp_connect(&mut out, SocketAddr::new(ip, *port), t.timeout, ts)).await,
                Err(e) => out.error = Some(e),
            },
            ProbeSpec::Tls { port, server_name, .. } => {
                let work = Box::pin(tls_probe(&mut out, &t.host, *port, server_name, self.roots.clone(), ts));
                match tokio::time::timeout(t.timeout, work).await {
                    Err(_) => out.error = Some(format!("no TLS handshake within {:?}", t.timeout)),
                    Ok(facts) => {
                        if let Some(e) = facts.and_then(|f| self.cert.check(&f, &t.name, ts)) {
                            out.event(e);
                        }
                    }
                }
            }
            ProbeSpec::Http(spec) => {
                let roots = self.roots.clone().and_then(Result::ok);
                match tokio::time::timeout(t.timeout, Box::pin(http::fetch(spec, roots))).await {
                    Ok(mut f) => {
                        if let Some(e) = f.tls.as_ref().and_then(|facts| self.cert.check(facts, &t.name, ts)) {
                            out.event(e);
                        }
                        if let Some(page) = f.page.take() {
                            let url = if f.final_url.is_empty() { spec.url.clone() } else { f.final_url.clone() };
                            if let Some(e) = self.deface.check(page, &url, ts) {
                                out.event(e);
                            }
                        }
                        http_outcome(&mut out, spec, f, ts, &mut self.last_fingerprint)
                    }
                    Err(_) => out.error = Some(format!("no complete response within {:?}", t.timeout)),
                }
            }
            ProbeSpec::Dns { port, query, record_type, expect } => match resolve(&t.host).await {
                Ok(ip) => {
                    let server = SocketAddr::new(ip, *port);
                    match Box::pin(dns::query(server, query, *record_type, t.timeout)).await {
                        Ok(l) => {
                            if let Some(expected) = expect.as_ref().filter(|_| l.response.rcode == 0) {
                                let server = server.to_string();
                                let found = self.dns.check(&l.response.answers, expected, &t.name, query, &server, ts);
                                if let Some(e) = found {
                                    out.event(e);
                                }
                            }
                            dns_outcome(&mut out, &l, query, *record_type, expect.as_ref(), ts)
                        }
                        Err(e) => out.error = Some(e),
                    }
                }
                Err(e) => out.error = Some(e),
            },
        }
        out.duration = started.elapsed();
        let probe = out.kind.as_str();
        out.push(&catalogue::PROBE_SUCCESS, &[("probe", probe)], out.success as u8 as f64, ts);
        out.push(&catalogue::PROBE_DURATION, &[("probe", probe)], out.duration.as_secs_f64(), ts);
        let before = if reported_early { Some(false) } else { self.last_success };
        out.flipped = before.is_some_and(|b| b != out.success);
        self.last_success = Some(out.success);
        out
    }
}

/// Turns a fetch into series; `last_fingerprint` is the previous round's, for the change signal.
fn http_outcome(out: &mut Outcome, spec: &http::HttpSpec, f: http::Fetch, ts: i64, last_fingerprint: &mut Option<u64>) {
    if let Some(facts) = &f.tls {
        tls_facts(out, facts, ts);
    }
    for (phase, d) in f.phases.labelled() {
        out.push(&catalogue::HTTP_PHASE, &[("phase", phase)], d.as_secs_f64(), ts);
    }
    out.push(&catalogue::HTTP_REDIRECTS, &[], f.redirects as f64, ts);
    if f.redirects > 0 {
        out.note(|| format!("followed {} redirect(s) to {}", f.redirects, f.final_url));
    }
    if let Some(e) = f.error {
        out.error = Some(e);
        return;
    }
    let status = f.status.unwrap_or(0);
    out.push(&catalogue::HTTP_STATUS, &[], status as f64, ts);
    out.push(&catalogue::HTTP_BODY_BYTES, &[], f.body_bytes as f64, ts);
    out.push(&catalogue::HTTP_BODY_MATCH, &[], f.body_failures.is_empty() as u8 as f64, ts);
    out.note(|| {
        format!(
            "status {status}, {} body bytes{}",
            f.body_bytes,
            if f.truncated { " (truncated at max_body_bytes)" } else { "" }
        )
    });
    out.note(|| {
        let phases: Vec<String> =
            f.phases.labelled().iter().map(|(p, d)| format!("{p} {:.3} ms", d.as_secs_f64() * 1000.0)).collect();
        format!("phases: {}", phases.join(", "))
    });
    if !spec.body_contains.is_empty() || !spec.body_not_contains.is_empty() {
        out.note(|| {
            if f.body_failures.is_empty() {
                "body checks: all met".to_string()
            } else {
                format!("body checks FAILED: {}", f.body_failures.join("; "))
            }
        });
    }
    if let Some(fp) = f.fingerprint {
        let changed = last_fingerprint.is_some_and(|prev| prev != fp);
        out.push(&catalogue::HTTP_FINGERPRINT, &[], fp as f64, ts);
        out.push(&catalogue::HTTP_CHANGED, &[], changed as u8 as f64, ts);
        out.note(|| {
            format!("content fingerprint {fp:012x}{}", if changed { " (changed since the last round)" } else { "" })
        });
        *last_fingerprint = Some(fp);
    }
    let status_ok = spec.expect_status.iter().any(|p| p.matches(status));
    if !status_ok {
        let want: Vec<String> = spec.expect_status.iter().map(|p| String::from(*p)).collect();
        out.error = Some(format!("status {status} is not one of {}", want.join(", ")));
    } else if !f.body_failures.is_empty() {
        out.error = Some(f.body_failures.join("; "));
    } else {
        out.success = true;
    }
}

/// What one ICMP round sends.
struct IcmpRound {
    ip: IpAddr,
    count: u32,
    spacing: Duration,
    timeout: Duration,
    /// The probe's timestamp.
    ts: i64,
}

/// Runs one round; with `early` (overdue after, where to), a silent target
/// is reported at once as a failed probe. Returns when that happened (ms).
async fn icmp_round(
    out: &mut Outcome,
    icmp: &Icmp,
    r: IcmpRound,
    early: Option<(Duration, &EarlyReport)>,
    rtt: &mut RttEstimate,
) -> Option<i64> {
    let IcmpRound { ip, count, spacing, timeout, ts } = r;
    let engine = match icmp {
        Icmp::Ready(e) => e,
        Icmp::Unavailable(why) => {
            out.error = Some(why.to_string());
            return None;
        }
    };
    out.note(|| {
        format!("{count} echo requests {spacing:?} apart, timeout {timeout:?}, {} socket", engine.kind().as_str())
    });
    let (silent_tx, silent_rx) = tokio::sync::oneshot::channel();
    let watch = early.map(|(rto, _)| icmp::Watch { rto, confirm: CONFIRM, silent: silent_tx });
    let running = engine.round(ip, count, spacing, timeout, watch);
    tokio::pin!(running);
    let mut early_ts = None;
    let result = tokio::select! {
        r = &mut running => r,
        Ok(i) = silent_rx => {
            let now = tierwatch_protocol::now_ms();
            early_ts = Some(now);
            if let Some((rto, report)) = early {
                let mut e = Outcome::new(out.target.clone(), out.kind, false);
                e.error = Some(format!("no reply to request {i} within {rto:?} nor to {CONFIRM} more sent at once"));
                // Only a target that was up is watched: this is a flip.
                (e.early, e.flipped) = (true, true);
                e.push(&catalogue::PROBE_SUCCESS, &[("probe", out.kind.as_str())], 0.0, now);
                tracing::info!(target = %out.target, probe = "icmp", rto_ms = rto.as_millis() as u64, "target fell silent; reported before the round ends");
                report(e);
            }
            running.await
        }
    };
    let round = match result {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e.to_string());
            return early_ts;
        }
    };
    for d in round.rtts.iter().flatten() {
        rtt.add(*d);
    }
    for (i, rtt) in round.rtts.iter().enumerate() {
        out.note(|| match rtt {
            Some(d) => format!("  seq {i}: reply in {:.3} ms", d.as_secs_f64() * 1000.0),
            None => format!("  seq {i}: no reply"),
        });
    }
    out.push(&catalogue::ICMP_SENT, &[], round.sent() as f64, ts);
    out.push(&catalogue::ICMP_DUPLICATE, &[], round.duplicates as f64, ts);
    out.push(&catalogue::ICMP_LATE, &[], round.late as f64, ts);
    out.note(|| {
        format!(
            "kernel receive timestamps for {} of the replies; {} duplicate, {} late",
            round.kernel_timestamps, round.duplicates, round.late
        )
    });
    match round.stats() {
        Some(s) => {
            for (def, v) in [
                (&catalogue::ICMP_RECEIVED, s.received as f64),
                (&catalogue::ICMP_LOSS, s.loss_ratio),
                (&catalogue::ICMP_RTT_MEAN, s.mean.as_secs_f64()),
                (&catalogue::ICMP_RTT_STDDEV, s.stddev.as_secs_f64()),
                (&catalogue::ICMP_JITTER, s.jitter.as_secs_f64()),
                (&catalogue::ICMP_RTT_MIN, s.min.as_secs_f64()),
                (&catalogue::ICMP_RTT_MEDIAN, s.median.as_secs_f64()),
                (&catalogue::ICMP_RTT_P90, s.p90.as_secs_f64()),
                (&catalogue::ICMP_RTT_MAX, s.max.as_secs_f64()),
            ] {
                out.push(def, &[], v, ts);
            }
            out.success = round.reachable_at_end();
            if !out.success {
                out.error = Some(format!(
                    "silent since request {}: no reply to it or after it",
                    round.silent_from.unwrap_or_default()
                ));
            }
        }
        None => {
            out.push(&catalogue::ICMP_RECEIVED, &[], 0.0, ts);
            out.push(&catalogue::ICMP_LOSS, &[], 1.0, ts);
            out.error = Some(
                round.first_error.clone().unwrap_or_else(|| format!("no reply to {} echo requests", round.sent())),
            );
        }
    }
    early_ts
}

async fn tcp_connect(out: &mut Outcome, addr: SocketAddr, timeout: Duration, ts: i64) {
    let c = tcp::connect(addr, timeout).await;
    let labels: Vec<&str> = tcp::ConnectResult::ALL.iter().map(|r| r.as_str()).collect();
    out.push_state(&catalogue::TCP_RESULT, "result", &labels, c.result.as_str(), ts);
    out.note(|| format!("connect to {addr}: {} in {:.3} ms", c.result.as_str(), c.elapsed.as_secs_f64() * 1000.0));
    if c.result == tcp::ConnectResult::Ok {
        out.push(&catalogue::TCP_CONNECT, &[], c.elapsed.as_secs_f64(), ts);
        out.success = true;
    } else {
        out.error = Some(format!("{}: {}", c.result.as_str(), c.error.unwrap_or_default()));
    }
}

fn tls_facts(out: &mut Outcome, f: &tls::TlsFacts, ts: i64) {
    let result = match &f.verify {
        Ok(()) => "ok",
        Err((why, _)) => why.as_str(),
    };
    out.push(&catalogue::TLS_VERIFIED, &[], f.verify.is_ok() as u8 as f64, ts);
    out.push_state(&catalogue::TLS_VERIFY_RESULT, "result", &tls::VerifyFailure::LABELS, result, ts);
    out.push(&catalogue::TLS_HOST_MATCH, &[], f.host_match as u8 as f64, ts);
    out.push(&catalogue::TLS_HANDSHAKE, &[], f.handshake.as_secs_f64(), ts);
    if let Some(t) = f.leaf_not_after {
        out.push(&catalogue::TLS_LEAF_EXPIRY, &[], t as f64, ts);
    }
    if let Some(t) = f.chain_not_after {
        out.push(&catalogue::TLS_CHAIN_EXPIRY, &[], t as f64, ts);
    }
    if let Some(v) = f.version {
        out.push(&catalogue::TLS_VERSION, &[("version", v)], 1.0, ts);
    }
    let days = |t: Option<i64>| {
        t.map(|t| format!("{:.1} days", (t - ts / 1000) as f64 / 86400.0)).unwrap_or_else(|| "?".into())
    };
    out.note(|| {
        format!(
            "TLS {}: chain {}, host name {}, leaf expires in {}, chain in {}",
            f.version.unwrap_or("?"),
            match &f.verify {
                Ok(()) => "verified".to_string(),
                Err((why, words)) => format!("NOT verified ({}: {words})", why.as_str()),
            },
            if f.host_match { "matches" } else { "does NOT match" },
            days(f.leaf_not_after),
            days(f.chain_not_after),
        )
    });
}

async fn tls_probe(
    out: &mut Outcome,
    host: &str,
    port: u16,
    name: &str,
    roots: Option<Result<Arc<RootCertStore>, String>>,
    ts: i64,
) -> Option<tls::TlsFacts> {
    let roots = match roots {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            out.error = Some(e);
            return None;
        }
        None => {
            out.error = Some("no trust roots".into());
            return None;
        }
    };
    let addr = match resolve(host).await {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(e) => {
            out.error = Some(e);
            return None;
        }
    };
    let tcp = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("connect to {addr}: {e}"));
            return None;
        }
    };
    match tls::handshake(tcp, name, roots, &[]).await {
        Ok((_, facts)) => {
            tls_facts(out, &facts, ts);
            match &facts.verify {
                Ok(()) => out.success = true,
                Err((why, words)) => out.error = Some(format!("certificate not trusted ({}): {words}", why.as_str())),
            }
            Some(facts)
        }
        Err(e) => {
            out.error = Some(e);
            None
        }
    }
}

fn dns_outcome(
    out: &mut Outcome,
    l: &dns::Lookup,
    query: &str,
    rtype: dns::RecordType,
    expect: Option<&std::collections::BTreeSet<String>>,
    ts: i64,
) {
    let r = &l.response;
    let rcode = dns::rcode_name(r.rcode);
    out.push(&catalogue::DNS_LOOKUP, &[], l.latency.as_secs_f64(), ts);
    out.push_state(&catalogue::DNS_RCODE, "rcode", &dns::RCODES, rcode, ts);
    out.push(&catalogue::DNS_ANSWERS, &[], r.answers.len() as f64, ts);
    let answers: Vec<&str> = r.answers.iter().map(String::as_str).collect();
    out.note(|| {
        format!(
            "{query} {rtype}: {rcode} in {:.3} ms{}: [{}]",
            l.latency.as_secs_f64() * 1000.0,
            if l.over_tcp { " (over TCP)" } else { "" },
            answers.join(", ")
        )
    });
    let matched = expect.map(|e| e == &r.answers);
    if let Some(m) = matched {
        out.push(&catalogue::DNS_MATCH, &[], m as u8 as f64, ts);
    }
    if r.rcode != 0 {
        out.error = Some(format!("{query} {rtype}: {rcode}"));
    } else if matched == Some(false) {
        let want: Vec<&str> = expect.map(|e| e.iter().map(String::as_str).collect()).unwrap_or_default();
        out.error = Some(format!("answers [{}] differ from the expected [{}]", answers.join(", "), want.join(", ")));
    } else {
        out.success = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_prober_decides_a_flip_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let second = Duration::from_secs(1);
        let spec = ProbeSpec::Tcp { port };
        let target = Target {
            name: "t".into(),
            host: "127.0.0.1".into(),
            interval: second,
            timeout: second,
            jitter: Duration::ZERO,
            spec,
        };
        let mut p = Prober::new(target);
        let icmp = Icmp::Unavailable("unused".into());
        let first = p.run(&icmp).await;
        assert!(first.success && !first.flipped, "a first result is no flip");
        let again = p.run(&icmp).await;
        assert!(again.success && !again.flipped);
        drop(listener);
        let down = p.run(&icmp).await;
        assert!(!down.success && down.flipped, "{:?}", down.error);
        let still = p.run(&icmp).await;
        assert!(!still.success && !still.flipped);
    }

    #[test]
    fn overdue_follows_the_link_and_stays_within_bounds() {
        let mut e = RttEstimate::default();
        let timeout = Duration::from_secs(1);
        assert_eq!(e.rto(timeout), None, "no estimate before a reply");
        // A steady 20 ms link: the floor applies.
        for _ in 0..50 {
            e.add(Duration::from_millis(20));
        }
        assert_eq!(e.rto(timeout), Some(MIN_RTO));
        // A jittery 200 ± 100 ms link: SRTT + 4 RTTVAR, well above any reply seen.
        let mut e = RttEstimate::default();
        for i in 0..200 {
            e.add(Duration::from_millis(if i % 2 == 0 { 100 } else { 300 }));
        }
        let rto = e.rto(timeout).unwrap();
        assert!(rto > Duration::from_millis(450) && rto < timeout, "{rto:?}");
        // Never beyond the probe's own timeout.
        e.add(Duration::from_secs(5));
        assert_eq!(e.rto(timeout), Some(timeout));
    }
}
