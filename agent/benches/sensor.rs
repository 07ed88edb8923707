//! The LAN sensor's cost per frame and its memory under a flood.
//! Run: `cargo bench -p tierwatch-agent --bench sensor` (`-- WORD`: only the rows whose name has WORD).
//!
//! Synthetic frames go through `Sensors::frame` on one thread (the sensor
//! has one): a reference pass that only reads the Ethernet header, ordinary
//! traffic (established TCP, ARP from 50 known hosts), a SYN scan from
//! spoofed sources (every frame a new source: the worst case for the scan
//! detector's memory), an ARP flood from spoofed senders, and the rows of
//! the detectors added for hidden attacks: ordinary traffic with Windows
//! chatter and IPv6 neighbours, an Xmas scan, a neighbour-advertisement
//! flood, DHCP starvation. Memory is the
//! process's resident set before and after each flood, against the bounds
//! (`max_sources`, `max_stations`, pending SYNs).
// A failed setup is a failed test (or bench): unwrapping says where.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::net::Ipv4Addr;
use std::time::Instant;

use pnet::packet::ethernet::EthernetPacket;
use pnet::packet::tcp::TcpFlags;
use tierwatch_agent::sensor::arp::ArpPolicy;
use tierwatch_agent::sensor::capture::{synth, Sensors};
use tierwatch_agent::sensor::scan::ScanPolicy;

const N: usize = 2_000_000;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn run(name: &str, frames: &[Vec<u8>], sensors: &mut Sensors, reference: Option<f64>) -> f64 {
    // `cargo bench --bench sensor -- WORD` runs the rows whose name has WORD (to profile one).
    if std::env::args().skip(1).find(|a| !a.starts_with('-')).is_some_and(|f| !name.contains(f.as_str())) {
        return 0.0;
    }
    let mut out = Vec::new();
    let before = rss_kb();
    let t = Instant::now();
    for (i, f) in frames.iter().cycle().take(N).enumerate() {
        // A millisecond every 1,000 frames: the flood lasts 2,000 s of sensor time.
        sensors.frame(std::hint::black_box(f), (i / 1000) as i64, &mut out);
        out.clear();
    }
    let rate = N as f64 / t.elapsed().as_secs_f64();
    let (sources, stations, pending) = sensors.sizes();
    println!(
        "{name:<44} {:>10.0} frames/s {:>8} {:>10} KB RSS (+{} KB)  sources {sources}, stations {stations}, pending SYNs {pending}",
        rate,
        reference.map_or_else(|| "".to_string(), |r| format!("{:.2}x", rate / r)),
        rss_kb(),
        rss_kb().saturating_sub(before),
    );
    rate
}

fn main() {
    let victim = Ipv4Addr::new(10, 2, 1, 1);
    let mac = |i: u32| [2, 0, (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let spoofed = |i: u32| Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff));
    let fresh = || {
        Sensors::new(
            ScanPolicy::default(),
            ArpPolicy { own: vec![(victim.into(), [2, 0, 0, 0, 0, 1])], ..Default::default() },
            vec![victim],
        )
    };
    println!("{} frames per row, one thread; limits: 10,000 sources, 4,096 stations, 65,536 pending SYNs", N);

    // Ordinary traffic: established TCP both ways and ARP from known hosts.
    let ordinary: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| match i % 10 {
            0 => synth::arp_reply(mac(i % 50), mac(i % 50), Ipv4Addr::new(10, 2, 1, 10 + (i % 50) as u8), victim),
            k if k % 2 == 0 => synth::tcp(mac(1), Ipv4Addr::new(10, 2, 1, 20), 40000, victim, 443, TcpFlags::ACK),
            _ => synth::tcp(mac(2), victim, 443, Ipv4Addr::new(10, 2, 1, 20), 40000, TcpFlags::ACK | TcpFlags::PSH),
        })
        .collect();
    let t = Instant::now();
    let mut n = 0usize;
    for f in ordinary.iter().cycle().take(N) {
        if let Some(e) = EthernetPacket::new(std::hint::black_box(f)) {
            n += e.get_ethertype().0 as usize;
        }
    }
    let reference = N as f64 / t.elapsed().as_secs_f64();
    println!("{:<44} {:>10.0} frames/s {:>8} (checksum {n})", "reference: Ethernet header only", reference, "1.00x");
    run("ordinary traffic (TCP, ARP of 50 hosts)", &ordinary, &mut fresh(), Some(reference));

    // A SYN scan from spoofed sources, each answered by RST: every frame pair a new source.
    let flood: Vec<Vec<u8>> = (0..200_000u32)
        .flat_map(|i| {
            let src = spoofed(i);
            [
                synth::tcp(mac(i), src, 40000, victim, (i % 1000) as u16 + 1, TcpFlags::SYN),
                synth::tcp(mac(0), victim, (i % 1000) as u16 + 1, src, 40000, TcpFlags::RST | TcpFlags::ACK),
            ]
        })
        .collect();
    run("SYN scan, spoofed sources, RST answers", &flood, &mut fresh(), Some(reference));
    // Unanswered SYNs from spoofed sources: the pending table's bound.
    let syns: Vec<Vec<u8>> =
        (0..200_000u32).map(|i| synth::tcp(mac(i), spoofed(i), 40000, victim, 80, TcpFlags::SYN)).collect();
    run("SYN flood, spoofed sources, no answers", &syns, &mut fresh(), Some(reference));
    let arp: Vec<Vec<u8>> = (0..200_000u32).map(|i| synth::arp_reply(mac(i), mac(i), spoofed(i), victim)).collect();
    run("ARP flood, spoofed senders", &arp, &mut fresh(), Some(reference));

    // Rows of the detectors added since (issue 17).
    let ll = |i: u32| std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16);
    let host = |i: u32| Ipv4Addr::new(10, 2, 1, 10 + (i % 50) as u8);
    let chatter: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| match i % 10 {
            0 => synth::arp_reply(mac(i % 50), mac(i % 50), Ipv4Addr::new(10, 2, 1, 10 + (i % 50) as u8), victim),
            1 => synth::udp(mac(i % 50), host(i), 5353, Ipv4Addr::new(224, 0, 0, 251), 5353, &[0; 40]),
            2 => synth::udp(mac(i % 50), host(i), 1900, Ipv4Addr::new(239, 255, 255, 250), 1900, &[0; 120]),
            3 => synth::ipv6_icmp(mac(i % 50), ll(i % 50), 255, &[], synth::neighbour_advert(ll(i % 50), mac(i % 50))),
            k if k % 2 == 0 => synth::tcp(mac(1), Ipv4Addr::new(10, 2, 1, 20), 40000, victim, 443, TcpFlags::ACK),
            _ => synth::tcp(mac(2), victim, 443, Ipv4Addr::new(10, 2, 1, 20), 40000, TcpFlags::ACK | TcpFlags::PSH),
        })
        .collect();
    run("ordinary + chatter (mDNS, SSDP, NA of 50 hosts)", &chatter, &mut fresh(), Some(reference));
    let fin: Vec<Vec<u8>> = (0..200_000u32)
        .map(|i| {
            synth::tcp(
                mac(i),
                spoofed(i),
                40000,
                victim,
                (i % 1000) as u16 + 1,
                TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG,
            )
        })
        .collect();
    run("Xmas scan, spoofed sources", &fin, &mut fresh(), Some(reference));
    let na: Vec<Vec<u8>> = (0..200_000u32)
        .map(|i| synth::ipv6_icmp(mac(i), ll(i), 255, &[], synth::neighbour_advert(ll(i), mac(i))))
        .collect();
    run("NA flood, invented neighbours", &na, &mut fresh(), Some(reference));
    let dhcp: Vec<Vec<u8>> = (0..200_000u32).map(|i| synth::dhcp_discover(mac(i))).collect();
    run("DHCP starvation, invented clients", &dhcp, &mut fresh(), Some(reference));
}
