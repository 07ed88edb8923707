//! Helper of the network lab, run inside the lab's namespaces:
//!
//! - `tw-labnet bridge A B`: moves Ethernet frames between interfaces A and B
//!   with pnet's datalink channel, applying delay, jitter, loss and
//!   reordering per direction. This kernel has no netem, so delay lives here.
//!   Commands on stdin change the impairment while it runs:
//!   `set a2b|b2a delay_us=40000 jitter_us=10000 loss=0.05 reorder=0`;
//!   `hold MS` holds every frame, both ways, for MS milliseconds and then
//!   lets them go in order (a stalled path: bufferbloat, a 4G backup link).
//!   Prints `ready` once both channels are open, then one line per command.
//! - `tw-labnet get ADDR PATH`: HTTP/1.0 GET from inside a namespace; prints
//!   the status code on the first line, then the body.
//! - `tw-labnet send METHOD ADDR PATH BODY [TOKEN]`: the same with a JSON
//!   body and an optional bearer token.
//! - `tw-labnet listen ADDR...`: accepts TCP connections on each address and
//!   closes them (a plain TCP service).
//! - `tw-labnet arp-spoof IF SENDER_IP TARGET_IP COUNT`: sends COUNT ARP
//!   replies from IF in which IF's MAC claims SENDER_IP, 200 ms apart.
//! - `tw-labnet dhcp-discover IF COUNT`: broadcasts COUNT DHCPDISCOVERs from IF, 300 ms apart.
//! - `tw-labnet arp-flood IF COUNT RATE`: ARP replies of COUNT invented
//!   stations (10.201.0.0/16, each its own MAC as Ethernet source and sender).
//! - `tw-labnet na-spoof IF TARGET_V6 COUNT`: neighbour advertisements in
//!   which IF's MAC claims TARGET_V6, 200 ms apart, to all nodes.
//! - `tw-labnet dhcp-starve IF COUNT RATE`: DHCPDISCOVERs from COUNT invented client MACs.
//! - `tw-labnet dhcp-request IF SERVER REQUESTED COUNT`: broadcast
//!   DHCPREQUESTs from IF naming SERVER (option 54) for REQUESTED, 300 ms apart.
//! - `tw-labnet udp ADDR:PORT COUNT`: COUNT datagrams to ADDR:PORT from an
//!   ordinary socket (broadcast and multicast allowed), 100 ms apart: the
//!   chatter of Windows hosts (mDNS, LLMNR, NetBIOS, SSDP) in the lab.
//! - `tw-labnet hooks ADDR`: a webhook receiver: answers every request 200
//!   (keeping connections alive) and prints `<ms since epoch> <body>` per
//!   request, the body on one line, after a first `ready` line.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pnet::datalink::{self, Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};
use rand::Rng;
use tierwatch_tests::lab::impair::Impairment;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bridge") if args.len() == 3 => bridge(&args[1], &args[2]),
        Some("get") if args.len() == 3 => http("GET", &args[1], &args[2], "", None),
        Some("send") if args.len() == 5 || args.len() == 6 => {
            http(&args[1], &args[2], &args[3], &args[4], args.get(5).map(String::as_str))
        }
        Some("listen") if args.len() >= 2 => listen(&args[1..]),
        Some("hooks") if args.len() == 2 => hooks(&args[1]),
        Some("dhcp-discover") if args.len() == 3 => dhcp_discover(&args[1], args[2].parse()?),
        Some("arp-spoof") if args.len() == 5 => arp_spoof(&args[1], args[2].parse()?, args[3].parse()?, args[4].parse()?),
        Some("udp") if args.len() == 3 => udp(args[1].parse()?, args[2].parse()?),
        Some("arp-flood") if args.len() == 4 => arp_flood(&args[1], args[2].parse()?, args[3].parse()?),
        Some("na-spoof") if args.len() == 4 => na_spoof(&args[1], args[2].parse()?, args[3].parse()?),
        Some("dhcp-starve") if args.len() == 4 => dhcp_starve(&args[1], args[2].parse()?, args[3].parse()?),
        Some("dhcp-request") if args.len() == 5 => {
            dhcp_request(&args[1], args[2].parse()?, args[3].parse()?, args[4].parse()?)
        }
        _ => bail!(
            "usage: tw-labnet bridge IF_A IF_B | get ADDR PATH | send METHOD ADDR PATH BODY [TOKEN] | listen ADDR... | hooks ADDR | arp-spoof IF SENDER_IP TARGET_IP COUNT | dhcp-discover IF COUNT | arp-flood IF COUNT RATE | na-spoof IF TARGET_V6 COUNT | dhcp-starve IF COUNT RATE | dhcp-request IF SERVER REQUESTED COUNT | udp ADDR:PORT COUNT"
        ),
    }
}

fn http(method: &str, addr: &str, path: &str, body: &str, token: Option<&str>) -> anyhow::Result<()> {
    let addr: SocketAddr = addr.parse().context("address")?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let code = head.split(' ').nth(1).context("no status")?;
    println!("{code}");
    print!("{body}");
    Ok(())
}

fn arp_spoof(name: &str, sender: std::net::Ipv4Addr, target: std::net::Ipv4Addr, count: u32) -> anyhow::Result<()> {
    let mac = own_mac(name)?;
    let (mut tx, _) = channel(name)?;
    let frame = tierwatch_agent::sensor::capture::synth::arp_reply(mac, mac, sender, target);
    for _ in 0..count {
        if let Some(r) = tx.send_to(&frame, None) {
            r.context("sending")?;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn own_mac(name: &str) -> anyhow::Result<[u8; 6]> {
    let iface =
        datalink::interfaces().into_iter().find(|i| i.name == name).with_context(|| format!("no interface {name}"))?;
    Ok(iface.mac.context("interface without MAC")?.octets())
}

/// Sends `count` frames made by `make(i)`, `rate` a second (in bursts of a millisecond's worth).
fn paced(name: &str, count: u32, rate: u32, mut make: impl FnMut(u32) -> Vec<u8>) -> anyhow::Result<()> {
    let (mut tx, _) = channel(name)?;
    let started = Instant::now();
    for i in 0..count {
        if let Some(r) = tx.send_to(&make(i), None) {
            r.context("sending")?;
        }
        let due = Duration::from_secs_f64(f64::from(i + 1) / f64::from(rate.max(1)));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            if wait > Duration::from_millis(1) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(())
}

fn arp_flood(name: &str, count: u32, rate: u32) -> anyhow::Result<()> {
    paced(name, count, rate, |i| {
        let m = [0x02, 0xaa, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let ip = std::net::Ipv4Addr::new(10, 201, (i >> 8) as u8, i as u8);
        tierwatch_agent::sensor::capture::synth::arp_reply(m, m, ip, std::net::Ipv4Addr::new(10, 201, 255, 255))
    })
}

fn na_spoof(name: &str, target: std::net::Ipv6Addr, count: u32) -> anyhow::Result<()> {
    let mac = own_mac(name)?;
    let own: std::net::Ipv6Addr = format!(
        "fe80::{:x}:{:x}ff:fe{:x}:{:x}",
        u16::from_be_bytes([mac[0] ^ 2, mac[1]]),
        mac[2],
        mac[3],
        u16::from_be_bytes([mac[4], mac[5]])
    )
    .parse()?;
    let na = tierwatch_agent::sensor::capture::synth::neighbour_advert(target, mac);
    let frame = tierwatch_agent::sensor::capture::synth::ipv6_icmp(mac, own, 255, &[], na);
    paced(name, count, 5, |_| frame.clone())
}

fn dhcp_starve(name: &str, count: u32, rate: u32) -> anyhow::Result<()> {
    paced(name, count, rate, |i| {
        let m = [0x02, 0xdc, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        tierwatch_agent::sensor::capture::synth::dhcp_discover(m)
    })
}

fn dhcp_request(
    name: &str,
    server: std::net::Ipv4Addr,
    requested: std::net::Ipv4Addr,
    count: u32,
) -> anyhow::Result<()> {
    use tierwatch_agent::sensor::capture::synth;
    let mac = own_mac(name)?;
    let payload = synth::dhcp_request(mac, server, requested);
    let frame = synth::udp(mac, std::net::Ipv4Addr::UNSPECIFIED, 68, std::net::Ipv4Addr::BROADCAST, 67, &payload);
    paced(name, count, 3, |_| frame.clone())
}

fn udp(to: SocketAddr, count: u32) -> anyhow::Result<()> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.set_broadcast(true)?;
    for i in 0..count {
        s.send_to(format!("tierwatch lab chatter {i}").as_bytes(), to).with_context(|| format!("sending to {to}"))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn dhcp_discover(name: &str, count: u32) -> anyhow::Result<()> {
    let mac = own_mac(name)?;
    let (mut tx, _) = channel(name)?;
    let frame = tierwatch_agent::sensor::capture::synth::dhcp_discover(mac);
    for _ in 0..count {
        if let Some(r) = tx.send_to(&frame, None) {
            r.context("sending")?;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

fn hooks(addr: &str) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    writeln!(out.lock().unwrap_or_else(|p| p.into_inner()), "ready")?;
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        let out = out.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut w = conn.try_clone()?;
            let mut r = std::io::BufReader::new(conn);
            loop {
                let mut len = 0usize;
                let mut line = String::new();
                if r.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                loop {
                    line.clear();
                    r.read_line(&mut line)?;
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body)?;
                let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
                let text = String::from_utf8_lossy(&body).replace('\n', " ");
                {
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    writeln!(o, "{at} {text}")?;
                    o.flush()?;
                }
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
            }
        });
    }
    Ok(())
}

fn listen(addrs: &[String]) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for a in addrs {
        let l = TcpListener::bind(a.as_str()).with_context(|| format!("binding {a}"))?;
        handles.push(std::thread::spawn(move || {
            for conn in l.incoming() {
                drop(conn);
            }
        }));
    }
    println!("ready");
    std::io::stdout().flush()?;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// A frame with its release time and arrival order (ties keep arrival order).
type Timed = Reverse<(Instant, u64, Vec<u8>)>;

/// Frames waiting for their release time, earliest first.
struct Queue {
    heap: Mutex<BinaryHeap<Timed>>,
    ready: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    A,
    B,
}

/// One direction: its impairment, and the release time of its last frame (for FIFO order).
struct Direction {
    impairment: Mutex<Impairment>,
    last_release: Mutex<Instant>,
    /// Nothing leaves before this (`hold`).
    hold_until: Mutex<Instant>,
    queue: Queue,
}

fn channel(name: &str) -> anyhow::Result<(Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>)> {
    let iface: NetworkInterface =
        datalink::interfaces().into_iter().find(|i| i.name == name).with_context(|| format!("no interface {name}"))?;
    let config =
        datalink::Config { read_timeout: Some(Duration::from_millis(100)), promiscuous: true, ..Default::default() };
    match datalink::channel(&iface, config).with_context(|| format!("opening {name}"))? {
        Channel::Ethernet(tx, rx) => Ok((tx, rx)),
        _ => bail!("{name}: not an Ethernet channel"),
    }
}

fn bridge(a: &str, b: &str) -> anyhow::Result<()> {
    let (tx_a, rx_a) = channel(a)?;
    let (tx_b, rx_b) = channel(b)?;
    let new_dir = || {
        Arc::new(Direction {
            impairment: Mutex::new(Impairment::default()),
            last_release: Mutex::new(Instant::now()),
            hold_until: Mutex::new(Instant::now()),
            queue: Queue { heap: Mutex::new(BinaryHeap::new()), ready: Condvar::new() },
        })
    };
    let (a2b, b2a) = (new_dir(), new_dir());
    // Source MACs learned per side: a frame seen on one side whose source was
    // learned on the other is our own transmission looped back, not traffic.
    let learned: Arc<Mutex<HashMap<[u8; 6], Side>>> = Arc::default();
    spawn_rx(rx_a, Side::A, a2b.clone(), learned.clone());
    spawn_rx(rx_b, Side::B, b2a.clone(), learned);
    spawn_tx(tx_b, a2b.clone());
    spawn_tx(tx_a, b2a.clone());
    println!("ready");
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("set"), Some(dir)) => {
                let target = match dir {
                    "a2b" => &a2b,
                    "b2a" => &b2a,
                    other => {
                        println!("error: direction {other:?} is not a2b or b2a");
                        continue;
                    }
                };
                let rest: Vec<&str> = words.collect();
                match Impairment::parse(&rest.join(" ")) {
                    Ok(imp) => {
                        *target.impairment.lock().unwrap_or_else(|p| p.into_inner()) = imp;
                        println!("ok");
                    }
                    Err(e) => println!("error: {e}"),
                }
            }
            (Some("hold"), Some(ms)) => match ms.parse::<u64>() {
                Ok(ms) => {
                    let until = Instant::now() + Duration::from_millis(ms);
                    for d in [&a2b, &b2a] {
                        *d.hold_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
                        d.queue.ready.notify_all();
                    }
                    println!("ok");
                }
                Err(e) => println!("error: hold {ms:?}: {e}"),
            },
            _ => println!("error: unknown command {line:?}"),
        }
        std::io::stdout().flush()?;
    }
    // stdin closed: the lab is gone.
    Ok(())
}

fn spawn_rx(
    mut rx: Box<dyn DataLinkReceiver>,
    side: Side,
    dir: Arc<Direction>,
    learned: Arc<Mutex<HashMap<[u8; 6], Side>>>,
) {
    std::thread::spawn(move || {
        let mut rng = rand::thread_rng();
        let mut seq = 0u64;
        loop {
            let frame = match rx.next() {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(_) => {
                    // The interface went down (link cut by a test): wait and retry, never spin.
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            if frame.len() < 14 {
                continue;
            }
            let mut src = [0u8; 6];
            src.copy_from_slice(&frame[6..12]);
            {
                let mut l = learned.lock().unwrap_or_else(|p| p.into_inner());
                match l.get(&src) {
                    Some(s) if *s != side => continue,
                    Some(_) => {}
                    None => {
                        l.insert(src, side);
                    }
                }
            }
            let now = Instant::now();
            let imp = *dir.impairment.lock().unwrap_or_else(|p| p.into_inner());
            if imp.loss > 0.0 && rng.gen::<f64>() < imp.loss {
                continue;
            }
            let release = if imp.reorder > 0.0 && rng.gen::<f64>() < imp.reorder {
                now // jumps the queue: reordered
            } else {
                let jitter = if imp.jitter.is_zero() {
                    0.0
                } else {
                    rng.gen_range(-imp.jitter.as_secs_f64()..imp.jitter.as_secs_f64())
                };
                let delay = (imp.delay.as_secs_f64() + jitter).max(0.0);
                let mut at = now + Duration::from_secs_f64(delay);
                if !imp.allow_reorder_by_jitter {
                    let mut last = dir.last_release.lock().unwrap_or_else(|p| p.into_inner());
                    at = at.max(*last);
                    *last = at;
                }
                at
            };
            seq += 1;
            let mut heap = dir.queue.heap.lock().unwrap_or_else(|p| p.into_inner());
            heap.push(Reverse((release, seq, frame.to_vec())));
            dir.queue.ready.notify_one();
        }
    });
}

fn spawn_tx(mut tx: Box<dyn DataLinkSender>, dir: Arc<Direction>) {
    std::thread::spawn(move || loop {
        let frame = {
            let mut heap = dir.queue.heap.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let now = Instant::now();
                let hold = *dir.hold_until.lock().unwrap_or_else(|p| p.into_inner());
                if hold > now {
                    heap = dir
                        .queue
                        .ready
                        .wait_timeout(heap, hold - now)
                        .map(|(h, _)| h)
                        .unwrap_or_else(|p| p.into_inner().0);
                    continue;
                }
                match heap.peek() {
                    Some(Reverse((at, _, _))) if *at <= now => break heap.pop().map(|Reverse((_, _, f))| f),
                    Some(Reverse((at, _, _))) => {
                        let wait = *at - now;
                        heap = dir
                            .queue
                            .ready
                            .wait_timeout(heap, wait)
                            .map(|(h, _)| h)
                            .unwrap_or_else(|p| p.into_inner().0);
                    }
                    None => {
                        heap = dir.queue.ready.wait(heap).unwrap_or_else(|p| p.into_inner());
                    }
                }
            }
        };
        if let Some(f) = frame {
            // A down interface refuses the frame: it is lost, as on a cut link.
            let _ = tx.send_to(&f, None);
        }
    });
}
