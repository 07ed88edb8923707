//! Passive capture on one LAN interface with pnet's datalink channel, on a
//! dedicated thread: Linux pnet has no kernel filter, so every frame comes
//! to user space, and the work per frame is a few header reads and a
//! lookup or two. The loop survives the interface going down and up
//! (the receiver errors: back off, reopen), and stops within its read
//! timeout of cancellation.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use pnet::datalink::{self, Channel, NetworkInterface};
use pnet::packet::arp::{ArpOperations, ArpPacket};
use pnet::packet::ethernet::{EtherTypes, EthernetPacket};
use pnet::packet::ip::{IpNextHeaderProtocol, IpNextHeaderProtocols};
use pnet::packet::ipv4::Ipv4Packet;
use pnet::packet::ipv6::Ipv6Packet;
use pnet::packet::tcp::{TcpFlags, TcpPacket};
use pnet::packet::Packet;
use tierwatch_protocol::{Event, Severity};
use tokio_util::sync::CancellationToken;

use super::arp::{ArpPolicy, ArpWatch};
use super::dhcp::DhcpWatch;
use super::flood::{ip_key, key_hash, mac_key, FloodMeter};
use super::recently::Recently;
use super::router_advert::{Router, RouterWatch};
use super::scan::{Attempt, Probe, ScanDetector, ScanPolicy, Seen};
use super::LanSpec;

/// Events of one kind let through per minute; the rest are counted in one
/// `events_suppressed` event, so a hostile flood cannot flood the batches.
/// Critical events have a budget of their own: a flood of warnings never
/// spends the one that says the gateway was taken over.
const EVENTS_PER_KIND_PER_MINUTE: u32 = 60;

/// Caps the events per kind and minute.
#[derive(Debug, Default)]
struct Limiter {
    minute_start: i64,
    counts: HashMap<(String, bool), u32>,
    suppressed: std::collections::BTreeMap<String, u64>,
}

impl Limiter {
    fn admit(&mut self, found: &mut Vec<Event>, now_ms: i64, out: &mut Vec<Event>) {
        if now_ms - self.minute_start >= 60_000 {
            if !self.suppressed.is_empty() {
                let attributes = std::mem::take(&mut self.suppressed)
                    .into_iter()
                    .map(|(k, n)| (k, n.to_string()))
                    .chain([("window_s".to_string(), "60".to_string())]);
                out.push(Event::new("events_suppressed", Severity::Warning, now_ms, attributes));
            }
            self.counts.clear();
            self.minute_start = now_ms;
        }
        for e in found.drain(..) {
            let critical = e.severity >= Severity::Critical as i32;
            let n = self.counts.entry((e.kind.clone(), critical)).or_default();
            if *n < EVENTS_PER_KIND_PER_MINUTE {
                *n += 1;
                out.push(e);
            } else {
                *self.suppressed.entry(e.kind).or_default() += 1;
            }
        }
    }
}

/// A SYN (or echo request) not answered within this is a failed attempt.
const SYN_TIMEOUT_MS: i64 = 3_000;
/// SYNs (and echo requests) awaiting an answer, at most, for unverified
/// sources and apart for verified LAN hosts (a SYN flood must not grow
/// memory, nor crowd out a real scanner's SYNs).
const MAX_PENDING: usize = 65_536;
/// Distinct spoofed-looking sources of SYNs within the flood window that
/// make a SYN flood.
const SYN_FLOOD_SOURCES: usize = 1_000;
/// Distinct Ethernet sources within the flood window that make a MAC flood.
const MAC_FLOOD_MACS: usize = 2_000;
/// A pair (address, MAC) of a LAN frame, found to agree with the ARP table, is not looked up again until the next sweep.
const CHECKED: usize = 256;

type Flow = (IpAddr, IpAddr, u16);

/// The addresses of one IP packet and of the frame that carried it.
#[derive(Debug, Clone, Copy)]
struct Hop {
    src: IpAddr,
    dst: IpAddr,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    /// The ARP table gives `src` to `src_mac`.
    verified: bool,
}
/// An address (as [`ip_key`]) and the MAC its frame came from, packed with
/// whether the table agrees (bit 48) and that the slot is used (bit 49):
/// two words compared per frame.
type Pair = (u128, u64);

/// SYNs or echo requests awaiting an answer: key → (time, client MAC, the
/// MAC it was sent to). An answer counts only from the MAC the request was
/// sent to (the server, or the router in front of it): a scanner that
/// forges SYN-ACKs or echo replies from its own MAC hides nothing, and
/// nobody can forge refusals to frame an innocent client.
#[derive(Debug)]
struct Pending<K> {
    verified: HashMap<K, (i64, [u8; 6], [u8; 6])>,
    other: HashMap<K, (i64, [u8; 6], [u8; 6])>,
}

impl<K> Default for Pending<K> {
    fn default() -> Self {
        Pending { verified: HashMap::new(), other: HashMap::new() }
    }
}

impl<K: std::hash::Hash + Eq + Copy> Pending<K> {
    fn insert(&mut self, k: K, at: (i64, [u8; 6], [u8; 6]), verified: bool) {
        let m = if verified { &mut self.verified } else { &mut self.other };
        if m.len() < MAX_PENDING {
            m.insert(k, at);
        }
    }

    /// The request answered from `from` (a MAC; `router`: a router's, which
    /// may answer from another MAC than the one it was sent to, as VRRP
    /// pairs do): `Some((client MAC, verified))` if it was pending.
    fn answered(&mut self, k: &K, from: [u8; 6], router: bool) -> Option<([u8; 6], bool)> {
        for (m, verified) in [(&mut self.verified, true), (&mut self.other, false)] {
            if m.get(k).is_some_and(|e| e.2 == from || router) {
                return m.remove(k).map(|(_, mac, _)| (mac, verified));
            }
        }
        None
    }

    fn len(&self) -> usize {
        self.verified.len() + self.other.len()
    }

    /// Removes and returns what waited longer than the timeout.
    fn expired(&mut self, now_ms: i64) -> Vec<(K, [u8; 6], bool)> {
        let mut out = Vec::new();
        for (m, verified) in [(&mut self.verified, true), (&mut self.other, false)] {
            m.retain(|k, (t, mac, _)| {
                let keep = now_ms - *t < SYN_TIMEOUT_MS;
                if !keep {
                    out.push((*k, *mac, verified));
                }
                keep
            });
        }
        out
    }
}

/// What the frames of one interface feed: the detectors and the requests awaiting an answer.
pub struct Sensors {
    scan: ScanDetector,
    /// The scan policy's threshold, for decoys: a third of it shared with a MAC.
    scan_threshold: usize,
    arp: ArpWatch,
    dhcp: DhcpWatch,
    routers: RouterWatch,
    syns: Pending<Flow>,
    echoes: Pending<(IpAddr, IpAddr)>,
    syn_flood: FloodMeter,
    mac_flood: FloodMeter,
    /// Pairs (address, MAC) of LAN frames that agreed with the table lately.
    checked: Box<[Pair; CHECKED]>,
    mismatches: Recently<(IpAddr, [u8; 6])>,
    /// The Ethernet sources of the last two frames (the MAC flood meter skips repeats).
    last_macs: [[u8; 6]; 2],
    seed: u64,
    last_sweep_ms: i64,
    limiter: Limiter,
    /// Events found by the detectors, before the limiter.
    found: Vec<Event>,
}

impl Sensors {
    /// Sensors with their policies; `dhcp_servers` are the LAN's own DHCP servers.
    pub fn new(mut scan: ScanPolicy, mut arp: ArpPolicy, dhcp_servers: Vec<Ipv4Addr>) -> Self {
        // This node's own traffic (its probes, its DHCP server's pings) is no scan.
        scan.allow.extend(arp.own.iter().map(|(ip, _)| (*ip, if ip.is_ipv4() { 32 } else { 128 })));
        // The LAN's DHCP servers are known servers: their takeover is critical.
        arp.gateways.extend(dhcp_servers.iter().map(|s| IpAddr::V4(*s)));
        let seed = super::flood::seed();
        Sensors {
            scan_threshold: scan.threshold,
            scan: ScanDetector::new(scan),
            arp: ArpWatch::new(arp),
            dhcp: DhcpWatch::new(dhcp_servers),
            routers: RouterWatch::default(),
            syns: Pending::default(),
            echoes: Pending::default(),
            syn_flood: FloodMeter::new("syn_flood", "sources", SYN_FLOOD_SOURCES),
            mac_flood: FloodMeter::new("mac_flood", "macs", MAC_FLOOD_MACS),
            checked: Box::new([(0, 0); CHECKED]),
            mismatches: Recently::new(60_000, 4096),
            last_macs: [[0; 6]; 2],
            seed: seed | 1,
            last_sweep_ms: 0,
            limiter: Limiter::default(),
            found: Vec::new(),
        }
    }

    /// Trusts `routers` as the LAN's own IPv6 routers (none by default).
    pub fn allowing_routers(mut self, routers: Vec<Router>) -> Self {
        self.routers = RouterWatch::new(routers);
        self
    }

    /// Scan sources tracked (in the table and on probation), stations, requests pending.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let (table, probation) = self.scan.sources();
        (table + probation, self.arp.stations(), self.syns.len() + self.echoes.len())
    }

    /// Feeds one Ethernet frame seen at `now_ms`; events found go to `out`.
    pub fn frame(&mut self, data: &[u8], now_ms: i64, out: &mut Vec<Event>) {
        if now_ms - self.last_sweep_ms >= 1000 {
            self.sweep(now_ms, out);
        }
        let mut found = std::mem::take(&mut self.found);
        self.dispatch(data, now_ms, &mut found);
        if !found.is_empty() {
            self.limiter.admit(&mut found, now_ms, out);
        }
        self.found = found;
    }

    fn dispatch(&mut self, data: &[u8], now_ms: i64, out: &mut Vec<Event>) {
        let Some(eth) = EthernetPacket::new(data) else { return };
        let src_mac: [u8; 6] = eth.get_source().octets();
        let dst_mac: [u8; 6] = eth.get_destination().octets();
        // Distinct sources are what a MAC flood is: a MAC like one of the
        // last two frames' adds nothing, and ordinary traffic costs a compare.
        if src_mac != self.last_macs[0] && src_mac != self.last_macs[1] {
            self.last_macs = [src_mac, self.last_macs[0]];
            let key = key_hash(mac_key(&src_mac), self.seed);
            if let Some(e) = self.mac_flood.add(key, src_mac, None, now_ms) {
                // An ARP flood invents MACs too: said once, as an ARP flood.
                if !self.arp.flooding(now_ms) {
                    out.push(e);
                }
            }
        }
        match eth.get_ethertype() {
            EtherTypes::Arp => {
                if let Some(arp) = ArpPacket::new(eth.payload()) {
                    let sender = arp.get_sender_hw_addr().octets();
                    let sender_ip = IpAddr::V4(arp.get_sender_proto_addr());
                    out.extend(self.arp.observe(src_mac, sender, sender_ip, now_ms));
                    if arp.get_operation() == ArpOperations::Request {
                        let target = IpAddr::V4(arp.get_target_proto_addr());
                        self.sweep_probe(sender_ip, src_mac, target, Probe::Arp, now_ms, out);
                    }
                }
            }
            EtherTypes::Ipv4 => {
                if let Some(ip) = Ipv4Packet::new(eth.payload()) {
                    // A later fragment carries no transport header: not read as one.
                    if ip.get_fragment_offset() != 0 {
                        return;
                    }
                    let (src, dst) = (IpAddr::V4(ip.get_source()), IpAddr::V4(ip.get_destination()));
                    let verified = self.check_source(src, src_mac, now_ms, out);
                    let proto = ip.get_next_level_protocol();
                    // Most frames are segments of established connections
                    // (ACK, no SYN, RST nor FIN): nothing for the detectors.
                    if proto == IpNextHeaderProtocols::Tcp
                        && ip.payload().get(13).is_some_and(|f| f & 0x17 == TcpFlags::ACK)
                    {
                        return;
                    }
                    let hop = Hop { src, dst, src_mac, dst_mac, verified };
                    match proto {
                        IpNextHeaderProtocols::Icmp => self.icmp(hop, ip.payload(), false, now_ms, out),
                        proto => self.transport(proto, hop, ip.payload(), now_ms, out),
                    }
                }
            }
            EtherTypes::Ipv6 => self.ipv6(eth.payload(), src_mac, dst_mac, now_ms, out),
            _ => {}
        }
    }

    fn ipv6(&mut self, data: &[u8], src_mac: [u8; 6], dst_mac: [u8; 6], now_ms: i64, out: &mut Vec<Event>) {
        if let Some(ad) = super::router_advert::parse(data) {
            out.extend(self.routers.observe(&ad, src_mac, now_ms));
            return;
        }
        let Some(ip) = Ipv6Packet::new(data) else { return };
        let (src, dst) = (IpAddr::V6(ip.get_source()), IpAddr::V6(ip.get_destination()));
        let Some(payload) = ip.payload().get(..ip.get_payload_length() as usize) else { return };
        let verified = self.check_source(src, src_mac, now_ms, out);
        // Walked past extension headers: a probe hidden behind destination options is still read.
        let Some((next, payload)) = super::router_advert::upper_layer(ip.get_next_header().0, payload) else { return };
        let next = IpNextHeaderProtocol(next);
        if next == IpNextHeaderProtocols::Tcp && payload.get(13).is_some_and(|f| f & 0x17 == TcpFlags::ACK) {
            return;
        }
        let hop = Hop { src, dst, src_mac, dst_mac, verified };
        match next {
            IpNextHeaderProtocols::Icmpv6 => self.icmp(hop, payload, true, now_ms, out),
            proto => self.transport(proto, hop, payload, now_ms, out),
        }
    }

    /// TCP and UDP of either family.
    fn transport(&mut self, proto: IpNextHeaderProtocol, hop: Hop, payload: &[u8], now_ms: i64, out: &mut Vec<Event>) {
        let Hop { src, dst, src_mac, dst_mac, verified } = hop;
        match proto {
            IpNextHeaderProtocols::Tcp => {
                let Some(tcp) = TcpPacket::new(payload) else { return };
                let (sport, dport) = (tcp.get_source(), tcp.get_destination());
                let flags = tcp.get_flags();
                let (syn, ack, rst) =
                    (flags & TcpFlags::SYN != 0, flags & TcpFlags::ACK != 0, flags & TcpFlags::RST != 0);
                if syn && !ack {
                    if !verified {
                        let k = key_hash(ip_key(&src), self.seed);
                        let target = || format!("{dst}:{dport}");
                        out.extend(self.syn_flood.add(k, src_mac, Some(&target), now_ms));
                    }
                    self.syns.insert((src, dst, dport), (now_ms, src_mac, dst_mac), verified);
                } else if syn && ack {
                    // The server answered: an open port, not a failure.
                    let router = self.arp.is_router_mac(&src_mac);
                    self.syns.answered(&(dst, src, sport), src_mac, router);
                } else if rst {
                    let router = self.arp.is_router_mac(&src_mac);
                    if let Some((mac, verified)) = self.syns.answered(&(dst, src, sport), src_mac, router) {
                        // The server refused: a closed port.
                        self.scan_failed(dst, Some(mac), verified, (src, sport, Probe::Syn), now_ms, out);
                    } else if !ack && (verified || self.arp.is_router_mac(&src_mac)) {
                        // A bare RST answers a segment with ACK for no
                        // connection (RFC 9293 3.10.7.1): an ACK or Maimon
                        // probe. Believed only from the MAC that has the
                        // victim's address (or a router): a forged one
                        // would frame its destination. The prober is not
                        // verified by it (its MAC is the victim's choice).
                        self.scan_failed(dst, Some(dst_mac), false, (src, sport, Probe::Ack), now_ms, out);
                    }
                } else if !ack {
                    // No SYN, ACK or RST: no TCP stack sends it but a scanner
                    // (FIN, Xmas, NULL); counted at once, open port or not.
                    let probe = if flags == 0 { Probe::Null } else { Probe::Fin };
                    self.scan_failed(src, Some(src_mac), verified, (dst, dport, probe), now_ms, out);
                }
            }
            IpNextHeaderProtocols::Udp => {
                // DHCP, both ways: client port 68 and server port 67.
                if let (IpAddr::V4(src4), Some(ports)) = (src, payload.get(0..4)) {
                    if payload.len() > 8 && (ports == [0, 67, 0, 68] || ports == [0, 68, 0, 67]) {
                        if let Some(m) = super::dhcp::parse(&payload[8..], src4) {
                            out.extend(self.dhcp.observe(m, src_mac, now_ms));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// ICMP or ICMPv6: echo requests and replies, port unreachable quoting
    /// a UDP probe, and (IPv6) neighbour discovery.
    fn icmp(&mut self, hop: Hop, p: &[u8], v6: bool, now_ms: i64, out: &mut Vec<Event>) {
        let Hop { src, dst, src_mac, dst_mac, verified } = hop;
        let Some((&ty, rest)) = p.split_first() else { return };
        let code = rest.first().copied().unwrap_or(0);
        match (v6, ty, code) {
            (false, 8, _) | (true, 128, _) => {
                self.echoes.insert((src, dst), (now_ms, src_mac, dst_mac), verified);
            }
            (false, 0, _) | (true, 129, _) => {
                let router = self.arp.is_router_mac(&src_mac);
                self.echoes.answered(&(dst, src), src_mac, router);
            }
            // Port unreachable quotes the datagram that was refused: its
            // source is the prober, its destination the closed port. The
            // error goes to the prober's MAC as the victim knows it.
            (false, 3, 3) | (true, 1, 4) if verified || self.arp.is_router_mac(&src_mac) => {
                let Some((prober, target, port)) = quoted_udp(p.get(8..).unwrap_or_default(), v6) else { return };
                self.scan_failed(prober, Some(dst_mac), false, (target, port, Probe::Udp), now_ms, out);
            }
            // Neighbour solicitation: the solicited target; the source
            // claims its own address with its link-layer option.
            (true, 135, 0) => {
                let Some(target) = p.get(8..24).and_then(|t| <[u8; 16]>::try_from(t).ok()) else { return };
                let target = IpAddr::from(target);
                if !src.is_unspecified() {
                    if let Some(lla) = nd_option(p.get(24..).unwrap_or_default(), 1) {
                        out.extend(self.arp.observe(src_mac, lla, src, now_ms));
                    }
                    self.sweep_probe(src, src_mac, target, Probe::Arp, now_ms, out);
                }
            }
            // Neighbour advertisement: the target, and the MAC it claims.
            (true, 136, 0) => {
                let Some(target) = p.get(8..24).and_then(|t| <[u8; 16]>::try_from(t).ok()) else { return };
                let claimed = nd_option(p.get(24..).unwrap_or_default(), 2).unwrap_or(src_mac);
                out.extend(self.arp.observe(src_mac, claimed, IpAddr::from(target), now_ms));
            }
            _ => {}
        }
    }

    /// A LAN sweep probe (ARP request, neighbour solicitation): gateways,
    /// this node and the DHCP servers ask for many addresses by their trade.
    fn sweep_probe(
        &mut self,
        src: IpAddr,
        mac: [u8; 6],
        target: IpAddr,
        probe: Probe,
        now_ms: i64,
        out: &mut Vec<Event>,
    ) {
        // Asking for the gateway (or this node) is what every host does.
        if src.is_unspecified() || src == target || self.arp.is_gateway(&src) || self.arp.is_gateway(&target) {
            return;
        }
        let verified = self.verified(&src, mac);
        self.scan_failed(src, Some(mac), verified, (target, 0, probe), now_ms, out);
    }

    /// True when `mac` is the one the table gives `ip` (a LAN host, not a
    /// router forwarding for it nor someone claiming it).
    fn verified(&self, ip: &IpAddr, mac: [u8; 6]) -> bool {
        self.arp.mac_of(ip) == Some(mac)
    }

    /// Counts a failed attempt; a scan found is told with what the ARP
    /// table knows of the MAC its frames came from: the real owner when
    /// the address is spoofed, and the decoys sharing the MAC.
    fn scan_failed(
        &mut self,
        src: IpAddr,
        mac: Option<[u8; 6]>,
        verified: bool,
        attempt: Attempt,
        now_ms: i64,
        out: &mut Vec<Event>,
    ) {
        let Seen::Counted(Some(mut e)) = self.scan.failed(src, mac, verified, attempt, now_ms) else { return };
        if let Some(m) = mac.filter(|m| !self.arp.is_router_mac(m)) {
            // Owners of the same family: a dual-stack host's IPv6 scan is not "spoofed" by its IPv4 address.
            let owners: Vec<IpAddr> =
                self.arp.addresses_of(m).into_iter().filter(|o| o.is_ipv4() == src.is_ipv4()).collect();
            let real = self.arp.mac_of(&src);
            let spoofed = real.is_some_and(|r| r != m) || (real.is_none() && !owners.is_empty());
            let decoys: Vec<(IpAddr, usize)> = self
                .scan
                .sharing_mac(m, (self.scan_threshold / 3).max(2))
                .into_iter()
                .filter(|(ip, _)| !owners.contains(ip) && (spoofed || *ip != src))
                .collect();
            if spoofed {
                e.attributes.insert("spoofed".into(), "true".into());
                e.attributes.insert("claimed_src".into(), src.to_string());
                if let Some(r) = real {
                    e.attributes.insert("real_mac".into(), super::mac(&r));
                }
                if let Some(o) = owners.first() {
                    e.attributes.insert("src".into(), o.to_string());
                }
            }
            if !decoys.is_empty() {
                let listed: Vec<String> = decoys.iter().take(16).map(|(ip, _)| ip.to_string()).collect();
                e.attributes.insert("decoys".into(), listed.join(","));
                for (ip, _) in &decoys {
                    self.scan.mark_reported(*ip, now_ms);
                }
                for o in &owners {
                    self.scan.mark_reported(*o, now_ms);
                }
            }
        }
        out.push(e);
    }

    /// At the gateway: a LAN frame from a known host's address whose MAC is
    /// not that host's (a man in the middle forwarding the victim's traffic
    /// after a unicast ARP spoof the gateway never saw).
    /// Returns whether the table agrees (the source is verified). Pairs
    /// with nothing to say are cached until the next sweep: most frames
    /// cost a slot compare, not a table lookup.
    fn check_source(&mut self, src: IpAddr, mac: [u8; 6], now_ms: i64, out: &mut Vec<Event>) -> bool {
        let slot = (usize::from(mac[5]) ^ usize::from(last_byte(&src))) % CHECKED;
        let (ip, m) = (ip_key(&src), mac_key(&mac) as u64 | 1 << 49);
        let (cached_ip, cached) = self.checked[slot];
        if cached_ip == ip && cached & !(1 << 48) == m {
            return cached & 1 << 48 != 0;
        }
        let known = self.arp.confirm(&src, mac, now_ms);
        let verified = known == Some(mac);
        let Some(known) = known.filter(|k| *k != mac) else {
            self.checked[slot] = (ip, m | u64::from(verified) << 48);
            return verified;
        };
        if self.arp.is_router_mac(&mac) || !self.mismatches.first((src, mac), now_ms) {
            self.checked[slot] = (ip, m);
            return false;
        }
        let gateway = self.arp.is_gateway(&src);
        let owners: Vec<IpAddr> =
            self.arp.addresses_of(mac).into_iter().filter(|o| o.is_ipv4() == src.is_ipv4()).collect();
        let mut attrs = vec![
            ("src", owners.first().map_or_else(|| super::mac(&mac), IpAddr::to_string)),
            ("src_mac", super::mac(&mac)),
            ("claimed_src", src.to_string()),
            ("real_mac", super::mac(&known)),
            (
                "why",
                "traffic from a known host's address came from another MAC (a man in the middle forwarding it)".into(),
            ),
        ];
        if gateway {
            attrs.push(("gateway", "true".into()));
        }
        let severity = if gateway { Severity::Critical } else { Severity::Warning };
        out.push(Event::new("ip_mac_mismatch", severity, now_ms, attrs));
        false
    }

    /// Unanswered SYNs and echo requests become failed attempts; idle sources are forgotten.
    fn sweep(&mut self, now_ms: i64, out: &mut Vec<Event>) {
        let mut found = std::mem::take(&mut self.found);
        self.sweep_into(now_ms, &mut found);
        self.limiter.admit(&mut found, now_ms, out);
        self.found = found;
    }

    fn sweep_into(&mut self, now_ms: i64, out: &mut Vec<Event>) {
        self.last_sweep_ms = now_ms;
        self.checked.fill((0, 0));
        for ((client, server, port), mac, verified) in self.syns.expired(now_ms) {
            self.scan_failed(client, Some(mac), verified, (server, port, Probe::Syn), now_ms, out);
        }
        let dhcp_servers = self.dhcp.servers();
        for ((src, dst), mac, verified) in self.echoes.expired(now_ms) {
            // A DHCP server pings an address before it offers it.
            if matches!(src, IpAddr::V4(s) if dhcp_servers.contains(&s)) || self.arp.is_gateway(&src) {
                continue;
            }
            self.scan_failed(src, Some(mac), verified, (dst, 0, Probe::Echo), now_ms, out);
        }
        self.scan.expire(now_ms);
        out.extend(self.arp.digest(now_ms, false));
    }

    /// What is still gathered (the new-station digest), when capture stops.
    pub fn finish(&mut self, now_ms: i64) -> Option<Event> {
        self.arp.digest(now_ms, true)
    }
}

/// The (source, destination, destination port) of the UDP datagram an
/// ICMP error quotes (its IP header onwards).
fn quoted_udp(q: &[u8], v6: bool) -> Option<(IpAddr, IpAddr, u16)> {
    if v6 {
        let ip = Ipv6Packet::new(q)?;
        if ip.get_next_header() != IpNextHeaderProtocols::Udp {
            return None;
        }
        let udp = q.get(40..44)?;
        Some((IpAddr::V6(ip.get_source()), IpAddr::V6(ip.get_destination()), u16::from_be_bytes([udp[2], udp[3]])))
    } else {
        let ip = Ipv4Packet::new(q)?;
        if ip.get_next_level_protocol() != IpNextHeaderProtocols::Udp {
            return None;
        }
        let header = ip.get_header_length() as usize * 4;
        let udp = q.get(header..header + 4)?;
        Some((IpAddr::V4(ip.get_source()), IpAddr::V4(ip.get_destination()), u16::from_be_bytes([udp[2], udp[3]])))
    }
}

/// The link-layer address of neighbour discovery option `kind` (1 source, 2 target).
fn nd_option(mut opts: &[u8], kind: u8) -> Option<[u8; 6]> {
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 {
            return None;
        }
        if opts[0] == kind && len >= 8 {
            return opts[2..8].try_into().ok();
        }
        opts = opts.get(len..)?;
    }
    None
}

fn last_byte(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    }
}

fn find(name: &str) -> Option<NetworkInterface> {
    datalink::interfaces().into_iter().find(|i| i.name == name)
}

/// This node's own (address, MAC) pairs on `iface`, IPv4 and IPv6.
pub fn own_addresses(iface: &NetworkInterface) -> Vec<(IpAddr, [u8; 6])> {
    let Some(mac) = iface.mac.map(|m| m.octets()) else { return Vec::new() };
    iface.ips.iter().map(|n| (n.ip(), mac)).collect()
}

/// Captures on `spec.interface` until `token` is cancelled; events go to `emit`.
pub fn run(spec: &LanSpec, token: &CancellationToken, mut emit: impl FnMut(Event)) {
    let mut backoff = Duration::from_millis(500);
    let mut sensors: Option<Sensors> = None;
    let mut events = Vec::new();
    'capture: while !token.is_cancelled() {
        let Some(iface) = find(&spec.interface) else {
            tracing::warn!(interface = %spec.interface, retry_in_ms = backoff.as_millis() as u64, "LAN sensor: no such interface");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
            continue;
        };
        let config = datalink::Config {
            read_timeout: Some(Duration::from_millis(250)),
            promiscuous: spec.promiscuous,
            ..Default::default()
        };
        let mut rx = match datalink::channel(&iface, config) {
            Ok(Channel::Ethernet(_, rx)) => rx,
            Ok(_) => {
                tracing::error!(interface = %spec.interface, "LAN sensor: not an Ethernet interface; stopped");
                return;
            }
            Err(e) => {
                tracing::warn!(interface = %spec.interface, error = %e, retry_in_ms = backoff.as_millis() as u64, "LAN sensor: cannot capture (needs CAP_NET_RAW)");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        // Addresses may have changed while the interface was away.
        let mut arp = spec.arp.clone();
        arp.own = own_addresses(&iface);
        let s = sensors.get_or_insert_with(|| {
            Sensors::new(spec.scan.clone(), arp.clone(), spec.dhcp_servers.clone())
                .allowing_routers(spec.routers.clone())
        });
        tracing::info!(interface = %spec.interface, promiscuous = spec.promiscuous, own = ?arp.own.iter().map(|(ip, _)| ip.to_string()).collect::<Vec<_>>(), "LAN sensor capturing");
        let opened = Instant::now();
        loop {
            if token.is_cancelled() {
                break 'capture;
            }
            match rx.next() {
                Ok(frame) => {
                    s.frame(frame, tierwatch_protocol::now_ms(), &mut events);
                    for e in events.drain(..) {
                        emit(e);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    s.sweep(tierwatch_protocol::now_ms(), &mut events);
                    for e in events.drain(..) {
                        emit(e);
                    }
                }
                Err(e) => {
                    // The interface went down or away: never spin on it.
                    tracing::warn!(interface = %spec.interface, error = %e, "LAN sensor: capture failed; reopening");
                    if opened.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_millis(500);
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    break;
                }
            }
        }
    }
    if let Some(e) = sensors.as_mut().and_then(|s| s.finish(tierwatch_protocol::now_ms())) {
        emit(e);
    }
}

/// Synthetic frames, for tests and the sensor benchmark.
pub mod synth {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use pnet::packet::arp::{ArpHardwareTypes, ArpOperations, MutableArpPacket};
    use pnet::packet::ethernet::{EtherTypes, MutableEthernetPacket};
    use pnet::packet::icmpv6::Icmpv6Packet;
    use pnet::packet::ip::IpNextHeaderProtocols;
    use pnet::packet::ipv4::MutableIpv4Packet;
    use pnet::packet::tcp::MutableTcpPacket;
    use pnet::util::MacAddr;

    fn ethernet(buf: &mut [u8], src: [u8; 6], dst: [u8; 6], ethertype: pnet::packet::ethernet::EtherType) {
        if let Some(mut e) = MutableEthernetPacket::new(buf) {
            e.set_source(MacAddr::from(src));
            e.set_destination(MacAddr::from(dst));
            e.set_ethertype(ethertype);
        }
    }

    /// An IPv6 packet from `src` to all nodes (ff02::1) in an Ethernet
    /// frame from `src_mac`, carrying `icmp` (its checksum filled in) behind
    /// the extension headers `ext` (a hop-by-hop header first, if any).
    pub fn ipv6_icmp(src_mac: [u8; 6], src: Ipv6Addr, hop_limit: u8, ext: &[u8], mut icmp: Vec<u8>) -> Vec<u8> {
        let dst: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        if let Some(p) = Icmpv6Packet::new(&icmp) {
            let sum = pnet::packet::icmpv6::checksum(&p, &src, &dst);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        let mut buf = vec![0u8; 14];
        ethernet(&mut buf, src_mac, [0x33, 0x33, 0, 0, 0, 1], EtherTypes::Ipv6);
        buf.extend([0x60, 0, 0, 0]);
        buf.extend(((ext.len() + icmp.len()) as u16).to_be_bytes());
        buf.extend([if ext.is_empty() { 58 } else { 0 }, hop_limit]);
        buf.extend(src.octets());
        buf.extend(dst.octets());
        buf.extend(ext);
        buf.extend(icmp);
        buf
    }

    /// A router advertisement (the ICMPv6 message): default router for
    /// `lifetime` seconds, a source link-layer option, `prefix`/64 for
    /// autoconfiguration, and `dns` as an RDNSS option.
    pub fn router_advert(lifetime: u16, link_addr: [u8; 6], prefix: Ipv6Addr, dns: Option<Ipv6Addr>) -> Vec<u8> {
        let mut icmp = vec![134, 0, 0, 0, 64, 0];
        icmp.extend(lifetime.to_be_bytes());
        icmp.extend([0; 8]);
        icmp.extend([1, 1]);
        icmp.extend(link_addr);
        // Prefix information: length 64, on-link and autonomous, 1 h lifetimes.
        icmp.extend([3, 4, 64, 0xc0, 0, 0, 0x0e, 0x10, 0, 0, 0x0e, 0x10, 0, 0, 0, 0]);
        icmp.extend(prefix.octets());
        if let Some(d) = dns {
            icmp.extend([25, 3, 0, 0, 0, 0, 0x0e, 0x10]);
            icmp.extend(d.octets());
        }
        icmp
    }

    /// A TCP segment `src:sport -> dst:dport` with `flags`, from `src_mac`.
    pub fn tcp(src_mac: [u8; 6], src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
        let mut buf = vec![0u8; 14 + 20 + 20];
        ethernet(&mut buf, src_mac, [2, 0, 0, 0, 0, 1], EtherTypes::Ipv4);
        if let Some(mut ip) = MutableIpv4Packet::new(&mut buf[14..]) {
            ip.set_version(4);
            ip.set_header_length(5);
            ip.set_total_length(40);
            ip.set_ttl(64);
            ip.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
            ip.set_source(src);
            ip.set_destination(dst);
        }
        if let Some(mut t) = MutableTcpPacket::new(&mut buf[34..]) {
            t.set_source(sport);
            t.set_destination(dport);
            t.set_data_offset(5);
            t.set_flags(flags);
            t.set_window(1024);
            // Valid checksums: a bridge with netfilter drops a bad IP header before local delivery.
            let c = pnet::packet::tcp::ipv4_checksum(&t.to_immutable(), &src, &dst);
            t.set_checksum(c);
        }
        if let Some(mut ip) = MutableIpv4Packet::new(&mut buf[14..]) {
            let c = pnet::packet::ipv4::checksum(&ip.to_immutable());
            ip.set_checksum(c);
        }
        buf
    }

    /// A BOOTP/DHCP payload: a reply of `message_type` (2 offer, 5 ack) from `server`.
    pub fn dhcp_reply(message_type: u8, server: Ipv4Addr, offered: Ipv4Addr, client_mac: [u8; 6]) -> Vec<u8> {
        bootp(2, message_type, Some(server), offered, client_mac)
    }

    fn bootp(op: u8, message_type: u8, server: Option<Ipv4Addr>, yiaddr: Ipv4Addr, chaddr: [u8; 6]) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = op;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x7477_0001u32.to_be_bytes());
        b[10] = 0x80; // broadcast answers: the client has no address yet
        b[16..20].copy_from_slice(&yiaddr.octets());
        b[28..34].copy_from_slice(&chaddr);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&[53, 1, message_type]);
        if let Some(s) = server {
            b.extend_from_slice(&[54, 4]);
            b.extend_from_slice(&s.octets());
        }
        b.push(255);
        b
    }

    /// A UDP datagram in a broadcast Ethernet frame, with a valid IP checksum.
    pub fn udp(src_mac: [u8; 6], src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = 14 + 20 + 8 + payload.len();
        let mut buf = vec![0u8; len];
        ethernet(&mut buf, src_mac, [0xff; 6], EtherTypes::Ipv4);
        if let Some(mut ip) = MutableIpv4Packet::new(&mut buf[14..]) {
            ip.set_version(4);
            ip.set_header_length(5);
            ip.set_total_length((20 + 8 + payload.len()) as u16);
            ip.set_ttl(64);
            ip.set_next_level_protocol(IpNextHeaderProtocols::Udp);
            ip.set_source(src);
            ip.set_destination(dst);
            let c = pnet::packet::ipv4::checksum(&ip.to_immutable());
            ip.set_checksum(c);
        }
        buf[34..36].copy_from_slice(&sport.to_be_bytes());
        buf[36..38].copy_from_slice(&dport.to_be_bytes());
        buf[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        buf[42..].copy_from_slice(payload);
        buf
    }

    /// The BOOTP payload of a DHCPDISCOVER by a client with `mac`.
    pub fn bootp_discover(mac: [u8; 6]) -> Vec<u8> {
        bootp(1, 1, None, Ipv4Addr::UNSPECIFIED, mac)
    }

    /// The BOOTP payload of a DHCPREQUEST by `mac` for `requested`, naming `server` (option 54).
    pub fn dhcp_request(mac: [u8; 6], server: Ipv4Addr, requested: Ipv4Addr) -> Vec<u8> {
        let mut b = bootp(1, 3, Some(server), Ipv4Addr::UNSPECIFIED, mac);
        b.pop();
        b.extend_from_slice(&[50, 4]);
        b.extend_from_slice(&requested.octets());
        b.push(255);
        b
    }

    /// A neighbour advertisement (the ICMPv6 message) for `target`, claiming `mac` as its link-layer address.
    pub fn neighbour_advert(target: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
        let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        icmp.extend(target.octets());
        icmp.extend([2, 1]);
        icmp.extend(mac);
        icmp
    }

    /// A DHCPDISCOVER broadcast by a client with `mac`.
    pub fn dhcp_discover(mac: [u8; 6]) -> Vec<u8> {
        udp(mac, Ipv4Addr::UNSPECIFIED, 68, Ipv4Addr::BROADCAST, 67, &bootp(1, 1, None, Ipv4Addr::UNSPECIFIED, mac))
    }

    /// An ARP reply in which `sender_mac` claims `sender_ip`, sent from `eth_src`.
    pub fn arp_reply(eth_src: [u8; 6], sender_mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
        let mut buf = vec![0u8; 14 + 28];
        ethernet(&mut buf, eth_src, [0xff; 6], EtherTypes::Arp);
        if let Some(mut a) = MutableArpPacket::new(&mut buf[14..]) {
            a.set_hardware_type(ArpHardwareTypes::Ethernet);
            a.set_protocol_type(EtherTypes::Ipv4);
            a.set_hw_addr_len(6);
            a.set_proto_addr_len(4);
            a.set_operation(ArpOperations::Reply);
            a.set_sender_hw_addr(MacAddr::from(sender_mac));
            a.set_sender_proto_addr(sender_ip);
            a.set_target_hw_addr(MacAddr::from([0xff; 6]));
            a.set_target_proto_addr(target_ip);
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::synth;
    use super::*;
    use pnet::packet::tcp::TcpFlags;

    #[test]
    fn syn_rst_and_silence_become_a_scan_an_open_port_does_not() {
        let mut s = Sensors::new(ScanPolicy { threshold: 10, ..Default::default() }, ArpPolicy::default(), Vec::new());
        let (attacker, victim) = (Ipv4Addr::new(10, 2, 1, 50), Ipv4Addr::new(10, 2, 1, 1));
        let mac = [2, 0, 0, 0, 1, 0x32];
        let mut out = Vec::new();
        // 5 closed ports (RST), 5 filtered ones (no answer), one open (SYN-ACK).
        for p in 1..=11u16 {
            s.frame(&synth::tcp(mac, attacker, 40000, victim, p, TcpFlags::SYN), 0, &mut out);
            match p {
                // Answers come from the MAC the SYN was sent to (synth frames go to 02:00:00:00:00:01).
                1..=5 => s.frame(
                    &synth::tcp([2, 0, 0, 0, 0, 1], victim, p, attacker, 40000, TcpFlags::RST | TcpFlags::ACK),
                    10,
                    &mut out,
                ),
                11 => s.frame(
                    &synth::tcp([2, 0, 0, 0, 0, 1], victim, p, attacker, 40000, TcpFlags::SYN | TcpFlags::ACK),
                    10,
                    &mut out,
                ),
                _ => {}
            }
        }
        assert!(out.is_empty(), "5 refused so far");
        s.frame(&[0u8; 3], 5_000, &mut out);
        assert_eq!(out.len(), 1, "the 5 unanswered SYNs timed out: 10 failures");
        assert_eq!(out[0].attributes["src"], "10.2.1.50");
        assert_eq!(out[0].attributes["src_mac"], "02:00:00:00:01:32");
        assert!(!out[0].attributes["ports"].split(',').any(|p| p == "11"), "the open port is no failure");
        // A forged ARP reply claiming a gateway.
        let mut s = Sensors::new(
            ScanPolicy::default(),
            ArpPolicy { own: vec![(victim.into(), [2, 0, 0, 0, 0, 1])], ..Default::default() },
            vec![victim],
        );
        let mut out = Vec::new();
        s.frame(&synth::arp_reply(mac, mac, victim, attacker), 0, &mut out);
        assert_eq!(out.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["arp_spoof"]);
        // A DHCP offer from a server that is not the LAN's.
        out.clear();
        let rogue = Ipv4Addr::new(10, 2, 1, 11);
        let offer = synth::dhcp_reply(2, rogue, Ipv4Addr::new(10, 2, 1, 100), [2, 0, 0, 0, 0, 7]);
        s.frame(&synth::udp([2, 0, 0, 0, 0, 11], rogue, 67, Ipv4Addr::BROADCAST, 68, &offer), 0, &mut out);
        assert_eq!(out.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["rogue_dhcp"]);
        // An IPv6 router advertisement on a LAN that trusts one other router.
        out.clear();
        let (router, router_mac) = ("fe80::66".parse().unwrap(), [2, 0, 0, 0, 0, 0x66]);
        let ra = synth::router_advert(1800, router_mac, "2001:db8:66::".parse().unwrap(), None);
        let mut s = s.allowing_routers(vec![super::Router::Addr("fe80::1".parse().unwrap())]);
        s.frame(&synth::ipv6_icmp(router_mac, router, 255, &[], ra.clone()), 0, &mut out);
        assert_eq!(out.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["rogue_router_advert"]);
        let mut s = s.allowing_routers(vec![super::Router::Mac(router_mac)]);
        s.frame(&synth::ipv6_icmp(router_mac, router, 255, &[], ra), 0, &mut out);
        assert_eq!(out.len(), 1, "the LAN's own router");
        // A flood of forged senders (Ethernet source and ARP sender differ):
        // at most 60 events a minute, then one count of the rest; the new
        // stations are one digest.
        let arp = ArpPolicy { digest: Duration::from_secs(60), ..Default::default() };
        let mut s = Sensors::new(ScanPolicy::default(), arp, Vec::new());
        let mut out = Vec::new();
        for i in 0..1000u32 {
            let m = [2, 0, 0, 0, (i >> 8) as u8, i as u8];
            s.frame(
                &synth::arp_reply([2, 0, 0, 9, 9, 9], m, Ipv4Addr::from(0x0a02_0000 + i), victim),
                1 + i as i64,
                &mut out,
            );
        }
        s.frame(&[0u8; 3], 61_000, &mut out);
        assert_eq!(out.len(), 63, "{:?}", out.last());
        let floods: Vec<&Event> = out.iter().filter(|e| e.kind == "arp_flood").collect();
        assert_eq!(floods.len(), 1, "the flood itself, once");
        assert_eq!(floods[0].attributes["src"], "02:00:00:09:09:09", "the flood's sender");
        let suppressed = out.iter().find(|e| e.kind == "events_suppressed").unwrap();
        assert_eq!(suppressed.attributes["arp_mismatch"], "940");
        let digest = out.last().unwrap();
        assert_eq!((digest.kind.as_str(), digest.attributes["count"].as_str()), ("arp_new_stations", "1000"));
        // Garbage never panics.
        for n in 0..80 {
            s.frame(&vec![0x45; n], 0, &mut out);
        }
    }

    fn kinds(out: &[Event]) -> Vec<&str> {
        out.iter().map(|e| e.kind.as_str()).collect()
    }

    const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const EVIL: [u8; 6] = [2, 0, 0, 0, 6, 0x66];

    /// A LAN with its gateway and a few hosts known to the table (each seen twice).
    fn lan() -> (Sensors, Vec<Event>) {
        let gw = Ipv4Addr::new(10, 2, 1, 1);
        let mut s = Sensors::new(
            ScanPolicy::default(),
            ArpPolicy { own: vec![(gw.into(), GW_MAC)], ..Default::default() },
            vec![gw],
        );
        let mut out = Vec::new();
        for t in [0, 2_000] {
            for h in 10..=20u8 {
                let m = [2, 0, 0, 0, 1, h];
                s.frame(&synth::arp_reply(m, m, Ipv4Addr::new(10, 2, 1, h), gw), t, &mut out);
            }
            s.frame(&synth::arp_reply(EVIL, EVIL, Ipv4Addr::new(10, 2, 1, 66), gw), t, &mut out);
        }
        out.clear();
        (s, out)
    }

    #[test]
    fn fin_xmas_null_and_ack_probes_are_scans() {
        let gw = Ipv4Addr::new(10, 2, 1, 1);
        let attacker = Ipv4Addr::new(10, 2, 1, 66);
        for flags in [TcpFlags::FIN, TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG, 0] {
            let (mut s, mut out) = lan();
            for p in 1..=20u16 {
                s.frame(&synth::tcp(EVIL, attacker, 40000, gw, p, flags), 10_000 + p as i64, &mut out);
            }
            assert_eq!(kinds(&out), ["port_scan"], "flags {flags:#x}");
            assert_eq!(out[0].attributes["src"], "10.2.1.66");
            assert_eq!(out[0].attributes["src_mac"], "02:00:00:00:06:66");
        }
        // ACK scan: the probes look ordinary; the victim's bare RSTs tell.
        let (mut s, mut out) = lan();
        for p in 1..=20u16 {
            s.frame(&synth::tcp(EVIL, attacker, 40000, gw, p, TcpFlags::ACK), 10_000, &mut out);
            let mut rst = synth::tcp(GW_MAC, gw, p, attacker, 40000, TcpFlags::RST);
            rst[0..6].copy_from_slice(&EVIL);
            s.frame(&rst, 10_001, &mut out);
        }
        assert_eq!(kinds(&out), ["port_scan"]);
        assert_eq!(out[0].attributes["probes"], "ack");
        // A browser's aborts (RST with ACK) are no scan.
        let (mut s, mut out) = lan();
        for p in 1..=40u16 {
            let abort = synth::tcp(
                [2, 0, 0, 0, 1, 10],
                Ipv4Addr::new(10, 2, 1, 10),
                50000 + p,
                gw,
                443,
                TcpFlags::RST | TcpFlags::ACK,
            );
            s.frame(&abort, 10_000, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn forged_answers_hide_no_scan_and_frame_nobody() {
        let gw = Ipv4Addr::new(10, 2, 1, 1);
        let attacker = Ipv4Addr::new(10, 2, 1, 66);
        let (mut s, mut out) = lan();
        // Each SYN "answered" by a SYN-ACK the scanner forges from its own MAC.
        for p in 1..=20u16 {
            s.frame(&synth::tcp(EVIL, attacker, 40000, gw, p, TcpFlags::SYN), 10_000, &mut out);
            s.frame(&synth::tcp(EVIL, gw, p, attacker, 40000, TcpFlags::SYN | TcpFlags::ACK), 10_000, &mut out);
        }
        s.frame(&[0u8; 3], 14_000, &mut out);
        assert_eq!(kinds(&out), ["ip_mac_mismatch", "port_scan"], "the forged answers do not count");
        // And claiming this node's own address from another MAC is itself critical.
        assert_eq!(
            (out[0].severity, out[0].attributes["claimed_src"].as_str()),
            (Severity::Critical as i32, "10.2.1.1")
        );
        // Bare RSTs forged by the attacker "from" the gateway to an innocent host frame nobody.
        let (mut s, mut out) = lan();
        let innocent = Ipv4Addr::new(10, 2, 1, 12);
        for p in 1..=40u16 {
            let mut rst = synth::tcp(EVIL, gw, p, innocent, 40000, TcpFlags::RST);
            rst[0..6].copy_from_slice(&[2, 0, 0, 0, 1, 12]);
            s.frame(&rst, 10_000, &mut out);
        }
        assert!(out.iter().all(|e| e.kind != "port_scan"), "{out:?}");
    }

    #[test]
    fn a_decoy_scan_blames_the_mac_and_marks_the_decoys() {
        let gw = Ipv4Addr::new(10, 2, 1, 1);
        let (mut s, mut out) = lan();
        // nmap -D 10.2.1.10,10.2.1.11,ME: every probe from each, all from the attacker's MAC.
        for p in 1..=30u16 {
            for src in [Ipv4Addr::new(10, 2, 1, 10), Ipv4Addr::new(10, 2, 1, 11), Ipv4Addr::new(10, 2, 1, 66)] {
                s.frame(&synth::tcp(EVIL, src, 40000, gw, p, TcpFlags::SYN), 10_000 + p as i64, &mut out);
                s.frame(
                    &synth::tcp(GW_MAC, gw, p, src, 40000, TcpFlags::RST | TcpFlags::ACK),
                    10_000 + p as i64,
                    &mut out,
                );
            }
        }
        let scans: Vec<&Event> = out.iter().filter(|e| e.kind == "port_scan").collect();
        assert_eq!(scans.len(), 1, "one scan, not one per decoy: {out:?}");
        let e = scans[0];
        assert_eq!(e.attributes["src"], "10.2.1.66", "the MAC's owner: {e:?}");
        assert_eq!(e.attributes["spoofed"], "true");
        assert_eq!(e.attributes["claimed_src"], "10.2.1.10");
        assert_eq!(e.attributes["real_mac"], "02:00:00:00:01:0a");
        assert_eq!(e.attributes["decoys"], "10.2.1.10,10.2.1.11");
        // The attacker's man in the middle: the gateway sees a known host's address from its MAC.
        let mut out = Vec::new();
        let forwarded =
            synth::tcp(EVIL, Ipv4Addr::new(10, 2, 1, 12), 50000, Ipv4Addr::new(10, 255, 0, 1), 443, TcpFlags::ACK);
        s.frame(&forwarded, 20_000, &mut out);
        assert_eq!(kinds(&out), ["ip_mac_mismatch"]);
        assert_eq!(out[0].attributes["src"], "10.2.1.66");
        assert_eq!(out[0].attributes["claimed_src"], "10.2.1.12");
        assert_eq!(out[0].attributes["real_mac"], "02:00:00:00:01:0c");
        s.frame(&forwarded, 20_001, &mut out);
        assert_eq!(out.len(), 1, "once a minute");
    }

    #[test]
    fn a_syn_flood_is_reported_and_does_not_hide_a_scan() {
        let gw = Ipv4Addr::new(10, 2, 1, 1);
        let (mut s, mut out) = lan();
        let scanner = Ipv4Addr::new(10, 2, 1, 66);
        // 300,000 SYNs from random sources (hping3 --rand-source from the attacker's
        // box), and among them a slow scan from a LAN host: a port every 20 s.
        for i in 0..300_000u32 {
            let t = 10_000 + i as i64 / 1000 * 20;
            let spoofed = Ipv4Addr::from(0x0b00_0000 + i.wrapping_mul(2_654_435_761) % 0x00ff_ffff);
            s.frame(&synth::tcp(EVIL, spoofed, 1024, gw, 80, TcpFlags::SYN), t, &mut out);
            if i % 1000 == 0 {
                s.frame(&synth::tcp(EVIL, scanner, 40000, gw, (i / 1000) as u16 + 1, TcpFlags::SYN), t, &mut out);
            }
        }
        s.frame(&[0u8; 3], 20_000_000, &mut out);
        let floods: Vec<&Event> = out.iter().filter(|e| e.kind == "syn_flood").collect();
        assert!(!floods.is_empty() && floods.len() <= 2, "{out:?}");
        assert_eq!(floods[0].attributes["src"], "02:00:00:00:06:66");
        assert_eq!(floods[0].attributes["targets"], "10.2.1.1:80");
        let scans: Vec<&Event> = out.iter().filter(|e| e.kind == "port_scan").collect();
        assert!(scans.iter().any(|e| e.attributes["src"] == "10.2.1.66"), "the scan still seen: {:?}", kinds(&out));
        assert!(s.sizes().0 <= 20_000 && s.sizes().2 <= 2 * MAX_PENDING);
    }

    #[test]
    fn a_gateway_spoof_after_an_arp_flood_is_critical_with_the_right_macs() {
        let gw = Ipv4Addr::new(10, 2, 1, 1);
        let (mut s, mut out) = lan();
        // The gateway itself is in the table (its own replies).
        s.frame(&synth::arp_reply(GW_MAC, GW_MAC, gw, Ipv4Addr::new(10, 2, 1, 10)), 5_000, &mut out);
        // 6,000 invented stations, each with its own MAC and a mismatching sender.
        for i in 0..6_000u32 {
            let m = [2, 0xaa, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            s.frame(&synth::arp_reply(EVIL, m, Ipv4Addr::from(0x0a03_0000 + i), gw), 10_000 + i as i64 / 10, &mut out);
        }
        out.clear();
        s.frame(&synth::arp_reply(EVIL, EVIL, gw, Ipv4Addr::new(10, 2, 1, 10)), 11_000, &mut out);
        let spoof: Vec<&Event> = out.iter().filter(|e| e.kind == "arp_spoof").collect();
        assert_eq!(spoof.len(), 1, "{out:?}");
        assert_eq!(spoof[0].severity, Severity::Critical as i32);
        assert_eq!(spoof[0].attributes["src_mac"], "02:00:00:00:06:66");
        assert_eq!(spoof[0].attributes["expected_mac"], "02:00:00:00:00:01");
    }

    #[test]
    fn an_ipv6_scan_behind_extension_headers_is_read() {
        let (mut s, mut out) = lan();
        let (scanner, target): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
            ("fe80::66".parse().unwrap(), "fe80::1".parse().unwrap());
        for p in 1..=20u16 {
            // IPv6, a destination-options header (8 bytes of padding), then a FIN probe.
            let mut f = vec![0u8; 14];
            f[6..12].copy_from_slice(&EVIL);
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            f.extend([0x60, 0, 0, 0, 0, 28, 60, 64]);
            f.extend(scanner.octets());
            f.extend(target.octets());
            f.extend([6, 0, 1, 4, 0, 0, 0, 0]);
            let mut tcp = [0u8; 20];
            tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            tcp[2..4].copy_from_slice(&p.to_be_bytes());
            tcp[12] = 0x50;
            tcp[13] = TcpFlags::FIN;
            f.extend(tcp);
            s.frame(&f, 10_000 + p as i64, &mut out);
        }
        assert_eq!(kinds(&out), ["port_scan"]);
        assert_eq!(out[0].attributes["src"], "fe80::66");
    }

    #[test]
    fn neighbour_advertisements_spoofing_the_gateway_are_critical() {
        let gw6: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
        let mut s = Sensors::new(
            ScanPolicy::default(),
            ArpPolicy { gateways: vec![gw6.into()], ..Default::default() },
            Vec::new(),
        );
        let mut out = Vec::new();
        s.frame(&synth::ipv6_icmp(GW_MAC, gw6, 255, &[], synth::neighbour_advert(gw6, GW_MAC)), 0, &mut out);
        assert!(out.is_empty(), "{out:?}");
        let forged = synth::ipv6_icmp(EVIL, "fe80::66".parse().unwrap(), 255, &[], synth::neighbour_advert(gw6, EVIL));
        s.frame(&forged, 1_000, &mut out);
        assert_eq!(kinds(&out), ["nd_spoof"]);
        assert_eq!(out[0].severity, Severity::Critical as i32);
        assert_eq!(out[0].attributes["src"], "fe80::1");
        assert_eq!(out[0].attributes["previous_mac"], "02:00:00:00:00:01");
        assert_eq!(out[0].attributes["src_mac"], "02:00:00:00:06:66");
    }
}
