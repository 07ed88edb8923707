//! What the collector knows now: per node, its last push and the latest
//! value of each series, by metric name (rules and `/metrics` read one
//! name at a time), each with its label set as `/metrics` writes it,
//! rendered once when the series first arrives. One mutex per node, so
//! pushes from different nodes never wait on each other, and a scrape holds
//! one only while copying one family's lines of that node; the node set is
//! fixed by the topology.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tierwatch_protocol::catalogue::event_kind_label;
use tierwatch_protocol::{Batch, Label, MetricKind, NodeId};

use crate::topology::{Node, Topology};

/// The latest value of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesValue {
    pub kind: MetricKind,
    pub value: f64,
    /// When the agent measured it.
    pub timestamp_ms: i64,
    /// When the agent measured the point before it (equal to
    /// `timestamp_ms` for a series' first point): the round that produced
    /// this value ran within `(previous_ms, timestamp_ms]`.
    pub previous_ms: i64,
    /// When the collector last received a point for it (collector clock).
    pub refreshed_ms: i64,
}

/// A series as stored: its latest value and its label set rendered for `/metrics`.
#[derive(Debug, Clone)]
pub struct Stored {
    pub value: SeriesValue,
    /// The node's identity labels and the series' own, sorted and escaped:
    /// `{node="c1",parent="p",...}`.
    pub text: Box<str>,
}

/// The series of one node by metric name, then labels.
#[derive(Debug, Default)]
pub struct Series {
    families: BTreeMap<String, HashMap<Vec<Label>, Stored>>,
    len: usize,
}

impl Series {
    /// How many series (all, stale ones too).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, name: &str, labels: &[Label]) -> bool {
        self.families.get(name).is_some_and(|f| f.contains_key(labels))
    }

    /// The series of metric `name`.
    pub fn family(&self, name: &str) -> Option<&HashMap<Vec<Label>, Stored>> {
        self.families.get(name)
    }

    /// The metric names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.families.keys().map(String::as_str)
    }

    /// Every series: name, labels, value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Label], &SeriesValue)> {
        self.families.iter().flat_map(|(n, f)| f.iter().map(move |(l, s)| (n.as_str(), l.as_slice(), &s.value)))
    }

    /// Keeps the series `keep` says to; returns how many went.
    fn retain(&mut self, mut keep: impl FnMut(&SeriesValue) -> bool) -> usize {
        let before = self.len;
        for f in self.families.values_mut() {
            f.retain(|_, s| keep(&s.value));
        }
        self.families.retain(|_, f| !f.is_empty());
        self.len = self.families.values().map(HashMap::len).sum();
        before - self.len
    }
}

/// The push history and series of one node.
#[derive(Debug, Default)]
pub struct NodeState {
    /// Collector clock at the last accepted push.
    pub last_push_ms: Option<i64>,
    pub agent_version: String,
    pub boot_id: Vec<u8>,
    pub last_sequence: u64,
    pub config_hash: Vec<u8>,
    pub batches: u64,
    /// The agent's push interval as announced in its batches (ms; 0: unknown).
    pub push_interval_ms: u32,
    pub series: Series,
    /// Security events stored per (kind, severity), since the state database began.
    pub security_counts: std::collections::BTreeMap<(String, String), u64>,
    /// The newest security events, for the alert engine's event rules.
    pub recent_events: std::collections::VecDeque<tierwatch_protocol::Event>,
    /// Moves with every change of the series or events: a reader that
    /// read this version has nothing new to read.
    pub version: u64,
}

impl NodeState {
    /// The series refreshed at or after `stale_before_ms`: name, labels, value.
    pub fn fresh_series(&self, stale_before_ms: i64) -> impl Iterator<Item = (&str, &[Label], &SeriesValue)> {
        self.series.iter().filter(move |(_, _, v)| v.refreshed_ms >= stale_before_ms)
    }

    /// The series of metric `name` refreshed at or after `stale_before_ms`.
    pub fn fresh_family(&self, name: &str, stale_before_ms: i64) -> impl Iterator<Item = (&[Label], &Stored)> {
        self.series
            .family(name)
            .into_iter()
            .flatten()
            .filter(move |(_, s)| s.value.refreshed_ms >= stale_before_ms)
            .map(|(l, s)| (l.as_slice(), s))
    }
}

/// Drops stale series every `every` until `token` is cancelled, so memory
/// follows what agents still send whether or not anyone reads it.
pub(crate) async fn expire(store: Arc<Store>, every: std::time::Duration, token: tokio_util::sync::CancellationToken) {
    loop {
        if tierwatch_runtime::shutdown::sleep_or_cancelled(every, &token).await {
            return;
        }
        let dropped = store.drop_stale(tierwatch_protocol::now_ms());
        if dropped > 0 {
            tracing::debug!(series = dropped, "stale series dropped");
        }
    }
}

/// Security events kept per node for event rules; a flood keeps the newest.
pub(crate) const RECENT_EVENTS: usize = 1024;

/// The collector's current state.
pub struct Store {
    topology: Arc<Topology>,
    /// In topology order: a walk over every node looks nothing up.
    nodes: Vec<Mutex<NodeState>>,
    /// A series not refreshed for this long is stale: no reader sees it,
    /// and [`Store::drop_stale`] (on the store's own timer) removes it.
    stale_after_ms: i64,
}

impl Store {
    /// An empty store for every node of `topology`; series go stale after `stale_after`.
    pub fn new(topology: Arc<Topology>, stale_after: std::time::Duration) -> Self {
        let nodes = topology.nodes().iter().map(|_| Mutex::new(NodeState::default())).collect();
        Store { topology, nodes, stale_after_ms: stale_after.as_millis() as i64 }
    }

    /// Series last refreshed before this are stale at `now_ms`: the one
    /// cutoff `/metrics`, the API and the alert engine all read with.
    pub fn stale_before(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.stale_after_ms)
    }

    /// The topology the store was built for.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    fn lock(&self, id: &NodeId) -> Option<MutexGuard<'_, NodeState>> {
        self.topology.position(id).map(|i| lock(&self.nodes[i]))
    }

    /// Takes out of `batch` the series new to `node` beyond `cap` live
    /// series (series it has already keep updating); returns them with
    /// their index in the batch as it came in. Called
    /// with the node's one push in flight, so nothing comes in between this
    /// and [`Store::ingest`].
    pub(crate) fn admit_series(
        &self,
        node: &NodeId,
        batch: &mut Batch,
        cap: usize,
    ) -> Vec<(usize, tierwatch_protocol::Series)> {
        let Some(state) = self.lock(node) else { return Vec::new() };
        // The common case: no key lookups at all.
        if state.series.len() + batch.series.len() <= cap {
            return Vec::new();
        }
        let mut room = cap.saturating_sub(state.series.len());
        let mut new = std::collections::HashSet::new();
        let mut refused = Vec::new();
        for (i, s) in std::mem::take(&mut batch.series).into_iter().enumerate() {
            let key = (s.name.clone(), s.labels.clone());
            if state.series.contains(&s.name, &s.labels) || new.contains(&key) {
                batch.series.push(s);
            } else if room > 0 {
                room -= 1;
                new.insert(key);
                batch.series.push(s);
            } else {
                refused.push((i, s));
            }
        }
        refused
    }

    /// Stores a validated batch from `node` received at `now_ms`. A point
    /// older than the stored one (a replayed backlog) does not replace it.
    /// Returns false when the node is not in the topology.
    pub fn ingest(&self, node: &NodeId, batch: Batch, now_ms: i64) -> bool {
        let Some(identity) = self.topology.get(node).map(Node::identity_labels) else { return false };
        let Some(mut state) = self.lock(node) else { return false };
        state.last_push_ms = Some(now_ms);
        state.agent_version = batch.agent_version;
        state.boot_id = batch.boot_id;
        state.last_sequence = batch.sequence;
        state.config_hash = batch.config_hash;
        state.batches += 1;
        state.version += 1;
        if batch.push_interval_ms > 0 {
            state.push_interval_ms = batch.push_interval_ms;
        }
        record(&mut state, batch.events);
        for s in batch.series {
            let Some(newest) = s.points.iter().max_by_key(|p| p.timestamp_ms) else { continue };
            let kind = MetricKind::try_from(s.kind).unwrap_or(MetricKind::Gauge);
            let mut value = SeriesValue {
                kind,
                value: newest.value,
                timestamp_ms: newest.timestamp_ms,
                previous_ms: newest.timestamp_ms,
                refreshed_ms: now_ms,
            };
            // The point before the newest: in this batch, or the one held.
            let before_in_batch = s.points.iter().map(|p| p.timestamp_ms).filter(|&t| t < newest.timestamp_ms).max();
            let series = &mut state.series;
            // The name is the batch's own String: no allocation either way.
            match series.families.entry(s.name).or_default().entry(s.labels) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let held = e.get().value;
                    if held.timestamp_ms <= value.timestamp_ms {
                        let held_before = (held.timestamp_ms < value.timestamp_ms).then_some(held.timestamp_ms);
                        value.previous_ms = before_in_batch.max(held_before).unwrap_or(held.previous_ms);
                        e.get_mut().value = value;
                    }
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    value.previous_ms = before_in_batch.unwrap_or(value.timestamp_ms);
                    let mut pairs: Vec<(&str, &str)> = identity.to_vec();
                    pairs.extend(e.key().iter().map(|l| (l.name.as_str(), l.value.as_str())));
                    let text = crate::textfmt::label_set(&mut pairs).into_boxed_str();
                    e.insert(Stored { value, text });
                    series.len += 1;
                }
            }
        }
        true
    }

    /// Adds security events the collector found itself to `node`'s counters and recent events.
    pub fn record_events(&self, node: &NodeId, events: &[tierwatch_protocol::Event]) {
        if let Some(mut state) = self.lock(node) {
            record(&mut state, events.to_vec());
        }
    }

    /// Starts the security event counters from what the state database holds.
    pub fn seed_security_counts(&self, counts: Vec<(String, String, String, u64)>) {
        for (node, kind, severity, n) in counts {
            let Ok(id) = NodeId::new(&node) else { continue };
            if let Some(mut state) = self.lock(&id) {
                // Kinds outside the catalogue share one series, after a restart too.
                *state.security_counts.entry((event_kind_label(&kind).to_string(), severity)).or_default() += n;
            }
        }
    }

    /// The nodes that pushed at or after `since_ms` (collector clock).
    pub fn nodes_pushed_since(&self, since_ms: i64) -> HashSet<NodeId> {
        let mut out = HashSet::new();
        self.for_each_node(|node, state| {
            if state.last_push_ms.is_some_and(|t| t >= since_ms) {
                out.insert(node.id.clone());
            }
        });
        out
    }

    /// Calls `f` for each node in topology order with its state locked.
    /// Reads only: a reader takes the series it wants with
    /// [`NodeState::fresh_series`] and [`Store::stale_before`].
    pub fn for_each_node(&self, mut f: impl FnMut(&Node, &NodeState)) {
        for (node, state) in self.topology.nodes().iter().zip(&self.nodes) {
            f(node, &lock(state));
        }
    }

    /// Calls `f` with node `id`'s state locked (none for a node not in the topology).
    pub fn read<T>(&self, id: &NodeId, f: impl FnOnce(&NodeState) -> T) -> Option<T> {
        self.lock(id).map(|state| f(&state))
    }

    /// Removes the series stale at `now_ms`; returns how many.
    pub fn drop_stale(&self, now_ms: i64) -> usize {
        let cutoff = self.stale_before(now_ms);
        let mut dropped = 0;
        for state in &self.nodes {
            dropped += lock(state).series.retain(|v| v.refreshed_ms >= cutoff);
        }
        dropped
    }
}

/// A node's state locked. A panic while holding the lock leaves plain data
/// behind; keep serving it.
fn lock(m: &Mutex<NodeState>) -> MutexGuard<'_, NodeState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn record(state: &mut NodeState, events: Vec<tierwatch_protocol::Event>) {
    if !events.is_empty() {
        state.version += 1;
    }
    for e in events {
        *state
            .security_counts
            .entry((event_kind_label(&e.kind).to_string(), crate::security::severity_name(e.severity).to_string()))
            .or_default() += 1;
        if state.recent_events.len() >= RECENT_EVENTS {
            state.recent_events.pop_front();
        }
        state.recent_events.push_back(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tierwatch_protocol::{Point, Series};

    fn store() -> Store {
        let t = Topology::parse(
            Path::new("t.yaml"),
            "nodes:\n  - id: p\n    tier: province\n    name: P\n  - id: c\n    tier: commune\n    name: C\n    parent: p\n",
        )
        .unwrap();
        Store::new(Arc::new(t), std::time::Duration::from_millis(50))
    }

    fn batch(seq: u64, ts: i64, v: f64) -> Batch {
        Batch {
            version: 1,
            node_id: "c".into(),
            sequence: seq,
            boot_id: vec![1; 16],
            series: vec![Series {
                name: "tierwatch_a".into(),
                kind: MetricKind::Gauge as i32,
                labels: vec![Label::new("target", "gw")],
                points: vec![Point { timestamp_ms: ts, value: v }],
            }],
            ..Default::default()
        }
    }

    fn value(s: &Store) -> Option<f64> {
        let mut out = None;
        s.for_each_node(|n, st| {
            if n.id.as_str() == "c" {
                out = st.series.iter().next().map(|(_, _, v)| v.value);
            }
        });
        out
    }

    #[test]
    fn newest_point_wins_and_backfill_does_not_regress() {
        let s = store();
        let c = NodeId::new("c").unwrap();
        assert!(s.ingest(&c, batch(1, 2000, 1.0), 10));
        assert!(s.ingest(&c, batch(2, 1000, 5.0), 11));
        assert_eq!(value(&s), Some(1.0));
        assert!(s.ingest(&c, batch(3, 3000, 7.0), 12));
        assert_eq!(value(&s), Some(7.0));
        assert!(!s.ingest(&NodeId::new("nobody").unwrap(), batch(1, 1, 1.0), 1));
    }

    #[test]
    fn stale_series_are_dropped() {
        let s = store();
        let c = NodeId::new("c").unwrap();
        s.ingest(&c, batch(1, 2000, 1.0), 100);
        let (mut fresh, mut kept) = (0, 0);
        s.for_each_node(|_, st| {
            fresh += st.fresh_series(101).count();
            kept += st.series.len();
        });
        assert_eq!((fresh, kept), (0, 1), "a reader skips a stale series, and only drop_stale removes it");
        assert_eq!(s.stale_before(100 + 50), 100, "stale after 50 ms");
        assert_eq!(s.drop_stale(100 + 51), 1);
        s.for_each_node(|_, st| kept = st.series.len());
        assert_eq!(kept, 0);
    }
}
