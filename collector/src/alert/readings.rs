//! What the rules read, kept between evaluations ([`Current`]): a heartbeat
//! reads how long a node has been silent, a threshold the latest value of
//! each matching series, an event rule the node's recent events. Each
//! reading is about one alert instance ([`AlertKey`]) and one subject node;
//! the engine steps the instance's state machine with it.
//!
//! A node's threshold and event readings change only when it pushes (its
//! store version moves), when one of its series goes stale or an event
//! leaves its hold (a deadline kept per node), or with the clock (rules
//! `until_now`, read at every evaluation). So an evaluation re-reads the
//! few nodes that pushed since the last, not 3,400 nodes' 680k series, and
//! updates readings in place (no key allocated for a series already read).
//! Indexes follow the changes: the readings breaching, the series of each
//! shared service, the links answering, the samples `mean_over` rules have
//! not taken yet.

use std::collections::{BTreeMap, HashMap, HashSet};

use tierwatch_protocol::{Label, NodeId};

use super::model::Severity;
use super::rules::{LinkState, Rule, RuleKind, Rules};
use super::state::Reading;
use crate::store::{NodeState, Store};
use crate::topology::{Node, Topology};

/// One alert instance: a rule on one node and series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlertKey {
    pub rule: usize,
    pub node: NodeId,
    pub labels: Vec<Label>,
}

/// One alert instance's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub reading: Reading,
    /// The node it is about.
    pub subject: NodeId,
    pub value: f64,
    /// For a sampled series: the previous sample's and this sample's
    /// timestamps (ms), between which the round that produced it ran.
    pub sample: Option<(i64, i64)>,
}

/// How long a node has been silent and its push interval, both in ms.
pub type Silence = (i64, i64);

/// Every reading of the last evaluation, and the indexes over them.
#[derive(Debug, Default)]
pub struct Current {
    nodes: HashMap<NodeId, NodeReadings>,
    index: Index,
}

/// The readings of one node, per rule (by index), by series labels.
#[derive(Debug, Default)]
struct NodeReadings {
    /// The store version read (none yet: never read).
    version: Option<u64>,
    /// Whether the node had a silence (known or heard from) when read:
    /// threshold rules read only such nodes.
    heard: bool,
    /// When a reading read then changes with the clock alone: a series
    /// goes stale, an event leaves its hold (ms).
    expires_ms: i64,
    by_rule: Vec<HashMap<Vec<Label>, Entry>>,
}

#[derive(Debug)]
struct Entry {
    read: Read,
    /// The pass that last produced it: one not produced by a re-read is gone.
    pass: u64,
}

/// What the engine looks up across nodes, kept as readings change.
#[derive(Debug, Default)]
struct Index {
    pass: u64,
    /// Readings that breach (before outage attribution and means).
    breaches: HashSet<AlertKey>,
    /// `mean_over` readings with a sample their window has not seen, and
    /// those gone (their window goes).
    new_samples: HashSet<AlertKey>,
    gone_means: Vec<AlertKey>,
    /// The series of each service of a quorum rule: (rule, service) → keys.
    services: HashMap<(usize, String), HashSet<AlertKey>>,
    /// Per node, how many reachability readings about it read clear: its
    /// link answers when one does.
    clear_links: HashMap<NodeId, usize>,
    answering: HashSet<NodeId>,
    /// Nodes late by more than half an interval.
    suspect: HashSet<NodeId>,
}

impl Current {
    /// Brings every reading to `now_ms`: re-reads the nodes whose store
    /// version moved or whose deadline passed, `until_now` rules
    /// everywhere, and every heartbeat.
    pub fn refresh(
        &mut self,
        rules: &Rules,
        topo: &Topology,
        store: &Store,
        silences: &HashMap<NodeId, Silence>,
        now_ms: i64,
    ) {
        let stale_before = store.stale_before(now_ms);
        let stale_after_ms = now_ms - stale_before;
        let Current { nodes, index } = self;
        store.for_each_node(|node, state| {
            let cached = nodes.entry(node.id.clone()).or_insert_with(|| NodeReadings {
                by_rule: (0..rules.rules.len()).map(|_| HashMap::new()).collect(),
                ..NodeReadings::default()
            });
            // A node never heard from has no silence and no threshold
            // readings; but events about it (the collector's findings: its
            // certificate used by another node) still page.
            let heard = silences.contains_key(&node.id);
            let whole = cached.version != Some(state.version) || cached.heard != heard || now_ms >= cached.expires_ms;
            let labelled = Labelled { node, identity: node.identity_labels() };
            index.pass += 1;
            let pass = index.pass;
            let mut expires_ms = i64::MAX;
            for (ri, rule) in rules.rules.iter().enumerate() {
                let by_clock = matches!(rule.kind, RuleKind::Threshold { until_now: true, .. });
                let read = match rule.kind {
                    RuleKind::Heartbeat { .. } => false,
                    RuleKind::Threshold { .. } => whole || (by_clock && heard),
                    RuleKind::Event { .. } => whole,
                };
                if !read {
                    continue;
                }
                let mut put = Put { index, rules, node: &node.id, ri, entries: &mut cached.by_rule[ri], pass };
                match rule.kind {
                    RuleKind::Threshold { .. } if heard => {
                        threshold(&mut put, rule, topo, &labelled, state, stale_before, now_ms, &mut |refreshed| {
                            if !by_clock {
                                expires_ms = expires_ms.min(refreshed.saturating_add(stale_after_ms + 1));
                            }
                        })
                    }
                    RuleKind::Threshold { .. } => {}
                    RuleKind::Event { .. } => events(&mut put, rule, &labelled, state, now_ms, &mut |until| {
                        expires_ms = expires_ms.min(until)
                    }),
                    RuleKind::Heartbeat { .. } => {}
                }
                put.sweep();
            }
            if whole {
                cached.version = Some(state.version);
                cached.heard = heard;
                cached.expires_ms = expires_ms;
            }
        });
        // Heartbeats last: a rule that asks whether the silent node's link
        // answers needs every node's probes read first.
        index.suspect.clear();
        for node in topo.nodes() {
            let Some(&silence @ (age, interval)) = silences.get(&node.id) else { continue };
            // Late by more than half an interval: suspect. A parent that
            // pushed up to one interval after its children is then always
            // suspect when they are declared down (missed >= 2), so they wait for it.
            if age > interval + interval / 2 {
                index.suspect.insert(node.id.clone());
            }
            let Some(cached) = nodes.get_mut(&node.id) else { continue };
            let answers = index.answering.contains(&node.id);
            let labelled = Labelled { node, identity: node.identity_labels() };
            for (ri, rule) in rules.rules.iter().enumerate() {
                let RuleKind::Heartbeat { missed, link } = rule.kind else { continue };
                if !rule.matches(|k| labelled.identity(k)) {
                    continue;
                }
                index.pass += 1;
                let pass = index.pass;
                let mut put = Put { index, rules, node: &node.id, ri, entries: &mut cached.by_rule[ri], pass };
                heartbeat(&mut put, &node.id, silence, missed, link, answers);
                put.sweep();
            }
        }
        // A node no longer heard from (none is forgotten today, but a
        // heartbeat reading must not outlive its silence).
        for (id, cached) in nodes.iter_mut() {
            if silences.contains_key(id) {
                continue;
            }
            for (ri, rule) in rules.rules.iter().enumerate() {
                if matches!(rule.kind, RuleKind::Heartbeat { .. }) && !cached.by_rule[ri].is_empty() {
                    index.pass += 1;
                    let pass = index.pass;
                    Put { index, rules, node: id, ri, entries: &mut cached.by_rule[ri], pass }.sweep();
                }
            }
        }
    }

    /// The reading of `key`, if it has one now.
    pub fn get(&self, key: &AlertKey) -> Option<&Read> {
        self.nodes.get(&key.node)?.by_rule.get(key.rule)?.get(key.labels.as_slice()).map(|e| &e.read)
    }

    /// Every reading.
    pub fn iter(&self) -> impl Iterator<Item = (AlertKey, &Read)> {
        self.nodes.iter().flat_map(|(node, n)| {
            n.by_rule.iter().enumerate().flat_map(move |(rule, m)| {
                m.iter()
                    .map(move |(labels, e)| (AlertKey { rule, node: node.clone(), labels: labels.clone() }, &e.read))
            })
        })
    }

    /// The readings breaching (before outage attribution and means).
    pub fn breaches(&self) -> &HashSet<AlertKey> {
        &self.index.breaches
    }

    /// `mean_over` readings with a sample their window has not taken;
    /// emptied by the call.
    pub fn take_new_samples(&mut self) -> HashSet<AlertKey> {
        std::mem::take(&mut self.index.new_samples)
    }

    /// `mean_over` readings gone since the last call (their windows go).
    pub fn take_gone_means(&mut self) -> Vec<AlertKey> {
        std::mem::take(&mut self.index.gone_means)
    }

    /// The series of service `service` of quorum rule `rule`.
    pub fn service(&self, rule: usize, service: &str) -> impl Iterator<Item = &AlertKey> {
        // The map is keyed by owned pairs; services are few, names short.
        self.index.services.get(&(rule, service.to_string())).into_iter().flatten()
    }

    /// Nodes whose WAN link answers: a reachability rule about them (the
    /// province's probe of their WAN end) reads clear.
    pub fn answering(&self) -> &HashSet<NodeId> {
        &self.index.answering
    }

    /// Nodes late by more than half an interval.
    pub fn suspect(&self) -> &HashSet<NodeId> {
        &self.index.suspect
    }

    /// Tests only: the services' series are those of `other`.
    #[cfg(test)]
    pub fn same_services(&self, other: &Current) {
        assert_eq!(self.index.services, other.index.services, "services' series");
        assert_eq!(self.index.clear_links, other.index.clear_links, "clear reachability readings");
    }
}

/// Writes one rule's readings of one node in place, keeping the indexes.
struct Put<'a> {
    index: &'a mut Index,
    rules: &'a Rules,
    node: &'a NodeId,
    ri: usize,
    entries: &'a mut HashMap<Vec<Label>, Entry>,
    pass: u64,
}

impl Put<'_> {
    fn key(&self, labels: &[Label]) -> AlertKey {
        AlertKey { rule: self.ri, node: self.node.clone(), labels: labels.to_vec() }
    }

    /// The series `labels` reads `reading` of `value` now, about `subject`.
    /// Updated in place: nothing is allocated for a series read before.
    fn put(&mut self, labels: &[Label], reading: Reading, subject: &NodeId, value: f64, sample: Option<(i64, i64)>) {
        let pass = self.pass;
        let old = match self.entries.get_mut(labels) {
            Some(e) => {
                let old = (e.read.reading, e.read.sample);
                e.pass = pass;
                e.read.reading = reading;
                e.read.value = value;
                e.read.sample = sample;
                if e.read.subject != *subject {
                    e.read.subject = subject.clone();
                }
                Some(old)
            }
            None => {
                let read = Read { reading, subject: subject.clone(), value, sample };
                self.entries.insert(labels.to_vec(), Entry { read, pass });
                None
            }
        };
        self.note(labels, subject, old, Some((reading, sample)));
    }

    /// Drops the readings of this rule and node not produced in this pass.
    fn sweep(&mut self) {
        let pass = self.pass;
        if self.entries.values().all(|e| e.pass == pass) {
            return;
        }
        let keys: Vec<Vec<Label>> =
            self.entries.iter().filter(|(_, e)| e.pass != pass).map(|(l, _)| l.clone()).collect();
        for labels in keys {
            if let Some(e) = self.entries.remove(&labels) {
                self.note(&labels, &e.read.subject, Some((e.read.reading, e.read.sample)), None);
            }
        }
    }

    /// Keeps the indexes through one reading's change (reading and sample
    /// before and after; none: absent).
    fn note(&mut self, labels: &[Label], subject: &NodeId, old: Option<Sampled>, new: Option<Sampled>) {
        let rule = &self.rules.rules[self.ri];
        let is = |r: Option<Sampled>, want: Reading| r.is_some_and(|(r, _)| r == want);
        if is(old, Reading::Breach) != is(new, Reading::Breach) {
            let key = self.key(labels);
            if is(new, Reading::Breach) {
                self.index.breaches.insert(key);
            } else {
                self.index.breaches.remove(&key);
            }
        }
        let RuleKind::Threshold { mean_over, .. } = &rule.kind else { return };
        if mean_over.is_some() {
            match new {
                None => {
                    let key = self.key(labels);
                    self.index.new_samples.remove(&key);
                    self.index.gone_means.push(key);
                }
                Some((_, sample)) if old.map(|(_, s)| s) != Some(sample) => {
                    self.index.new_samples.insert(self.key(labels));
                }
                Some(_) => {}
            }
        }
        if old.is_none() != new.is_none() {
            if let Some(service) = rule.quorum.as_ref().and_then(|q| q.service_of(labels)) {
                let key = self.key(labels);
                let id = (self.ri, service);
                if new.is_some() {
                    self.index.services.entry(id).or_default().insert(key);
                } else if let Some(members) = self.index.services.get_mut(&id) {
                    members.remove(&key);
                    if members.is_empty() {
                        self.index.services.remove(&id);
                    }
                }
            }
        }
        if rule.problem == super::incident::UNREACHABLE && is(old, Reading::Clear) != is(new, Reading::Clear) {
            if is(new, Reading::Clear) {
                let n = self.index.clear_links.entry(subject.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    self.index.answering.insert(subject.clone());
                }
            } else if let Some(n) = self.index.clear_links.get_mut(subject) {
                *n -= 1;
                if *n == 0 {
                    self.index.clear_links.remove(subject);
                    self.index.answering.remove(subject);
                }
            }
        }
    }
}

/// A reading and its sample's timestamps.
type Sampled = (Reading, Option<(i64, i64)>);

/// A node with its identity labels.
struct Labelled<'a> {
    node: &'a Node,
    identity: [(&'static str, &'a str); 4],
}

impl<'a> Labelled<'a> {
    /// The identity label `k`.
    fn identity(&self, k: &str) -> Option<&'a str> {
        self.identity.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }
}

/// A node missing `missed` push intervals breaches; back within one and a
/// half, clears. A rule for one state of the node's link (`up`: the agent is
/// what is silent; `down`: the node is cut off) reads clear in the other.
fn heartbeat(put: &mut Put<'_>, node: &NodeId, (age, interval): Silence, missed: u32, link: LinkState, answers: bool) {
    let applies = match link {
        LinkState::Any => true,
        LinkState::Up => answers,
        LinkState::Down => !answers,
    };
    let reading = if !applies {
        Reading::Clear
    } else if age > missed as i64 * interval {
        Reading::Breach
    } else if age <= interval + interval / 2 {
        Reading::Clear
    } else {
        Reading::Between
    };
    put.put(&[], reading, node, age as f64 / 1000.0, None);
}

/// Every fresh series of the rule's metric that its matchers select,
/// against its thresholds; `refreshed` hears when each series read was
/// last refreshed (it goes stale after that).
#[allow(clippy::too_many_arguments)]
fn threshold(
    put: &mut Put<'_>,
    rule: &Rule,
    topo: &Topology,
    node: &Labelled<'_>,
    state: &NodeState,
    stale_before: i64,
    now_ms: i64,
    refreshed: &mut dyn FnMut(i64),
) {
    let RuleKind::Threshold { metric, condition, until_now, .. } = &rule.kind else { return };
    for (labels, stored) in state.fresh_family(metric, stale_before) {
        let v = &stored.value;
        refreshed(v.refreshed_ms);
        let lookup =
            |k: &str| node.identity(k).or_else(|| labels.iter().find(|l| l.name == k).map(|l| l.value.as_str()));
        if !rule.matches(lookup) {
            continue;
        }
        let value = if *until_now { v.value - now_ms as f64 / 1000.0 } else { v.value };
        let reading = if condition.fires(value) {
            Reading::Breach
        } else if condition.clears(value) {
            Reading::Clear
        } else {
            Reading::Between
        };
        // A rule about the node a label names applies only where it names
        // one: the province's probe of its own upstream gateway is no
        // commune's WAN link.
        let subject = match rule.subject.as_deref() {
            None => &node.node.id,
            Some(l) => match labels.iter().find(|x| x.name == l).and_then(|x| topo.get_str(&x.value)) {
                Some(n) => &n.id,
                None => continue,
            },
        };
        put.put(labels, reading, subject, value, Some((v.previous_ms, v.timestamp_ms)));
    }
}

/// One alert per kind (and `group_by` attributes) with an event within
/// `hold`; `until` hears when each event counted leaves its hold.
fn events(
    put: &mut Put<'_>,
    rule: &Rule,
    node: &Labelled<'_>,
    state: &NodeState,
    now_ms: i64,
    until: &mut dyn FnMut(i64),
) {
    let RuleKind::Event { kind, severity, hold, group_by } = &rule.kind else { return };
    let hold_ms = hold.as_millis() as i64;
    let mut groups: BTreeMap<Vec<Label>, f64> = BTreeMap::new();
    for e in &state.recent_events {
        if now_ms - e.timestamp_ms >= hold_ms
            || kind.as_ref().is_some_and(|k| *k != e.kind)
            || severity.is_some_and(|s| s != event_severity(e.severity))
        {
            continue;
        }
        let lookup = |k: &str| {
            node.identity(k).or_else(|| {
                if k == "kind" {
                    Some(e.kind.as_str())
                } else {
                    e.attributes.get(k).map(String::as_str)
                }
            })
        };
        if !rule.matches(lookup) {
            continue;
        }
        until(e.timestamp_ms.saturating_add(hold_ms));
        let mut labels = vec![Label::new("kind", e.kind.clone())];
        for g in group_by {
            if let Some(v) = e.attributes.get(g) {
                labels.push(Label::new(g.clone(), v.clone()));
            }
        }
        labels.sort();
        *groups.entry(labels).or_default() += 1.0;
    }
    for (labels, count) in groups {
        put.put(&labels, Reading::Breach, &node.node.id, count, None);
    }
}

/// An event's severity on the rules' scale.
fn event_severity(s: i32) -> Severity {
    match tierwatch_protocol::Severity::try_from(s) {
        Ok(tierwatch_protocol::Severity::Critical) => Severity::Critical,
        Ok(tierwatch_protocol::Severity::Warning) => Severity::Warning,
        _ => Severity::Info,
    }
}
