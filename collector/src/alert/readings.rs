//! What the rules read at one evaluation, one function per rule kind: a
//! heartbeat reads how long a node has been silent, a threshold the latest
//! value of each matching series, an event rule the node's recent events.
//! Each reading is about one alert instance ([`AlertKey`]) and one subject
//! node; the engine steps the instance's state machine with it.

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
#[derive(Debug, Clone)]
pub struct Read {
    pub reading: Reading,
    /// The node it is about.
    pub subject: NodeId,
    pub value: f64,
    /// For a sampled series: the previous sample's and this sample's
    /// timestamps (ms), between which the round that produced it ran.
    pub sample: Option<(i64, i64)>,
}

/// What the rules read at one evaluation.
#[derive(Debug, Default)]
pub struct Readings {
    /// Per alert instance.
    pub by_key: HashMap<AlertKey, Read>,
    /// Nodes late by more than half an interval.
    pub suspect: HashSet<NodeId>,
    /// Nodes whose WAN link answers: a reachability rule about them (the
    /// province's probe of their WAN end) reads clear.
    pub answering: HashSet<NodeId>,
}

/// How long a node has been silent and its push interval, both in ms.
pub type Silence = (i64, i64);

/// Reads every rule over every node heard from (those in `silences`).
pub fn read(
    rules: &Rules,
    topo: &Topology,
    store: &Store,
    silences: &HashMap<NodeId, Silence>,
    now_ms: i64,
) -> Readings {
    let mut out = Readings::default();
    // The cutoff `/metrics` uses: a series that stopped is no reading.
    let stale_before = store.stale_before(now_ms);
    // Heartbeats are read last: a rule that asks whether the silent node's
    // link answers needs every node's probes read first.
    let mut beats: Vec<(usize, NodeId, Silence, u32, LinkState)> = Vec::new();
    store.for_each_node(|node, state| {
        // A node never heard from has no silence: it is neither down nor
        // late, and has no series; but events about it (the collector's
        // findings: its certificate used by another node) still page.
        let silence = silences.get(&node.id).copied();
        // Late by more than half an interval: suspect. A parent that pushed
        // up to one interval after its children is then always suspect
        // when they are declared down (missed >= 2), so they wait for it.
        if silence.is_some_and(|(age, interval)| age > interval + interval / 2) {
            out.suspect.insert(node.id.clone());
        }
        // The node's identity labels, once per evaluation, not per lookup.
        let node = &Labelled { node, identity: node.identity_labels() };
        for (ri, rule) in rules.rules.iter().enumerate() {
            match (&rule.kind, silence) {
                (RuleKind::Heartbeat { missed, link }, Some(s)) => {
                    if rule.matches(|k| node.identity(k)) {
                        beats.push((ri, node.node.id.clone(), s, *missed, *link));
                    }
                }
                (RuleKind::Threshold { .. }, Some(_)) => {
                    threshold(&mut out, ri, rule, topo, node, state, stale_before, now_ms)
                }
                (RuleKind::Event { .. }, _) => events(&mut out, ri, rule, node, state, now_ms),
                (RuleKind::Heartbeat { .. } | RuleKind::Threshold { .. }, None) => {}
            }
        }
    });
    // A node's link answers when a reachability rule about it (the
    // province's probe of its WAN end) reads clear now.
    out.answering = out
        .by_key
        .iter()
        .filter(|(k, r)| {
            let rule = &rules.rules[k.rule];
            r.reading == Reading::Clear
                && matches!(rule.kind, RuleKind::Threshold { .. })
                && rule.problem == super::incident::UNREACHABLE
        })
        .map(|(_, r)| r.subject.clone())
        .collect();
    for (ri, node, silence, missed, link) in beats {
        let answers = out.answering.contains(&node);
        heartbeat(&mut out, ri, node, silence, missed, link, answers);
    }
    out
}

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
fn heartbeat(
    out: &mut Readings,
    ri: usize,
    node: NodeId,
    (age, interval): Silence,
    missed: u32,
    link: LinkState,
    answers: bool,
) {
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
    let key = AlertKey { rule: ri, node: node.clone(), labels: Vec::new() };
    out.by_key.insert(key, Read { reading, subject: node, value: age as f64 / 1000.0, sample: None });
}

/// Every fresh series of the rule's metric that its matchers select, against its thresholds.
#[allow(clippy::too_many_arguments)]
fn threshold(
    out: &mut Readings,
    ri: usize,
    rule: &Rule,
    topo: &Topology,
    node: &Labelled<'_>,
    state: &NodeState,
    stale_before: i64,
    now_ms: i64,
) {
    let RuleKind::Threshold { metric, condition, until_now, .. } = &rule.kind else { return };
    for (labels, stored) in state.fresh_family(metric, stale_before) {
        let v = &stored.value;
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
            None => node.node.id.clone(),
            Some(l) => match labels.iter().find(|x| x.name == l).and_then(|x| topo.get_str(&x.value)) {
                Some(n) => n.id.clone(),
                None => continue,
            },
        };
        let key = AlertKey { rule: ri, node: node.node.id.clone(), labels: labels.to_vec() };
        out.by_key.insert(key, Read { reading, subject, value, sample: Some((v.previous_ms, v.timestamp_ms)) });
    }
}

/// One alert per kind (and `group_by` attributes) with an event within `hold`.
fn events(out: &mut Readings, ri: usize, rule: &Rule, node: &Labelled<'_>, state: &NodeState, now_ms: i64) {
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
        let key = AlertKey { rule: ri, node: node.node.id.clone(), labels };
        out.by_key
            .insert(key, Read { reading: Reading::Breach, subject: node.node.id.clone(), value: count, sample: None });
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
