//! Scan detection, in the spirit of Zeek's scan policy: per source, the
//! distinct (host, port, probe) attempts it made that found nothing (a SYN
//! answered by RST or never answered, a UDP datagram answered by port
//! unreachable, a segment no TCP stack sends — FIN, NULL, Xmas — an ACK
//! answered by a bare RST, an echo request nobody answered, an ARP or
//! neighbour solicitation for many addresses), over IPv4 and IPv6 alike.
//! Crossing a threshold is one `port_scan` event (or `host_sweep` when only
//! addresses were asked for) with the evidence; the source is reported
//! again only once the window has passed.
//!
//! Three windows: the short one (25 attempts, 15 per host, in 15 minutes)
//! and, for a patient scanner, an hour and a day, counted in bounded
//! sketches (linear counting over a 256- and 512-bit map) so a source costs
//! the same whatever it tries.
//!
//! A flood of spoofed one-off sources must not push a real scanner out of
//! the table. So a source enters on probation with its first attempt and
//! is promoted to the table with its second; only the probation list is
//! churned by one-offs. And a source whose frames come from the MAC that
//! the ARP table gives its address (a *verified* LAN host, as a real
//! scanner on the LAN is, since it had to ARP) is promoted at once and is
//! evicted only after every unverified one. Memory stays bounded: at most
//! `max_sources` in each list.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use tierwatch_protocol::{Event, Severity};

/// How scans are judged.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPolicy {
    /// Distinct failed attempts that make a scan.
    pub threshold: usize,
    /// Distinct failed ports of one host that make a scan of that host
    /// (tighter: one victim's ports are rarely tried by accident).
    pub vertical_threshold: usize,
    pub window: Duration,
    /// Distinct failed attempts within an hour, and within a day, that make
    /// a slow scan.
    pub hour_threshold: usize,
    pub day_threshold: usize,
    /// Sources never reported (the province's own scanners), as (network, prefix length).
    pub allow: Vec<(IpAddr, u8)>,
    /// Sources tracked at once (and as many on probation); beyond, the
    /// least recently active unverified one is forgotten.
    pub max_sources: usize,
}

impl Default for ScanPolicy {
    fn default() -> Self {
        ScanPolicy {
            threshold: 25,
            vertical_threshold: 15,
            window: Duration::from_secs(900),
            hour_threshold: 40,
            day_threshold: 100,
            allow: Vec::new(),
            max_sources: 10_000,
        }
    }
}

/// True when `ip` is inside `net/len` (both of one family).
pub fn in_net(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// What a failed attempt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    /// A SYN refused or unanswered (SYN and connect scans).
    Syn,
    /// A segment with FIN, PSH or URG but no SYN, ACK or RST (FIN and Xmas scans).
    Fin,
    /// A segment with no flags at all.
    Null,
    /// An ACK (or FIN-ACK: Maimon) answered by a bare RST: no connection.
    Ack,
    /// A UDP datagram answered by port unreachable.
    Udp,
    /// An echo request nobody answered (a ping sweep).
    Echo,
    /// An ARP request, or an IPv6 neighbour solicitation (a LAN sweep).
    Arp,
}

impl Probe {
    fn name(self) -> &'static str {
        match self {
            Probe::Syn => "syn",
            Probe::Fin => "fin",
            Probe::Null => "null",
            Probe::Ack => "ack",
            Probe::Udp => "udp",
            Probe::Echo => "echo",
            Probe::Arp => "arp",
        }
    }

    /// Addresses asked for, not ports.
    fn sweep(self) -> bool {
        matches!(self, Probe::Echo | Probe::Arp)
    }
}

/// One failed attempt: where, and how.
pub type Attempt = (IpAddr, u16, Probe);

/// Distinct items seen in a period (linear counting in `W` words), reset
/// when the period has passed.
#[derive(Debug, Clone, Copy)]
struct Sketch<const W: usize> {
    start_ms: i64,
    seen: super::flood::Distinct<W>,
}

impl<const W: usize> Sketch<W> {
    fn new(now_ms: i64) -> Self {
        Sketch { start_ms: now_ms, seen: Default::default() }
    }

    fn add(&mut self, h: u64, now_ms: i64, period_ms: i64) {
        if now_ms - self.start_ms >= period_ms {
            *self = Sketch::new(now_ms);
        }
        self.seen.insert(h);
    }

    fn estimate(&self) -> usize {
        self.seen.estimate()
    }
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

fn attempt_hash(a: &Attempt) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.hash(&mut h);
    h.finish()
}

#[derive(Debug)]
struct Source {
    /// Distinct failed attempts in order of their first failure, for the window.
    attempts: VecDeque<(i64, Attempt)>,
    distinct: HashSet<Attempt>,
    hour: Sketch<4>,
    day: Sketch<8>,
    /// The Ethernet source of its frames, when seen.
    mac: Option<[u8; 6]>,
    /// Its frames came from the MAC the ARP table gives its address.
    verified: bool,
    last_ms: i64,
    reported_ms: Option<i64>,
    /// How long after `reported_ms` it is not reported again.
    quiet_ms: i64,
}

impl Source {
    fn new(now_ms: i64) -> Self {
        Source {
            attempts: VecDeque::new(),
            distinct: HashSet::new(),
            hour: Sketch::new(now_ms),
            day: Sketch::new(now_ms),
            mac: None,
            verified: false,
            last_ms: now_ms,
            reported_ms: None,
            quiet_ms: 0,
        }
    }
}

/// A source on probation: its one attempt so far.
#[derive(Debug, Clone, Copy)]
struct OneOff {
    attempt: Attempt,
    mac: Option<[u8; 6]>,
    at_ms: i64,
}

/// What [`ScanDetector::failed`] did with an attempt.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// Allowlisted, or the same attempt again.
    Nothing,
    /// The first attempt of an unverified source: on probation (what a
    /// spoofed one-off in a flood looks like).
    Probation,
    /// Counted in the table; the event when a threshold was crossed.
    Counted(Option<Event>),
}

/// The detector's state.
#[derive(Debug)]
pub struct ScanDetector {
    policy: ScanPolicy,
    sources: HashMap<IpAddr, Source>,
    probation: HashMap<IpAddr, OneOff>,
}

impl ScanDetector {
    /// A detector with `policy`.
    pub fn new(policy: ScanPolicy) -> Self {
        ScanDetector { policy, sources: HashMap::new(), probation: HashMap::new() }
    }

    /// Sources tracked now (in the table, on probation).
    pub fn sources(&self) -> (usize, usize) {
        (self.sources.len(), self.probation.len())
    }

    /// Sources in the table whose frames come from `mac` and that made at
    /// least `min` attempts in the window, with their counts: the decoys of
    /// a decoy scan share the scanner's MAC.
    pub fn sharing_mac(&self, mac: [u8; 6], min: usize) -> Vec<(IpAddr, usize)> {
        let mut v: Vec<(IpAddr, usize)> = self
            .sources
            .iter()
            .filter(|(_, s)| s.mac == Some(mac) && s.distinct.len() >= min)
            .map(|(ip, s)| (*ip, s.distinct.len()))
            .collect();
        v.sort();
        v
    }

    /// Marks `src` reported at `now_ms` (it was named in another's event).
    pub fn mark_reported(&mut self, src: IpAddr, now_ms: i64) {
        let window = self.policy.window.as_millis() as i64;
        if let Some(s) = self.sources.get_mut(&src) {
            s.reported_ms = Some(now_ms);
            s.quiet_ms = s.quiet_ms.max(window);
        }
    }

    /// `src` (its frames from `mac`, when seen; `verified` when that MAC is
    /// the one the ARP table gives `src`) failed `attempt` at `now_ms`.
    pub fn failed(&mut self, src: IpAddr, mac: Option<[u8; 6]>, verified: bool, attempt: Attempt, now_ms: i64) -> Seen {
        if self.policy.allow.iter().any(|n| in_net(src, *n)) {
            return Seen::Nothing;
        }
        let window = self.policy.window.as_millis() as i64;
        if !self.sources.contains_key(&src) {
            // Probation: one attempt is no evidence, and costs one small entry.
            let earlier = self.probation.get(&src).filter(|o| now_ms - o.at_ms <= window).copied();
            match earlier {
                Some(o) if o.attempt == attempt => return Seen::Nothing,
                Some(_) => {}
                None if !verified => {
                    if self.probation.len() >= self.policy.max_sources {
                        evict_oldest(&mut self.probation, |o| o.at_ms, |_| true);
                    }
                    self.probation.insert(src, OneOff { attempt, mac, at_ms: now_ms });
                    return Seen::Probation;
                }
                None => {}
            }
            self.probation.remove(&src);
            if self.sources.len() >= self.policy.max_sources {
                self.evict(now_ms);
            }
            let mut s = Source::new(now_ms);
            if let Some(o) = earlier {
                s.mac = o.mac;
                record(&mut s, o.attempt, o.at_ms, self.policy.threshold);
            }
            self.sources.insert(src, s);
        }
        let Some(s) = self.sources.get_mut(&src) else { return Seen::Nothing };
        s.last_ms = now_ms;
        if mac.is_some() {
            s.mac = mac;
        }
        s.verified |= verified;
        while let Some(&(t, a)) = s.attempts.front() {
            if now_ms - t <= window {
                break;
            }
            s.attempts.pop_front();
            s.distinct.remove(&a);
        }
        record(s, attempt, now_ms, self.policy.threshold);
        let p = &self.policy;
        let host = attempt.0;
        let sweeps = s.distinct.iter().filter(|a| a.2.sweep()).count();
        let short = s.distinct.len() >= p.threshold
            || (s.distinct.len() >= p.vertical_threshold
                && s.distinct.iter().filter(|a| a.0 == host && !a.2.sweep()).count() >= p.vertical_threshold);
        // A slow scan is said again after its own period, not every window.
        let quiet = if short {
            window
        } else if s.hour.estimate() >= p.hour_threshold {
            HOUR_MS
        } else if s.day.estimate() >= p.day_threshold {
            DAY_MS
        } else {
            return Seen::Counted(None);
        };
        if s.reported_ms.is_some_and(|r| now_ms - r < s.quiet_ms) {
            return Seen::Counted(None);
        }
        s.reported_ms = Some(now_ms);
        s.quiet_ms = quiet;
        Seen::Counted(Some(if sweeps == s.distinct.len() {
            Self::event("host_sweep", src, s, now_ms, window)
        } else {
            Self::event("port_scan", src, s, now_ms, window)
        }))
    }

    fn event(kind: &str, src: IpAddr, s: &Source, now_ms: i64, window_ms: i64) -> Event {
        let hosts: BTreeSet<IpAddr> = s.distinct.iter().map(|a| a.0).collect();
        let ports: BTreeSet<u16> = s.distinct.iter().filter(|a| !a.2.sweep()).map(|a| a.1).collect();
        let probes: BTreeSet<&str> = s.distinct.iter().map(|a| a.2.name()).collect();
        let shape = match (hosts.len(), ports.len()) {
            (_, 0) => "sweep",
            (1, _) => "vertical",
            (_, 1) => "horizontal",
            _ => "mixed",
        };
        let first = s.attempts.front().map_or(now_ms, |a| a.0);
        let mut attributes = BTreeMap::from([
            ("src".to_string(), src.to_string()),
            ("attempts".to_string(), s.distinct.len().to_string()),
            ("hosts".to_string(), hosts.len().to_string()),
            ("shape".to_string(), shape.to_string()),
            ("probes".to_string(), probes.into_iter().collect::<Vec<_>>().join(",")),
            ("window_s".to_string(), (window_ms / 1000).to_string()),
            ("first_ms".to_string(), first.to_string()),
            ("attempts_hour".to_string(), s.hour.estimate().to_string()),
            ("attempts_day".to_string(), s.day.estimate().to_string()),
            ("ports".to_string(), ports.iter().take(20).map(u16::to_string).collect::<Vec<_>>().join(",")),
        ]);
        if hosts.len() <= 5 {
            let h: Vec<String> = hosts.iter().map(IpAddr::to_string).collect();
            attributes.insert("targets".to_string(), h.join(","));
        }
        if let Some(m) = s.mac {
            attributes.insert("src_mac".to_string(), super::mac(&m));
        }
        Event::new(kind, Severity::Warning, now_ms, attributes)
    }

    /// Drops sources idle for a day, then, if still full, the least
    /// recently active tenth, unverified ones first, so a flood costs
    /// O(log n) per attempt and never pushes out a verified LAN host while
    /// an unverified source is left.
    fn evict(&mut self, now_ms: i64) {
        self.sources.retain(|_, s| now_ms - s.last_ms <= DAY_MS);
        if self.sources.len() < self.policy.max_sources {
            return;
        }
        let unverified = self.sources.values().filter(|s| !s.verified).count();
        let n = (self.policy.max_sources / 10).max(1);
        if unverified > 0 {
            evict_n(&mut self.sources, n.min(unverified), |s| s.last_ms, |s| !s.verified);
        } else {
            evict_n(&mut self.sources, n, |s| s.last_ms, |_| true);
        }
    }

    /// Forgets probation entries older than the window and sources idle
    /// for longer than a day (called now and then).
    pub fn expire(&mut self, now_ms: i64) {
        let window = self.policy.window.as_millis() as i64;
        self.probation.retain(|_, o| now_ms - o.at_ms <= window);
        // A source with one window's attempts and no slow-scan history goes sooner.
        self.sources.retain(|_, s| {
            let idle = now_ms - s.last_ms;
            idle <= window || (idle <= DAY_MS && s.day.estimate() >= 3)
        });
    }
}

/// Adds `a` to the source's window (if new there) and to its long sketches.
fn record(s: &mut Source, a: Attempt, now_ms: i64, threshold: usize) {
    // A source past the threshold needs no more memory than twice that.
    if s.distinct.len() < threshold * 2 && s.distinct.insert(a) {
        s.attempts.push_back((now_ms, a));
    }
    let h = attempt_hash(&a);
    s.hour.add(h, now_ms, HOUR_MS);
    s.day.add(h, now_ms, DAY_MS);
}

/// Removes the oldest tenth (at least one) of `map`'s entries.
fn evict_oldest<K: Copy + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    age: impl Fn(&V) -> i64,
    eligible: impl Fn(&V) -> bool,
) {
    let n = (map.len() / 10).max(1);
    evict_n(map, n, age, eligible);
}

/// Removes the `n` least recent eligible entries of `map`.
fn evict_n<K: Copy + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    n: usize,
    age: impl Fn(&V) -> i64,
    eligible: impl Fn(&V) -> bool,
) {
    let mut ages: Vec<(i64, K)> = map.iter().filter(|(_, v)| eligible(v)).map(|(k, v)| (age(v), *k)).collect();
    let n = n.min(ages.len());
    if n == 0 {
        return;
    }
    ages.select_nth_unstable_by_key(n - 1, |a| a.0);
    for (_, k) in &ages[..n] {
        map.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn events(seen: impl IntoIterator<Item = Seen>) -> Vec<Event> {
        seen.into_iter()
            .filter_map(|s| match s {
                Seen::Counted(e) => e,
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_vertical_scan_is_reported_once_per_window_with_evidence() {
        let mut d = ScanDetector::new(ScanPolicy::default());
        let mac = Some([2, 0, 0, 0, 1, 50]);
        let got =
            events((1..=100u16).map(|port| {
                d.failed(ip("10.2.1.50"), mac, false, (ip("10.2.1.1"), port, Probe::Syn), port as i64 * 10)
            }));
        assert_eq!(got.len(), 1);
        let e = &got[0];
        assert_eq!(e.kind, "port_scan");
        assert_eq!(e.attributes["src"], "10.2.1.50");
        assert_eq!(e.attributes["attempts"], "15");
        assert_eq!(e.attributes["shape"], "vertical");
        assert_eq!(e.attributes["probes"], "syn");
        assert_eq!(e.attributes["targets"], "10.2.1.1");
        assert_eq!(e.attributes["src_mac"], "02:00:00:00:01:32");
        assert_eq!(e.timestamp_ms, 150, "one host's ports: reported at the 15th");
    }

    #[test]
    fn every_probe_shape_and_ipv6_count() {
        let mut d = ScanDetector::new(ScanPolicy::default());
        let shapes = [Probe::Fin, Probe::Null, Probe::Ack, Probe::Udp];
        let got = events(
            (1..=20u16)
                .map(|p| d.failed(ip("2001:db8::66"), None, false, (ip("2001:db8::1"), p, shapes[p as usize % 4]), 0)),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attributes["src"], "2001:db8::66");
        assert_eq!(got[0].attributes["probes"], "ack,fin,null,udp");
        // A ping sweep of the /24: addresses, not ports.
        let got = events(
            (1..=30u8)
                .map(|h| d.failed(ip("10.2.1.70"), None, false, (IpAddr::from([10, 2, 1, h]), 0, Probe::Echo), 0)),
        );
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].kind.as_str(), got[0].attributes["shape"].as_str()), ("host_sweep", "sweep"));
    }

    #[test]
    fn repeats_horizontal_slow_and_allowlisted() {
        let mut d = ScanDetector::new(ScanPolicy { allow: vec![(ip("10.0.0.0"), 24)], ..Default::default() });
        // The same closed port again and again is one attempt.
        for t in 0..1000 {
            assert!(events([d.failed(ip("10.2.1.60"), None, false, (ip("10.2.1.1"), 23, Probe::Syn), t)]).is_empty());
        }
        let hits = events(
            (1..=30u8)
                .map(|h| d.failed(ip("10.2.1.61"), None, false, (IpAddr::from([10, 2, 1, h]), 445, Probe::Syn), 0)),
        );
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].attributes["shape"], "horizontal");
        // Slow: one attempt every 30 s still crosses within 15 minutes.
        let slow = events(
            (0..30u16)
                .map(|p| d.failed(ip("10.2.1.62"), None, false, (ip("10.2.1.1"), p, Probe::Syn), p as i64 * 30_000)),
        );
        assert_eq!(slow.len(), 1);
        // The province's scanner is never reported.
        assert!((0..100u16)
            .all(|p| d.failed(ip("10.0.0.5"), None, false, (ip("10.2.1.1"), p, Probe::Syn), 0) == Seen::Nothing));
    }

    #[test]
    fn a_patient_scan_is_found_in_the_hour_and_the_day() {
        let mut d = ScanDetector::new(ScanPolicy::default());
        // One port every 72 s: 12 in any 15 minutes, 50 an hour.
        let hourly =
            events((0..100u16).map(|p| {
                d.failed(ip("10.2.1.80"), None, true, (ip("10.2.1.1"), 1000 + p, Probe::Syn), p as i64 * 72_000)
            }));
        assert_eq!(hourly.len(), 2, "found in the first hour, said again an hour later: {hourly:?}");
        assert!(hourly[0].timestamp_ms <= HOUR_MS && hourly[1].timestamp_ms - hourly[0].timestamp_ms >= HOUR_MS);
        // One port every 10 minutes, to many hosts: 6 an hour, found in the day.
        let daily = events((0..144u16).map(|p| {
            let host = IpAddr::from([10, 2, 1, (p % 200) as u8 + 1]);
            d.failed(ip("10.2.1.81"), None, true, (host, 2000 + p, Probe::Syn), p as i64 * 600_000)
        }));
        assert_eq!(daily.len(), 1, "found within the day");
        assert!(daily[0].attributes["attempts_day"].parse::<usize>().unwrap() >= 100);
    }

    #[test]
    fn a_flood_of_spoofed_one_offs_does_not_flush_a_real_scanner() {
        let mut d = ScanDetector::new(ScanPolicy { max_sources: 100, ..Default::default() });
        let mut found = Vec::new();
        for p in 0..30u16 {
            // The real scanner, a LAN host (it had to ARP): a port every 20 s...
            let seen =
                d.failed(ip("10.2.1.99"), Some([2; 6]), true, (ip("10.2.1.1"), p, Probe::Syn), p as i64 * 20_000);
            found.extend(events([seen]));
            // ...between which 10,000 spoofed sources try one port each.
            for i in 0..10_000u32 {
                let spoofed = IpAddr::from(Ipv4Addr::from(0x0b00_0000 + p as u32 * 10_000 + i));
                assert_eq!(
                    d.failed(spoofed, None, false, (ip("10.2.1.1"), 80, Probe::Syn), p as i64 * 20_000),
                    Seen::Probation
                );
            }
        }
        assert_eq!(found.len(), 1, "the scanner was kept: {:?}", d.sources());
        assert_eq!(found[0].attributes["src"], "10.2.1.99");
        assert!(d.sources().0 <= 100 && d.sources().1 <= 100);
    }

    #[test]
    fn verified_lan_hosts_outlast_unverified_sources() {
        let mut d = ScanDetector::new(ScanPolicy { max_sources: 10, ..Default::default() });
        d.failed(ip("10.2.1.50"), Some([2; 6]), true, (ip("10.2.1.1"), 1, Probe::Syn), 0);
        // Unverified sources with two attempts each, many times the table.
        for i in 0..1000u32 {
            let s = IpAddr::from(Ipv4Addr::from(0x0b00_0000 + i));
            for port in [1, 2] {
                d.failed(s, None, false, (ip("10.2.1.1"), port, Probe::Syn), 1 + i as i64);
            }
        }
        assert!(d.sources.contains_key(&ip("10.2.1.50")), "the verified host is still there");
    }

    proptest! {
        /// However many sources a flood spoofs and however many ports each
        /// tries, the state stays within its bounds.
        #[test]
        fn memory_stays_bounded(attempts in proptest::collection::vec((any::<u32>(), any::<u16>(), 0i64..100_000, any::<bool>()), 1..3000)) {
            let mut d = ScanDetector::new(ScanPolicy { max_sources: 100, threshold: 10, ..Default::default() });
            for (src, port, t, verified) in attempts {
                d.failed(IpAddr::from(Ipv4Addr::from(src % 500)), None, verified, (ip("10.2.1.1"), port, Probe::Syn), t);
                prop_assert!(d.sources().0 <= 100 && d.sources().1 <= 100);
            }
            for s in d.sources.values() {
                prop_assert!(s.distinct.len() <= 20 && s.attempts.len() <= 20);
            }
        }
    }

    #[test]
    fn networks() {
        assert!(in_net(ip("10.0.0.5"), (ip("10.0.0.0"), 24)));
        assert!(!in_net(ip("10.0.1.5"), (ip("10.0.0.0"), 24)));
        assert!(in_net(ip("1.2.3.4"), (ip("0.0.0.0"), 0)));
        assert!(in_net(ip("10.0.0.5"), (ip("10.0.0.5"), 32)));
        assert!(in_net(ip("2001:db8::5"), (ip("2001:db8::"), 64)));
        assert!(!in_net(ip("2001:db8::5"), (ip("10.0.0.0"), 8)), "families never match");
    }
}
