//! Probes: each runs one measurement of a target and turns it into series.
//! A [`Prober`] belongs to one target and keeps what must survive between
//! rounds (trust roots, the previous content fingerprint).

pub mod deface;
pub mod dns;
pub mod http;
pub mod icmp;
pub mod node_health;
pub mod outcome;
pub mod spec;
pub mod tampering;
pub mod tcp;
pub mod text;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rustls::RootCertStore;
use tierwatch_protocol::catalogue::{self};

pub use icmp::Icmp;
use icmp::{icmp_round, Early, IcmpRound, RttEstimate};
pub use outcome::{EarlyReport, Outcome};
pub use spec::{ProbeKind, ProbeSpec, Target};

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

impl Prober {
    /// A prober for `target`; reads its trust roots (files: call it off the runtime).
    pub fn new(target: Target) -> Self {
        let roots = Prober::roots_of(&target);
        Prober::with_roots(target, roots)
    }

    /// The trust roots `target` needs (TLS and HTTPS), read from disk; `None` for other kinds.
    pub fn roots_of(target: &Target) -> Option<Result<Arc<RootCertStore>, String>> {
        match &target.spec {
            ProbeSpec::Http(h) => Some(tls::roots(h.ca.as_deref())),
            ProbeSpec::Tls { ca, .. } => Some(tls::roots(ca.as_deref())),
            _ => None,
        }
    }

    /// A prober for `target` with roots read beforehand ([`Prober::roots_of`]).
    pub fn with_roots(target: Target, roots: Option<Result<Arc<RootCertStore>, String>>) -> Self {
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
            ProbeSpec::Icmp { count, spacing, fast_down, stall, keepalive } => match resolve(&t.host).await {
                Ok(ip) => {
                    out.note(|| format!("resolved {} to {ip}", t.host));
                    // Only a target that was up can fall silent early.
                    let early = match (&self.early, self.rtt.rto(t.timeout)) {
                        (Some(report), Some(rto)) if *fast_down && self.last_success == Some(true) => Some(Early {
                            rto,
                            floor: self.rtt.floor(*stall),
                            evidence: self.rtt.evidence(),
                            keepalive: *keepalive,
                            report,
                        }),
                        _ => None,
                    };
                    let round =
                        IcmpRound { ip, count: *count, spacing: *spacing, timeout: t.timeout, stall: *stall, ts };
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
                Ok(ip) => Box::pin(tcp::outcome(&mut out, SocketAddr::new(ip, *port), t.timeout, ts)).await,
                Err(e) => out.error = Some(e),
            },
            ProbeSpec::Tls { port, server_name, .. } => {
                let work = Box::pin(tls::probe(&mut out, &t.host, *port, server_name, self.roots.clone(), ts));
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
                            if spec.cloaking {
                                // The same page as a crawler asks for it: SEO spam is often served to crawlers alone.
                                let crawler = http::HttpSpec {
                                    user_agent: Some(http::CRAWLER_USER_AGENT.into()),
                                    ..(**spec).clone()
                                };
                                let roots = self.roots.clone().and_then(Result::ok);
                                if let Ok(mut c) =
                                    tokio::time::timeout(t.timeout, Box::pin(http::fetch(&crawler, roots))).await
                                {
                                    if let Some(e) =
                                        c.page.take().and_then(|cp| self.deface.cloaking(&page, &cp, &url, ts))
                                    {
                                        out.event(e);
                                    }
                                }
                            }
                            if let Some(e) = self.deface.check(page, &url, ts) {
                                out.event(e);
                            }
                        }
                        http::outcome(&mut out, spec, f, ts, &mut self.last_fingerprint)
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
                            dns::outcome(&mut out, &l, query, *record_type, expect.as_ref(), ts)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
