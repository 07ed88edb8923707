//! ARP watch, as arpwatch does it: the IP-to-MAC table of the LAN from the
//! ARP packets seen. New stations are gathered into one info digest per
//! period (listed, not paged: forty PCs booting at eight are one line); a
//! station whose MAC changes is a warning, and critical when the address is
//! a gateway or this node's own (someone claims it: the classic spoof for a
//! man in the middle); changing back and forth is flip-flop; an ARP packet
//! whose Ethernet source differs from the sender it claims is suspicious.
//! VRRP and HSRP virtual MACs are allowed to move. The table is bounded.
//!
//! IPv6 neighbour discovery is the same table: a neighbour advertisement
//! (its target and target link-layer address) or solicitation (its source
//! and source link-layer address) claims an address as an ARP packet does,
//! and its events are `nd_*` instead of `arp_*`.
//!
//! A flood of invented stations must not make the watch forget the ones
//! that matter: gateways (and this node's own addresses) are never
//! evicted, and a full table evicts stations seen once before any seen
//! again. The flood itself is one `arp_flood` event. Reports about
//! gateways have their own memory, which a flood of others cannot fill.

use super::recently::Recently;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use tierwatch_protocol::{Event, Severity};

use super::mac;

/// What the watch knows beforehand.
#[derive(Debug, Clone, PartialEq)]
pub struct ArpPolicy {
    /// Addresses whose takeover is critical (the default gateway, known
    /// servers; this node's own are added), IPv4 or IPv6.
    pub gateways: Vec<IpAddr>,
    /// Addresses whose MAC is known for sure (gateways, servers): in the
    /// table from the start, established, and their takeover critical.
    pub pinned: Vec<(IpAddr, [u8; 6])>,
    /// MACs allowed to answer for changing addresses (a failover pair), besides VRRP/HSRP.
    pub allow_macs: Vec<[u8; 6]>,
    /// This node's own (address, MAC) on the interface.
    pub own: Vec<(IpAddr, [u8; 6])>,
    /// Stations remembered; beyond, the least recently seen is forgotten.
    pub max_stations: usize,
    /// This many MAC changes of one address within `flip_window` is flip-flop.
    pub flips: usize,
    pub flip_window: Duration,
    /// New stations are reported together, at most once per this period.
    pub digest: Duration,
}

impl Default for ArpPolicy {
    fn default() -> Self {
        ArpPolicy {
            gateways: Vec::new(),
            pinned: Vec::new(),
            allow_macs: Vec::new(),
            own: Vec::new(),
            max_stations: 4096,
            flips: 3,
            flip_window: Duration::from_secs(300),
            digest: Duration::from_secs(600),
        }
    }
}

/// VRRP (00:00:5e:00:01:xx, 00:00:5e:00:02:xx) and HSRP (00:00:0c:07:ac:xx, 00:00:0c:9f:fx:xx) virtual MACs.
pub fn virtual_mac(m: &[u8; 6]) -> bool {
    matches!(m, [0x00, 0x00, 0x5e, 0x00, 0x01 | 0x02, _] | [0x00, 0x00, 0x0c, 0x07, 0xac, _])
        || (m[..4] == [0x00, 0x00, 0x0c, 0x9f] && m[4] & 0xf0 == 0xf0)
}

#[derive(Debug)]
struct Station {
    mac: [u8; 6],
    last_ms: i64,
    /// Sightings, up to a few: a station seen again is no flood's invention.
    seen: u8,
    changes: VecDeque<i64>,
}

/// The table and its policy.
#[derive(Debug)]
pub struct ArpWatch {
    policy: ArpPolicy,
    table: HashMap<IpAddr, Station>,
    /// Last event per address and kind, so a storm of forged replies is one event a minute.
    reported: Recently<(IpAddr, &'static str)>,
    /// The same for gateways: a flood about other addresses cannot fill it.
    reported_gateways: Recently<(IpAddr, &'static str)>,
    digest: Digest,
    flood: super::flood::FloodMeter,
    seed: u64,
    /// The MAC first learned for each gateway, kept when a spoof moves it.
    gateway_macs: HashMap<IpAddr, [u8; 6]>,
}

/// Stations listed in one digest; beyond, only counted.
const DIGEST_LISTED: usize = 32;

/// New stations since the last digest.
#[derive(Debug, Default)]
struct Digest {
    /// When the first of them was seen.
    since_ms: Option<i64>,
    listed: Vec<(IpAddr, [u8; 6])>,
    count: u64,
}

const QUIET_MS: i64 = 60_000;

impl ArpWatch {
    /// A watch with `policy`; its own addresses count as gateways.
    pub fn new(mut policy: ArpPolicy) -> Self {
        let own: Vec<IpAddr> = policy.own.iter().map(|(ip, _)| *ip).collect();
        policy.gateways.extend(own);
        policy.gateways.extend(policy.pinned.iter().map(|(ip, _)| *ip));
        // A storm of reports remembers four per station at most.
        let reported = Recently::new(QUIET_MS, policy.max_stations * 4);
        let reported_gateways = Recently::new(QUIET_MS, policy.gateways.len() * 8 + 8);
        let mut w = ArpWatch {
            policy,
            table: HashMap::new(),
            reported,
            reported_gateways,
            digest: Digest::default(),
            flood: super::flood::FloodMeter::new("arp_flood", "stations", ARP_FLOOD_STATIONS),
            gateway_macs: HashMap::new(),
            seed: super::flood::seed(),
        };
        for (ip, mac) in w.policy.pinned.clone() {
            w.gateway_macs.insert(ip, mac);
            w.table.insert(ip, Station { mac, last_ms: 0, seen: 8, changes: VecDeque::new() });
        }
        w
    }

    /// The MAC the table gives `ip`.
    pub fn mac_of(&self, ip: &IpAddr) -> Option<[u8; 6]> {
        self.table.get(ip).map(|s| s.mac)
    }

    /// An IP frame from `ip` came from `mac` at `now_ms`: when the table
    /// agrees, that is a sighting (a station that sends traffic over two
    /// seconds or more is established, no flood's invention) and `mac` is
    /// returned; when it disagrees, the MAC the table gives an established
    /// `ip`, else nothing.
    pub fn confirm(&mut self, ip: &IpAddr, mac: [u8; 6], now_ms: i64) -> Option<[u8; 6]> {
        // This node's own addresses are established with its own MAC.
        let Some(s) = self.table.get_mut(ip) else {
            return self.policy.own.iter().find(|(own, _)| own == ip).map(|(_, m)| *m);
        };
        if s.mac == mac {
            if now_ms - s.last_ms >= 1000 {
                s.seen = s.seen.saturating_add(1).min(8);
                s.last_ms = now_ms;
            }
            return Some(mac);
        }
        (s.seen > 1).then_some(s.mac)
    }

    /// The addresses the table gives `mac`, at most a few: first those it
    /// always had, then those that moved to it (an attacker's takeovers).
    pub fn addresses_of(&self, mac: [u8; 6]) -> Vec<IpAddr> {
        let mut v: Vec<(bool, IpAddr)> = self
            .table
            .iter()
            .filter(|(_, s)| s.mac == mac)
            .map(|(ip, s)| (!s.changes.is_empty() || self.policy.gateways.contains(ip), *ip))
            .take(8)
            .collect();
        v.sort();
        v.into_iter().map(|(_, ip)| ip).collect()
    }

    /// True while a reported ARP flood's quiet period lasts.
    pub fn flooding(&self, now_ms: i64) -> bool {
        self.flood.flooding(now_ms)
    }

    /// True when `ip` is a gateway or this node's own.
    pub fn is_gateway(&self, ip: &IpAddr) -> bool {
        self.policy.gateways.contains(ip)
    }

    /// True when `mac` answers for a gateway (routed traffic comes from
    /// it with any source address) or may move (VRRP, allowed). A
    /// gateway's MAC is the one first learned for it (or this node's own):
    /// an attacker who took a gateway's address over is no router.
    pub fn is_router_mac(&self, mac: &[u8; 6]) -> bool {
        self.allowed(mac)
            || self.policy.own.iter().any(|(_, m)| m == mac)
            || self.gateway_macs.values().any(|m| m == mac)
    }

    /// Stations in the table.
    pub fn stations(&self) -> usize {
        self.table.len()
    }

    fn allowed(&self, m: &[u8; 6]) -> bool {
        virtual_mac(m) || self.policy.allow_macs.contains(m)
    }

    /// One ARP packet: Ethernet source, and the sender it claims.
    pub fn observe(&mut self, eth_src: [u8; 6], sender_mac: [u8; 6], sender_ip: IpAddr, now_ms: i64) -> Vec<Event> {
        let mut out = Vec::new();
        // ARP probes (sender 0.0.0.0) and DAD solicitations (::) claim nothing.
        if sender_ip.is_unspecified() {
            return out;
        }
        let v6 = sender_ip.is_ipv6();
        let event = |kind: &'static str, severity: Severity, attrs: &[(&str, String)]| {
            Event::new(family(kind, v6), severity, now_ms, attrs.iter().cloned())
        };
        let gateway = self.policy.gateways.contains(&sender_ip);
        // Someone else claims this node's own address.
        if let Some(own_mac) = self.policy.own.iter().find(|(ip, _)| *ip == sender_ip).map(|(_, m)| *m) {
            if own_mac != sender_mac && !self.allowed(&sender_mac) {
                if self.once(sender_ip, "arp_spoof", now_ms) {
                    out.push(event(
                        "arp_spoof",
                        Severity::Critical,
                        &[
                            ("src", sender_ip.to_string()),
                            ("src_mac", mac(&sender_mac)),
                            ("eth_src", mac(&eth_src)),
                            ("expected_mac", mac(&own_mac)),
                            ("why", "claims this node's own address".into()),
                        ],
                    ));
                }
                return out;
            }
        }
        if eth_src != sender_mac && !self.allowed(&sender_mac) && self.once(sender_ip, "arp_mismatch", now_ms) {
            out.push(event(
                "arp_mismatch",
                Severity::Warning,
                &[("src", sender_ip.to_string()), ("src_mac", mac(&sender_mac)), ("eth_src", mac(&eth_src))],
            ));
        }
        if !self.table.contains_key(&sender_ip) {
            let key = super::flood::key_hash(super::flood::ip_key(&sender_ip), self.seed);
            let target = || sender_ip.to_string();
            out.extend(self.flood.add(key, eth_src, Some(&target), now_ms));
            if self.table.len() >= self.policy.max_stations {
                self.evict();
            }
        }
        let flip_window = self.policy.flip_window.as_millis() as i64;
        let flips = self.policy.flips;
        let allowed = self.allowed(&sender_mac);
        match self.table.get_mut(&sender_ip) {
            None => {
                if gateway && self.gateway_macs.len() < 64 {
                    self.gateway_macs.entry(sender_ip).or_insert(sender_mac);
                }
                self.table
                    .insert(sender_ip, Station { mac: sender_mac, last_ms: now_ms, seen: 1, changes: VecDeque::new() });
                let d = &mut self.digest;
                d.since_ms.get_or_insert(now_ms);
                d.count += 1;
                if d.listed.len() < DIGEST_LISTED {
                    d.listed.push((sender_ip, sender_mac));
                }
            }
            Some(s) => {
                // Seen again a second or more later: established.
                if now_ms - s.last_ms >= 1000 {
                    s.seen = s.seen.saturating_add(1).min(8);
                }
                s.last_ms = now_ms;
                if s.mac == sender_mac {
                    return out;
                }
                let old = s.mac;
                s.mac = sender_mac;
                // The new MAC is not established until it is seen again:
                // one forged reply must not make its sender "verified" for the address.
                s.seen = 1;
                if allowed {
                    return out;
                }
                s.changes.push_back(now_ms);
                while s.changes.front().is_some_and(|&t| now_ms - t > flip_window) {
                    s.changes.pop_front();
                }
                let (kind, severity) = if s.changes.len() >= flips {
                    ("arp_flipflop", if gateway { Severity::Critical } else { Severity::Warning })
                } else if gateway {
                    ("arp_spoof", Severity::Critical)
                } else {
                    ("arp_change", Severity::Warning)
                };
                let changes = s.changes.len();
                if self.once(sender_ip, kind, now_ms) {
                    let why = if gateway {
                        "a gateway's address moved to another MAC"
                    } else {
                        "the address moved to another MAC"
                    };
                    out.push(event(
                        kind,
                        severity,
                        &[
                            ("src", sender_ip.to_string()),
                            ("src_mac", mac(&sender_mac)),
                            ("previous_mac", mac(&old)),
                            ("eth_src", mac(&eth_src)),
                            ("changes", changes.to_string()),
                            ("why", why.into()),
                        ],
                    ));
                }
            }
        }
        out
    }

    /// The digest of new stations (`arp_new_stations`) once its period has
    /// passed since the first of them, or at once with `force` (stopping).
    pub fn digest(&mut self, now_ms: i64, force: bool) -> Option<Event> {
        let since = self.digest.since_ms?;
        if !force && now_ms - since < self.policy.digest.as_millis() as i64 {
            return None;
        }
        let d = std::mem::take(&mut self.digest);
        let stations: Vec<String> = d.listed.iter().map(|(ip, m)| format!("{ip} {}", mac(m))).collect();
        let mut attributes = BTreeMap::from([
            ("count".to_string(), d.count.to_string()),
            ("stations".to_string(), stations.join(", ")),
            ("first_ms".to_string(), since.to_string()),
            ("window_s".to_string(), ((now_ms - since) / 1000).to_string()),
        ]);
        if d.count > d.listed.len() as u64 {
            attributes.insert("unlisted".into(), (d.count - d.listed.len() as u64).to_string());
        }
        Some(Event::new("arp_new_stations", Severity::Info, now_ms, attributes))
    }

    /// True (and remembered) unless `kind` was reported for `ip` within the last minute.
    fn once(&mut self, ip: IpAddr, kind: &'static str, now_ms: i64) -> bool {
        if self.policy.gateways.contains(&ip) {
            self.reported_gateways.first((ip, kind), now_ms)
        } else {
            self.reported.first((ip, kind), now_ms)
        }
    }

    /// Makes room: the least recently seen tenth of the stations seen once
    /// (a flood's inventions) or, when there are none, of all; never a
    /// gateway. O(n) per tenth, so O(1) per new station on average.
    fn evict(&mut self) {
        let n = (self.policy.max_stations / 10).max(1);
        let gateways = &self.policy.gateways;
        let once = self.table.iter().filter(|(ip, s)| s.seen <= 1 && !gateways.contains(ip)).count();
        let mut ages: Vec<(i64, IpAddr)> = self
            .table
            .iter()
            .filter(|(ip, s)| !gateways.contains(ip) && (once == 0 || s.seen <= 1))
            .map(|(k, s)| (s.last_ms, *k))
            .collect();
        let n = n.min(ages.len());
        if n == 0 {
            return;
        }
        ages.select_nth_unstable(n - 1);
        for (_, k) in &ages[..n] {
            self.table.remove(k);
        }
    }
}

/// New stations within the flood window that make an ARP flood.
const ARP_FLOOD_STATIONS: usize = 500;

/// `arp_spoof` for IPv4, `nd_spoof` for IPv6 (and so on).
fn family(kind: &'static str, v6: bool) -> &'static str {
    match (kind, v6) {
        (k, false) => k,
        ("arp_spoof", true) => "nd_spoof",
        ("arp_change", true) => "nd_change",
        ("arp_flipflop", true) => "nd_flipflop",
        ("arp_mismatch", true) => "nd_mismatch",
        (k, true) => k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PC: [u8; 6] = [2, 0, 0, 0, 0, 20];
    const EVIL: [u8; 6] = [2, 0, 0, 0, 6, 0x66];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn kinds(v: &[Event]) -> Vec<String> {
        v.iter().map(|e| format!("{}:{}", e.kind, e.severity)).collect()
    }

    #[test]
    fn a_forged_gateway_reply_is_critical_a_moved_pc_a_warning() {
        let mut w = ArpWatch::new(ArpPolicy { gateways: vec![ip("10.2.1.254")], ..Default::default() });
        assert!(w.observe(GW, GW, ip("10.2.1.254"), 0).is_empty(), "new stations wait for the digest");
        assert!(w.observe(PC, PC, ip("10.2.1.20"), 0).is_empty());
        assert!(w.observe(GW, GW, ip("10.2.1.254"), 10).is_empty(), "known station, same MAC");
        let spoof = w.observe(EVIL, EVIL, ip("10.2.1.254"), 20);
        assert_eq!(kinds(&spoof), ["arp_spoof:3"]);
        assert_eq!(spoof[0].attributes["previous_mac"], "02:00:00:00:00:01");
        assert_eq!(spoof[0].attributes["src_mac"], "02:00:00:00:06:66");
        assert_eq!(kinds(&w.observe(EVIL, EVIL, ip("10.2.1.20"), 30)), ["arp_change:2"]);
        // The real gateway answers again, the attacker again: flip-flop, critical.
        w.observe(GW, GW, ip("10.2.1.254"), 40);
        let f = w.observe(EVIL, EVIL, ip("10.2.1.254"), 50);
        assert_eq!(kinds(&f), ["arp_flipflop:3"]);
    }

    #[test]
    fn own_address_mismatch_virtual_macs_and_bounds() {
        let own = (ip("10.2.1.1"), [2, 0, 0, 0, 0, 9]);
        let mut w = ArpWatch::new(ArpPolicy { own: vec![own], max_stations: 10, ..Default::default() });
        assert_eq!(kinds(&w.observe(EVIL, EVIL, ip("10.2.1.1"), 0)), ["arp_spoof:3"]);
        assert!(w.observe(EVIL, EVIL, ip("10.2.1.1"), 1000).is_empty(), "a storm is one event a minute");
        assert_eq!(kinds(&w.observe(EVIL, EVIL, ip("10.2.1.1"), 61_000)), ["arp_spoof:3"]);
        // Ethernet source and claimed sender differ.
        assert_eq!(kinds(&w.observe(EVIL, PC, ip("10.2.1.20"), 0)), ["arp_mismatch:2"]);
        // A VRRP address moving between routers is normal.
        let vrrp = [0, 0, 0x5e, 0, 1, 7];
        w.observe(GW, vrrp, ip("10.2.1.253"), 0);
        assert!(w.observe(PC, vrrp, ip("10.2.1.253"), 1).is_empty());
        assert!(virtual_mac(&[0, 0, 0x0c, 0x07, 0xac, 1]) && !virtual_mac(&PC));
        for i in 0..100u8 {
            w.observe(PC, [2, 0, 0, 1, 0, i], IpAddr::from([10, 2, 2, i]), i as i64);
        }
        assert!(w.stations() <= 10);
        assert!(w.observe(PC, PC, ip("0.0.0.0"), 0).is_empty(), "ARP probes claim nothing");
    }

    #[test]
    fn a_pinned_gateway_is_known_before_any_reply() {
        let gw = ip("10.2.1.254");
        let mut w = ArpWatch::new(ArpPolicy { pinned: vec![(gw, GW)], ..Default::default() });
        // The spoof was running when the agent started: its first reply is already a takeover.
        let e = w.observe(EVIL, EVIL, gw, 0);
        assert_eq!(kinds(&e), ["arp_spoof:3"]);
        assert_eq!(e[0].attributes["previous_mac"], "02:00:00:00:00:01");
        assert!(!w.is_router_mac(&EVIL) && w.is_router_mac(&GW));
    }

    #[test]
    fn new_stations_are_one_digest_per_period() {
        let policy = ArpPolicy { digest: Duration::from_secs(60), ..Default::default() };
        let mut w = ArpWatch::new(policy);
        assert!(w.digest(0, false).is_none(), "nothing new, nothing said");
        for i in 0..40u8 {
            w.observe([2, 0, 0, 0, 1, i], [2, 0, 0, 0, 1, i], IpAddr::from([10, 2, 1, 10 + i]), 5_000 + i as i64);
        }
        // A station seen again is not new.
        w.observe([2, 0, 0, 0, 1, 0], [2, 0, 0, 0, 1, 0], ip("10.2.1.10"), 6_000);
        assert!(w.digest(64_999, false).is_none(), "the period counts from the first new station");
        let d = w.digest(65_000, false).expect("a digest after the period");
        assert_eq!((d.kind.as_str(), d.severity), ("arp_new_stations", Severity::Info as i32));
        assert_eq!(d.attributes["count"], "40");
        assert_eq!(d.attributes["unlisted"], "8");
        assert_eq!(d.attributes["first_ms"], "5000");
        assert_eq!(d.attributes["window_s"], "60");
        let listed: Vec<&str> = d.attributes["stations"].split(", ").collect();
        assert_eq!(listed.len(), DIGEST_LISTED);
        assert_eq!(listed[0], "10.2.1.10 02:00:00:00:01:00");
        assert!(w.digest(200_000, false).is_none(), "each station once");
        // Stopping says what is pending at once.
        w.observe(PC, PC, ip("10.2.1.99"), 300_000);
        let d = w.digest(300_001, true).expect("forced");
        assert_eq!((d.attributes["count"].as_str(), d.attributes.contains_key("unlisted")), ("1", false));
    }
}
