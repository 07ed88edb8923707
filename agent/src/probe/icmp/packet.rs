//! Echo requests and replies on the wire (pnet), with our cookie in the
//! payload so another `ping` on the host is never taken for ours.

use pnet::packet::icmp::echo_reply::EchoReplyPacket;
use pnet::packet::icmp::echo_request::MutableEchoRequestPacket;
use pnet::packet::icmp::{self, IcmpPacket, IcmpTypes};
use pnet::packet::icmpv6::{self, Icmpv6Packet, Icmpv6Types};
use pnet::packet::Packet;

pub(super) const HEADER_LEN: usize = 8;
pub(super) const PAYLOAD_LEN: usize = 16;

/// Writes an echo request with our cookie in the payload. The kernel fills
/// the ICMPv6 checksum (it covers a pseudo-header we do not build).
pub(super) fn encode_request(
    buf: &mut [u8; HEADER_LEN + PAYLOAD_LEN],
    v6: bool,
    ident: u16,
    seq: u16,
    cookie: &[u8; 8],
) {
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[..8].copy_from_slice(cookie);
    if let Some(mut p) = MutableEchoRequestPacket::new(&mut buf[..]) {
        p.set_icmp_type(IcmpTypes::EchoRequest);
        p.set_identifier(ident);
        p.set_sequence_number(seq);
        p.set_payload(&payload);
    }
    if v6 {
        buf[0] = Icmpv6Types::EchoRequest.0;
        return;
    }
    if let Some(packet) = IcmpPacket::new(&buf[..]) {
        let sum = icmp::checksum(&packet);
        buf[2..4].copy_from_slice(&sum.to_be_bytes());
    }
}

/// Identifier and sequence of an echo reply.
#[derive(Debug, PartialEq)]
pub struct Echo {
    pub ident: u16,
    pub seq: u16,
}

/// Parses an ICMP (or ICMPv6 when `v6`) echo reply carrying `cookie`;
/// anything else is `None`. Public for the fuzz target.
pub fn parse_reply(data: &[u8], v6: bool, cookie: &[u8; 8]) -> Option<Echo> {
    let is_reply = if v6 {
        Icmpv6Packet::new(data)?.get_icmpv6_type() == icmpv6::Icmpv6Types::EchoReply
    } else {
        IcmpPacket::new(data)?.get_icmp_type() == IcmpTypes::EchoReply
    };
    if !is_reply {
        return None;
    }
    // Echo request and reply share one layout in both families.
    let echo = EchoReplyPacket::new(data)?;
    if echo.payload().get(..8)? != cookie {
        return None;
    }
    Some(Echo { ident: echo.get_identifier(), seq: echo.get_sequence_number() })
}
