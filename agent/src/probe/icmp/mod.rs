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
use probe::evidence_at;
pub(super) use probe::{icmp_round, Early, IcmpRound, RttEstimate};
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

/// Fast failure detection inside a round, tolerant of stalls.
///
/// A path that holds every frame for a while (bufferbloat, a 4G backup
/// link, a busy router) delivers the held replies late; a cut path never
/// does, and the two cannot be told apart until the hold ends. So the
/// target is called silent only when a request has gone unanswered for the
/// silence `floor` (the stall tolerance plus the link's peak round trip)
/// and nothing sent after it was answered either, late replies included.
/// Meanwhile the watch keeps evidence coming: once a reply is overdue
/// (`rto`, from the target's recent round trips) it sends confirmations at
/// growing intervals (rto, 2 rto, 4 rto after the request), so a single lost
/// packet is cleared within a round trip; and (with a `gap`) it sends a
/// keepalive whenever no request went out for `gap`, so a cut is seen within
/// `gap` of happening, not within the round's spacing. Worst case from a
/// cut to the report: `gap` (else the spacing) + `floor` (1.5 s + the peak
/// RTT with the default keepalives).
pub struct Watch {
    pub rto: Duration,
    pub floor: Duration,
    /// Unanswered requests (the suspect one and all sent after it) needed
    /// besides the floor: on a lossy link a run of losses is not a cut, so
    /// once a reply is overdue the watch sends one request every 100 ms
    /// until the run is too long to be chance (see
    /// `RttEstimate::evidence`), which fits in the floor unless the link
    /// has been very lossy; past the round's end if need be (at most
    /// 1.6 s), so a cut at a round's last request is decided in that round.
    pub evidence: u32,
    /// `None`: no keepalives (the round's own requests only).
    pub gap: Option<Duration>,
    /// Gets the index of the round's request from which the target fell
    /// silent (the number of requests when it was a keepalive after the last).
    pub silent: tokio::sync::oneshot::Sender<usize>,
}

/// Confirmations sent for one overdue request, at most.
const CONFIRMATIONS: u32 = 3;
/// How often the watch sends while it gathers a lossy link's evidence:
/// fast enough that a dozen requests fit in the silence floor.
const EVIDENCE_PACE: Duration = Duration::from_millis(100);
/// When the watch starts gathering that evidence after a request, at the latest.
const EVIDENCE_START: Duration = Duration::from_millis(250);
/// Requests the watch may add to one round (confirmations and keepalives).
const MAX_WATCH_REQUESTS: usize = 64;

/// What the watch did in a round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WatchReport {
    pub silent_from: Option<usize>,
    /// Echo requests sent to confirm an overdue reply.
    pub confirmations: u32,
    /// Echo requests sent because none had gone out for `gap`.
    pub keepalives: u32,
    /// Of the watch's requests, those answered.
    pub answered: u32,
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
        let (mut round, watched) = match watch {
            None => (main.await, WatchReport::default()),
            Some(w) => tokio::join!(main, self.watch(&family, dest, &state, w)),
        };
        // Released only now: replies the watch waited for past the round's
        // own timeouts still had their slots.
        self.shared.release(&round.seqs);
        round.silent_from = watched.silent_from;
        (round.confirmations, round.keepalives) = (watched.confirmations, watched.keepalives);
        round.watch_answered = watched.answered;
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
            *state.next_due.lock().unwrap_or_else(|p| p.into_inner()) = Some(start + spacing * i as u32);
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
        *state.next_due.lock().unwrap_or_else(|p| p.into_inner()) = None;
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
        round.seqs = sent.iter().map(|(s, _)| *s).collect();
        round.duplicates = state.duplicates.load(Ordering::Relaxed);
        round.late = state.late.load(Ordering::Relaxed);
        state.finished.store(true, Ordering::Release);
        state.arrived.notify_waiters();
        round
    }

    /// Watches the round and the requests it adds; see [`Watch`].
    async fn watch(&self, family: &Family<S>, dest: IpAddr, state: &RoundState, w: Watch) -> WatchReport {
        // Grown as the watch sends: most rounds add a few requests, many none.
        let extra = Arc::new(RoundState::new(0));
        let mut added = 0usize;
        let mut seqs = Vec::new();
        let mut report = WatchReport::default();
        // The suspect request's send time, and the confirmations sent for it.
        let mut confirming: Option<(Instant, u32)> = None;
        loop {
            let (main_progress, extra_progress) = (state.arrived.notified(), extra.arrived.notified());
            let finished = state.finished.load(Ordering::Acquire);
            let now = Instant::now();
            let (mut last_heard, mut newest) = (None::<Instant>, None::<Instant>);
            for s in [state, &*extra] {
                s.each_request(|_, at, heard| {
                    newest = newest.max(Some(at));
                    if heard {
                        last_heard = last_heard.max(Some(at));
                    }
                });
            }
            // The first request after the last one answered: silence runs from there.
            let mut suspect = None::<Instant>;
            for s in [state, &*extra] {
                s.each_request(|_, at, heard| {
                    if !heard && last_heard.is_none_or(|h| at > h) {
                        suspect = Some(suspect.map_or(at, |x| x.min(at)));
                    }
                });
            }
            let mut wake: Option<Instant> = None;
            let mut send = None;
            // Requests sent at or after the suspect one: all unanswered.
            let unanswered = |s: Instant| {
                let mut n = 0u32;
                for st in [state, &*extra] {
                    st.each_request(|_, at, _| n += u32::from(at >= s));
                }
                n
            };
            // This round's own loss before the suspect request (lost ones
            // are those unanswered before the last answered): a link that
            // loses now and answers between is lossy, whatever its history.
            let needed = suspect.map_or(w.evidence, |s| {
                let (mut before, mut lost) = (0u32, 0u32);
                for st in [state, &*extra] {
                    st.each_request(|_, at, heard| {
                        if at < s {
                            before += 1;
                            lost += u32::from(!heard);
                        }
                    });
                }
                if before >= 2 {
                    w.evidence.max(evidence_at(f64::from(lost) / f64::from(before)))
                } else {
                    w.evidence
                }
            });
            match suspect {
                Some(s) if now >= s + w.floor && unanswered(s) < needed => {
                    // Past the round's end too: a cut at its last request is
                    // decided here, not reported as a success (bounded by
                    // MAX_WATCH_REQUESTS).
                    if added >= MAX_WATCH_REQUESTS {
                        break;
                    }
                    // More evidence: one request every EVIDENCE_PACE.
                    let due = newest.map_or(now, |n| n + EVIDENCE_PACE);
                    if now >= due {
                        send = Some(&mut report.confirmations);
                    } else {
                        wake = Some(due);
                    }
                }
                Some(s) if now >= s + w.floor => {
                    // The round's first request at or after it (its count when none).
                    let mut index = None;
                    state.each_request(|i, at, _| {
                        if at >= s && index.is_none() {
                            index = Some(i);
                        }
                    });
                    let index = index.unwrap_or_else(|| state.sent.lock().unwrap_or_else(|p| p.into_inner()).len());
                    let _ = w.silent.send(index);
                    report.silent_from = Some(index);
                    break;
                }
                Some(s) => {
                    wake = Some(s + w.floor);
                    let n = match confirming {
                        Some((at, n)) if at == s => n,
                        _ => 0,
                    };
                    confirming = Some((s, n));
                    // rto, 2 rto, 4 rto after the request, all well inside the floor.
                    let due = s + w.rto * (1u32 << n);
                    if n < CONFIRMATIONS && due + w.rto <= s + w.floor {
                        if now >= due {
                            confirming = Some((s, n + 1));
                            send = Some(&mut report.confirmations);
                        } else {
                            wake = wake.map(|x| x.min(due));
                        }
                    }
                    // Evidence for a lossy link: once the reply is overdue,
                    // one more request every EVIDENCE_PACE until the run of
                    // unanswered ones is long enough, so it is complete by
                    // the floor (a working link answers the first of them).
                    // From EVIDENCE_START at the latest: after a stall the rto
                    // is inflated (up to the timeout), and waiting for it
                    // would leave the run short at the floor.
                    if send.is_none() && now >= s + w.rto.min(EVIDENCE_START) && unanswered(s) < needed {
                        let due = newest.map_or(now, |n| n + EVIDENCE_PACE);
                        if now >= due {
                            send = Some(&mut report.confirmations);
                        } else {
                            wake = wake.map(|x| x.min(due));
                        }
                    }
                }
                None if finished => break,
                None => {}
            }
            // Keepalives only while the round is open, and not just before
            // one of its own requests goes out anyway.
            let next_own = *state.next_due.lock().unwrap_or_else(|p| p.into_inner());
            if send.is_none() && !finished {
                if let (Some(n), Some(gap)) = (newest, w.gap) {
                    let due = n + gap;
                    if next_own.is_some_and(|o| o < due + gap / 2) {
                        // The round's request is the keepalive.
                    } else if now >= due {
                        send = Some(&mut report.keepalives);
                    } else {
                        wake = Some(wake.map_or(due, |x| x.min(due)));
                    }
                }
            }
            if let Some(counter) = send.filter(|_| added < MAX_WATCH_REQUESTS) {
                *counter += 1;
                let index = extra.push_request(Instant::now());
                let seq = self.shared.register(dest, extra.clone(), index);
                seqs.push(seq);
                added += 1;
                let _ = self.shared.send(family, dest, seq).await;
                continue;
            }
            match wake {
                Some(d) => tokio::select! {
                    _ = main_progress => {}
                    _ = extra_progress => {}
                    _ = tokio::time::sleep_until(d) => {}
                },
                None => tokio::select! {
                    _ = main_progress => {}
                    _ = extra_progress => {}
                },
            }
        }
        extra.each_request(|_, _, heard| report.answered += u32::from(heard));
        self.shared.release(&seqs);
        report
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
        /// Every frame sent or answered within it is held to its end (a stalled path).
        hold: Option<(Instant, Instant)>,
        sent: AtomicU32,
        inbox_tx: tokio::sync::mpsc::UnboundedSender<(Vec<u8>, IpAddr)>,
        inbox: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, IpAddr)>>,
    }

    impl Scripted {
        fn new(script: Vec<Option<Duration>>) -> Scripted {
            let (inbox_tx, rx) = tokio::sync::mpsc::unbounded_channel();
            Scripted { script, hold: None, sent: AtomicU32::new(0), inbox_tx, inbox: tokio::sync::Mutex::new(rx) }
        }
    }

    impl IcmpSocket for Scripted {
        async fn send_to(&self, packet: &[u8], dest: IpAddr) -> std::io::Result<()> {
            let n = self.sent.fetch_add(1, Ordering::Relaxed) as usize;
            let delay = match self.hold {
                // Everything answered in 20 ms, unless the path holds it.
                // A cut: nothing sent from `from` on comes back.
                Some((from, to)) if from == to => {
                    let now = Instant::now();
                    (now + Duration::from_millis(10) < from).then_some(Duration::from_millis(20))
                }
                Some((from, to)) => {
                    let now = Instant::now();
                    let arrives = now + Duration::from_millis(20);
                    Some(if arrives >= from && now < to {
                        (to + Duration::from_millis(10)).max(arrives) - now
                    } else {
                        arrives - now
                    })
                }
                None => self.script.get(n).copied().flatten(),
            };
            if let Some(delay) = delay {
                let mut reply = packet.to_vec();
                reply[0] = IcmpTypes::EchoReply.0;
                let tx = self.inbox_tx.clone();
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

    fn watch(floor: Duration) -> (Watch, tokio::sync::oneshot::Receiver<usize>) {
        let (silent, heard) = tokio::sync::oneshot::channel();
        // Evidence as on a clean link (`RttEstimate::evidence` at no loss).
        (
            Watch {
                rto: Duration::from_millis(250),
                floor,
                evidence: super::probe::RttEstimate::default().evidence(),
                gap: Some(Duration::from_millis(500)),
                silent,
            },
            heard,
        )
    }

    /// A target that stops answering is reported silent one silence floor
    /// after the first request it left unanswered, long before the round
    /// ends; the watch's requests in between are counted.
    #[tokio::test(start_paused = true)]
    async fn the_watch_reports_a_silent_target_before_the_round_ends() {
        // Sends: request 0, keepalive, request 1, keepalive, request 2,
        // keepalive (each answered in 20 ms); from request 3 on nothing is.
        let e = engine(vec![ms(20); 6]);
        let floor = Duration::from_millis(1020);
        let (w, mut heard) = watch(floor);
        let started = Instant::now();
        let spacing = Duration::from_secs(1);
        let round = e.round(GW, 10, spacing, Duration::from_secs(1), Some(w));
        tokio::pin!(round);
        let index = tokio::select! {
            i = &mut heard => i.unwrap(),
            _ = &mut round => panic!("the round ended before the watch spoke"),
        };
        let after = Instant::now() - started;
        assert_eq!(index, 3, "silent from the first unanswered request");
        assert_eq!(after, spacing * 3 + floor, "{after:?}");
        let r = round.await.unwrap();
        assert_eq!(r.silent_from, Some(3));
        assert!(!r.reachable_at_end());
        // Confirmations 250 and 500 ms after request 3 (the third, at 1 s,
        // would be answered too late to matter), and evidence requests 100
        // ms apart from the first until 8 are unanswered (request 3, the
        // two confirmations, five more), all inside the floor; keepalives
        // at 0.5, 1.5 and 2.5 s (at 4 s the round's own request 4 goes out
        // instead).
        assert_eq!((r.confirmations, r.keepalives), (7, 3), "{r:?}");
        assert_eq!(r.sent(), 10);
    }

    /// One lost request is no outage: its confirmation is answered, the
    /// watch stays quiet and the round ends as measured.
    #[tokio::test(start_paused = true)]
    async fn a_single_loss_is_confirmed_away() {
        // Request 0, keepalive, request 1 answered; request 2 (send 3) lost; all later sends answered.
        let mut script = vec![ms(20), ms(20), ms(20), ms(20), None];
        script.extend([ms(20); 40]);
        let e = engine(script);
        let (w, mut heard) = watch(Duration::from_millis(1020));
        let r = e.round(GW, 6, Duration::from_secs(1), Duration::from_secs(1), Some(w)).await.unwrap();
        assert!(heard.try_recv().is_err(), "no early report");
        assert_eq!(r.silent_from, None);
        assert_eq!(r.rtts.iter().filter(|x| x.is_none()).count(), 1, "{:?}", r.rtts);
        assert!(r.reachable_at_end());
        assert_eq!(r.confirmations, 1, "one confirmation cleared it");
    }

    /// A path that holds every frame for up to the stall tolerance is no
    /// failure, wherever the hold falls; a longer hold is.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_path_is_not_a_cut() {
        let floor = Duration::from_millis(1000 + 20);
        for (hold_ms, offset_ms, silent) in [
            (600, 2100, false),
            (1000, 2000, false),
            (1000, 2300, false),
            (1000, 2990, false),
            (1000, 4500, false),
            (1600, 2300, true),
        ] {
            let mut e = engine(Vec::new());
            let t0 = Instant::now();
            let from = t0 + Duration::from_millis(offset_ms);
            e.v4 = Arc::new(Family {
                socket: Scripted {
                    hold: Some((from, from + Duration::from_millis(hold_ms))),
                    ..Scripted::new(Vec::new())
                },
                kind: SocketKind::Unprivileged,
                v6: false,
            });
            e.receivers.push(tokio::spawn(receive_loop(e.shared.clone(), e.v4.clone())));
            let (w, mut heard) = watch(floor);
            let r = e.round(GW, 5, Duration::from_secs(1), Duration::from_secs(1), Some(w)).await.unwrap();
            assert_eq!(heard.try_recv().is_ok(), silent, "hold of {hold_ms} ms at {offset_ms} ms: {r:?}");
            assert_eq!(r.reachable_at_end(), !silent || r.rtts.last().is_some_and(Option::is_some));
        }
    }

    /// Report times for cuts at every 100 ms of a round of 5 requests 1 s
    /// apart: within `gap` + floor of the cut while the round sends.
    #[tokio::test(start_paused = true)]
    async fn a_cut_is_reported_within_gap_and_floor() {
        let floor = Duration::from_millis(1020);
        let mut took = Vec::new();
        let mut missed = Vec::new();
        for offset_ms in (100..4000).step_by(100) {
            let mut e = engine(Vec::new());
            let t0 = Instant::now();
            let at = t0 + Duration::from_millis(offset_ms);
            e.v4 = Arc::new(Family {
                socket: Scripted { hold: Some((at, at)), ..Scripted::new(Vec::new()) },
                kind: SocketKind::Unprivileged,
                v6: false,
            });
            e.receivers.push(tokio::spawn(receive_loop(e.shared.clone(), e.v4.clone())));
            let (mut w, heard) = watch(floor);
            // Every other cut after a stall: the rto inflated to the timeout.
            if offset_ms % 200 == 0 {
                w.rto = Duration::from_secs(1);
            }
            let round = e.round(GW, 5, Duration::from_secs(1), Duration::from_secs(1), Some(w));
            tokio::pin!(round);
            tokio::select! {
                biased;
                _ = heard => took.push(Instant::now() - at),
                // Silence found as the round ends: the round's own result is the report.
                r = &mut round => match r.unwrap().silent_from {
                    Some(_) => took.push(Instant::now() - at),
                    None => missed.push(offset_ms),
                },
            }
        }
        assert!(missed.is_empty(), "cuts not reported early: {missed:?}");
        took.sort();
        let (median, max) = (took[took.len() / 2], took[took.len() - 1]);
        eprintln!("cut to report: median {median:?}, max {max:?} over {} cuts", took.len());
        assert!(max <= Duration::from_millis(500) + floor + Duration::from_millis(20), "{took:?}");
        assert!(median <= Duration::from_millis(1300), "{took:?}");
    }

    /// 25 % loss each way (44 % of exchanges, the lossy commune
    /// link): with the evidence the link's loss asks for, 200 rounds of 5
    /// requests never call it silent, where the clean-link evidence does;
    /// a cut of that lossy link is still reported, within 4 s.
    #[tokio::test(start_paused = true)]
    async fn a_lossy_link_is_not_a_cut_but_its_cut_is() {
        // A fixed pseudo-random loss pattern (xorshift), the same every run.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut lossy = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 100 >= 44 {
                ms(20)
            } else {
                None
            }
        };
        let mut est = super::probe::RttEstimate::default();
        for _ in 0..20 {
            est.add_loss(0.44);
        }
        let evidence = est.evidence();
        assert_eq!(evidence, 12);
        async fn silent(evidence: u32, script: Vec<Option<Duration>>, rounds: usize) -> usize {
            let e = engine(script);
            let mut reports = 0;
            for _ in 0..rounds {
                let (mut w, mut heard) = watch(Duration::from_millis(1020));
                w.evidence = evidence;
                let r = e.round(GW, 5, Duration::from_secs(1), Duration::from_secs(1), Some(w)).await.unwrap();
                // Called cut early, or the round's own result a failure.
                if heard.try_recv().is_ok() || !r.reachable_at_end() {
                    reports += 1;
                }
            }
            reports
        }
        let script: Vec<_> = (0..20_000).map(|_| lossy()).collect();
        let with_evidence = silent(evidence, script.clone(), 200).await;
        // Onset: a clean link's evidence (no loss history yet).
        let onset = silent(8, script.clone(), 200).await;
        let clean_link_rule = silent(2, script, 200).await;
        assert_eq!(with_evidence, 0, "a lossy link was called cut");
        assert!(onset <= 1, "{onset} of 200 rounds called cut at the clean-link evidence");
        assert!(clean_link_rule > 0, "the test's loss never looked like a cut to the clean-link rule");
        // Cut: the lossy link stops answering from the third round on.
        let mut script: Vec<_> = (0..40).map(|_| lossy()).collect();
        script.truncate(script.iter().rposition(Option::is_some).unwrap() + 1);
        let e = engine(script);
        let mut took = None;
        for _ in 0..4 {
            let (mut w, heard) = watch(Duration::from_millis(1020));
            w.evidence = evidence;
            let started = Instant::now();
            let round = e.round(GW, 5, Duration::from_secs(1), Duration::from_secs(1), Some(w));
            tokio::pin!(round);
            tokio::select! {
                biased;
                _ = heard => { took = Some(Instant::now() - started); break }
                _ = &mut round => {}
            }
        }
        let took = took.expect("the cut of a lossy link is reported");
        eprintln!("44 % exchange loss, 200 rounds: {with_evidence} false cuts with evidence {evidence}, {onset} with 8 (no loss history), {clean_link_rule} with 2; its cut reported {took:?} into its round");
        assert!(took <= Duration::from_secs(5), "{took:?}");
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
