//! Port scan detection, in the spirit of Zeek's scan policy: per source,
//! the distinct (host, port) pairs it tried and failed at (a SYN answered
//! by RST or never answered, a UDP datagram answered by ICMP port
//! unreachable) within a sliding window. Crossing the threshold is one
//! `port_scan` event with the evidence; the source is reported again only
//! once the window has passed. Vertical (one host, many ports), horizontal
//! (many hosts, one port) and slow scans (spread over the window) all count
//! the same way. Memory is bounded however many sources a flood spoofs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use tierwatch_protocol::{Event, Severity};

/// How scans are judged.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPolicy {
    /// Distinct failed (host, port) attempts that make a scan.
    pub threshold: usize,
    /// Distinct failed ports of one host that make a scan of that host
    /// (tighter: one victim's ports are rarely tried by accident).
    pub vertical_threshold: usize,
    pub window: Duration,
    /// Sources never reported (the province's own scanners), as (network, prefix length).
    pub allow: Vec<(Ipv4Addr, u8)>,
    /// Sources tracked at once; beyond, the least recently active is forgotten.
    pub max_sources: usize,
}

impl Default for ScanPolicy {
    fn default() -> Self {
        ScanPolicy {
            threshold: 25,
            vertical_threshold: 15,
            window: Duration::from_secs(900),
            allow: Vec::new(),
            max_sources: 10_000,
        }
    }
}

/// True when `ip` is inside `net/len`.
pub fn in_net(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[derive(Debug, Default)]
struct Source {
    /// Distinct failed attempts in order of their first failure, for the window.
    attempts: VecDeque<(i64, Ipv4Addr, u16)>,
    distinct: HashSet<(Ipv4Addr, u16)>,
    mac: Option<[u8; 6]>,
    last_ms: i64,
    reported_ms: Option<i64>,
}

/// The detector's state.
#[derive(Debug)]
pub struct ScanDetector {
    policy: ScanPolicy,
    sources: HashMap<Ipv4Addr, Source>,
}

impl ScanDetector {
    /// A detector with `policy`.
    pub fn new(policy: ScanPolicy) -> Self {
        ScanDetector { policy, sources: HashMap::new() }
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// `src` (with its Ethernet address, when seen) failed to reach `host:port` at `now_ms`.
    pub fn failed(
        &mut self,
        src: Ipv4Addr,
        mac: Option<[u8; 6]>,
        host: Ipv4Addr,
        port: u16,
        now_ms: i64,
    ) -> Option<Event> {
        if self.policy.allow.iter().any(|n| in_net(src, *n)) {
            return None;
        }
        if !self.sources.contains_key(&src) && self.sources.len() >= self.policy.max_sources {
            self.evict(now_ms);
        }
        let window = self.policy.window.as_millis() as i64;
        let threshold = self.policy.threshold;
        let s = self.sources.entry(src).or_default();
        s.last_ms = now_ms;
        if mac.is_some() {
            s.mac = mac;
        }
        // Each pair is in `attempts` once, at its first failure in the window.
        while let Some(&(t, h, p)) = s.attempts.front() {
            if now_ms - t <= window {
                break;
            }
            s.attempts.pop_front();
            s.distinct.remove(&(h, p));
        }
        // A source past the threshold needs no more memory than twice that.
        if s.distinct.len() < threshold * 2 && s.distinct.insert((host, port)) {
            s.attempts.push_back((now_ms, host, port));
        }
        let vertical = self.policy.vertical_threshold;
        let crossed = s.distinct.len() >= threshold
            || (s.distinct.len() >= vertical && s.distinct.iter().filter(|(h, _)| *h == host).count() >= vertical);
        if !crossed || s.reported_ms.is_some_and(|r| now_ms - r < window) {
            return None;
        }
        s.reported_ms = Some(now_ms);
        Some(Self::event(src, s, now_ms, window))
    }

    fn event(src: Ipv4Addr, s: &Source, now_ms: i64, window_ms: i64) -> Event {
        let hosts: HashSet<Ipv4Addr> = s.distinct.iter().map(|(h, _)| *h).collect();
        let mut ports: Vec<u16> = s.distinct.iter().map(|(_, p)| *p).collect::<HashSet<_>>().into_iter().collect();
        ports.sort_unstable();
        let shape = match (hosts.len(), ports.len()) {
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
            ("window_s".to_string(), (window_ms / 1000).to_string()),
            ("first_ms".to_string(), first.to_string()),
            ("ports".to_string(), ports.iter().take(20).map(u16::to_string).collect::<Vec<_>>().join(",")),
        ]);
        if hosts.len() <= 5 {
            let mut h: Vec<String> = hosts.iter().map(Ipv4Addr::to_string).collect();
            h.sort();
            attributes.insert("targets".to_string(), h.join(","));
        }
        if let Some(m) = s.mac {
            attributes.insert("src_mac".to_string(), super::mac(&m));
        }
        Event::new("port_scan", Severity::Warning, now_ms, attributes)
    }

    /// Drops sources idle for a window, then, if still full, the least
    /// recently active tenth at once, so a flood of new sources costs
    /// O(log n) per frame, not a scan of the table each.
    fn evict(&mut self, now_ms: i64) {
        let window = self.policy.window.as_millis() as i64;
        self.sources.retain(|_, s| now_ms - s.last_ms <= window);
        if self.sources.len() >= self.policy.max_sources {
            let mut ages: Vec<(i64, Ipv4Addr)> = self.sources.iter().map(|(k, s)| (s.last_ms, *k)).collect();
            let n = (self.policy.max_sources / 10).max(1).min(ages.len());
            ages.select_nth_unstable(n - 1);
            for (_, k) in &ages[..n] {
                self.sources.remove(k);
            }
        }
    }

    /// Forgets sources idle for longer than the window (called now and then).
    pub fn expire(&mut self, now_ms: i64) {
        let window = self.policy.window.as_millis() as i64;
        self.sources.retain(|_, s| now_ms - s.last_ms <= window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn a_vertical_scan_is_reported_once_per_window_with_evidence() {
        let mut d = ScanDetector::new(ScanPolicy::default());
        let mut events = Vec::new();
        for port in 1..=100u16 {
            events.extend(d.failed(ip("10.2.1.50"), Some([2, 0, 0, 0, 1, 50]), ip("10.2.1.1"), port, port as i64 * 10));
        }
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.attributes["src"], "10.2.1.50");
        assert_eq!(e.attributes["attempts"], "15");
        assert_eq!(e.attributes["shape"], "vertical");
        assert_eq!(e.attributes["targets"], "10.2.1.1");
        assert_eq!(e.attributes["src_mac"], "02:00:00:00:01:32");
        assert_eq!(e.timestamp_ms, 150, "one host's ports: reported at the 15th");
        // After the window, a scan still going is reported again.
        let again = d.failed(ip("10.2.1.50"), None, ip("10.2.1.1"), 2000, 1_000_000);
        assert!(again.is_none(), "the old attempts left the window");
    }

    #[test]
    fn repeats_horizontal_slow_and_allowlisted() {
        let mut d = ScanDetector::new(ScanPolicy { allow: vec![(ip("10.0.0.0"), 24)], ..Default::default() });
        // The same closed port again and again is one attempt.
        for t in 0..1000 {
            assert!(d.failed(ip("10.2.1.60"), None, ip("10.2.1.1"), 23, t).is_none());
        }
        // Horizontal: one port on many hosts.
        let hits: Vec<Event> =
            (1..=30u8).filter_map(|h| d.failed(ip("10.2.1.61"), None, Ipv4Addr::new(10, 2, 1, h), 445, 0)).collect();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].attributes["shape"], "horizontal");
        // Slow: one attempt every 30 s still crosses within 15 minutes.
        let slow: Vec<Event> =
            (0..30u16).filter_map(|p| d.failed(ip("10.2.1.62"), None, ip("10.2.1.1"), p, p as i64 * 30_000)).collect();
        assert_eq!(slow.len(), 1);
        // The province's scanner is never reported.
        assert!((0..100u16).all(|p| d.failed(ip("10.0.0.5"), None, ip("10.2.1.1"), p, 0).is_none()));
    }

    proptest! {
        /// However many sources a flood spoofs and however many ports each
        /// tries, the state stays within its bounds.
        #[test]
        fn memory_stays_bounded(attempts in proptest::collection::vec((any::<u32>(), any::<u16>(), 0i64..100_000), 1..3000)) {
            let mut d = ScanDetector::new(ScanPolicy { max_sources: 100, threshold: 10, ..Default::default() });
            for (src, port, t) in attempts {
                d.failed(Ipv4Addr::from(src % 500), None, ip("10.2.1.1"), port, t);
                prop_assert!(d.sources() <= 100);
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
    }
}
