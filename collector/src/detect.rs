//! Detections the collector makes itself, from what reaches its ingest
//! port: repeated TLS handshake failures from one address (a scanner, or a
//! node with a wrong certificate), a valid certificate pushing for another
//! node, an agent whose configuration changed, an agent clock running
//! ahead or behind, security events of a node the collector had to refuse.
//! They become security events like the agents' own: stored, listed,
//! counted and paged through the event rules.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tierwatch_protocol::{Batch, Event, NodeId, Severity};

use crate::ledger::Ledger;
use crate::store::Store;

/// TLS handshake failures from one address within [`TLS_WINDOW_MS`] that make an event.
pub(crate) const TLS_FAILURES: usize = 10;
const TLS_WINDOW_MS: i64 = 300_000;
/// An agent clock this far ahead of or behind the collector's is reported.
pub(crate) const CLOCK_SKEW_MS: i64 = 120_000;
/// One event per node (or address) and kind at most this often.
const QUIET_MS: i64 = 3_600_000;
const MAX_ADDRESSES: usize = 10_000;

/// A node's newest boot seen: its id, configuration hash and newest batch time.
type NewestBoot = (Vec<u8>, Vec<u8>, i64);

/// A node's newest boot: its id, highest sequence and that batch's creation time.
type TopSequence = (Vec<u8>, u64, i64);

/// The collector's own detector.
pub(crate) struct Detector {
    ledger: Ledger,
    store: Arc<Store>,
    /// Where events with no node of their own are filed (the central node).
    home: Option<NodeId>,
    tls: Mutex<HashMap<IpAddr, VecDeque<i64>>>,
    reported: Mutex<HashMap<(String, &'static str), i64>>,
    configs: Mutex<HashMap<NodeId, NewestBoot>>,
    sequences: Mutex<HashMap<NodeId, TopSequence>>,
}

/// Where findings about no node of the topology (an address, a revoked
/// certificate of a removed node) are filed: the central node, else the
/// first node without a parent (the province), else the first node. A
/// topology always has a home for them, so they are stored and paged.
fn home(t: &crate::topology::Topology) -> Option<NodeId> {
    let nodes = t.nodes();
    nodes
        .iter()
        .find(|n| n.tier == crate::topology::Tier::Central)
        .or_else(|| nodes.iter().find(|n| n.parent.is_none()))
        .or_else(|| nodes.first())
        .map(|n| n.id.clone())
}

impl Detector {
    /// A detector storing through the `ledger`'s group commits and reporting to `store`.
    pub(crate) fn new(ledger: Ledger, store: Arc<Store>) -> Self {
        let home = home(store.topology());
        Detector {
            ledger,
            store,
            home,
            tls: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
            sequences: Mutex::new(HashMap::new()),
        }
    }

    /// True (and remembered) unless `kind` was reported for `who` within the quiet period.
    fn once(&self, who: &str, kind: &'static str, now_ms: i64) -> bool {
        let mut r = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() > MAX_ADDRESSES {
            r.retain(|_, t| now_ms - *t < QUIET_MS);
        }
        match r.get(&(who.to_string(), kind)) {
            Some(t) if now_ms - t < QUIET_MS => false,
            _ => {
                r.insert((who.to_string(), kind), now_ms);
                true
            }
        }
    }

    /// A TLS handshake on the ingest port failed.
    pub(crate) fn tls_failure(&self, peer: IpAddr, reason: &str, now_ms: i64) {
        let count = {
            let mut t = self.tls.lock().unwrap_or_else(|p| p.into_inner());
            if !t.contains_key(&peer) && t.len() >= MAX_ADDRESSES {
                t.retain(|_, q| q.back().is_some_and(|b| now_ms - b < TLS_WINDOW_MS));
                if t.len() >= MAX_ADDRESSES {
                    return;
                }
            }
            let q = t.entry(peer).or_default();
            q.push_back(now_ms);
            while q.front().is_some_and(|f| now_ms - f > TLS_WINDOW_MS) || q.len() > TLS_FAILURES * 2 {
                q.pop_front();
            }
            q.len()
        };
        if count < TLS_FAILURES || !self.once(&peer.to_string(), "tls_handshake_failures", now_ms) {
            return;
        }
        let Some(home) = self.home.clone() else {
            tracing::warn!(peer = %peer, failures = count, "repeated TLS handshake failures (the topology has no node to file them under)");
            return;
        };
        self.emit(
            home,
            Event::new(
                "tls_handshake_failures",
                Severity::Warning,
                now_ms,
                [
                    ("src", peer.to_string()),
                    ("failures", count.to_string()),
                    ("window_s", (TLS_WINDOW_MS / 1000).to_string()),
                    ("last_error", reason.chars().take(200).collect()),
                ],
            ),
        );
    }

    /// The collector refused `count` events of an accepted batch of `node`
    /// (`first` says which and why): evidence was lost, which must page.
    pub(crate) fn events_refused(&self, node: &NodeId, count: usize, first: &str, now_ms: i64) {
        if !self.once(node.as_str(), "events_refused", now_ms) {
            return;
        }
        self.emit(
            node.clone(),
            Event::new(
                "events_refused",
                Severity::Warning,
                now_ms,
                [
                    ("src", node.to_string()),
                    ("refused", count.to_string()),
                    ("first", first.chars().take(300).collect()),
                    ("why", "the collector refused security events this node sent: their evidence is lost".into()),
                ],
            ),
        );
    }

    /// A revoked certificate of `node` tried to connect from `peer`: the
    /// stolen box (or its thief) is still out there.
    pub(crate) fn revoked(&self, node: &NodeId, peer: IpAddr, now_ms: i64) {
        if !self.once(node.as_str(), "revoked_certificate", now_ms) {
            return;
        }
        let event = Event::new(
            "revoked_certificate",
            Severity::Critical,
            now_ms,
            [
                ("src", peer.to_string()),
                ("certificate_node", node.to_string()),
                ("why", "a revoked certificate tried to connect; refused at the handshake".into()),
            ],
        );
        // Filed under its node when the topology still has it.
        match self.store.topology().get(node).map(|n| n.id.clone()).or_else(|| self.home.clone()) {
            Some(home) => self.emit(home, event),
            None => tracing::warn!(node = %node, peer = %peer, "revoked certificate seen (no node to file it under)"),
        }
    }

    /// A valid certificate of `node` pushed a batch claiming `claimed`.
    pub(crate) fn impersonation(&self, node: &NodeId, claimed: &str, peer: IpAddr, now_ms: i64) {
        if !self.once(node.as_str(), "node_impersonation", now_ms) {
            return;
        }
        self.emit(
            node.clone(),
            Event::new(
                "node_impersonation",
                Severity::Critical,
                now_ms,
                [
                    ("src", peer.to_string()),
                    ("claimed_node", claimed.chars().take(64).collect()),
                    ("why", "this node's certificate pushed a batch for another node".into()),
                ],
            ),
        );
    }

    /// Checks an accepted batch of `node`, pushed at `sent_ms` by the
    /// agent's clock (`None` from an agent that does not say). Configuration
    /// is compared between boots, newest first: a backlog from the previous
    /// boot arriving after the new one's batches is not a change.
    pub(crate) fn batch(&self, node: &NodeId, batch: &Batch, sent_ms: Option<i64>, now_ms: i64) {
        let changed = {
            let mut c = self.configs.lock().unwrap_or_else(|p| p.into_inner());
            match c.get(node) {
                Some((boot, _, created)) if *boot == batch.boot_id || batch.created_ms <= *created => None,
                previous => {
                    let old = previous.map(|(_, hash, _)| hash.clone());
                    c.insert(node.clone(), (batch.boot_id.clone(), batch.config_hash.clone(), batch.created_ms));
                    old.filter(|h| !h.is_empty() && *h != batch.config_hash)
                }
            }
        };
        if let Some(previous) = changed {
            let hex = tierwatch_protocol::ids::hex;
            self.emit(
                node.clone(),
                Event::new(
                    "config_changed",
                    Severity::Warning,
                    now_ms,
                    [
                        ("src", node.to_string()),
                        ("previous_hash", hex(&previous)),
                        ("config_hash", hex(&batch.config_hash)),
                        ("why", "the agent restarted or reloaded with another configuration".into()),
                    ],
                ),
            );
        }
        // Within a boot, sequence and creation time rise together: a lower
        // sequence created later than a higher one was rewritten or forged.
        let rewound = {
            let mut m = self.sequences.lock().unwrap_or_else(|p| p.into_inner());
            match m.get_mut(node) {
                Some((boot, top, created)) if *boot == batch.boot_id => {
                    if batch.sequence > *top {
                        (*top, *created) = (batch.sequence, batch.created_ms);
                        None
                    } else if batch.created_ms > *created + 5_000 {
                        Some((*top, *created))
                    } else {
                        None
                    }
                }
                Some((_, _, created)) if batch.created_ms <= *created => None,
                _ => {
                    m.insert(node.clone(), (batch.boot_id.clone(), batch.sequence, batch.created_ms));
                    None
                }
            }
        };
        if let Some((top, created)) = rewound {
            if self.once(node.as_str(), "sequence_rewound", now_ms) {
                self.emit(
                    node.clone(),
                    Event::new(
                        "sequence_rewound",
                        Severity::Warning,
                        now_ms,
                        [
                            ("src", node.to_string()),
                            ("sequence", batch.sequence.to_string()),
                            ("created_ms", batch.created_ms.to_string()),
                            ("newest_sequence", top.to_string()),
                            ("newest_created_ms", created.to_string()),
                            ("why", "a lower sequence number created after a higher one of the same boot".into()),
                        ],
                    ),
                );
            }
        }
        // Without the send time only a clock ahead shows: a batch created
        // in the past may simply have waited in the spool.
        let skew = sent_ms.unwrap_or((batch.created_ms).max(now_ms)).saturating_sub(now_ms);
        if skew.saturating_abs() > CLOCK_SKEW_MS && self.once(node.as_str(), "clock_skew", now_ms) {
            let (direction, why) = if skew > 0 {
                ("ahead_s", "the agent's clock runs ahead of the collector's: its samples land in the future")
            } else {
                ("behind_s", "the agent's clock runs behind the collector's: its samples land in the past")
            };
            self.emit(
                node.clone(),
                Event::new(
                    "clock_skew",
                    Severity::Warning,
                    now_ms,
                    [
                        ("src", node.to_string()),
                        (direction, (skew.saturating_abs() / 1000).to_string()),
                        ("why", why.into()),
                    ],
                ),
            );
        }
    }

    fn emit(&self, node: NodeId, e: Event) {
        tracing::warn!(node = %node, kind = %e.kind, src = e.attributes.get("src").map(String::as_str).unwrap_or(""), "security event (collector)");
        self.store.record_events(&node, std::slice::from_ref(&e));
        if let Err(err) = self.ledger.record_events(node, vec![e]) {
            tracing::error!(error = %err, "storing a collector security event failed");
        }
    }
}
