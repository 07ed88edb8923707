//! Passive capture on one LAN interface with pnet's datalink channel, on a
//! dedicated thread: Linux pnet has no kernel filter, so every frame comes
//! to user space, and the work per frame is a few header reads and at most
//! one hash lookup. The loop survives the interface going down and up
//! (the receiver errors: back off, reopen), and stops within its read
//! timeout of cancellation.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use pnet::datalink::{self, Channel, NetworkInterface};
use pnet::packet::arp::ArpPacket;
use pnet::packet::ethernet::{EtherTypes, EthernetPacket};
use pnet::packet::icmp::{IcmpPacket, IcmpTypes};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv4::Ipv4Packet;
use pnet::packet::tcp::{TcpFlags, TcpPacket};
use pnet::packet::Packet;
use tierwatch_protocol::Event;
use tokio_util::sync::CancellationToken;

use super::arp::{ArpPolicy, ArpWatch};
use super::dhcp::DhcpWatch;
use super::router_advert::{Router, RouterWatch};
use super::scan::{ScanDetector, ScanPolicy};
use super::LanSpec;

/// Events of one kind let through per minute; the rest are counted in one
/// `events_suppressed` event, so a hostile flood cannot flood the batches.
const EVENTS_PER_KIND_PER_MINUTE: u32 = 60;

/// Caps the events per kind and minute.
#[derive(Debug, Default)]
struct Limiter {
    minute_start: i64,
    counts: HashMap<String, u32>,
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
                out.push(Event::new("events_suppressed", tierwatch_protocol::Severity::Warning, now_ms, attributes));
            }
            self.counts.clear();
            self.minute_start = now_ms;
        }
        for e in found.drain(..) {
            let n = self.counts.entry(e.kind.clone()).or_default();
            if *n < EVENTS_PER_KIND_PER_MINUTE {
                *n += 1;
                out.push(e);
            } else {
                *self.suppressed.entry(e.kind).or_default() += 1;
            }
        }
    }
}

/// A SYN not answered within this is a failed attempt (a filtered port).
const SYN_TIMEOUT_MS: i64 = 3_000;
/// SYNs awaiting an answer, at most (a SYN flood must not grow memory).
const MAX_PENDING: usize = 65_536;

/// What the frames of one interface feed: the detectors and the SYNs awaiting an answer.
pub struct Sensors {
    scan: ScanDetector,
    arp: ArpWatch,
    dhcp: DhcpWatch,
    routers: RouterWatch,
    /// (client, server, server port) → (time of the SYN, client MAC).
    pending: HashMap<(Ipv4Addr, Ipv4Addr, u16), (i64, [u8; 6])>,
    last_sweep_ms: i64,
    limiter: Limiter,
    /// Events found by the detectors, before the limiter.
    found: Vec<Event>,
}

impl Sensors {
    /// Sensors with their policies; `dhcp_servers` are the LAN's own DHCP servers.
    pub fn new(scan: ScanPolicy, arp: ArpPolicy, dhcp_servers: Vec<Ipv4Addr>) -> Self {
        Sensors {
            scan: ScanDetector::new(scan),
            arp: ArpWatch::new(arp),
            dhcp: DhcpWatch::new(dhcp_servers),
            routers: RouterWatch::default(),
            pending: HashMap::new(),
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

    /// Sources and stations tracked, SYNs pending.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.scan.sources(), self.arp.stations(), self.pending.len())
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
        match eth.get_ethertype() {
            EtherTypes::Arp => {
                if let Some(arp) = ArpPacket::new(eth.payload()) {
                    let sender = arp.get_sender_hw_addr().octets();
                    out.extend(self.arp.observe(src_mac, sender, arp.get_sender_proto_addr(), now_ms));
                }
            }
            EtherTypes::Ipv4 => {
                if let Some(ip) = Ipv4Packet::new(eth.payload()) {
                    self.ipv4(&ip, src_mac, now_ms, out);
                }
            }
            EtherTypes::Ipv6 => {
                if let Some(ad) = super::router_advert::parse(eth.payload()) {
                    out.extend(self.routers.observe(&ad, src_mac, now_ms));
                }
            }
            _ => {}
        }
    }

    fn ipv4(&mut self, ip: &Ipv4Packet<'_>, src_mac: [u8; 6], now_ms: i64, out: &mut Vec<Event>) {
        let (src, dst) = (ip.get_source(), ip.get_destination());
        match ip.get_next_level_protocol() {
            IpNextHeaderProtocols::Tcp => {
                let Some(tcp) = TcpPacket::new(ip.payload()) else { return };
                let flags = tcp.get_flags();
                let syn = flags & TcpFlags::SYN != 0;
                let ack = flags & TcpFlags::ACK != 0;
                let rst = flags & TcpFlags::RST != 0;
                if syn && !ack {
                    if self.pending.len() < MAX_PENDING {
                        self.pending.insert((src, dst, tcp.get_destination()), (now_ms, src_mac));
                    }
                } else if syn && ack {
                    // The server answered: an open port, not a failure.
                    self.pending.remove(&(dst, src, tcp.get_source()));
                } else if rst {
                    // The server refused: a closed port.
                    if let Some((_, mac)) = self.pending.remove(&(dst, src, tcp.get_source())) {
                        out.extend(self.scan.failed(dst, Some(mac), src, tcp.get_source(), now_ms));
                    }
                }
            }
            IpNextHeaderProtocols::Udp => {
                // DHCP replies only: server port 67 to client port 68.
                let p = ip.payload();
                if p.len() > 8 && p[0..2] == [0, 67] && p[2..4] == [0, 68] {
                    if let Some(r) = super::dhcp::parse(&p[8..], src) {
                        out.extend(self.dhcp.observe(r, src_mac, now_ms));
                    }
                }
            }
            IpNextHeaderProtocols::Icmp => {
                let Some(icmp) = IcmpPacket::new(ip.payload()) else { return };
                // Port unreachable quotes the datagram that was refused: its
                // source is the prober, its destination the closed port.
                if icmp.get_icmp_type() == IcmpTypes::DestinationUnreachable && icmp.get_icmp_code().0 == 3 {
                    let quoted = icmp.payload().get(4..).and_then(Ipv4Packet::new);
                    if let Some(q) = quoted.filter(|q| q.get_next_level_protocol() == IpNextHeaderProtocols::Udp) {
                        let header = q.get_header_length() as usize * 4;
                        if let Some(udp) = q.packet().get(header..header + 4) {
                            let port = u16::from_be_bytes([udp[2], udp[3]]);
                            out.extend(self.scan.failed(q.get_source(), None, q.get_destination(), port, now_ms));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Unanswered SYNs become failed attempts; idle sources are forgotten.
    fn sweep(&mut self, now_ms: i64, out: &mut Vec<Event>) {
        let mut found = std::mem::take(&mut self.found);
        self.sweep_into(now_ms, &mut found);
        self.limiter.admit(&mut found, now_ms, out);
        self.found = found;
    }

    fn sweep_into(&mut self, now_ms: i64, out: &mut Vec<Event>) {
        self.last_sweep_ms = now_ms;
        let expired: Vec<((Ipv4Addr, Ipv4Addr, u16), [u8; 6])> = self
            .pending
            .iter()
            .filter(|(_, (t, _))| now_ms - t >= SYN_TIMEOUT_MS)
            .map(|(k, (_, mac))| (*k, *mac))
            .collect();
        for ((client, server, port), mac) in expired {
            self.pending.remove(&(client, server, port));
            out.extend(self.scan.failed(client, Some(mac), server, port, now_ms));
        }
        self.scan.expire(now_ms);
        out.extend(self.arp.digest(now_ms, false));
    }

    /// What is still gathered (the new-station digest), when capture stops.
    pub fn finish(&mut self, now_ms: i64) -> Option<Event> {
        self.arp.digest(now_ms, true)
    }
}

fn find(name: &str) -> Option<NetworkInterface> {
    datalink::interfaces().into_iter().find(|i| i.name == name)
}

/// This node's own (IPv4, MAC) pairs on `iface`.
pub fn own_addresses(iface: &NetworkInterface) -> Vec<(Ipv4Addr, [u8; 6])> {
    let Some(mac) = iface.mac.map(|m| m.octets()) else { return Vec::new() };
    iface
        .ips
        .iter()
        .filter_map(|n| match n.ip() {
            std::net::IpAddr::V4(v4) => Some((v4, mac)),
            _ => None,
        })
        .collect()
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
                1..=5 => s.frame(
                    &synth::tcp([2; 6], victim, p, attacker, 40000, TcpFlags::RST | TcpFlags::ACK),
                    10,
                    &mut out,
                ),
                11 => s.frame(
                    &synth::tcp([2; 6], victim, p, attacker, 40000, TcpFlags::SYN | TcpFlags::ACK),
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
            ArpPolicy { own: vec![(victim, [2, 0, 0, 0, 0, 1])], ..Default::default() },
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
        assert_eq!(out.len(), 62, "{:?}", out.last());
        let suppressed = out.iter().find(|e| e.kind == "events_suppressed").unwrap();
        assert_eq!(suppressed.attributes["arp_mismatch"], "940");
        let digest = out.last().unwrap();
        assert_eq!((digest.kind.as_str(), digest.attributes["count"].as_str()), ("arp_new_stations", "1000"));
        // Garbage never panics.
        for n in 0..80 {
            s.frame(&vec![0x45; n], 0, &mut out);
        }
    }
}
