//! Rogue IPv6 routers: the IPv6 twin of a rogue DHCP server. A commune LAN
//! may run IPv4 only, but Windows and Linux hosts keep IPv6 on and take
//! any router advertisement (ICMPv6 type 134) they hear: one forged RA
//! makes its sender their IPv6 default router, and with a DNS option
//! (RDNSS) their resolver, which puts it in the middle of their traffic
//! (the "SLAAC attack"). An RA from a router not on the allowlist is a
//! `rogue_router_advert` event with what it announced. There is no
//! learning of the first router seen: on an IPv4-only LAN the first RA is
//! the attacker's.
//!
//! Only RAs a host would accept are judged (RFC 4861 6.1.2: hop limit 255,
//! link-local source, valid checksum); others change no host and are
//! ignored. Extension headers before the ICMPv6 header are walked (RA-Guard
//! evasion hides the RA behind them); a non-first fragment is skipped.

use super::recently::Recently;
use std::net::Ipv6Addr;

use pnet::packet::icmpv6::{checksum, Icmpv6Packet};
use pnet::packet::ipv6::Ipv6Packet;
use pnet::packet::Packet;
use tierwatch_protocol::{Event, Severity};

use super::mac;

/// One router is reported at most this often.
const QUIET_MS: i64 = 600_000;
/// Routers remembered for the quiet period, at most (a flood of forged
/// senders is held by the sensor's per-kind event limit instead).
const MAX_REPORTED: usize = 1024;
/// Extension headers walked before giving up.
const MAX_EXTENSIONS: usize = 8;
/// Prefixes and DNS servers kept as evidence, at most each.
const MAX_LISTED: usize = 8;

/// A router the LAN trusts, by address or by MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Router {
    Addr(Ipv6Addr),
    Mac([u8; 6]),
}

/// What a router advertisement announces, as far as the watch cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// The sender: a link-local address.
    pub router: Ipv6Addr,
    /// Seconds hosts keep it as a default router; 0: not a default router.
    pub lifetime_s: u16,
    /// Prefixes with their length and whether hosts autoconfigure from them.
    pub prefixes: Vec<(Ipv6Addr, u8, bool)>,
    /// DNS servers offered (RDNSS, RFC 8106).
    pub dns: Vec<Ipv6Addr>,
    /// The source link-layer address option, when present.
    pub link_addr: Option<[u8; 6]>,
}

impl Advert {
    /// Whether hosts change anything on hearing it: a default route,
    /// addresses or DNS servers.
    fn takes_hosts(&self) -> bool {
        self.lifetime_s > 0 || !self.dns.is_empty() || self.prefixes.iter().any(|p| p.2)
    }
}

/// Reads a router advertisement from an IPv6 packet (the Ethernet payload);
/// `None` for anything else or for an RA no host would accept.
pub fn parse(ipv6: &[u8]) -> Option<Advert> {
    let ip = Ipv6Packet::new(ipv6)?;
    let (src, dst) = (ip.get_source(), ip.get_destination());
    if ip.get_hop_limit() != 255 || (src.segments()[0] & 0xffc0) != 0xfe80 {
        return None;
    }
    // The payload length bounds the packet; Ethernet may pad the frame.
    let payload = ip.payload().get(..ip.get_payload_length() as usize)?;
    let icmp = skip_extensions(ip.get_next_header().0, payload)?;
    // type 134, code 0, checksum, hop limit, flags, router lifetime, two timers.
    if icmp.len() < 16 || icmp[0] != 134 || icmp[1] != 0 {
        return None;
    }
    if checksum(&Icmpv6Packet::new(icmp)?, &src, &dst) != u16::from_be_bytes([icmp[2], icmp[3]]) {
        return None;
    }
    let mut ad = Advert {
        router: src,
        lifetime_s: u16::from_be_bytes([icmp[6], icmp[7]]),
        prefixes: Vec::new(),
        dns: Vec::new(),
        link_addr: None,
    };
    let mut opts = &icmp[16..];
    while opts.len() >= 8 {
        let len = opts[1] as usize * 8;
        // A zero length is invalid (RFC 4861 4.6): hosts drop the whole RA.
        let opt = if len == 0 { return None } else { opts.get(..len)? };
        match opt[0] {
            1 => ad.link_addr = opt[2..8].try_into().ok(),
            3 if len == 32 && ad.prefixes.len() < MAX_LISTED => {
                let prefix: [u8; 16] = opt[16..32].try_into().ok()?;
                ad.prefixes.push((Ipv6Addr::from(prefix), opt[2], opt[3] & 0x40 != 0));
            }
            25 if len >= 24 => {
                for a in opt[8..].chunks_exact(16).take(MAX_LISTED - ad.dns.len().min(MAX_LISTED)) {
                    let a: [u8; 16] = a.try_into().ok()?;
                    ad.dns.push(Ipv6Addr::from(a));
                }
            }
            _ => {}
        }
        opts = &opts[len..];
    }
    Some(ad)
}

/// The upper-layer protocol and its header after hop-by-hop, routing,
/// destination options and a first fragment; `None` when it cannot be
/// reached (a later fragment, too many or broken headers). Scanners and
/// RA-Guard evasion hide behind these headers.
pub fn upper_layer(mut next: u8, mut data: &[u8]) -> Option<(u8, &[u8])> {
    for _ in 0..MAX_EXTENSIONS {
        match next {
            0 | 43 | 60 => {
                let len = (*data.get(1)? as usize + 1) * 8;
                next = *data.first()?;
                data = data.get(len..)?;
            }
            44 => {
                let offset = u16::from_be_bytes([*data.get(2)?, *data.get(3)?]) >> 3;
                if offset != 0 {
                    return None;
                }
                next = *data.first()?;
                data = data.get(8..)?;
            }
            // No next header: nothing above.
            59 => return None,
            _ => return Some((next, data)),
        }
    }
    None
}

/// The ICMPv6 message behind the extension headers.
fn skip_extensions(next: u8, data: &[u8]) -> Option<&[u8]> {
    upper_layer(next, data).filter(|(n, _)| *n == 58).map(|(_, d)| d)
}

/// The watch.
#[derive(Debug)]
pub struct RouterWatch {
    allowed: Vec<Router>,
    reported: Recently<(Ipv6Addr, [u8; 6])>,
}

impl Default for RouterWatch {
    fn default() -> Self {
        RouterWatch::new(Vec::new())
    }
}

impl RouterWatch {
    /// A watch trusting `allowed` (empty: every router is rogue).
    pub fn new(allowed: Vec<Router>) -> Self {
        RouterWatch { allowed, reported: Recently::new(QUIET_MS, MAX_REPORTED) }
    }

    fn trusted(&self, ad: &Advert, eth_src: [u8; 6]) -> bool {
        self.allowed.iter().any(|r| match r {
            Router::Addr(a) => *a == ad.router,
            Router::Mac(m) => *m == eth_src || ad.link_addr == Some(*m),
        })
    }

    /// One advertisement seen from `eth_src` at `now_ms`.
    pub fn observe(&mut self, ad: &Advert, eth_src: [u8; 6], now_ms: i64) -> Option<Event> {
        if self.trusted(ad, eth_src) {
            return None;
        }
        let key = (ad.router, eth_src);
        if !self.reported.first(key, now_ms) {
            return None;
        }
        let list = |v: Vec<String>| v.join(",");
        let allowed = self.allowed.iter().map(|r| match r {
            Router::Addr(a) => a.to_string(),
            Router::Mac(m) => mac(m),
        });
        let mut attrs = vec![
            ("src", ad.router.to_string()),
            ("src_mac", mac(&eth_src)),
            ("router_lifetime_s", ad.lifetime_s.to_string()),
            ("prefixes", list(ad.prefixes.iter().map(|(p, len, _)| format!("{p}/{len}")).collect())),
            ("dns", list(ad.dns.iter().map(Ipv6Addr::to_string).collect())),
            ("allowed", list(allowed.collect())),
        ];
        if let Some(m) = ad.link_addr.filter(|m| *m != eth_src) {
            attrs.push(("link_addr", mac(&m)));
        }
        let severity = if ad.takes_hosts() {
            attrs.push(("why", "hosts with IPv6 on take the sender as their router".into()));
            Severity::Critical
        } else {
            attrs.push(("why", "an unknown router on the LAN; it announces nothing hosts would use".into()));
            Severity::Warning
        };
        Some(Event::new("rogue_router_advert", severity, now_ms, attrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::capture::synth;
    use proptest::prelude::*;

    const ROUTER: &str = "fe80::66";
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x66];

    fn packet(src: &str, hop_limit: u8, ext: &[u8], icmp: Vec<u8>) -> Vec<u8> {
        synth::ipv6_icmp(MAC, src.parse().unwrap(), hop_limit, ext, icmp)[14..].to_vec()
    }

    fn ra(lifetime: u16) -> Vec<u8> {
        synth::router_advert(lifetime, MAC, "2001:db8:66::".parse().unwrap(), Some("2001:db8:66::53".parse().unwrap()))
    }

    #[test]
    fn reads_what_an_advert_announces() {
        let ad = parse(&packet(ROUTER, 255, &[], ra(1800))).unwrap();
        assert_eq!(ad.router, ROUTER.parse::<Ipv6Addr>().unwrap());
        assert_eq!(ad.lifetime_s, 1800);
        assert_eq!(ad.prefixes, [("2001:db8:66::".parse().unwrap(), 64, true)]);
        assert_eq!(ad.dns, ["2001:db8:66::53".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!(ad.link_addr, Some(MAC));
        // Behind a hop-by-hop header (RA-Guard evasion) it is still read.
        let hop_by_hop = [58, 0, 1, 4, 0, 0, 0, 0];
        assert_eq!(parse(&packet(ROUTER, 255, &hop_by_hop, ra(1800))), Some(ad));
    }

    #[test]
    fn ignores_adverts_no_host_accepts() {
        assert_eq!(parse(&packet(ROUTER, 64, &[], ra(1800))), None, "hop limit below 255: it crossed a router");
        assert_eq!(parse(&packet("2001:db8::1", 255, &[], ra(1800))), None, "not link-local");
        let mut bad = packet(ROUTER, 255, &[], ra(1800));
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(parse(&bad), None, "wrong checksum");
        let mut solicit = ra(0);
        solicit[0] = 133;
        assert_eq!(parse(&packet(ROUTER, 255, &[], solicit)), None, "a router solicitation");
    }

    #[test]
    fn an_unknown_router_is_rogue_once_per_quiet_period() {
        let ad = parse(&packet(ROUTER, 255, &[], ra(1800))).unwrap();
        let mut w = RouterWatch::new(vec![Router::Addr("fe80::1".parse().unwrap())]);
        let e = w.observe(&ad, MAC, 1_000).unwrap();
        assert_eq!(e.kind, "rogue_router_advert");
        assert_eq!(e.severity, Severity::Critical as i32);
        assert_eq!(e.attributes["src"], ROUTER);
        assert_eq!(e.attributes["src_mac"], "02:00:00:00:00:66");
        assert_eq!(e.attributes["prefixes"], "2001:db8:66::/64");
        assert_eq!(e.attributes["dns"], "2001:db8:66::53");
        assert_eq!(e.attributes["allowed"], "fe80::1");
        assert_eq!(w.observe(&ad, MAC, 2_000), None, "said once");
        assert!(w.observe(&ad, MAC, 1_000 + QUIET_MS).is_some(), "said again after the quiet period");
    }

    #[test]
    fn allowed_routers_and_harmless_adverts() {
        let ad = parse(&packet(ROUTER, 255, &[], ra(1800))).unwrap();
        assert_eq!(RouterWatch::new(vec![Router::Addr(ROUTER.parse().unwrap())]).observe(&ad, MAC, 0), None);
        assert_eq!(
            RouterWatch::new(vec![Router::Mac(MAC)]).observe(&ad, [2, 0, 0, 0, 0, 1], 0),
            None,
            "by its link-layer option"
        );
        // Lifetime 0, no autonomous prefix, no DNS: hosts change nothing.
        let mut quiet = parse(&packet(ROUTER, 255, &[], ra(0))).unwrap();
        quiet.prefixes.clear();
        quiet.dns.clear();
        let e = RouterWatch::new(Vec::new()).observe(&quiet, MAC, 0).unwrap();
        assert_eq!(e.severity, Severity::Warning as i32);
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_forged_routers() {
        let mut w = RouterWatch::new(Vec::new());
        let mut ad = parse(&packet(ROUTER, 255, &[], ra(1800))).unwrap();
        for i in 0..(MAX_REPORTED as u32 * 4) {
            ad.router = Ipv6Addr::from(0xfe80_0000_0000_0000_0000_0000_0000_0000u128 | i as u128);
            assert!(w.observe(&ad, MAC, i as i64).is_some());
        }
        assert!(w.reported.len() <= MAX_REPORTED);
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&data);
        }

        #[test]
        fn parse_never_panics_on_mangled_adverts(
            at in 0usize..120, byte in any::<u8>(), cut in 40usize..130,
        ) {
            let mut p = packet(ROUTER, 255, &[], ra(1800));
            if at < p.len() {
                p[at] = byte;
            }
            p.truncate(cut);
            let _ = parse(&p);
        }
    }
}
