//! Rogue DHCP: a DHCP server answering on the LAN that is not the LAN's
//! own. Offers and acknowledgements (UDP 67 → 68) name their server
//! (option 54, else the IP source); one not on the allowlist is a critical
//! `rogue_dhcp` event with the evidence. Without an allowlist the first
//! server seen is taken as the LAN's (an info event names it) and any other
//! is rogue.
//!
//! A rogue server that unicasts its offer is invisible to a sensor that is
//! not on a mirror port, but the client then broadcasts a REQUEST naming
//! the server it chose (option 54): a REQUEST naming a server that is not
//! the LAN's is the same `rogue_dhcp` event (`seen: client_request`).
//! DISCOVERs are counted too: many distinct client MACs within a minute is
//! DHCP starvation (`dhcp_starvation`, one event per quiet period), the
//! attack that empties the pool before a rogue server takes over.

use super::recently::Recently;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use tierwatch_protocol::{Event, Severity};

use super::flood::FloodMeter;
use super::mac;

/// One server is reported at most this often.
const QUIET_MS: i64 = 600_000;
/// Servers remembered for the quiet period, at most.
const MAX_REPORTED: usize = 1024;
/// Distinct client MACs in DISCOVERs within [`STARVATION_WINDOW_MS`] that
/// make starvation (forty PCs booting at eight are well below).
pub const STARVATION_CLIENTS: usize = 60;
const STARVATION_WINDOW_MS: i64 = 60_000;

/// What a DHCP message says, as far as the watch cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// 1 request (from a client), 2 reply (from a server).
    pub op: u8,
    /// 1 discover, 2 offer, 3 request, 5 ack, 6 nak (others are ignored).
    pub message_type: u8,
    /// The server: option 54, else (a reply) the IP source.
    pub server: Option<Ipv4Addr>,
    /// yiaddr of a reply; option 50 (the address asked for) of a request.
    pub offered: Ipv4Addr,
    pub client_mac: [u8; 6],
}

/// Reads a BOOTP/DHCP message (the UDP payload); `None` for anything else.
pub fn parse(udp_payload: &[u8], ip_src: Ipv4Addr) -> Option<Message> {
    // op (1 = request, 2 = reply), htype 1, hlen 6; yiaddr at 16, chaddr at 28, cookie at 236.
    let op = *udp_payload.first()?;
    if udp_payload.len() < 240 || !(op == 1 || op == 2) || udp_payload[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let mut offered = Ipv4Addr::new(udp_payload[16], udp_payload[17], udp_payload[18], udp_payload[19]);
    let client_mac: [u8; 6] = udp_payload[28..34].try_into().ok()?;
    let (mut message_type, mut server) = (0u8, None);
    let mut opts = &udp_payload[240..];
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            0 => opts = rest,
            255 => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..len as usize)?;
                match (code, value) {
                    (53, [t]) => message_type = *t,
                    (54, [a, b, c, d]) => server = Some(Ipv4Addr::new(*a, *b, *c, *d)),
                    (50, [a, b, c, d]) if op == 1 => offered = Ipv4Addr::new(*a, *b, *c, *d),
                    _ => {}
                }
                opts = &rest[len as usize..];
            }
        }
    }
    if op == 2 && server.is_none() {
        server = Some(ip_src);
    }
    Some(Message { op, message_type, server, offered, client_mac })
}

/// The watch.
#[derive(Debug)]
pub struct DhcpWatch {
    allowed: Vec<Ipv4Addr>,
    learned: Option<Ipv4Addr>,
    reported: Recently<Ipv4Addr>,
    starvation: FloodMeter,
    /// Random per run: client MACs cannot be chosen to collide in the meter.
    seed: u64,
}

impl Default for DhcpWatch {
    fn default() -> Self {
        DhcpWatch::new(Vec::new())
    }
}

impl DhcpWatch {
    /// A watch trusting `allowed` (empty: the first server seen).
    pub fn new(allowed: Vec<Ipv4Addr>) -> Self {
        DhcpWatch {
            allowed,
            learned: None,
            reported: Recently::new(QUIET_MS, MAX_REPORTED),
            starvation: FloodMeter::with_window(
                "dhcp_starvation",
                "client_macs",
                STARVATION_CLIENTS,
                STARVATION_WINDOW_MS,
            ),
            seed: super::flood::seed(),
        }
    }

    /// The LAN's own servers (configured, or the one learned).
    pub fn servers(&self) -> Vec<Ipv4Addr> {
        self.allowed.iter().chain(self.learned.iter()).copied().collect()
    }

    /// One DHCP message seen from `eth_src` at `now_ms`.
    pub fn observe(&mut self, m: Message, eth_src: [u8; 6], now_ms: i64) -> Option<Event> {
        let (seen, server) = match (m.op, m.message_type, m.server) {
            (1, 1, _) => {
                let key = super::flood::key_hash(super::flood::mac_key(&m.client_mac), self.seed);
                let target = || "dhcp".to_string();
                return self.starvation.add(key, eth_src, Some(&target), now_ms).map(|mut e| {
                    e.severity = Severity::Critical as i32;
                    e.attributes.insert(
                        "why".into(),
                        "DISCOVERs from many client MACs: the pool is being emptied (a rogue server often follows)"
                            .into(),
                    );
                    e
                });
            }
            (1, 3, Some(s)) => ("client_request", s),
            (2, 2, Some(s)) => ("offer", s),
            (2, 5, Some(s)) => ("ack", s),
            _ => return None,
        };
        let mut attributes = BTreeMap::from([
            ("src".to_string(), server.to_string()),
            ("src_mac".to_string(), mac(&eth_src)),
            ("offered".to_string(), m.offered.to_string()),
            ("client_mac".to_string(), mac(&m.client_mac)),
            ("message".to_string(), seen.to_string()),
        ]);
        if m.op == 1 {
            // The frame is the client's: the server's MAC is not in it.
            attributes.remove("src_mac");
            attributes.insert("seen".into(), "client_request".into());
        }
        // Learned from a server's own answer only: one forged REQUEST must
        // not make a rogue the LAN's server.
        if self.allowed.is_empty() && self.learned.is_none() && m.op == 2 {
            self.learned = Some(server);
            attributes.insert("why".into(), "first DHCP server seen on the LAN; taken as its own".into());
            return Some(Event::new("dhcp_server", Severity::Info, now_ms, attributes));
        }
        if self.allowed.contains(&server) || self.learned == Some(server) {
            return None;
        }
        if !self.reported.first(server, now_ms) {
            return None;
        }
        attributes
            .insert("allowed".into(), self.servers().iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(","));
        if m.op == 1 {
            attributes.insert("why".into(), "a client asked for the address another server offered it".into());
        }
        Some(Event::new("rogue_dhcp", Severity::Critical, now_ms, attributes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::capture::synth;

    #[test]
    fn offers_from_an_unlisted_server_are_rogue() {
        let offer = synth::dhcp_reply(2, Ipv4Addr::new(10, 2, 1, 11), Ipv4Addr::new(10, 2, 1, 100), [2, 0, 0, 0, 0, 7]);
        let r = parse(&offer, Ipv4Addr::new(10, 2, 1, 11)).unwrap();
        assert_eq!(
            r,
            Message {
                op: 2,
                message_type: 2,
                server: Some(Ipv4Addr::new(10, 2, 1, 11)),
                offered: Ipv4Addr::new(10, 2, 1, 100),
                client_mac: [2, 0, 0, 0, 0, 7]
            }
        );
        let mut w = DhcpWatch::new(vec![Ipv4Addr::new(10, 2, 1, 1)]);
        let e = w.observe(r, [2, 0, 0, 0, 0, 11], 0).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("rogue_dhcp", Severity::Critical as i32));
        assert_eq!(e.attributes["src"], "10.2.1.11");
        assert_eq!(e.attributes["offered"], "10.2.1.100");
        assert!(w.observe(r, [2, 0, 0, 0, 0, 11], 1000).is_none(), "once per ten minutes");
        let legit = Message { server: Some(Ipv4Addr::new(10, 2, 1, 1)), ..r };
        assert!(w.observe(legit, [2; 6], 0).is_none());
        // Without an allowlist, the first server is the LAN's.
        let mut w = DhcpWatch::new(Vec::new());
        assert_eq!(w.observe(legit, [2; 6], 0).unwrap().kind, "dhcp_server");
        assert!(w.observe(legit, [2; 6], 1).is_none());
        assert_eq!(w.observe(r, [2; 6], 2).unwrap().kind, "rogue_dhcp");
        // Short or foreign payloads are nothing.
        assert!(parse(&offer[..100], Ipv4Addr::UNSPECIFIED).is_none());
        let mut foreign = offer.clone();
        foreign[0] = 3;
        assert!(parse(&foreign, Ipv4Addr::UNSPECIFIED).is_none());
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_forged_servers() {
        let mut w = DhcpWatch::new(vec![Ipv4Addr::new(10, 2, 1, 1)]);
        let r = Message { op: 2, message_type: 2, server: None, offered: Ipv4Addr::UNSPECIFIED, client_mac: [2; 6] };
        for i in 0..(MAX_REPORTED as u32 * 4) {
            let forged = Message { server: Some(Ipv4Addr::from(0x0a00_0000 | i)), ..r };
            assert!(w.observe(forged, [2; 6], i as i64).is_some());
        }
        assert!(w.reported.len() <= MAX_REPORTED);
    }

    #[test]
    fn a_request_naming_another_server_is_rogue_and_starvation_is_one_event() {
        let lan = Ipv4Addr::new(10, 2, 1, 1);
        let rogue = Ipv4Addr::new(10, 2, 1, 66);
        let mut w = DhcpWatch::new(vec![lan]);
        let client = [2, 0, 0, 0, 0, 0x20];
        let req = synth::dhcp_request(client, rogue, Ipv4Addr::new(10, 2, 1, 200));
        let m = parse(&req, Ipv4Addr::UNSPECIFIED).unwrap();
        assert_eq!((m.op, m.message_type, m.server, m.offered), (1, 3, Some(rogue), Ipv4Addr::new(10, 2, 1, 200)));
        let e = w.observe(m, client, 0).unwrap();
        assert_eq!((e.kind.as_str(), e.severity), ("rogue_dhcp", Severity::Critical as i32));
        assert_eq!(e.attributes["src"], "10.2.1.66");
        assert_eq!(e.attributes["seen"], "client_request");
        assert_eq!(e.attributes["client_mac"], "02:00:00:00:00:20");
        let to_lan = parse(&synth::dhcp_request(client, lan, Ipv4Addr::new(10, 2, 1, 100)), Ipv4Addr::UNSPECIFIED);
        assert!(w.observe(to_lan.unwrap(), client, 1).is_none(), "asking the LAN's own server");
        // Forty PCs booting within a minute: no starvation.
        let mut w = DhcpWatch::new(vec![lan]);
        for i in 0..40u8 {
            let d = parse(&synth::bootp_discover([2, 0, 0, 0, 1, i]), Ipv4Addr::UNSPECIFIED).unwrap();
            assert!(w.observe(d, [2, 0, 0, 0, 1, i], i as i64 * 1000).is_none());
        }
        // Hundreds of DISCOVERs from random MACs: one critical event.
        let got: Vec<Event> = (0..600u32)
            .filter_map(|i| {
                let chaddr = [2, 0xee, (i >> 16) as u8, (i >> 8) as u8, i as u8, 7];
                let d = parse(&synth::bootp_discover(chaddr), Ipv4Addr::UNSPECIFIED).unwrap();
                w.observe(d, chaddr, 100_000 + i as i64 * 10)
            })
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].kind.as_str(), got[0].severity), ("dhcp_starvation", Severity::Critical as i32));
        assert!(got[0].attributes["distinct_client_macs"].parse::<usize>().unwrap() >= STARVATION_CLIENTS);
    }
}
