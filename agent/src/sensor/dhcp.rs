//! Rogue DHCP: a DHCP server answering on the LAN that is not the LAN's
//! own. Offers and acknowledgements (UDP 67 → 68) name their server
//! (option 54, else the IP source); one not on the allowlist is a critical
//! `rogue_dhcp` event with the evidence. Without an allowlist the first
//! server seen is taken as the LAN's (an info event names it) and any other
//! is rogue.

use super::recently::Recently;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use tierwatch_protocol::{Event, Severity};

use super::mac;

/// One server is reported at most this often.
const QUIET_MS: i64 = 600_000;
/// Servers remembered for the quiet period, at most.
const MAX_REPORTED: usize = 1024;

/// What a DHCP reply says, as far as the watch cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// 2 offer, 5 ack (others are ignored).
    pub message_type: u8,
    pub server: Ipv4Addr,
    pub offered: Ipv4Addr,
    pub client_mac: [u8; 6],
}

/// Reads a BOOTP/DHCP reply (the UDP payload); `None` for anything else.
pub fn parse(udp_payload: &[u8], ip_src: Ipv4Addr) -> Option<Reply> {
    // op (1 = request, 2 = reply), htype 1, hlen 6; yiaddr at 16, chaddr at 28, cookie at 236.
    if udp_payload.len() < 240 || udp_payload[0] != 2 || udp_payload[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let offered = Ipv4Addr::new(udp_payload[16], udp_payload[17], udp_payload[18], udp_payload[19]);
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
                    _ => {}
                }
                opts = &rest[len as usize..];
            }
        }
    }
    Some(Reply { message_type, server: server.unwrap_or(ip_src), offered, client_mac })
}

/// The watch.
#[derive(Debug)]
pub struct DhcpWatch {
    allowed: Vec<Ipv4Addr>,
    learned: Option<Ipv4Addr>,
    reported: Recently<Ipv4Addr>,
}

impl Default for DhcpWatch {
    fn default() -> Self {
        DhcpWatch::new(Vec::new())
    }
}

impl DhcpWatch {
    /// A watch trusting `allowed` (empty: the first server seen).
    pub fn new(allowed: Vec<Ipv4Addr>) -> Self {
        DhcpWatch { allowed, learned: None, reported: Recently::new(QUIET_MS, MAX_REPORTED) }
    }

    /// One DHCP reply seen from `eth_src` at `now_ms`.
    pub fn observe(&mut self, r: Reply, eth_src: [u8; 6], now_ms: i64) -> Option<Event> {
        if r.message_type != 2 && r.message_type != 5 {
            return None;
        }
        let mut attributes = BTreeMap::from([
            ("src".to_string(), r.server.to_string()),
            ("src_mac".to_string(), mac(&eth_src)),
            ("offered".to_string(), r.offered.to_string()),
            ("client_mac".to_string(), mac(&r.client_mac)),
            ("message".to_string(), if r.message_type == 2 { "offer" } else { "ack" }.to_string()),
        ]);
        if self.allowed.is_empty() && self.learned.is_none() {
            self.learned = Some(r.server);
            attributes.insert("why".into(), "first DHCP server seen on the LAN; taken as its own".into());
            return Some(Event::new("dhcp_server", Severity::Info, now_ms, attributes));
        }
        if self.allowed.contains(&r.server) || self.learned == Some(r.server) {
            return None;
        }
        if !self.reported.first(r.server, now_ms) {
            return None;
        }
        let allowed: Vec<String> = self.allowed.iter().chain(self.learned.iter()).map(Ipv4Addr::to_string).collect();
        attributes.insert("allowed".into(), allowed.join(","));
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
            Reply {
                message_type: 2,
                server: Ipv4Addr::new(10, 2, 1, 11),
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
        let legit = Reply { server: Ipv4Addr::new(10, 2, 1, 1), ..r };
        assert!(w.observe(legit, [2; 6], 0).is_none());
        // Without an allowlist, the first server is the LAN's.
        let mut w = DhcpWatch::new(Vec::new());
        assert_eq!(w.observe(legit, [2; 6], 0).unwrap().kind, "dhcp_server");
        assert!(w.observe(legit, [2; 6], 1).is_none());
        assert_eq!(w.observe(r, [2; 6], 2).unwrap().kind, "rogue_dhcp");
        // Requests, short or foreign payloads are not replies.
        assert!(parse(&offer[..100], Ipv4Addr::UNSPECIFIED).is_none());
        let mut request = offer.clone();
        request[0] = 1;
        assert!(parse(&request, Ipv4Addr::UNSPECIFIED).is_none());
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_forged_servers() {
        let mut w = DhcpWatch::new(vec![Ipv4Addr::new(10, 2, 1, 1)]);
        let r = Reply {
            message_type: 2,
            server: Ipv4Addr::UNSPECIFIED,
            offered: Ipv4Addr::UNSPECIFIED,
            client_mac: [2; 6],
        };
        for i in 0..(MAX_REPORTED as u32 * 4) {
            let forged = Reply { server: Ipv4Addr::from(0x0a00_0000 | i), ..r };
            assert!(w.observe(forged, [2; 6], i as i64).is_some());
        }
        assert!(w.reported.len() <= MAX_REPORTED);
    }
}
