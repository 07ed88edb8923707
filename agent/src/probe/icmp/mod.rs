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
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::Instant;

mod matching;
mod packet;
mod probe;
mod socket;
mod stats;
use matching::{Reply, RoundState, Shared};
pub use packet::{parse_reply, Echo};
pub(super) use probe::{icmp_round, IcmpRound, RttEstimate};
pub use socket::{IcmpSocket, KernelSocket, Received};
pub use stats::{Round, Stats};

/// The ICMP engine, or why there is none (reported by every ICMP probe).
#[derive(Clone)]
pub enum Icmp {
    Ready(Arc<IcmpEngine>),
    Unavailable(Arc<str>),
}

impl Icmp {
    /// Opens the engine, keeping the error for the probes to report;
    /// replies that match no request are counted in `stray`.
    pub fn open(stray: prometheus::IntCounter) -> Icmp {
        match IcmpEngine::open(stray) {
            Ok(e) => Icmp::Ready(Arc::new(e)),
            Err(e) => Icmp::Unavailable(e.to_string().into()),
        }
    }
}

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

pub(super) struct Family<S> {
    pub(super) socket: S,
    pub(super) kind: SocketKind,
    pub(super) v6: bool,
}

/// The agent's ICMP engine, over the kernel's sockets unless a test gives
/// it others. Dropping it stops the receivers.
pub struct IcmpEngine<S: IcmpSocket = KernelSocket> {
    shared: Arc<Shared>,
    v4: Arc<Family<S>>,
    v6: Result<Arc<Family<S>>, String>,
    receivers: Vec<JoinHandle<()>>,
}

impl<S: IcmpSocket> Drop for IcmpEngine<S> {
    fn drop(&mut self) {
        for r in &self.receivers {
            r.abort();
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    b
}

impl IcmpEngine<KernelSocket> {
    /// Opens the sockets (raw first, unprivileged second) and starts the
    /// receivers. IPv4 is required; IPv6 is optional. Must run inside tokio.
    pub fn open(stray: prometheus::IntCounter) -> Result<Self, IcmpError> {
        let family = |v6| KernelSocket::open(v6).map(|(socket, kind)| Family { socket, kind, v6 });
        let engine = IcmpEngine::start(family(false)?, family(true).map_err(|e| e.to_string()), stray);
        tracing::info!(
            socket = engine.v4.kind.as_str(),
            ipv6 = engine.v6.as_ref().map(|f| f.kind.as_str()).unwrap_or("unavailable"),
            "ICMP engine ready"
        );
        Ok(engine)
    }
}

impl<S: IcmpSocket> IcmpEngine<S> {
    /// Starts the receivers of `v4` and, when there is one, `v6`.
    fn start(v4: Family<S>, v6: Result<Family<S>, String>, stray: prometheus::IntCounter) -> Self {
        let (v4, v6) = (Arc::new(v4), v6.map(Arc::new));
        let shared = Arc::new(Shared {
            ident: u16::from_be_bytes(random::<2>()),
            cookie: random::<8>(),
            next_seq: Mutex::new(u16::from_be_bytes(random::<2>())),
            slots: Mutex::new(HashMap::new()),
            stray,
        });
        let mut receivers = vec![tokio::spawn(receive_loop(shared.clone(), v4.clone()))];
        if let Ok(f) = &v6 {
            receivers.push(tokio::spawn(receive_loop(shared.clone(), f.clone())));
        }
        IcmpEngine { shared, v4, v6, receivers }
    }

    /// The kind of socket in use (IPv4).
    pub fn kind(&self) -> SocketKind {
        self.v4.kind
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
        family: &Family<S>,
        dest: IpAddr,
        count: u32,
        spacing: Duration,
        timeout: Duration,
        state: &Arc<RoundState>,
    ) -> Round {
        let start = Instant::now();
        let mut sent = Vec::with_capacity(count as usize);
        let mut round = Round::new(dest, count as usize);
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
    async fn watch(&self, family: &Family<S>, dest: IpAddr, state: &RoundState, w: Watch) -> Option<usize> {
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
    async fn confirm(&self, family: &Family<S>, dest: IpAddr, n: u32, wait: Duration) -> bool {
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

async fn receive_loop<S: IcmpSocket>(shared: Arc<Shared>, family: Arc<Family<S>>) {
    let mut buf = vec![0u8; 2048];
    loop {
        match family.socket.recv(&mut buf).await {
            Ok(Received { len, from: Some(from), kernel }) => {
                let reply = Reply { at: Instant::now(), kernel };
                shared.on_packet(&family, &buf[..len.min(buf.len())], from, reply);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ICMP receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet::{encode_request, HEADER_LEN, PAYLOAD_LEN};
    use pnet::packet::icmp::{self, IcmpPacket, IcmpTypes};
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::AtomicU32;

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    #[test]
    fn stats_of_a_round() {
        let r = Round {
            rtts: vec![ms(10), None, ms(30), ms(20), ms(40)],
            ..Round::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5)
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

    /// A scripted ICMP socket: answers the n-th echo request it is sent
    /// after `script[n]` (`None`: never; past the script: never), as an
    /// unprivileged socket would deliver the reply (no IP header), with no
    /// kernel timestamp, so RTTs come from tokio's (paused) clock.
    struct Scripted {
        script: Vec<Option<Duration>>,
        sent: AtomicU32,
        inbox_tx: tokio::sync::mpsc::UnboundedSender<(Vec<u8>, IpAddr)>,
        inbox: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, IpAddr)>>,
    }

    impl Scripted {
        fn new(script: Vec<Option<Duration>>) -> Scripted {
            let (inbox_tx, rx) = tokio::sync::mpsc::unbounded_channel();
            Scripted { script, sent: AtomicU32::new(0), inbox_tx, inbox: tokio::sync::Mutex::new(rx) }
        }
    }

    impl IcmpSocket for Scripted {
        async fn send_to(&self, packet: &[u8], dest: IpAddr) -> std::io::Result<()> {
            let n = self.sent.fetch_add(1, Ordering::Relaxed) as usize;
            if let Some(Some(delay)) = self.script.get(n) {
                let mut reply = packet.to_vec();
                reply[0] = IcmpTypes::EchoReply.0;
                let (tx, delay) = (self.inbox_tx.clone(), *delay);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send((reply, dest));
                });
            }
            Ok(())
        }

        async fn recv(&self, buf: &mut [u8]) -> std::io::Result<Received> {
            match self.inbox.lock().await.recv().await {
                Some((bytes, from)) => {
                    let len = bytes.len().min(buf.len());
                    buf[..len].copy_from_slice(&bytes[..len]);
                    Ok(Received { len, from: Some(from), kernel: None })
                }
                None => std::future::pending().await,
            }
        }
    }

    fn engine(script: Vec<Option<Duration>>) -> IcmpEngine<Scripted> {
        let v4 = Family { socket: Scripted::new(script), kind: SocketKind::Unprivileged, v6: false };
        IcmpEngine::start(v4, Err("no IPv6 in this test".into()), prometheus::IntCounter::new("stray", "test").unwrap())
    }

    const GW: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));

    /// RTTs are the scripted delays, to the millisecond, and a lost request is lost.
    #[tokio::test(start_paused = true)]
    async fn a_round_measures_each_reply_and_counts_the_lost() {
        let script = vec![ms(20), ms(35), None, ms(20), ms(900)];
        let e = engine(script);
        let r = e.round(GW, 5, Duration::from_millis(200), Duration::from_millis(500), None).await.unwrap();
        assert_eq!(r.rtts, vec![ms(20), ms(35), None, ms(20), None], "the 900 ms reply is past the timeout");
        let s = r.stats().unwrap();
        assert_eq!((s.sent, s.received), (5, 3));
        assert_eq!(s.median, Duration::from_millis(20));
        assert!((s.loss_ratio - 0.4).abs() < 1e-9);
        assert!(r.reachable_at_end() && r.silent_from.is_none());
    }

    /// A target that stops answering is reported silent one RTO after the
    /// overdue request plus one RTO of unanswered confirmations, long
    /// before the round ends.
    #[tokio::test(start_paused = true)]
    async fn the_watch_reports_a_silent_target_before_the_round_ends() {
        // Requests 0-2 answered in 20 ms, everything after that (the round's
        // and the confirmations) never.
        let e = engine(vec![ms(20), ms(20), ms(20)]);
        let rto = Duration::from_millis(250);
        let (silent, mut heard) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        let spacing = Duration::from_secs(1);
        let round = e.round(GW, 10, spacing, Duration::from_secs(1), Some(Watch { rto, confirm: 3, silent }));
        tokio::pin!(round);
        let index = tokio::select! {
            i = &mut heard => i.unwrap(),
            _ = &mut round => panic!("the round ended before the watch spoke"),
        };
        let after = Instant::now() - started;
        assert_eq!(index, 3, "silent from the first unanswered request");
        // Request 3 left at 3 s; overdue at 3.25 s; confirmations unanswered until 3.5 s.
        assert_eq!(after, spacing * 3 + rto * 2, "{after:?}");
        assert_eq!(e.v4.socket.sent.load(Ordering::Relaxed), 4 + 3, "four requests and three confirmations by then");
        let r = round.await.unwrap();
        assert_eq!(r.silent_from, Some(3));
        assert!(!r.reachable_at_end());
    }

    /// One lost request is no outage: the confirmations are answered, the
    /// watch stays quiet and the round ends as measured.
    #[tokio::test(start_paused = true)]
    async fn a_single_loss_is_confirmed_away() {
        // Request 2 lost; its three confirmations (sends 3-5) answered; then the rest.
        let mut script = vec![ms(20), ms(20), None, ms(20), ms(20), ms(20)];
        script.extend([ms(20); 3]);
        let e = engine(script);
        let (silent, mut heard) = tokio::sync::oneshot::channel();
        let w = Watch { rto: Duration::from_millis(250), confirm: 3, silent };
        let r = e.round(GW, 6, Duration::from_secs(1), Duration::from_secs(1), Some(w)).await.unwrap();
        assert!(heard.try_recv().is_err(), "no early report");
        assert_eq!(r.silent_from, None);
        assert_eq!(r.rtts.iter().filter(|x| x.is_none()).count(), 1, "{:?}", r.rtts);
        assert!(r.reachable_at_end());
    }

    /// Duplicates and late replies are counted for their round, never credited;
    /// replies from another source or for unknown sequences match nothing.
    #[tokio::test]
    async fn replies_are_matched_counted_and_never_misattributed() {
        let family = Family { socket: Scripted::new(Vec::new()), kind: SocketKind::Unprivileged, v6: false };
        let shared = Shared {
            ident: 7,
            cookie: [9; 8],
            next_seq: Mutex::new(100),
            slots: Mutex::new(HashMap::new()),
            stray: prometheus::IntCounter::new("stray", "test").unwrap(),
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
        assert_eq!(shared.stray.get(), 2, "wrong source + after release");
    }

    /// Says why a test could not run; under `CI` that fails it, since CI
    /// runs as root and must ping for real.
    fn skipped(test: &str, why: &dyn std::fmt::Display) {
        assert!(std::env::var_os("CI").is_none(), "{test} could not run under CI: {why}");
        eprintln!("SKIPPED {test}: {why}");
    }

    /// Pings 127.0.0.1 for real when this process may open an ICMP socket.
    #[tokio::test]
    async fn pings_loopback() {
        let engine = match IcmpEngine::open(prometheus::IntCounter::new("stray", "test").unwrap()) {
            Ok(e) => e,
            Err(e) => return skipped("pings_loopback", &e),
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
        let engine = match IcmpEngine::open(prometheus::IntCounter::new("stray", "test").unwrap()) {
            Ok(e) => e,
            Err(e) => return skipped("pings_ipv6_loopback", &e),
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
