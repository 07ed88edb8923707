//! Matching replies to requests: every request of an open round holds a
//! sequence number (a slot) until its round ends, so a reply is credited
//! once, to its own request and source, and a second reply or one after
//! the timeout is counted for that round, never credited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use pnet::packet::ipv4::Ipv4Packet;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::packet::{encode_request, parse_reply, HEADER_LEN, PAYLOAD_LEN};
use super::{Family, IcmpError, IcmpSocket, SocketKind};

/// What the receiver learnt about a reply.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reply {
    /// Monotonic time the receiver saw it (fallback).
    pub(super) at: Instant,
    /// Kernel receive time (wall clock), when the kernel gave one.
    pub(super) kernel: Option<SystemTime>,
}

/// What the receiver writes for an open round: one entry per request, plus
/// the replies that matched no waiting request.
#[derive(Debug)]
pub(super) struct RoundState {
    pub(super) replies: Mutex<Vec<Option<Reply>>>,
    /// Requests answered after their timeout: not credited, but proof the path lives (the watch).
    pub(super) heard_late: Mutex<Vec<bool>>,
    /// Send time of each request, for the watch.
    pub(super) sent: Mutex<Vec<Option<Instant>>>,
    /// Woken on every reply, send and the end of sending.
    pub(super) arrived: Notify,
    pub(super) duplicates: AtomicU32,
    pub(super) late: AtomicU32,
    /// Every request is out and answered or timed out.
    pub(super) finished: std::sync::atomic::AtomicBool,
    /// When the round sends its next request; `None` after the last.
    pub(super) next_due: Mutex<Option<Instant>>,
}

impl RoundState {
    pub(super) fn new(count: usize) -> Self {
        RoundState {
            replies: Mutex::new(vec![None; count]),
            heard_late: Mutex::new(vec![false; count]),
            sent: Mutex::new(vec![None; count]),
            arrived: Notify::new(),
            duplicates: AtomicU32::new(0),
            late: AtomicU32::new(0),
            finished: Default::default(),
            next_due: Mutex::new(None),
        }
    }

    /// Calls `f` with each request sent so far: index, send time, and
    /// whether any reply came back (in time or late). No allocation: the
    /// watch asks several times a second for every target.
    pub(super) fn each_request(&self, mut f: impl FnMut(usize, Instant, bool)) {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let late = self.heard_late.lock().unwrap_or_else(|p| p.into_inner());
        for (i, t) in sent.iter().enumerate() {
            if let Some(t) = *t {
                f(i, t, replies.get(i).is_some_and(Option::is_some) || late.get(i).copied().unwrap_or(false));
            }
        }
    }

    /// Adds a request sent at `at` (the watch's own, whose number is not
    /// known in advance); returns its index.
    pub(super) fn push_request(&self, at: Instant) -> usize {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        self.replies.lock().unwrap_or_else(|p| p.into_inner()).push(None);
        self.heard_late.lock().unwrap_or_else(|p| p.into_inner()).push(false);
        sent.push(Some(at));
        sent.len() - 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    Waiting,
    Answered,
    TimedOut,
}

/// One request of an open round; kept until the round ends so that
/// duplicates and late replies are counted for their round.
pub(super) struct Slot {
    pub(super) dest: IpAddr,
    pub(super) state: SlotState,
    pub(super) round: Arc<RoundState>,
    pub(super) index: usize,
}

pub(super) struct Shared {
    pub(super) ident: u16,
    pub(super) cookie: [u8; 8],
    pub(super) next_seq: Mutex<u16>,
    pub(super) slots: Mutex<HashMap<u16, Slot>>,
    /// Replies with our cookie that match no open round at all.
    pub(super) stray: prometheus::IntCounter,
}

impl Shared {
    pub(super) fn register(&self, dest: IpAddr, round: Arc<RoundState>, index: usize) -> u16 {
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

    pub(super) fn expire(&self, seq: u16) {
        if let Some(slot) = self.slots.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&seq) {
            if slot.state == SlotState::Waiting {
                slot.state = SlotState::TimedOut;
            }
        }
    }

    pub(super) fn release(&self, seqs: &[u16]) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for s in seqs {
            slots.remove(s);
        }
    }

    pub(super) async fn send<S: IcmpSocket>(
        &self,
        family: &Family<S>,
        dest: IpAddr,
        seq: u16,
    ) -> Result<(), IcmpError> {
        let mut buf = [0u8; HEADER_LEN + PAYLOAD_LEN];
        encode_request(&mut buf, family.v6, self.ident, seq, &self.cookie);
        family.socket.send_to(&buf, dest).await.map_err(|source| IcmpError::Send { dest, source })
    }

    pub(super) fn on_packet<S>(&self, family: &Family<S>, data: &[u8], from: IpAddr, reply: Reply) {
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
                    if let Some(h) = slot.round.heard_late.lock().unwrap_or_else(|p| p.into_inner()).get_mut(slot.index)
                    {
                        *h = true;
                    }
                    slot.round.arrived.notify_waiters();
                }
            },
            _ => {
                self.stray.inc();
            }
        }
    }
}
