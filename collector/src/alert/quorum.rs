//! Shared services by quorum: a target probed from several nodes (the same
//! target name, or one service declared under the rule's `quorum.services`)
//! is judged across its vantage points, not node by node.
//!
//! - The **vantage points** of a service are the nodes with a current
//!   reading of it whose own path is up (a sample taken during an outage of
//!   the node or its link reads missing and does not count).
//! - It **stands** (one incident naming the service and how many see it)
//!   when at least `at_least` of them fail it (default a majority), one of
//!   them past its own `for`. Two vantage points at least: a service seen
//!   from one node is that node's problem.
//! - A failing vantage point waits while the quorum is **forming**: enough
//!   others have not reported since its failure began (they probe once a
//!   minute) that it may yet be met. A vantage point that stopped
//!   reporting (two intervals) is not waited for.
//! - Otherwise it is **split**: the failing nodes' problem, node by node
//!   (one fails while the rest succeed).
//! - A standing service that loses its quorum (the service recovers, the
//!   vantage points report one by one) **lingers** while a node still
//!   failing has not reported since: it resolves as one, and a node that
//!   still fails on a sample taken after that is its own problem then.

use std::collections::{BTreeMap, HashMap};

use tierwatch_protocol::NodeId;

use super::readings::{AlertKey, Read};
use super::rules::Rules;
use super::state::{Instance, Phase, Reading};

/// The probe interval assumed for a vantage point with one sample so far.
const DEFAULT_INTERVAL_MS: i64 = 60_000;

/// One service's verdict at one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// One incident of the service: its failing vantage points' alerts are in it.
    Stands,
    /// The quorum may yet be met: failing vantage points wait.
    Forming,
    /// Each failing vantage point is its own problem.
    Split,
}

/// A service of a quorum rule as judged now.
#[derive(Debug, Clone)]
pub struct Service {
    pub rule: usize,
    pub name: String,
    pub verdict: Verdict,
    /// Vantage points (path up, current reading) and the failing ones.
    pub seen_by: usize,
    pub failing: Vec<NodeId>,
}

/// The verdicts of one evaluation.
#[derive(Debug, Default)]
pub struct Judged {
    pub services: Vec<Service>,
    /// The service (index into `services`) of every quorum rule's alert instance.
    pub of: HashMap<AlertKey, usize>,
}

impl Judged {
    /// The verdict on the service of alert `key`, if its rule has a quorum.
    pub fn verdict(&self, key: &AlertKey) -> Option<Verdict> {
        self.of.get(key).map(|&i| self.services[i].verdict)
    }
}

/// Services standing between evaluations.
#[derive(Debug, Default)]
pub struct Quorums {
    standing: HashMap<(usize, String), Standing>,
}

/// A service that stood (its incident present).
#[derive(Debug, Default)]
struct Standing {
    /// Restored after a restart: stands, quorum or not, until this time
    /// (ms) while its incident is still open, so the vantage points can
    /// report again before it is judged.
    held_until_ms: i64,
    /// Whether its incident was present at the last evaluation.
    present: bool,
    /// Since the quorum was lost: the failing vantage points then, each
    /// with its last sample's timestamp and interval.
    lost: Option<HashMap<NodeId, (i64, i64)>>,
    /// When the quorum was lost (collector clock).
    lost_ms: i64,
}

/// One vantage point (a node; its series of the service merged).
#[derive(Debug, Clone, Copy)]
struct Vantage {
    failing: bool,
    firing: bool,
    /// When its breach began (failing only).
    since_ms: i64,
    last_sample_ms: i64,
    interval_ms: i64,
}

impl Vantage {
    /// Another series of the same node and service.
    fn merge(&mut self, o: Vantage) {
        if o.failing && (!self.failing || o.since_ms < self.since_ms) {
            self.since_ms = o.since_ms;
        }
        self.failing |= o.failing;
        self.firing |= o.firing;
        self.last_sample_ms = self.last_sample_ms.max(o.last_sample_ms);
        self.interval_ms = self.interval_ms.max(o.interval_ms);
    }
}

impl Quorums {
    /// Takes back a service incident open at the last stop: it stands
    /// while still open until `held_until_ms`, then is judged.
    pub fn restore(&mut self, rule: usize, service: String, held_until_ms: i64) {
        self.standing.insert((rule, service), Standing { held_until_ms, present: true, ..Standing::default() });
    }

    /// The services standing (rule, name).
    pub fn standing(&self) -> impl Iterator<Item = &(usize, String)> {
        self.standing.keys()
    }

    /// Tells which standing services' incidents were present at this
    /// evaluation (one that resolved, or never paged, lingers no more).
    pub fn presented(&mut self, present: &std::collections::HashSet<(usize, String)>) {
        for (id, s) in &mut self.standing {
            s.present = present.contains(id);
        }
    }

    /// Judges every service of every quorum rule at `now_ms`, from the
    /// readings (after outage attribution) and the alert instances.
    pub fn judge(
        &mut self,
        rules: &Rules,
        readings: &HashMap<AlertKey, Read>,
        instances: &HashMap<AlertKey, Instance>,
        now_ms: i64,
    ) -> Judged {
        let mut by_service: BTreeMap<(usize, String), BTreeMap<NodeId, Vantage>> = BTreeMap::new();
        let mut of: HashMap<AlertKey, (usize, String)> = HashMap::new();
        for (key, r) in readings {
            let Some(q) = &rules.rules[key.rule].quorum else { continue };
            let Some(service) = q.service_of(&key.labels) else { continue };
            of.insert(key.clone(), (key.rule, service.clone()));
            let points = by_service.entry((key.rule, service)).or_default();
            let Some((from, to)) = r.sample.filter(|_| r.reading != Reading::Missing) else { continue };
            let phase = instances.get(key).map_or(Phase::Inactive, |i| i.phase);
            let (failing, firing, since_ms) = match phase {
                Phase::Pending { since_ms, .. } => (r.reading != Reading::Clear, false, since_ms),
                Phase::Firing { since_ms } => (r.reading != Reading::Clear, true, since_ms),
                _ => (false, false, now_ms),
            };
            let interval_ms = if to > from && from > 0 { to - from } else { DEFAULT_INTERVAL_MS };
            let v = Vantage { failing, firing, since_ms, last_sample_ms: to, interval_ms };
            points.entry(key.node.clone()).and_modify(|p| p.merge(v)).or_insert(v);
        }
        // Firing instances with no reading now (their series went quiet)
        // still belong to their service.
        for key in instances.keys() {
            if of.contains_key(key) {
                continue;
            }
            if let Some(service) = rules.rules[key.rule].quorum.as_ref().and_then(|q| q.service_of(&key.labels)) {
                of.insert(key.clone(), (key.rule, service.clone()));
                by_service.entry((key.rule, service)).or_default();
            }
        }
        for id in self.standing.keys() {
            by_service.entry(id.clone()).or_default();
        }
        let mut judged = Judged::default();
        let mut index: HashMap<(usize, String), usize> = HashMap::new();
        for ((rule, name), points) in by_service {
            let Some(q) = &rules.rules[rule].quorum else { continue };
            let seen_by = points.len();
            let failing: Vec<(&NodeId, &Vantage)> = points.iter().filter(|(_, v)| v.failing).collect();
            let met = seen_by >= 2 && failing.len() >= q.needed(seen_by) && failing.iter().any(|(_, v)| v.firing);
            let id = (rule, name.clone());
            let verdict = match self.standing.get_mut(&id) {
                _ if met => {
                    let s = self.standing.entry(id.clone()).or_default();
                    (s.lost, s.held_until_ms) = (None, 0);
                    Verdict::Stands
                }
                // Restored and still open: the vantage points report again first.
                Some(s) if s.present && now_ms < s.held_until_ms => Verdict::Stands,
                // Lingers while a node failing when the quorum was lost has
                // not reported since (its sample unchanged, by its own clock)
                // and is still expected to.
                Some(s) if s.present => {
                    let lost_ms = if s.lost.is_none() { now_ms } else { s.lost_ms };
                    let lost = s.lost.get_or_insert_with(|| {
                        failing.iter().map(|(n, v)| ((*n).clone(), (v.last_sample_ms, v.interval_ms))).collect()
                    });
                    s.lost_ms = lost_ms;
                    let waiting = failing.iter().any(|(n, v)| {
                        lost.get(*n)
                            .is_some_and(|&(at, interval)| v.last_sample_ms == at && now_ms < lost_ms + 2 * interval)
                    });
                    if waiting {
                        Verdict::Stands
                    } else {
                        self.standing.remove(&id);
                        Verdict::Split
                    }
                }
                Some(_) => {
                    self.standing.remove(&id);
                    forming(q, &points, &failing, seen_by, now_ms)
                }
                None => forming(q, &points, &failing, seen_by, now_ms),
            };
            let failing_nodes = failing.iter().map(|(n, _)| (*n).clone()).collect();
            index.insert(id, judged.services.len());
            judged.services.push(Service { rule, name, verdict, seen_by, failing: failing_nodes });
        }
        judged.of = of.into_iter().filter_map(|(k, id)| index.get(&id).map(|&i| (k, i))).collect();
        judged
    }
}

/// Forming while the failing ones and those that have not reported since
/// the first failure began (and are still expected to) could make the
/// quorum; else each failing node's own problem.
fn forming(
    q: &super::rules::Quorum,
    points: &BTreeMap<NodeId, Vantage>,
    failing: &[(&NodeId, &Vantage)],
    seen_by: usize,
    now_ms: i64,
) -> Verdict {
    let first = failing.iter().map(|(_, v)| v.since_ms).min().unwrap_or(now_ms);
    let unheard = points
        .values()
        .filter(|v| !v.failing && v.last_sample_ms < first && now_ms < v.last_sample_ms + 2 * v.interval_ms)
        .count();
    if seen_by >= 2 && !failing.is_empty() && failing.len() + unheard >= q.needed(seen_by) {
        Verdict::Forming
    } else {
        Verdict::Split
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tierwatch_protocol::Label;

    fn rules() -> Rules {
        let text = "rules:\n  - name: service_down\n    metric: tierwatch_probe_success\n    below: 1\n    for: 30s\n    quorum: {services: {portal: [portal, portal-web]}}\n    problem: service\n    severity: critical\n    summary: s\n";
        Rules::parse(Path::new("r.yaml"), text).unwrap()
    }

    fn key(node: &str, target: &str) -> AlertKey {
        AlertKey { rule: 0, node: NodeId::new(node).unwrap(), labels: vec![Label::new("target", target)] }
    }

    /// Vantage point `node` last sampled at `at` (a minute after the one
    /// before), failing since `since` (firing if `firing`) or fine.
    fn point(
        readings: &mut HashMap<AlertKey, Read>,
        instances: &mut HashMap<AlertKey, Instance>,
        node: &str,
        at: i64,
        state: Option<(i64, bool)>,
    ) {
        let k = key(node, if node == "c4" { "portal-web" } else { "portal" });
        let reading = if state.is_some() { Reading::Breach } else { Reading::Clear };
        let subject = k.node.clone();
        readings
            .insert(k.clone(), Read { reading, subject: subject.clone(), value: 0.0, sample: Some((at - 60_000, at)) });
        if let Some((since_ms, firing)) = state {
            let phase = if firing {
                Phase::Firing { since_ms }
            } else {
                Phase::Pending { since_ms, samples: 1, last_sample_ms: Some(at) }
            };
            instances.insert(k, Instance { phase, subject, value: 0.0 });
        }
    }

    #[test]
    fn a_service_failing_from_most_vantage_points_stands_as_one() {
        let r = rules();
        let mut q = Quorums::default();
        let (mut rd, mut inst) = (HashMap::new(), HashMap::new());
        // p fails first (firing); c1..c4 sampled before it began: forming.
        point(&mut rd, &mut inst, "p", 100_000, Some((70_000, true)));
        for c in ["c1", "c2", "c3", "c4"] {
            point(&mut rd, &mut inst, c, 60_000, None);
        }
        let j = q.judge(&r, &rd, &inst, 101_000);
        assert_eq!(j.services.len(), 1, "portal-web is portal: {:?}", j.services);
        assert_eq!(j.verdict(&key("p", "portal")), Some(Verdict::Forming));
        // Two more fail (pending): 3 of 5, one firing: it stands.
        point(&mut rd, &mut inst, "c1", 110_000, Some((110_000, false)));
        point(&mut rd, &mut inst, "c4", 115_000, Some((115_000, false)));
        let j = q.judge(&r, &rd, &inst, 116_000);
        assert_eq!(j.verdict(&key("c4", "portal-web")), Some(Verdict::Stands));
        assert_eq!((j.services[0].seen_by, j.services[0].failing.len()), (5, 3));
        // Its incident is paged (present): from now on it may linger.
        let paged: std::collections::HashSet<(usize, String)> = [(0, "portal".to_string())].into();
        q.presented(&paged);
        // Back: c1 and c4 report fine, p has not reported since: lingers.
        point(&mut rd, &mut inst, "c1", 170_000, None);
        inst.remove(&key("c1", "portal"));
        let j = q.judge(&r, &rd, &inst, 171_000);
        assert_eq!(j.services[0].verdict, Verdict::Stands, "lingers: p failed before the quorum was lost");
        point(&mut rd, &mut inst, "c4", 175_000, None);
        inst.remove(&key("c4", "portal-web"));
        assert_eq!(q.judge(&r, &rd, &inst, 176_000).services[0].verdict, Verdict::Stands);
        // p reports again, still failing: its own problem now.
        point(&mut rd, &mut inst, "p", 180_000, Some((70_000, true)));
        assert_eq!(q.judge(&r, &rd, &inst, 181_000).services[0].verdict, Verdict::Split);
    }

    #[test]
    fn a_node_is_one_vantage_point_and_a_restored_service_waits_for_them() {
        let r = rules();
        let (mut rd, mut inst) = (HashMap::new(), HashMap::new());
        // c1 probes the service under both its names, both failing; c2 reaches it.
        point(&mut rd, &mut inst, "c1", 100_000, Some((40_000, true)));
        let k = AlertKey { labels: vec![Label::new("target", "portal-web")], ..key("c1", "portal") };
        rd.insert(k.clone(), rd[&key("c1", "portal")].clone());
        inst.insert(k, inst[&key("c1", "portal")].clone());
        point(&mut rd, &mut inst, "c2", 100_000, None);
        let j = Quorums::default().judge(&r, &rd, &inst, 101_000);
        assert_eq!((j.services[0].seen_by, j.services[0].failing.len(), j.services[0].verdict), (2, 1, Verdict::Split));
        // Restored after a restart with nobody heard yet: it stands until the hold ends.
        let mut q = Quorums::default();
        q.restore(0, "portal".into(), 120_000);
        let empty = HashMap::new();
        let j = q.judge(&r, &empty, &HashMap::new(), 1000);
        assert_eq!(j.services[0].verdict, Verdict::Stands);
        assert_eq!(q.judge(&r, &rd, &inst, 101_000).services[0].verdict, Verdict::Stands);
        q.presented(&Default::default());
        assert_eq!(q.judge(&r, &rd, &inst, 102_000).services[0].verdict, Verdict::Split, "resolved meanwhile");
    }

    #[test]
    fn one_vantage_point_failing_while_the_rest_succeed_is_its_own_problem() {
        let r = rules();
        let mut q = Quorums::default();
        let (mut rd, mut inst) = (HashMap::new(), HashMap::new());
        point(&mut rd, &mut inst, "c1", 100_000, Some((40_000, true)));
        for c in ["p", "c2", "c3"] {
            point(&mut rd, &mut inst, c, 90_000, None);
        }
        assert_eq!(q.judge(&r, &rd, &inst, 101_000).services[0].verdict, Verdict::Split);
        // A vantage point whose node is cut off reads missing: not counted.
        point(&mut rd, &mut inst, "c2", 95_000, Some((95_000, true)));
        rd.get_mut(&key("c2", "portal")).unwrap().reading = Reading::Missing;
        let j = q.judge(&r, &rd, &inst, 101_000);
        assert_eq!((j.services[0].verdict, j.services[0].seen_by), (Verdict::Split, 3));
        // Seen from one node only: never a quorum.
        let (mut rd, mut inst) = (HashMap::new(), HashMap::new());
        point(&mut rd, &mut inst, "c1", 100_000, Some((40_000, true)));
        assert_eq!(Quorums::default().judge(&r, &rd, &inst, 101_000).services[0].verdict, Verdict::Split);
    }

    #[test]
    fn a_vantage_point_gone_quiet_is_not_waited_for() {
        let r = rules();
        let mut q = Quorums::default();
        let (mut rd, mut inst) = (HashMap::new(), HashMap::new());
        point(&mut rd, &mut inst, "c1", 300_000, Some((250_000, true)));
        point(&mut rd, &mut inst, "c2", 200_000, None);
        point(&mut rd, &mut inst, "c3", 120_000, None);
        // c2 (last heard 100 s ago, a minute apart) may report: forming; c3 is quiet.
        assert_eq!(q.judge(&r, &rd, &inst, 300_000).services[0].verdict, Verdict::Forming);
        assert_eq!(q.judge(&r, &rd, &inst, 320_000).services[0].verdict, Verdict::Split);
    }

    #[test]
    fn at_least_counts_and_shares() {
        let q = |a| super::super::rules::Quorum { at_least: a, services: BTreeMap::new() };
        use super::super::rules::AtLeast::*;
        assert_eq!([2, 3, 4, 5].map(|n| q(Majority).needed(n)), [2, 2, 3, 3]);
        assert_eq!([2, 5].map(|n| q(Count(2)).needed(n)), [2, 2]);
        assert_eq!([1, 3, 5, 10].map(|n| q(Share(0.6)).needed(n)), [1, 2, 3, 6]);
    }
}
