//! ICMP echo: one engine per agent serves every target through one socket
//! per address family and one receiver task each, matching replies by
//! sequence number, source address, identifier (raw sockets) and a
//! per-engine cookie in the payload, so a reply is never credited to another
//! probe (or to another ping on the host).
//!
//! Sockets are raw (`CAP_NET_RAW`) when allowed, else Linux unprivileged ICMP
//! sockets (`net.ipv4.ping_group_range`). Packets are built and parsed with
//! pnet; the sockets are driven by tokio. Receive times come from the kernel
//! (`SO_TIMESTAMPNS`), so the agent's own scheduling delay is not counted as
//! network latency.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use nix::sys::time::TimeSpec;
use pnet::packet::icmp::echo_reply::EchoReplyPacket;
use pnet::packet::icmp::echo_request::MutableEchoRequestPacket;
use pnet::packet::icmp::{self, IcmpPacket, IcmpTypes};
use pnet::packet::icmpv6::{self, Icmpv6Packet, Icmpv6Types};
use pnet::packet::ipv4::Ipv4Packet;
use pnet::packet::Packet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod probe;
pub(super) use probe::{icmp_round, IcmpRound, RttEstimate};

/// The ICMP engine, or why there is none (reported by every ICMP probe).
#[derive(Clone)]
pub enum Icmp {
    Ready(Arc<IcmpEngine>),
    Unavailable(Arc<str>),
}

impl Icmp {
    /// Opens the engine, keeping the error for the probes to report.
    pub fn open() -> Icmp {
        match IcmpEngine::open() {
            Ok(e) => Icmp::Ready(Arc::new(e)),
            Err(e) => Icmp::Unavailable(e.to_string().into()),
        }
    }
}

const HEADER_LEN: usize = 8;
const PAYLOAD_LEN: usize = 16;

/// Which kind of socket the engine got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_RAW`: needs `CAP_NET_RAW`; sees every ICMP packet of the host.
    Raw,
    /// `SOCK_DGRAM` with `IPPROTO_ICMP(V6)`: unprivileged; the kernel owns the identifier.
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
    #[error("no ICMPv6 socket on this host ({0}); IPv6 targets cannot be pinged")]
    NoIpv6(String),
}

/// What the receiver learnt about a reply.
#[derive(Debug, Clone, Copy)]
struct Reply {
    /// Monotonic time the receiver saw it (fallback).
    at: Instant,
    /// Kernel receive time (wall clock), when the kernel gave one.
    kernel: Option<SystemTime>,
}

/// What the receiver writes for an open round: one entry per request, plus
/// the replies that matched no waiting request.
#[derive(Debug)]
struct RoundState {
    replies: Mutex<Vec<Option<Reply>>>,
    /// Send time of each request, for the watch.
    sent: Mutex<Vec<Option<Instant>>>,
    /// Woken on every reply, send and the end of sending.
    arrived: Notify,
    duplicates: AtomicU32,
    late: AtomicU32,
    /// Every request is out and answered or timed out.
    finished: std::sync::atomic::AtomicBool,
}

impl RoundState {
    fn new(count: usize) -> Self {
        RoundState {
            replies: Mutex::new(vec![None; count]),
            sent: Mutex::new(vec![None; count]),
            arrived: Notify::new(),
            duplicates: AtomicU32::new(0),
            late: AtomicU32::new(0),
            finished: Default::default(),
        }
    }

    fn answered(&self, i: usize) -> bool {
        self.replies.lock().unwrap_or_else(|p| p.into_inner()).get(i).is_some_and(Option::is_some)
    }

    fn any_answered(&self) -> bool {
        self.replies.lock().unwrap_or_else(|p| p.into_inner()).iter().any(Option::is_some)
    }

    /// The newest request sent: its index and send time.
    fn newest_sent(&self) -> Option<(usize, Instant)> {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.iter().enumerate().rev().find_map(|(i, t)| t.map(|t| (i, t)))
    }
}

/// Fast failure detection inside a round: a request not answered within
/// `rto` (a retransmission timeout from the target's recent RTTs) is
/// checked at once with `confirm` more requests; when none of those is
/// answered within `rto` either, the target is reported silent through
/// `silent` without waiting for the round to end. A target up with one
/// request per second is then reported down about a second after it stops
/// answering, and a single lost packet never is.
pub struct Watch {
    pub rto: Duration,
    pub confirm: u32,
    /// Gets the index of the request after which the target fell silent.
    pub silent: tokio::sync::oneshot::Sender<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Waiting,
    Answered,
    TimedOut,
}

/// One request of an open round; kept until the round ends so that
/// duplicates and late replies are counted for their round.
struct Slot {
    dest: IpAddr,
    state: SlotState,
    round: Arc<RoundState>,
    index: usize,
}

struct Family {
    socket: tokio::net::UdpSocket,
    kind: SocketKind,
    v6: bool,
}

struct Shared {
    ident: u16,
    cookie: [u8; 8],
    next_seq: Mutex<u16>,
    slots: Mutex<HashMap<u16, Slot>>,
    /// Replies with our cookie that match no open round at all.
    stray: AtomicU64,
}

/// The agent's ICMP engine. Dropping it stops the receivers.
pub struct IcmpEngine {
    shared: Arc<Shared>,
    v4: Arc<Family>,
    v6: Result<Arc<Family>, String>,
    receivers: Vec<JoinHandle<()>>,
}

impl Drop for IcmpEngine {
    fn drop(&mut self) {
        for r in &self.receivers {
            r.abort();
        }
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
    /// Second and further replies to one request.
    pub duplicates: u32,
    /// Replies that came after their request's timeout, while the round was open.
    pub late: u32,
    /// RTTs measured with kernel receive timestamps (the others with the receiver's clock).
    pub kernel_timestamps: u32,
    /// Set when the watch found the target silent after this request.
    pub silent_from: Option<usize>,
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

fn open_family(v6: bool) -> Result<Family, IcmpError> {
    let (domain, proto) = if v6 { (Domain::IPV6, Protocol::ICMPV6) } else { (Domain::IPV4, Protocol::ICMPV4) };
    let (socket, kind) = match Socket::new(domain, Type::RAW, Some(proto)) {
        Ok(s) => (s, SocketKind::Raw),
        Err(raw) => match Socket::new(domain, Type::DGRAM, Some(proto)) {
            Ok(s) => (s, SocketKind::Unprivileged),
            Err(dgram) => return Err(IcmpError::NoSocket { raw, dgram, gid: current_gid() }),
        },
    };
    socket.set_nonblocking(true).map_err(IcmpError::Setup)?;
    // A burst of replies from 1,000 targets must not overflow the queue.
    let _ = socket.set_recv_buffer_size(1 << 20);
    // Without kernel timestamps the receiver's own clock is used instead.
    let _ = setsockopt(&socket, sockopt::ReceiveTimestampns, &true);
    // An ICMP socket is a datagram socket to tokio: the same readiness and
    // sendto/recvmsg calls, and no unsafe code here.
    let std_socket: std::net::UdpSocket = socket.into();
    let socket = tokio::net::UdpSocket::from_std(std_socket).map_err(IcmpError::Setup)?;
    Ok(Family { socket, kind, v6 })
}

impl IcmpEngine {
    /// Opens the sockets (raw first, unprivileged second) and starts the
    /// receivers. IPv4 is required; IPv6 is optional. Must run inside tokio.
    pub fn open() -> Result<Self, IcmpError> {
        let v4 = Arc::new(open_family(false)?);
        let v6 = open_family(true).map(Arc::new).map_err(|e| e.to_string());
        let shared = Arc::new(Shared {
            ident: u16::from_be_bytes(random::<2>()),
            cookie: random::<8>(),
            next_seq: Mutex::new(u16::from_be_bytes(random::<2>())),
            slots: Mutex::new(HashMap::new()),
            stray: AtomicU64::new(0),
        });
        let mut receivers = vec![tokio::spawn(receive_loop(shared.clone(), v4.clone()))];
        if let Ok(f) = &v6 {
            receivers.push(tokio::spawn(receive_loop(shared.clone(), f.clone())));
        }
        tracing::info!(
            socket = v4.kind.as_str(),
            ipv6 = v6.as_ref().map(|f| f.kind.as_str()).unwrap_or("unavailable"),
            "ICMP engine ready"
        );
        Ok(IcmpEngine { shared, v4, v6, receivers })
    }

    /// The kind of socket in use (IPv4).
    pub fn kind(&self) -> SocketKind {
        self.v4.kind
    }

    /// Replies with our cookie that matched no open round (after their round ended).
    pub fn stray_replies(&self) -> u64 {
        self.shared.stray.load(Ordering::Relaxed)
    }

    /// Sends `count` echo requests to `dest`, `spacing` apart, and waits up to
    /// `timeout` for each reply; with a `watch`, reports a silent target early.
    pub async fn round(
        &self,
        dest: IpAddr,
        count: u32,
        spacing: Duration,
        timeout: Duration,
        watch: Option<Watch>,
    ) -> Result<Round, IcmpError> {
        let family = match dest {
            IpAddr::V4(_) => self.v4.clone(),
            IpAddr::V6(_) => self.v6.clone().map_err(IcmpError::NoIpv6)?,
        };
        let state = Arc::new(RoundState::new(count as usize));
        let main = self.run_round(&family, dest, count, spacing, timeout, &state);
        let (mut round, silent_from) = match watch {
            None => (main.await, None),
            Some(w) => {
                let watcher = self.watch(&family, dest, &state, w);
                let (round, silent) = tokio::join!(main, watcher);
                (round, silent)
            }
        };
        round.silent_from = silent_from;
        Ok(round)
    }

    async fn run_round(
        &self,
        family: &Family,
        dest: IpAddr,
        count: u32,
        spacing: Duration,
        timeout: Duration,
        state: &Arc<RoundState>,
    ) -> Round {
        let start = Instant::now();
        let mut sent = Vec::with_capacity(count as usize);
        let mut round = Round {
            dest,
            rtts: Vec::with_capacity(count as usize),
            send_errors: 0,
            first_error: None,
            duplicates: 0,
            late: 0,
            kernel_timestamps: 0,
            silent_from: None,
        };
        for i in 0..count as usize {
            tokio::time::sleep_until(start + spacing * i as u32).await;
            let seq = self.shared.register(dest, state.clone(), i);
            let (sent_at, sent_wall) = (Instant::now(), SystemTime::now());
            match self.shared.send(family, dest, seq).await {
                Ok(()) => {
                    sent.push((seq, Some((sent_at, sent_wall))));
                    state.sent.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(sent_at);
                    state.arrived.notify_waiters();
                }
                Err(e) => {
                    round.send_errors += 1;
                    round.first_error.get_or_insert_with(|| e.to_string());
                    sent.push((seq, None));
                }
            }
        }
        for (i, (seq, times)) in sent.iter().enumerate() {
            let Some((sent_at, sent_wall)) = *times else {
                round.rtts.push(None);
                continue;
            };
            let deadline = sent_at + timeout;
            let reply = loop {
                // Registered before checking, so a reply landing in between still wakes us.
                let arrived = state.arrived.notified();
                if let Some(r) = state.replies.lock().unwrap_or_else(|p| p.into_inner())[i] {
                    break Some(r);
                }
                if Instant::now() >= deadline {
                    break None;
                }
                tokio::select! {
                    _ = arrived => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            };
            match reply {
                Some(reply) => {
                    // Kernel time minus send time; the receiver's monotonic
                    // clock when there is no kernel time or the wall clock stepped.
                    let kernel = reply.kernel.and_then(|k| k.duration_since(sent_wall).ok()).filter(|d| *d <= timeout);
                    if kernel.is_some() {
                        round.kernel_timestamps += 1;
                    }
                    round.rtts.push(Some(kernel.unwrap_or_else(|| reply.at.saturating_duration_since(sent_at))));
                }
                None => {
                    self.shared.expire(*seq);
                    round.rtts.push(None);
                }
            }
        }
        let seqs: Vec<u16> = sent.iter().map(|(s, _)| *s).collect();
        self.shared.release(&seqs);
        round.duplicates = state.duplicates.load(Ordering::Relaxed);
        round.late = state.late.load(Ordering::Relaxed);
        state.finished.store(true, Ordering::Release);
        state.arrived.notify_waiters();
        round
    }

    /// Watches the newest request of the round; see [`Watch`]. Returns the
    /// index after which the target fell silent, if it did.
    async fn watch(&self, family: &Family, dest: IpAddr, state: &RoundState, w: Watch) -> Option<usize> {
        let mut cleared: Option<usize> = None;
        loop {
            let progress = state.arrived.notified();
            if state.finished.load(Ordering::Acquire) {
                return None;
            }
            let deadline = match state.newest_sent() {
                Some((i, _)) if state.answered(i) || cleared == Some(i) => None,
                Some((i, at)) => {
                    let due = at + w.rto;
                    if Instant::now() >= due {
                        // Overdue: ask again at once before calling it silent.
                        if self.confirm(family, dest, w.confirm, w.rto).await || state.answered(i) {
                            cleared = Some(i);
                            continue;
                        }
                        let _ = w.silent.send(i);
                        return Some(i);
                    }
                    Some(due)
                }
                None => None,
            };
            match deadline {
                Some(d) => tokio::select! {
                    _ = progress => {}
                    _ = tokio::time::sleep_until(d) => {}
                },
                None => progress.await,
            }
        }
    }

    /// Sends `n` requests back to back; true if any is answered within `wait`.
    async fn confirm(&self, family: &Family, dest: IpAddr, n: u32, wait: Duration) -> bool {
        let state = Arc::new(RoundState::new(n as usize));
        let mut seqs = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            let seq = self.shared.register(dest, state.clone(), i);
            seqs.push(seq);
            let _ = self.shared.send(family, dest, seq).await;
        }
        let deadline = Instant::now() + wait;
        let answered = loop {
            let arrived = state.arrived.notified();
            if state.any_answered() {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::select! {
                _ = arrived => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        };
        self.shared.release(&seqs);
        answered
    }
}

impl Shared {
    fn register(&self, dest: IpAddr, round: Arc<RoundState>, index: usize) -> u16 {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        // Skip sequence numbers still held by open rounds.
        let mut seq = *next;
        for _ in 0..=u16::MAX {
            if !slots.contains_key(&seq) {
                break;
            }
            seq = seq.wrapping_add(1);
        }
        *next = seq.wrapping_add(1);
        slots.insert(seq, Slot { dest, state: SlotState::Waiting, round, index });
        seq
    }

    fn expire(&self, seq: u16) {
        if let Some(slot) = self.slots.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&seq) {
            if slot.state == SlotState::Waiting {
                slot.state = SlotState::TimedOut;
            }
        }
    }

    fn release(&self, seqs: &[u16]) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for s in seqs {
            slots.remove(s);
        }
    }

    async fn send(&self, family: &Family, dest: IpAddr, seq: u16) -> Result<(), IcmpError> {
        let mut buf = [0u8; HEADER_LEN + PAYLOAD_LEN];
        encode_request(&mut buf, family.v6, self.ident, seq, &self.cookie);
        family
            .socket
            .send_to(&buf, SocketAddr::new(dest, 0))
            .await
            .map(|_| ())
            .map_err(|source| IcmpError::Send { dest, source })
    }

    fn on_packet(&self, family: &Family, data: &[u8], from: IpAddr, reply: Reply) {
        let icmp_bytes = match (family.kind, family.v6) {
            // Raw IPv4 sockets deliver the IP header too; IPv6 sockets never do.
            (SocketKind::Raw, false) => match Ipv4Packet::new(data) {
                Some(ip) => match data.get(ip.get_header_length() as usize * 4..) {
                    Some(rest) => rest,
                    None => return,
                },
                None => return,
            },
            _ => data,
        };
        let Some(echo) = parse_reply(icmp_bytes, family.v6, &self.cookie) else { return };
        // The kernel rewrites the identifier of unprivileged sockets and
        // already filters replies to this socket.
        if family.kind == SocketKind::Raw && echo.ident != self.ident {
            return;
        }
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get_mut(&echo.seq) {
            Some(slot) if slot.dest == from => match slot.state {
                SlotState::Waiting => {
                    slot.state = SlotState::Answered;
                    if let Some(r) = slot.round.replies.lock().unwrap_or_else(|p| p.into_inner()).get_mut(slot.index) {
                        *r = Some(reply);
                    }
                    slot.round.arrived.notify_waiters();
                }
                SlotState::Answered => {
                    slot.round.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                SlotState::TimedOut => {
                    slot.round.late.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ => {
                self.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Writes an echo request with our cookie in the payload. The kernel fills
/// the ICMPv6 checksum (it covers a pseudo-header we do not build).
fn encode_request(buf: &mut [u8; HEADER_LEN + PAYLOAD_LEN], v6: bool, ident: u16, seq: u16, cookie: &[u8; 8]) {
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

fn source(addr: Option<SockaddrStorage>) -> Option<IpAddr> {
    let a = addr?;
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

async fn receive_loop(shared: Arc<Shared>, family: Arc<Family>) {
    let mut buf = vec![0u8; 2048];
    let mut cmsg = nix::cmsg_space!(TimeSpec);
    let fd = family.socket.as_raw_fd();
    loop {
        if let Err(e) = family.socket.readable().await {
            tracing::warn!(error = %e, "ICMP socket not readable");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let got = family.socket.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)?;
            let kernel = msg.cmsgs().ok().and_then(|mut it| {
                it.find_map(|c| match c {
                    ControlMessageOwned::ScmTimestampns(ts) => {
                        Some(UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
                    }
                    _ => None,
                })
            });
            Ok((msg.bytes, source(msg.address), kernel))
        });
        match got {
            Ok((n, Some(from), kernel)) => {
                let reply = Reply { at: Instant::now(), kernel };
                shared.on_packet(&family, &buf[..n], from, reply);
            }
            Ok((_, None, _)) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
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
    /// True unless the watch found the target silent and nothing sent after that was answered.
    pub fn reachable_at_end(&self) -> bool {
        match self.silent_from {
            None => self.rtts.iter().any(Option::is_some),
            Some(i) => self.rtts.iter().skip(i + 1).any(Option::is_some),
        }
    }

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
    use std::net::{Ipv4Addr, Ipv6Addr};

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
            duplicates: 0,
            late: 0,
            kernel_timestamps: 0,
            silent_from: None,
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
        encode_request(&mut buf, false, 0xbeef, 42, &cookie);
        let req = IcmpPacket::new(&buf).unwrap();
        assert_eq!(req.get_icmp_type(), IcmpTypes::EchoRequest);
        assert_eq!(icmp::checksum(&req), req.get_checksum());
        // Turn it into a reply the way a peer would (type 0, same rest).
        buf[0] = 0;
        assert_eq!(parse_reply(&buf, false, &cookie), Some(Echo { ident: 0xbeef, seq: 42 }));
        assert_eq!(parse_reply(&buf, false, &[0; 8]), None, "foreign cookie must not match");
        assert_eq!(parse_reply(&buf[..4], false, &cookie), None);
        // ICMPv6: type 128 request, 129 reply.
        encode_request(&mut buf, true, 0xbeef, 43, &cookie);
        assert_eq!(buf[0], 128);
        buf[0] = 129;
        assert_eq!(parse_reply(&buf, true, &cookie), Some(Echo { ident: 0xbeef, seq: 43 }));
        assert_eq!(parse_reply(&buf, false, &cookie), None, "a v6 reply is not a v4 reply");
    }

    fn reply_bytes(ident: u16, seq: u16, cookie: &[u8; 8]) -> Vec<u8> {
        let mut buf = [0u8; HEADER_LEN + PAYLOAD_LEN];
        encode_request(&mut buf, false, ident, seq, cookie);
        buf[0] = 0; // echo reply
        buf.to_vec()
    }

    /// Duplicates and late replies are counted for their round, never credited;
    /// replies from another source or for unknown sequences match nothing.
    #[tokio::test]
    async fn replies_are_matched_counted_and_never_misattributed() {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let family = Family { socket: udp, kind: SocketKind::Unprivileged, v6: false };
        let shared = Shared {
            ident: 7,
            cookie: [9; 8],
            next_seq: Mutex::new(100),
            slots: Mutex::new(HashMap::new()),
            stray: AtomicU64::new(0),
        };
        let state = Arc::new(RoundState::new(2));
        let gw = IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1));
        let other = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 1));
        let a = shared.register(gw, state.clone(), 0);
        let b = shared.register(gw, state.clone(), 1);
        let reply = Reply { at: Instant::now(), kernel: None };
        // From the wrong source: not ours to credit.
        shared.on_packet(&family, &reply_bytes(7, a, &[9; 8]), other, reply);
        assert!(state.replies.lock().unwrap()[0].is_none());
        // A foreign cookie (another ping on the host): ignored entirely.
        shared.on_packet(&family, &reply_bytes(7, a, &[1; 8]), gw, reply);
        // The real reply, then a duplicate.
        shared.on_packet(&family, &reply_bytes(7, a, &[9; 8]), gw, reply);
        shared.on_packet(&family, &reply_bytes(7, a, &[9; 8]), gw, reply);
        assert!(state.replies.lock().unwrap()[0].is_some());
        // b times out, then its reply comes: late, not received.
        shared.expire(b);
        shared.on_packet(&family, &reply_bytes(7, b, &[9; 8]), gw, reply);
        assert!(state.replies.lock().unwrap()[1].is_none());
        assert_eq!(state.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(state.late.load(Ordering::Relaxed), 1);
        // After the round, its sequences are free again and stray replies are counted as such.
        shared.release(&[a, b]);
        shared.on_packet(&family, &reply_bytes(7, a, &[9; 8]), gw, reply);
        assert_eq!(shared.stray.load(Ordering::Relaxed), 2, "wrong source + after release");
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
            .round(IpAddr::V4(Ipv4Addr::LOCALHOST), 5, Duration::from_millis(10), Duration::from_secs(1), None)
            .await
            .unwrap();
        let s = r.stats().expect("loopback answers");
        assert_eq!((s.sent, s.received), (5, 5));
        assert!(s.max < Duration::from_millis(100));
        assert_eq!(r.kernel_timestamps, 5, "kernel receive timestamps are used");
        assert_eq!((r.duplicates, r.late), (0, 0));
    }

    /// Pings ::1 when the host has IPv6 and an ICMPv6 socket may be opened.
    #[tokio::test]
    async fn pings_ipv6_loopback() {
        let engine = match IcmpEngine::open() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("SKIPPED pings_ipv6_loopback: {e}");
                return;
            }
        };
        if let Err(e) = &engine.v6 {
            eprintln!("SKIPPED pings_ipv6_loopback: {e}");
            return;
        }
        match engine
            .round(IpAddr::V6(Ipv6Addr::LOCALHOST), 3, Duration::from_millis(10), Duration::from_secs(1), None)
            .await
        {
            Ok(r) => {
                let s = r.stats();
                if s.is_none()
                    && std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6").is_ok_and(|v| v.trim() == "1")
                {
                    eprintln!("SKIPPED pings_ipv6_loopback: IPv6 is disabled on lo");
                    return;
                }
                assert_eq!(s.map(|s| s.received), Some(3), "{r:?}");
            }
            Err(IcmpError::Send { source, .. })
                if source.raw_os_error() == Some(101) || source.raw_os_error() == Some(99) =>
            {
                eprintln!("SKIPPED pings_ipv6_loopback: no IPv6 route ({source})");
            }
            Err(e) => panic!("{e}"),
        }
    }
}
