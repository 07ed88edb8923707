//! ICMP echo: one engine per agent serves every target through one socket and
//! one receiver task, matching replies by sequence number, source address,
//! identifier (raw sockets) and a per-engine cookie in the payload, so a
//! reply is never credited to another probe (or to another ping on the host).
//!
//! The socket is raw (`CAP_NET_RAW`) when allowed, else a Linux unprivileged
//! ICMP socket (`net.ipv4.ping_group_range`). Packets are built and parsed
//! with pnet; the socket is driven by tokio.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pnet::packet::icmp::echo_reply::EchoReplyPacket;
use pnet::packet::icmp::echo_request::MutableEchoRequestPacket;
use pnet::packet::icmp::{self, IcmpPacket, IcmpTypes};
use pnet::packet::ipv4::Ipv4Packet;
use pnet::packet::Packet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const HEADER_LEN: usize = 8;
const PAYLOAD_LEN: usize = 16;

/// Which kind of socket the engine got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_RAW`: needs `CAP_NET_RAW`; sees every ICMP packet of the host.
    Raw,
    /// `SOCK_DGRAM` with `IPPROTO_ICMP`: unprivileged; the kernel owns the identifier.
    Unprivileged,
}

impl SocketKind {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketKind::Raw => "raw",
            SocketKind::Unprivileged => "unprivileged",
        }
    }
}

/// Why ICMP cannot be used or a packet could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum IcmpError {
    #[error(
        "no ICMP socket: raw sockets need CAP_NET_RAW ({raw}) and unprivileged ICMP sockets are not allowed for gid {gid} ({dgram}). \
         Grant one of: `setcap cap_net_raw+ep /usr/bin/tierwatch-agent`; `AmbientCapabilities=CAP_NET_RAW` in the systemd unit; \
         or `sysctl -w net.ipv4.ping_group_range=\"{gid} {gid}\"`"
    )]
    NoSocket { raw: std::io::Error, dgram: std::io::Error, gid: u32 },
    #[error("setting up the ICMP socket: {0}")]
    Setup(std::io::Error),
    #[error("sending echo request to {dest}: {source}")]
    Send { dest: IpAddr, source: std::io::Error },
    #[error("IPv6 targets are not supported by this ICMP engine yet ({0})")]
    Ipv6(IpAddr),
}

struct Pending {
    dest: Ipv4Addr,
    reply: oneshot::Sender<Instant>,
}

struct Shared {
    socket: tokio::net::UdpSocket,
    kind: SocketKind,
    ident: u16,
    cookie: [u8; 8],
    next_seq: Mutex<u16>,
    pending: Mutex<HashMap<u16, Pending>>,
    /// Replies that matched our cookie but no outstanding request: duplicates or too late.
    late_or_duplicate: AtomicU64,
}

/// The agent's ICMP engine. Dropping it stops the receiver.
pub struct IcmpEngine {
    shared: Arc<Shared>,
    receiver: JoinHandle<()>,
}

impl Drop for IcmpEngine {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// Outcome of one round of echo requests to one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub dest: IpAddr,
    /// One entry per request, in send order: the round-trip time, or `None` when lost.
    pub rtts: Vec<Option<Duration>>,
    /// Requests the kernel refused to send (for example no route).
    pub send_errors: u32,
    /// First send error, for the log and the `probe` command.
    pub first_error: Option<String>,
}

/// Statistics of a round, SmokePing-style.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub sent: u32,
    pub received: u32,
    pub loss_ratio: f64,
    pub min: Duration,
    pub median: Duration,
    pub p90: Duration,
    pub max: Duration,
    pub mean: Duration,
    pub stddev: Duration,
    /// Mean absolute difference of consecutive received RTTs.
    pub jitter: Duration,
}

fn current_gid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.gid()).unwrap_or(u32::MAX)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    b
}

impl IcmpEngine {
    /// Opens the socket (raw first, unprivileged second) and starts the receiver.
    /// Must be called inside a tokio runtime.
    pub fn open() -> Result<Self, IcmpError> {
        let (socket, kind) = match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) {
            Ok(s) => (s, SocketKind::Raw),
            Err(raw) => match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
                Ok(s) => (s, SocketKind::Unprivileged),
                Err(dgram) => return Err(IcmpError::NoSocket { raw, dgram, gid: current_gid() }),
            },
        };
        socket.set_nonblocking(true).map_err(IcmpError::Setup)?;
        // A burst of replies from 1,000 targets must not overflow the queue.
        let _ = socket.set_recv_buffer_size(1 << 20);
        // An ICMP socket is a datagram socket to tokio: recvfrom/sendto are
        // the same calls, and this keeps the whole engine free of unsafe code.
        let std_socket: std::net::UdpSocket = socket.into();
        let socket = tokio::net::UdpSocket::from_std(std_socket).map_err(IcmpError::Setup)?;
        let shared = Arc::new(Shared {
            socket,
            kind,
            ident: u16::from_be_bytes(random::<2>()),
            cookie: random::<8>(),
            next_seq: Mutex::new(u16::from_be_bytes(random::<2>())),
            pending: Mutex::new(HashMap::new()),
            late_or_duplicate: AtomicU64::new(0),
        });
        let receiver = tokio::spawn(receive_loop(shared.clone()));
        tracing::info!(socket = kind.as_str(), "ICMP engine ready");
        Ok(IcmpEngine { shared, receiver })
    }

    /// The kind of socket in use.
    pub fn kind(&self) -> SocketKind {
        self.shared.kind
    }

    /// Replies that arrived for no outstanding request (duplicates, or after the timeout).
    pub fn late_or_duplicate(&self) -> u64 {
        self.shared.late_or_duplicate.load(Ordering::Relaxed)
    }

    /// Sends `count` echo requests to `dest`, `spacing` apart, and waits up to
    /// `timeout` for each reply.
    pub async fn round(
        &self,
        dest: IpAddr,
        count: u32,
        spacing: Duration,
        timeout: Duration,
    ) -> Result<Round, IcmpError> {
        let IpAddr::V4(dest4) = dest else { return Err(IcmpError::Ipv6(dest)) };
        let start = Instant::now();
        let mut waits = Vec::with_capacity(count as usize);
        let mut round = Round { dest, rtts: Vec::with_capacity(count as usize), send_errors: 0, first_error: None };
        for i in 0..count {
            tokio::time::sleep_until(start + spacing * i).await;
            let (seq, rx) = self.shared.register(dest4);
            let sent_at = Instant::now();
            match self.shared.send(dest4, seq).await {
                Ok(()) => waits.push(Some((sent_at, seq, rx))),
                Err(e) => {
                    self.shared.unregister(seq);
                    round.send_errors += 1;
                    round.first_error.get_or_insert_with(|| e.to_string());
                    waits.push(None);
                }
            }
        }
        for w in waits {
            let Some((sent_at, seq, rx)) = w else {
                round.rtts.push(None);
                continue;
            };
            match tokio::time::timeout_at(sent_at + timeout, rx).await {
                Ok(Ok(at)) => round.rtts.push(Some(at.saturating_duration_since(sent_at))),
                _ => {
                    self.shared.unregister(seq);
                    round.rtts.push(None);
                }
            }
        }
        Ok(round)
    }
}

impl Shared {
    fn register(&self, dest: Ipv4Addr) -> (u16, oneshot::Receiver<Instant>) {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        // Skip sequence numbers still outstanding (only possible past 65,536 in flight).
        let mut seq = *next;
        for _ in 0..=u16::MAX {
            if !pending.contains_key(&seq) {
                break;
            }
            seq = seq.wrapping_add(1);
        }
        *next = seq.wrapping_add(1);
        pending.insert(seq, Pending { dest, reply: tx });
        (seq, rx)
    }

    fn unregister(&self, seq: u16) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
    }

    async fn send(&self, dest: Ipv4Addr, seq: u16) -> Result<(), IcmpError> {
        let mut buf = [0u8; HEADER_LEN + PAYLOAD_LEN];
        encode_request(&mut buf, self.ident, seq, &self.cookie);
        self.socket
            .send_to(&buf, SocketAddr::new(IpAddr::V4(dest), 0))
            .await
            .map(|_| ())
            .map_err(|source| IcmpError::Send { dest: IpAddr::V4(dest), source })
    }

    fn on_packet(&self, data: &[u8], from: IpAddr, at: Instant) {
        let icmp_bytes = match self.kind {
            // Raw IPv4 sockets deliver the IP header too.
            SocketKind::Raw => match Ipv4Packet::new(data) {
                Some(ip) => {
                    let hl = ip.get_header_length() as usize * 4;
                    if data.len() < hl {
                        return;
                    }
                    &data[hl..]
                }
                None => return,
            },
            SocketKind::Unprivileged => data,
        };
        let Some(reply) = parse_reply(icmp_bytes, &self.cookie) else { return };
        // The kernel rewrites the identifier of unprivileged sockets and
        // already filters replies to this socket.
        if self.kind == SocketKind::Raw && reply.ident != self.ident {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get(&reply.seq) {
            Some(p) if IpAddr::V4(p.dest) == from => {
                if let Some(p) = pending.remove(&reply.seq) {
                    let _ = p.reply.send(at);
                }
            }
            _ => {
                self.late_or_duplicate.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Writes an echo request with our cookie in the payload.
fn encode_request(buf: &mut [u8; HEADER_LEN + PAYLOAD_LEN], ident: u16, seq: u16, cookie: &[u8; 8]) {
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[..8].copy_from_slice(cookie);
    if let Some(mut p) = MutableEchoRequestPacket::new(&mut buf[..]) {
        p.set_icmp_type(IcmpTypes::EchoRequest);
        p.set_identifier(ident);
        p.set_sequence_number(seq);
        p.set_payload(&payload);
    }
    if let Some(packet) = IcmpPacket::new(&buf[..]) {
        let sum = icmp::checksum(&packet);
        buf[2..4].copy_from_slice(&sum.to_be_bytes());
    }
}

#[derive(Debug, PartialEq)]
struct Reply {
    ident: u16,
    seq: u16,
}

/// Parses an ICMP echo reply carrying our cookie; anything else is `None`.
fn parse_reply(data: &[u8], cookie: &[u8; 8]) -> Option<Reply> {
    let icmp = IcmpPacket::new(data)?;
    if icmp.get_icmp_type() != IcmpTypes::EchoReply {
        return None;
    }
    let echo = EchoReplyPacket::new(data)?;
    if echo.payload().get(..8)? != cookie {
        return None;
    }
    Some(Reply { ident: echo.get_identifier(), seq: echo.get_sequence_number() })
}

async fn receive_loop(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 2048];
    loop {
        match shared.socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let at = Instant::now();
                shared.on_packet(&buf[..n], from.ip(), at);
            }
            Err(e) => {
                tracing::warn!(error = %e, "ICMP receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    // Linear interpolation between closest ranks (numpy's default, R type 7).
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo].mul_f64(1.0 - frac) + sorted[hi].mul_f64(frac)
}

impl Round {
    /// Requests sent (including ones the kernel refused).
    pub fn sent(&self) -> u32 {
        self.rtts.len() as u32
    }

    /// Statistics of the round; `None` when no reply came back.
    pub fn stats(&self) -> Option<Stats> {
        let received: Vec<Duration> = self.rtts.iter().flatten().copied().collect();
        if received.is_empty() {
            return None;
        }
        let mut sorted = received.clone();
        sorted.sort();
        let n = received.len() as f64;
        let mean_s = received.iter().map(Duration::as_secs_f64).sum::<f64>() / n;
        let var = received.iter().map(|d| (d.as_secs_f64() - mean_s).powi(2)).sum::<f64>() / n;
        let jitter = if received.len() < 2 {
            0.0
        } else {
            received.windows(2).map(|w| (w[1].as_secs_f64() - w[0].as_secs_f64()).abs()).sum::<f64>() / (n - 1.0)
        };
        let sent = self.sent();
        Some(Stats {
            sent,
            received: received.len() as u32,
            loss_ratio: 1.0 - received.len() as f64 / sent as f64,
            min: sorted[0],
            median: quantile(&sorted, 0.5),
            p90: quantile(&sorted, 0.9),
            max: sorted[sorted.len() - 1],
            mean: Duration::from_secs_f64(mean_s),
            stddev: Duration::from_secs_f64(var.sqrt()),
            jitter: Duration::from_secs_f64(jitter),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    #[test]
    fn stats_of_a_round() {
        let r = Round {
            dest: IpAddr::V4(Ipv4Addr::LOCALHOST),
            rtts: vec![ms(10), None, ms(30), ms(20), ms(40)],
            send_errors: 0,
            first_error: None,
        };
        let s = r.stats().unwrap();
        assert_eq!((s.sent, s.received), (5, 4));
        assert!((s.loss_ratio - 0.2).abs() < 1e-9);
        assert_eq!(s.min, Duration::from_millis(10));
        assert_eq!(s.max, Duration::from_millis(40));
        assert_eq!(s.median, Duration::from_millis(25));
        assert_eq!(s.mean, Duration::from_millis(25));
        // |30-10| + |20-30| + |40-20| = 50 over 3 differences.
        assert!((s.jitter.as_secs_f64() - 0.050 / 3.0).abs() < 1e-9);
        assert!((s.stddev.as_secs_f64() - 0.0111803).abs() < 1e-6);
        let lost = Round { rtts: vec![None, None], ..r };
        assert_eq!(lost.stats(), None);
    }

    #[test]
    fn request_roundtrips_through_reply_parser() {
        let cookie = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut buf = [0u8; HEADER_LEN + PAYLOAD_LEN];
        encode_request(&mut buf, 0xbeef, 42, &cookie);
        let req = IcmpPacket::new(&buf).unwrap();
        assert_eq!(req.get_icmp_type(), IcmpTypes::EchoRequest);
        assert_eq!(icmp::checksum(&req), req.get_checksum());
        // Turn it into a reply the way a peer would (type 0, same rest).
        buf[0] = 0;
        assert_eq!(parse_reply(&buf, &cookie), Some(Reply { ident: 0xbeef, seq: 42 }));
        assert_eq!(parse_reply(&buf, &[0; 8]), None, "foreign cookie must not match");
        assert_eq!(parse_reply(&buf[..4], &cookie), None);
    }

    /// Pings 127.0.0.1 for real when this process may open an ICMP socket.
    #[tokio::test]
    async fn pings_loopback() {
        let engine = match IcmpEngine::open() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("SKIPPED pings_loopback: {e}");
                return;
            }
        };
        let r = engine
            .round(IpAddr::V4(Ipv4Addr::LOCALHOST), 5, Duration::from_millis(10), Duration::from_secs(1))
            .await
            .unwrap();
        let s = r.stats().expect("loopback answers");
        assert_eq!((s.sent, s.received), (5, 5));
        assert!(s.max < Duration::from_millis(100));
    }
}
