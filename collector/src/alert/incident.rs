//! Root cause: active alerts grouped into incidents by the topology, one
//! page per incident.
//!
//! 1. Alerts about the same node and problem are one incident (the node's
//!    heartbeat and the province's failed probe of its WAN end are one
//!    "unreachable" incident).
//! 2. A node unreachable behind an unreachable ancestor is not an incident
//!    of its own: it is listed in the ancestor's (the provincial uplink is
//!    down: one page naming the province and the communes behind it).
//! 3. `min_children` or more children of one parent with the same problem,
//!    while the parent itself is fine, are one incident of the parent's side
//!    listing them ("provincial side"), not one each.
//! 4. An unreachable incident is held while an ancestor of its node (or, for
//!    a children incident, the parent itself) is suspect (late, not yet
//!    down), so the communes of a failing province do not page in the
//!    seconds before the province is declared down.

use std::collections::{BTreeMap, HashSet};

use tierwatch_protocol::NodeId;

use super::model::{Scope, Severity};
use crate::topology::Topology;

/// The problem name of a node that cannot be reached.
pub const UNREACHABLE: &str = "unreachable";

/// The problem name of a link that loses, delays or jitters (the shipped
/// loss, latency and jitter rules): a probe of a node failing while its
/// link is degraded is a symptom of it, not a second cause.
pub const DEGRADED: &str = "degraded";

/// A firing alert, as grouping needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub rule: String,
    /// The node the alert is about.
    pub subject: NodeId,
    pub problem: String,
    pub severity: Severity,
    pub since_ms: i64,
}

/// One root cause, one page.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub node: NodeId,
    pub problem: String,
    pub scope: Scope,
    pub severity: Severity,
    /// Earliest start among its alerts.
    pub since_ms: i64,
    /// Indexes of the alerts it groups, in the input slice.
    pub alerts: Vec<usize>,
    /// Other nodes it covers (behind an unreachable node, or the children of a
    /// parent-side incident), in topology order.
    pub affected: Vec<NodeId>,
    /// Not to be paged yet (an ancestor is suspect).
    pub held: bool,
    /// A service incident's service and how many vantage points see it.
    pub service: Option<(String, usize)>,
}

impl Incident {
    /// Stable identity across evaluations: `node/problem` or `node/problem/children`.
    pub fn key(&self) -> String {
        match self.scope {
            Scope::Node => format!("{}/{}", self.node, self.problem),
            Scope::Children => format!("{}/{}/children", self.node, self.problem),
            Scope::Service => service_key(self.service.as_ref().map_or("", |(s, _)| s.as_str()), &self.problem),
        }
    }
}

/// The key of the incident of `service` down by quorum with `problem`.
pub fn service_key(service: &str, problem: &str) -> String {
    format!("service:{service}/{problem}")
}

/// The ancestors of `id`, nearest first.
pub(crate) fn ancestors<'a>(topo: &'a Topology, id: &NodeId) -> impl Iterator<Item = &'a NodeId> + 'a {
    let mut cur = topo.get(id).and_then(|n| n.parent.as_ref());
    std::iter::from_fn(move || {
        let here = cur?;
        cur = topo.get(here).and_then(|n| n.parent.as_ref());
        Some(here)
    })
}

/// The nearest node that is `nodes` or an ancestor of each of them.
pub(crate) fn common_ancestor(topo: &Topology, nodes: &[NodeId]) -> Option<NodeId> {
    let mut common: Vec<NodeId> = {
        let first = nodes.first()?;
        std::iter::once(first).chain(ancestors(topo, first)).cloned().collect()
    };
    for n in &nodes[1..] {
        let line: HashSet<&NodeId> = std::iter::once(n).chain(ancestors(topo, n)).collect();
        common.retain(|c| line.contains(c));
    }
    common.into_iter().next()
}

/// Groups `active` alerts into incidents (see the module comment).
pub fn group(active: &[Active], topo: &Topology, suspect: &HashSet<NodeId>, min_children: usize) -> Vec<Incident> {
    // 1. By (node, problem).
    let mut by_key: BTreeMap<(NodeId, String), Vec<usize>> = BTreeMap::new();
    for (i, a) in active.iter().enumerate() {
        by_key.entry((a.subject.clone(), a.problem.clone())).or_default().push(i);
    }
    let unreachable: HashSet<NodeId> =
        by_key.keys().filter(|(_, p)| p == UNREACHABLE).map(|(n, _)| n.clone()).collect();
    // 2. Fold every node behind an unreachable one into its topmost unreachable ancestor.
    let mut folded_into: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    for (n, _) in by_key.keys() {
        if let Some(top) = ancestors(topo, n).filter(|a| unreachable.contains(*a)).last() {
            folded_into.insert(n.clone(), top.clone());
        }
    }
    let order: BTreeMap<&NodeId, usize> = topo.nodes().iter().enumerate().map(|(i, n)| (&n.id, i)).collect();
    let mut incidents: BTreeMap<String, Incident> = BTreeMap::new();
    let make = |node: &NodeId, problem: &str, scope: Scope, idx: &[usize]| Incident {
        node: node.clone(),
        problem: problem.to_string(),
        scope,
        severity: idx.iter().map(|&i| active[i].severity).max().unwrap_or(Severity::Info),
        since_ms: idx.iter().map(|&i| active[i].since_ms).min().unwrap_or(0),
        alerts: idx.to_vec(),
        affected: Vec::new(),
        held: false,
        service: None,
    };
    // 3. Children of a parent with the same problem, the parent fine.
    let mut siblings: BTreeMap<(NodeId, String), Vec<NodeId>> = BTreeMap::new();
    for (node, problem) in by_key.keys() {
        if folded_into.contains_key(node) {
            continue;
        }
        if let Some(parent) = topo.get(node).and_then(|n| n.parent.clone()) {
            if !by_key.contains_key(&(parent.clone(), problem.clone())) && !folded_into.contains_key(&parent) {
                siblings.entry((parent, problem.clone())).or_default().push(node.clone());
            }
        }
    }
    let mut in_group: HashSet<(NodeId, String)> = HashSet::new();
    for ((parent, problem), children) in &siblings {
        if children.len() < min_children {
            continue;
        }
        let idx: Vec<usize> =
            children.iter().flat_map(|c| by_key[&(c.clone(), problem.clone())].iter().copied()).collect();
        let mut inc = make(parent, problem, Scope::Children, &idx);
        inc.affected = children.clone();
        for c in children {
            in_group.insert((c.clone(), problem.clone()));
        }
        incidents.insert(inc.key(), inc);
    }
    // 4. Everything else by (node, problem); folded ones join their ancestor.
    for ((node, problem), idx) in &by_key {
        if in_group.contains(&(node.clone(), problem.clone())) {
            continue;
        }
        // Any problem of a node behind an unreachable one is listed in that
        // ancestor's incident: its data is stale news, not a page.
        let (owner, affected) = match folded_into.get(node) {
            Some(top) => (top.clone(), Some(node.clone())),
            None => (node.clone(), None),
        };
        let key = format!("{owner}/{}", if affected.is_some() { UNREACHABLE } else { problem.as_str() });
        let inc = incidents
            .entry(key)
            .or_insert_with(|| make(&owner, if affected.is_some() { UNREACHABLE } else { problem }, Scope::Node, &[]));
        inc.alerts.extend(idx.iter().copied());
        if let Some(a) = affected {
            if !inc.affected.contains(&a) {
                inc.affected.push(a);
            }
        }
    }
    let mut out: Vec<Incident> = incidents.into_values().collect();
    for inc in &mut out {
        inc.affected.sort_by_key(|n| order.get(n).copied().unwrap_or(usize::MAX));
        inc.alerts.sort_unstable();
        inc.since_ms = inc.alerts.iter().map(|&i| active[i].since_ms).min().unwrap_or(0);
        inc.severity = inc.alerts.iter().map(|&i| active[i].severity).max().unwrap_or(Severity::Info);
        // Children's incidents wait for their parent's verdict too.
        let parent_suspect = inc.scope == Scope::Children && suspect.contains(&inc.node);
        inc.held =
            inc.problem == UNREACHABLE && (parent_suspect || ancestors(topo, &inc.node).any(|a| suspect.contains(a)));
    }
    out.sort_by_key(|i| (order.get(&i.node).copied().unwrap_or(usize::MAX), i.problem.clone(), i.scope));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn topo() -> Topology {
        let mut t = String::from("nodes:\n  - id: central\n    tier: central\n    name: C\n  - id: p\n    tier: province\n    name: P\n    parent: central\n");
        for i in 1..=5 {
            t.push_str(&format!("  - id: c{i}\n    tier: commune\n    name: Xã {i}\n    parent: p\n"));
        }
        Topology::parse(Path::new("t.yaml"), &t).unwrap()
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn alert(rule: &str, subject: &str, problem: &str, since: i64) -> Active {
        Active {
            rule: rule.into(),
            subject: id(subject),
            problem: problem.into(),
            severity: Severity::Critical,
            since_ms: since,
        }
    }

    #[test]
    fn provincial_uplink_down_is_one_incident_listing_the_communes() {
        let mut active = vec![alert("node_down", "p", UNREACHABLE, 10)];
        for i in 1..=5 {
            active.push(alert("node_down", &format!("c{i}"), UNREACHABLE, 5 + i));
        }
        let inc = group(&active, &topo(), &HashSet::new(), 3);
        assert_eq!(inc.len(), 1, "{inc:#?}");
        assert_eq!(inc[0].key(), "p/unreachable");
        assert_eq!(inc[0].affected, ["c1", "c2", "c3", "c4", "c5"].map(id));
        assert_eq!(inc[0].alerts.len(), 6);
    }

    #[test]
    fn one_commune_link_is_one_incident_naming_it() {
        // The commune's heartbeat and the province's probe of its WAN end.
        let active = vec![alert("wan_link_down", "c2", UNREACHABLE, 1), alert("node_down", "c2", UNREACHABLE, 3)];
        let inc = group(&active, &topo(), &HashSet::new(), 3);
        assert_eq!(inc.len(), 1);
        assert_eq!((inc[0].key(), inc[0].since_ms, inc[0].held), ("c2/unreachable".to_string(), 1, false));
    }

    #[test]
    fn several_degraded_communes_are_one_provincial_side_incident() {
        let active: Vec<Active> = (1..=4).map(|i| alert("wan_loss_high", &format!("c{i}"), "degraded", i)).collect();
        let inc = group(&active, &topo(), &HashSet::new(), 3);
        assert_eq!(inc.len(), 1);
        assert_eq!(inc[0].key(), "p/degraded/children");
        assert_eq!(inc[0].affected.len(), 4);
        // Two are not enough: each is its own.
        let inc = group(&active[..2], &topo(), &HashSet::new(), 3);
        assert_eq!(inc.iter().map(Incident::key).collect::<Vec<_>>(), ["c1/degraded", "c2/degraded"]);
    }

    proptest::proptest! {
        /// Every alert is in exactly one incident; no incident is about a node
        /// behind an unreachable one; every incident has an alert.
        #[test]
        fn every_alert_in_exactly_one_incident(
            picks in proptest::collection::vec((0usize..7, 0usize..3), 0..20),
        ) {
            let nodes = ["central", "p", "c1", "c2", "c3", "c4", "c5"];
            let problems = [UNREACHABLE, "degraded", "service"];
            let active: Vec<Active> = picks.iter().enumerate().map(|(i, &(n, p))| alert("r", nodes[n], problems[p], i as i64)).collect();
            let t = topo();
            let inc = group(&active, &t, &HashSet::new(), 3);
            let mut seen = vec![0; active.len()];
            for i in &inc {
                proptest::prop_assert!(!i.alerts.is_empty());
                for &a in &i.alerts { seen[a] += 1; }
                let behind_down = ancestors(&t, &i.node).any(|a| active.iter().any(|x| &x.subject == a && x.problem == UNREACHABLE));
                proptest::prop_assert!(!behind_down, "{} is behind an unreachable node", i.key());
            }
            proptest::prop_assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
        }
    }

    #[test]
    fn children_wait_while_their_parent_is_suspect() {
        let active = vec![alert("node_down", "c1", UNREACHABLE, 1)];
        let inc = group(&active, &topo(), &[id("p")].into_iter().collect(), 3);
        assert!(inc[0].held);
        let inc = group(&active, &topo(), &HashSet::new(), 3);
        assert!(!inc[0].held);
    }
}
