//! Floods as events of their own: a spoofed-source SYN flood, an ARP flood
//! of invented stations, a MAC flood of invented Ethernet sources, DHCP
//! starvation (DISCOVERs from invented client MACs). What they share: many
//! distinct keys (sources, stations, MACs) within a short window, most of
//! them seen once. A meter counts the events and estimates the distinct
//! keys of each 10-second window in a fixed bitmap (linear counting), keeps
//! the heaviest Ethernet senders and targets in a few counters (Misra-Gries),
//! and says so once: one event when a window crosses the threshold, then
//! nothing for the quiet period however long the flood lasts; the event
//! carries the rate, the counts and who sent it. Constant memory.

use std::collections::BTreeMap;

use tierwatch_protocol::{Event, Severity};

use super::mac;

/// The window floods are judged on.
pub const WINDOW_MS: i64 = 10_000;
/// One flood of a kind is reported at most this often.
pub const QUIET_MS: i64 = 600_000;
/// Heavy hitters kept (Ethernet senders, targets).
const TOP: usize = 8;
/// Words of the distinct-key map (2^14 bits): good to a few tens of thousands.
const WORDS: usize = 256;

/// Distinct items counted in `W` 64-bit words by linear counting (the
/// number of bits set estimates how many distinct hashes were seen); the
/// top bits of each hash pick the bit. Constant memory, O(1) estimate.
#[derive(Debug, Clone, Copy)]
pub struct Distinct<const W: usize> {
    bits: [u64; W],
    ones: u32,
}

impl<const W: usize> Default for Distinct<W> {
    fn default() -> Self {
        Distinct { bits: [0; W], ones: 0 }
    }
}

impl<const W: usize> Distinct<W> {
    /// Counts hash `h` (seen before or not).
    pub fn insert(&mut self, h: u64) {
        let bit = (h >> (64 - (W as u64 * 64).trailing_zeros())) as usize;
        let word = &mut self.bits[bit / 64];
        if *word & (1 << (bit % 64)) == 0 {
            *word |= 1 << (bit % 64);
            self.ones += 1;
        }
    }

    /// Bits set: a lower bound of the estimate, and free.
    pub fn ones(&self) -> usize {
        self.ones as usize
    }

    /// Distinct hashes seen (estimated); saturated, four times the bits.
    pub fn estimate(&self) -> usize {
        let m = (W * 64) as f64;
        let zero = m - f64::from(self.ones);
        if zero < 1.0 {
            return W * 64 * 4;
        }
        (m * (m / zero).ln()).round() as usize
    }
}

/// Counts of at most [`TOP`] keys, the heaviest ones kept (Misra-Gries).
#[derive(Debug, Default, Clone)]
struct Heavy<K> {
    counts: Vec<(K, u64)>,
}

impl<K: PartialEq + Clone> Heavy<K> {
    fn add(&mut self, k: &K) {
        if let Some(c) = self.counts.iter_mut().find(|c| c.0 == *k) {
            c.1 += 1;
        } else if self.counts.len() < TOP {
            self.counts.push((k.clone(), 1));
        } else {
            for c in &mut self.counts {
                c.1 -= 1;
            }
            self.counts.retain(|c| c.1 > 0);
        }
    }

    fn top(&self, n: usize) -> Vec<(K, u64)> {
        let mut v = self.counts.clone();
        v.sort_by_key(|c| std::cmp::Reverse(c.1));
        v.truncate(n);
        v
    }
}

/// One kind of flood.
#[derive(Debug)]
pub struct FloodMeter {
    kind: &'static str,
    what: &'static str,
    /// Distinct keys in a window that make a flood.
    threshold: usize,
    window_ms: i64,
    start_ms: i64,
    count: u64,
    keys: Box<Distinct<WORDS>>,
    senders: Heavy<[u8; 6]>,
    targets: Heavy<String>,
    reported_ms: Option<i64>,
    /// Occurrences whose sender was counted (a sample).
    sampled: u64,
    /// Totals since the flood was reported, for the next report.
    total: u64,
}

impl FloodMeter {
    /// A meter of `kind` events: `threshold` distinct `what` in 10 s is a flood.
    pub fn new(kind: &'static str, what: &'static str, threshold: usize) -> Self {
        FloodMeter::with_window(kind, what, threshold, WINDOW_MS)
    }

    /// The same, judged on windows of `window_ms`.
    pub fn with_window(kind: &'static str, what: &'static str, threshold: usize, window_ms: i64) -> Self {
        FloodMeter {
            kind,
            what,
            threshold,
            window_ms,
            start_ms: 0,
            count: 0,
            keys: Box::default(),
            senders: Heavy::default(),
            targets: Heavy::default(),
            reported_ms: None,
            sampled: 0,
            total: 0,
        }
    }

    /// One occurrence at `now_ms`: its key (hashed), the Ethernet source
    /// of its frame, and what it was aimed at, if anything. Returns the
    /// event when this occurrence made the window a flood.
    pub fn add(
        &mut self,
        key: u64,
        sender: [u8; 6],
        target: Option<&dyn Fn() -> String>,
        now_ms: i64,
    ) -> Option<Event> {
        if now_ms - self.start_ms >= self.window_ms {
            self.reset(now_ms);
        }
        self.count += 1;
        self.total += 1;
        // The top bits pick the bit: multiply-shift puts its good bits there.
        self.keys.insert(key);
        // Heavy hitters from a sample (all while few): this runs for every
        // frame of a flood, and ordinary traffic too.
        if self.count <= 64 || self.count & 63 == 1 {
            self.sampled += 1;
            self.senders.add(&sender);
            if let Some(t) = target {
                self.targets.add(&t());
            }
        }
        // Judged every 64th, or every one while the count is small (a
        // starvation threshold of 60 must not wait for the 64th).
        if (self.count > 256 && self.count & 63 != 0)
            || self.keys.ones() < self.threshold.min(WORDS * 64 / 2)
            || self.reported_ms.is_some_and(|r| now_ms - r < QUIET_MS)
        {
            return None;
        }
        let distinct = self.distinct();
        if distinct < self.threshold {
            return None;
        }
        self.reported_ms = Some(now_ms);
        let elapsed_ms = (now_ms - self.start_ms).max(1);
        let list = |v: Vec<String>| v.join(",");
        let mut attrs = BTreeMap::from([
            ("src".to_string(), self.senders.top(1).first().map(|(m, _)| mac(m)).unwrap_or_default()),
            (
                "senders".to_string(),
                list(
                    self.senders
                        .top(3)
                        .iter()
                        .map(|(m, n)| format!("{} {}%", mac(m), n * 100 / self.sampled.max(1)))
                        .collect(),
                ),
            ),
            ("count".to_string(), self.count.to_string()),
            (format!("distinct_{}", self.what), distinct.to_string()),
            ("rate_per_s".to_string(), (self.count * 1000 / elapsed_ms as u64).to_string()),
            ("window_s".to_string(), (elapsed_ms / 1000).max(1).to_string()),
            ("since_last_report".to_string(), self.total.to_string()),
        ]);
        let targets = self.targets.top(3);
        if !targets.is_empty() {
            attrs.insert("targets".into(), list(targets.iter().map(|(t, _)| t.clone()).collect()));
        }
        self.total = 0;
        Some(Event::new(self.kind, Severity::Warning, now_ms, attrs))
    }

    fn reset(&mut self, now_ms: i64) {
        self.start_ms = now_ms;
        self.count = 0;
        *self.keys = Distinct::default();
        self.senders = Heavy::default();
        self.targets = Heavy::default();
        self.sampled = 0;
    }

    /// Distinct keys of the window so far (estimated).
    pub fn distinct(&self) -> usize {
        self.keys.estimate()
    }

    /// True while a reported flood's quiet period lasts.
    pub fn flooding(&self, now_ms: i64) -> bool {
        self.reported_ms.is_some_and(|r| now_ms - r < QUIET_MS)
    }
}

/// A cheap, seeded hash of a key (a MAC, an address) for the meters:
/// multiply-shift with the seed as an odd multiplier (a universal family:
/// an attacker who does not know the seed cannot aim at one bit). The
/// meter uses the top bits. A collision here only undercounts.
pub fn key_hash(key: u128, seed: u64) -> u64 {
    let x = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
    // A large odd multiplier whatever the seed (golden-ratio bits mixed in).
    (x ^ (x >> 31)).wrapping_mul((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
}

/// A seed for the meters' hashes, different each run (from the clock's
/// nanoseconds: keys cannot be chosen to collide without knowing it).
pub fn seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0x7477, |d| d.as_nanos() as u64)
}

/// A MAC as a meter key.
pub fn mac_key(m: &[u8; 6]) -> u128 {
    u128::from(u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]]))
}

/// An address as a meter key (IPv4 as IPv4-mapped IPv6).
pub fn ip_key(ip: &std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        std::net::IpAddr::V6(a) => u128::from(*a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_event_per_quiet_period_with_its_sender() {
        let mut m = FloodMeter::new("syn_flood", "sources", 1000);
        let attacker = [2, 0, 0, 0, 6, 0x66];
        let target = || "10.2.1.1:80".to_string();
        let mut got = Vec::new();
        // 300,000 spoofed SYNs over five minutes: 1,000 a second.
        for i in 0..300_000u64 {
            got.extend(m.add(key_hash(u128::from(i), 7), attacker, Some(&target), i as i64));
        }
        assert_eq!(got.len(), 1, "once per quiet period");
        let e = &got[0];
        assert_eq!(e.attributes["src"], "02:00:00:00:06:66");
        assert_eq!(e.attributes["targets"], "10.2.1.1:80");
        let distinct: usize = e.attributes["distinct_sources"].parse().unwrap();
        assert!((950..1100).contains(&distinct), "{distinct}");
        assert!(e.attributes["rate_per_s"].parse::<u64>().unwrap() >= 900);
        // Ten minutes on, still flooding: said again, with the total since.
        let more = (0..20_000u64)
            .filter_map(|i| m.add(key_hash(u128::from(i), 8), attacker, None, 700_000 + i as i64))
            .collect::<Vec<_>>();
        assert_eq!(more.len(), 1);
        assert!(more[0].attributes["since_last_report"].parse::<u64>().unwrap() > 290_000);
    }

    #[test]
    fn many_packets_of_few_keys_are_no_flood() {
        let mut m = FloodMeter::new("syn_flood", "sources", 1000);
        for i in 0..100_000u64 {
            assert!(m.add(key_hash(u128::from(i % 50), 7), [2; 6], None, (i / 10) as i64).is_none());
        }
        assert!(m.distinct() < 60);
    }
}
