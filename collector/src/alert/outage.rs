//! When each node was unreachable, so that what a probe measured during an
//! outage belongs to the outage. A service probe run once a minute that
//! failed while its commune's link was cut is stamped after the restore,
//! when the link's incident has already resolved: judged on its own it
//! would open a second incident (and feed the flap detector). A round
//! that overlapped a period in which its node, the node it is about, or an
//! ancestor of either was unreachable is not read as a failure.

use std::collections::HashMap;

use tierwatch_protocol::NodeId;

use crate::topology::Topology;

/// Periods kept per node: enough for a link that bounces, bounded against
/// one that flaps all day.
const KEPT: usize = 8;
/// How long a period that ended is remembered (ms): longer than any
/// probe interval worth attributing.
const REMEMBERED_MS: i64 = 3_600_000;

/// Periods are in the collector's clock, samples in the agent's: a round
/// within this of a period overlaps it (a push's latency, a little skew).
const CLOCK_SLACK_MS: i64 = 2_000;

/// One period of unreachability: from `start_ms`, until `end_ms` (open while `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Period {
    start_ms: i64,
    end_ms: Option<i64>,
}

/// The recent outages of every node.
#[derive(Debug, Default)]
pub struct Outages {
    by_node: HashMap<NodeId, Vec<Period>>,
}

impl Outages {
    /// Records which nodes are unreachable at `now_ms`, each with when its
    /// outage began: a period opens for a node newly out, and closes for
    /// one no longer out.
    pub fn update(&mut self, out: &HashMap<NodeId, i64>, now_ms: i64) {
        for (node, &start) in out {
            let periods = self.by_node.entry(node.clone()).or_default();
            match periods.last_mut() {
                Some(p) if p.end_ms.is_none() => p.start_ms = p.start_ms.min(start),
                _ => periods.push(Period { start_ms: start.min(now_ms), end_ms: None }),
            }
        }
        self.by_node.retain(|node, periods| {
            if let Some(p) = periods.last_mut() {
                if p.end_ms.is_none() && !out.contains_key(node) {
                    p.end_ms = Some(now_ms);
                }
            }
            periods.retain(|p| p.end_ms.is_none_or(|e| now_ms - e < REMEMBERED_MS));
            if periods.len() > KEPT {
                periods.drain(..periods.len() - KEPT);
            }
            !periods.is_empty()
        });
    }

    /// Whether a round that ran within `(from_ms, to_ms]` overlapped an
    /// outage of `node` or one of its ancestors.
    pub fn overlaps(&self, topo: &Topology, node: &NodeId, from_ms: i64, to_ms: i64) -> bool {
        std::iter::once(node).chain(super::incident::ancestors(topo, node)).any(|n| {
            self.by_node.get(n).is_some_and(|periods| {
                periods.iter().any(|p| {
                    p.start_ms - CLOCK_SLACK_MS <= to_ms && p.end_ms.is_none_or(|e| e + CLOCK_SLACK_MS >= from_ms)
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn topo() -> Topology {
        Topology::parse(
            Path::new("t.yaml"),
            "nodes:\n  - id: p\n    tier: province\n    name: P\n  - id: c1\n    tier: commune\n    name: C1\n    parent: p\n  - id: c2\n    tier: commune\n    name: C2\n    parent: p\n",
        )
        .unwrap()
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn a_round_that_overlapped_an_outage_belongs_to_it() {
        let t = topo();
        let mut o = Outages::default();
        o.update(&HashMap::from([(id("c1"), 10_000)]), 12_000);
        // Open: anything from its start on overlaps.
        assert!(o.overlaps(&t, &id("c1"), 0, 10_000));
        assert!(o.overlaps(&t, &id("c1"), 0, 9_999), "within the clock slack");
        assert!(!o.overlaps(&t, &id("c1"), 0, 10_000 - CLOCK_SLACK_MS - 1));
        assert!(!o.overlaps(&t, &id("c2"), 0, 50_000), "a sibling is not covered");
        o.update(&HashMap::new(), 40_000);
        // A once-a-minute round stamped after the restore that began during the cut.
        assert!(o.overlaps(&t, &id("c1"), 5_000, 65_000));
        // The next round, wholly after the restore, is judged on its own.
        assert!(!o.overlaps(&t, &id("c1"), 65_000, 125_000));
        // A province's outage covers its communes.
        o.update(&HashMap::from([(id("p"), 200_000)]), 201_000);
        assert!(o.overlaps(&t, &id("c2"), 190_000, 250_000));
    }

    #[test]
    fn memory_is_bounded_in_count_and_time() {
        let t = topo();
        let mut o = Outages::default();
        for k in 0..100i64 {
            o.update(&HashMap::from([(id("c1"), k * 1000)]), k * 1000);
            o.update(&HashMap::new(), k * 1000 + 500);
        }
        assert_eq!(o.by_node[&id("c1")].len(), KEPT);
        assert!(!o.overlaps(&t, &id("c1"), 0, 50_000), "old periods are forgotten");
        o.update(&HashMap::new(), 200_000 + REMEMBERED_MS);
        assert!(o.by_node.is_empty());
    }
}
