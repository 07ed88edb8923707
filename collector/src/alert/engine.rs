//! Evaluation: rules over the store's latest values and the nodes' push
//! times, each alert instance through its state machine, the firing ones
//! grouped into incidents, and incident changes (opened, updated, resolved)
//! handed to the notifiers. Called after every stored batch (a failing
//! probe pages without waiting for a tick) and on a one-second tick (for
//! heartbeats).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tierwatch_protocol::NodeId;

use super::flap::{FlapTimers, Flaps};
use super::incident::{self, Active};
use super::maintenance::{self, Window};
use super::mean::Means;
use super::model::{Ack, Change, IncidentView};
use super::outage::Outages;
use super::quorum::{Judged, Quorums, Verdict};
use super::readings::{self, AlertKey, Current, Silence};
use super::rules::{RuleKind, Rules};
use super::state::{is_firing, step, Instance, Phase, Reading, Transition};
use super::view;
use crate::store::Store;
use crate::topology::Topology;

/// Saved timers wait at least this long after a start for their first
/// reading, and a restored service incident for its vantage points: two
/// rounds of a probe run once a minute.
const RESTORED_FOR_MS: i64 = 120_000;

/// Timers saved longer ago than this before a start are not taken back:
/// a `for` does not run on across hours of downtime.
const TIMERS_VALID_FOR_MS: i64 = 600_000;

/// Push interval assumed for a node that has not announced one.
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_secs(10);

/// The engine's state between evaluations.
pub struct Engine {
    rules: Rules,
    topo: Arc<Topology>,
    started_ms: i64,
    instances: HashMap<AlertKey, Instance>,
    /// Incidents paged, by key.
    open: BTreeMap<String, IncidentView>,
    /// Incidents restored after a restart and not yet seen again: kept open
    /// (not resolved, not paged again) until `restored_until_ms`, long
    /// enough for every node to push and every heartbeat to decide.
    restored: std::collections::HashSet<String>,
    restored_until_ms: i64,
    /// Alert instances decided since this start: a heartbeat once its node
    /// pushed (or it breached), anything else once read. A restored
    /// incident whose alerts are all decided is judged at once, not at
    /// `restored_until_ms`.
    decided: HashSet<AlertKey>,
    flaps: Flaps,
    /// Nodes that pushed before this start (from the ledger): judged by
    /// heartbeat from the start. A node never heard from is unknown, not
    /// down: an agent not yet installed pages nothing.
    known: HashSet<NodeId>,
    /// Nodes late at the last evaluation, and when each was last heard again after being late.
    late: HashSet<NodeId>,
    returned: HashMap<NodeId, i64>,
    windows: Vec<Window>,
    /// Incidents kept from paging by a maintenance window, by key.
    muted: BTreeMap<String, IncidentView>,
    /// When nodes were unreachable: what was measured then belongs to that.
    outages: Outages,
    /// The windows of `mean_over` rules.
    means: Means,
    /// Members of a children group that dissolved, by (node, problem):
    /// they page on their own only while one of their alerts still breaks
    /// its rule's threshold, never on hysteresis alone. Forgotten once
    /// nothing of theirs fires.
    dissolved: HashSet<(NodeId, String)>,
    /// Shared services judged across their vantage points.
    quorums: Quorums,
    /// Alert instances saved at the last stop, taken up at their first
    /// reading after the start (a pending `for` goes on, a firing alert
    /// keeps its start), forgotten at `restored_until_ms`.
    seeds: HashMap<AlertKey, Instance>,
    /// Flap timers saved at the last stop, for the flapping incidents restored.
    saved_flaps: Option<FlapTimers>,
    /// The readings, kept between evaluations: one re-reads only what changed.
    current: Current,
    /// Tests only: act on every reading at every evaluation, as the engine
    /// did before it kept readings (the reference the incremental one must equal).
    #[cfg(test)]
    every_reading: bool,
}

/// The engine's timers as saved across a restart (JSON in the state database).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timers {
    pub instances: Vec<SavedInstance>,
    pub flaps: FlapTimers,
}

/// An alert instance past inactive, by rule name (rules may be reordered).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedInstance {
    pub rule: String,
    pub node: String,
    pub labels: Vec<(String, String)>,
    pub subject: String,
    #[serde(flatten)]
    pub phase: Phase,
}

impl Engine {
    /// The language and local time of the texts people read.
    pub fn locale(&self) -> crate::i18n::Locale {
        self.rules.locale
    }

    /// An engine for `rules` over `topo`; nodes count as heard from at `started_ms`.
    pub fn new(rules: Rules, topo: Arc<Topology>, started_ms: i64) -> Engine {
        Engine {
            topo,
            started_ms,
            instances: HashMap::new(),
            open: BTreeMap::new(),
            restored: Default::default(),
            restored_until_ms: 0,
            decided: HashSet::new(),
            flaps: Flaps::new(rules.flapping, rules.locale.language),
            known: HashSet::new(),
            late: HashSet::new(),
            returned: HashMap::new(),
            windows: Vec::new(),
            muted: BTreeMap::new(),
            outages: Outages::default(),
            means: Means::default(),
            dissolved: HashSet::new(),
            quorums: Quorums::default(),
            seeds: HashMap::new(),
            saved_flaps: None,
            current: Current::default(),
            #[cfg(test)]
            every_reading: false,
            rules,
        }
    }

    /// The incidents a maintenance window keeps from paging.
    pub fn muted_incidents(&self) -> impl Iterator<Item = &IncidentView> {
        self.muted.values()
    }

    /// Replaces the maintenance windows (checked at every evaluation).
    pub fn set_windows(&mut self, windows: Vec<Window>) {
        self.windows = windows;
    }

    /// The maintenance windows, configured and set through the API.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Acknowledges the open incident `key`; `None` if there is none.
    pub fn acknowledge(&mut self, key: &str, ack: Ack) -> Option<Change> {
        let v = self.open.get_mut(key)?;
        v.ack = Some(ack);
        Some(Change::Acknowledged(v.clone()))
    }

    /// The incidents currently paged.
    pub fn open_incidents(&self) -> impl Iterator<Item = &IncidentView> {
        self.open.values()
    }

    /// Nodes that pushed before this start: their heartbeats count from the start.
    pub fn set_known(&mut self, known: HashSet<NodeId>) {
        self.known = known;
    }

    /// Restores incidents paged before a restart, so they are not paged again.
    pub fn restore(&mut self, open: Vec<IncidentView>) {
        let missed = self
            .rules
            .rules
            .iter()
            .filter_map(|r| match r.kind {
                RuleKind::Heartbeat { missed, .. } => Some(missed),
                _ => None,
            })
            .max()
            .unwrap_or(3);
        self.restored_until_ms = self.started_ms + (missed as i64 + 1) * DEFAULT_PUSH_INTERVAL.as_millis() as i64;
        for i in open {
            if let (Some(service), Some(rule)) = (&i.service, i.alerts.first()) {
                if let Some(r) = self.rules.rules.iter().position(|r| r.name == rule.rule) {
                    let hold = self.restored_until_ms.max(self.started_ms + RESTORED_FOR_MS);
                    self.quorums.restore(r, service.clone(), hold);
                }
            }
            self.flaps.restore(&i, self.saved_flaps.as_ref(), self.started_ms);
            self.restored.insert(i.key.clone());
            self.open.insert(i.key.clone(), i);
        }
    }

    /// The timers a restart must keep: every alert instance past inactive
    /// (pending with its samples, firing since, clearing since) and flap
    /// detection's openings and quiet periods.
    pub fn timers(&self) -> Timers {
        let mut instances: Vec<SavedInstance> = self
            .instances
            .iter()
            .map(|(k, i)| SavedInstance {
                rule: self.rules.rules[k.rule].name.clone(),
                node: k.node.to_string(),
                labels: k.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
                subject: i.subject.to_string(),
                phase: i.phase,
            })
            .collect();
        instances.sort_by(|a, b| (&a.rule, &a.node, &a.labels).cmp(&(&b.rule, &b.node, &b.labels)));
        Timers { instances, flaps: self.flaps.timers() }
    }

    /// Takes back the timers saved at the last stop; call before [`Engine::restore`].
    /// Instances of rules no longer configured are dropped.
    pub fn restore_timers(&mut self, saved: Timers, saved_ms: i64) {
        let fresh = self.started_ms - saved_ms <= TIMERS_VALID_FOR_MS;
        for s in saved.instances.into_iter().filter(|_| fresh) {
            let (Some(rule), Ok(node), Ok(subject)) =
                (self.rules.rules.iter().position(|r| r.name == s.rule), NodeId::new(&s.node), NodeId::new(&s.subject))
            else {
                continue;
            };
            let labels = s.labels.into_iter().map(|(k, v)| tierwatch_protocol::Label::new(k, v)).collect();
            self.seeds.insert(AlertKey { rule, node, labels }, Instance { phase: s.phase, subject, value: 0.0 });
        }
        self.flaps.restore_timers(&saved.flaps);
        self.saved_flaps = Some(saved.flaps);
    }

    /// How long each node (known or heard from) has been silent, in ms,
    /// and its push interval. The silence of a node behind one that just
    /// came back counts from that return: its agent needs a moment to
    /// reconnect, and must not be paged for the parent's outage.
    fn silences(&mut self, store: &Store, now_ms: i64) -> HashMap<NodeId, Silence> {
        let mut raw: Vec<(usize, NodeId, i64, i64)> = Vec::new();
        store.for_each_node(|node, state| {
            // Never heard from: unknown, neither down nor late.
            if state.last_push_ms.is_none() && !self.known.contains(&node.id) {
                return;
            }
            let interval = if state.push_interval_ms > 0 {
                state.push_interval_ms as i64
            } else {
                DEFAULT_PUSH_INTERVAL.as_millis() as i64
            };
            let heard = state.last_push_ms.unwrap_or(self.started_ms).max(self.started_ms);
            let depth = incident::ancestors(&self.topo, &node.id).count();
            raw.push((depth, node.id.clone(), now_ms - heard, interval));
        });
        // Parents first, so a return seen now already covers their children.
        raw.sort_by_key(|(depth, ..)| *depth);
        let mut out = HashMap::new();
        for (_, id, age, interval) in raw {
            let back = incident::ancestors(&self.topo, &id).filter_map(|a| self.returned.get(a)).max().copied();
            let age = back.map_or(age, |b| age.min(now_ms - b));
            let late = age > interval + interval / 2;
            if !late && self.late.remove(&id) {
                self.returned.insert(id.clone(), now_ms);
            } else if late {
                self.late.insert(id.clone());
            }
            out.insert(id, (age, interval));
        }
        out
    }

    /// Evaluates every rule at `now_ms`; returns the incident changes to notify.
    pub fn evaluate(&mut self, store: &Store, now_ms: i64) -> Vec<Change> {
        let silences = self.silences(store, now_ms);
        let mut current = std::mem::take(&mut self.current);
        current.refresh(&self.rules, &self.topo, store, &silences, now_ms);
        #[cfg(test)]
        same_as_read_afresh(&current, &self.rules, &self.topo, store, &silences, now_ms);
        self.means.forget(current.take_gone_means());
        let changes = self.evaluate_readings(&mut current, store, &silences, now_ms);
        self.current = current;
        changes
    }

    /// The readings this evaluation can act on, out of every reading: those
    /// that breach, of an alert instance (or a timer saved at the last stop)
    /// and the `mean_over` ones with a sample to take. The others read as
    /// they did at the last evaluation, and a clear or in-between reading
    /// neither starts an instance nor is changed by outage attribution.
    /// While incidents restored after a restart wait to be decided, every
    /// reading is (deciding looks at all of them).
    fn relevant(&self, current: &mut Current) -> HashMap<AlertKey, readings::Read> {
        let mut out: HashMap<AlertKey, readings::Read> = HashMap::new();
        let new_samples = current.take_new_samples();
        #[cfg(test)]
        let every = self.every_reading;
        #[cfg(not(test))]
        let every = false;
        if !self.restored.is_empty() || every {
            out.extend(current.iter().map(|(k, r)| (k, r.clone())));
            return out;
        }
        let keys = current
            .breaches()
            .iter()
            .chain(&new_samples)
            .chain(self.means.retake())
            .chain(self.instances.keys())
            .chain(self.seeds.keys());
        for k in keys {
            if out.contains_key(k) {
                continue;
            }
            if let Some(r) = current.get(k) {
                out.insert(k.clone(), r.clone());
            }
        }
        out
    }

    /// Adds the series of every shared service judged now to `readings`: a
    /// service of a reading there, of an alert instance, or standing. A
    /// quorum counts all its vantage points; those added read clear or in
    /// between (every breach is there already), so as they read last.
    fn add_services(&self, current: &Current, readings: &mut HashMap<AlertKey, readings::Read>) {
        let mut services: HashSet<(usize, String)> = self.quorums.standing().cloned().collect();
        for k in readings.keys().chain(self.instances.keys()) {
            if let Some(s) = self.rules.rules[k.rule].quorum.as_ref().and_then(|q| q.service_of(&k.labels)) {
                services.insert((k.rule, s));
            }
        }
        for (rule, service) in services {
            for k in current.service(rule, &service) {
                if readings.contains_key(k) {
                    continue;
                }
                if let Some(r) = current.get(k) {
                    let mut r = r.clone();
                    self.means.as_taken(k, &mut r);
                    readings.insert(k.clone(), r);
                }
            }
        }
    }

    fn evaluate_readings(
        &mut self,
        current: &mut Current,
        store: &Store,
        silences: &HashMap<NodeId, Silence>,
        now_ms: i64,
    ) -> Vec<Change> {
        let mut readings = self.relevant(current);
        self.attribute_to_outages(&mut readings);
        // The alert instances whose reading breached at this evaluation.
        let breaching: HashSet<AlertKey> =
            readings.iter().filter(|(_, r)| r.reading == Reading::Breach).map(|(k, _)| k.clone()).collect();
        // Stepped: every instance, and the readings that can start one. An
        // inactive instance stays inactive on anything but a breach, so the
        // many series reading clear are no work (nor a key cloned) unless a
        // timer saved at the last stop waits for them.
        let mut keys: Vec<AlertKey> = self.instances.keys().cloned().collect();
        keys.extend(
            readings
                .iter()
                .filter(|(k, r)| {
                    !self.instances.contains_key(*k) && (r.reading == Reading::Breach || self.seeds.contains_key(*k))
                })
                .map(|(k, _)| k.clone()),
        );
        for key in keys {
            let rule = &self.rules.rules[key.rule];
            let (reading, subject, value, sample) = match readings.get(&key) {
                Some(r) => (r.reading, r.subject.clone(), r.value, r.sample.map(|(_, at)| at)),
                None => match self.instances.get(&key) {
                    // An event alert with no event within its hold is over;
                    // other series gone quiet keep their state.
                    Some(i) if matches!(rule.kind, RuleKind::Event { .. }) => {
                        (Reading::Clear, i.subject.clone(), i.value, None)
                    }
                    Some(i) => (Reading::Missing, i.subject.clone(), i.value, None),
                    None => continue,
                },
            };
            // A timer saved at the last stop goes on at the first real reading.
            let seed = if reading != Reading::Missing && !self.instances.contains_key(&key) {
                self.seeds.remove(&key)
            } else {
                None
            };
            let inst = self.instances.entry(key.clone()).or_insert(seed.unwrap_or(Instance {
                phase: Phase::Inactive,
                subject: subject.clone(),
                value,
            }));
            let (phase, t) = step(inst.phase, reading, sample, now_ms, rule.for_, rule.clear_for);
            inst.phase = phase;
            inst.subject = subject;
            inst.value = value;
            if let Transition::Fired { .. } | Transition::Resolved { .. } = t {
                tracing::debug!(rule = %rule.name, node = %key.node, transition = ?t, "alert");
            }
        }
        if !self.restored.is_empty() {
            // Decided: past pending (a `for` still running decides nothing),
            // and for a heartbeat, its node pushed since the start (or it breached).
            let pushed = store.nodes_pushed_since(self.started_ms);
            for (key, r) in &readings {
                let pending = matches!(self.instances.get(key).map(|i| i.phase), Some(Phase::Pending { .. }));
                let heartbeat = matches!(self.rules.rules[key.rule].kind, RuleKind::Heartbeat { .. });
                if !pending && (!heartbeat || r.reading == Reading::Breach || pushed.contains(&key.node)) {
                    self.decided.insert(key.clone());
                }
            }
        }
        self.instances.retain(|_, i| i.phase != Phase::Inactive);
        if !self.seeds.is_empty() && now_ms >= self.restored_until_ms.max(self.started_ms + RESTORED_FOR_MS) {
            self.seeds.clear();
        }
        self.track_outages(silences, current.answering(), now_ms);
        self.add_services(current, &mut readings);
        let judged = self.quorums.judge(&self.rules, &readings, &self.instances, now_ms);
        self.changes(current.suspect(), &breaching, &judged, now_ms)
    }

    /// (parent, problem) of every group forming: at least `min_children`
    /// children of the parent with an alert of that problem pending or
    /// firing (reachability aside: it has its own hold).
    fn forming(&self, judged: &Judged) -> HashSet<(NodeId, String)> {
        // As `incident::group` forms groups: none when the parent has the
        // problem itself, none of children behind an unreachable node.
        let firing: HashSet<(&NodeId, &str)> = self
            .instances
            .iter()
            .filter(|(_, i)| is_firing(i.phase))
            .map(|(k, i)| (&i.subject, self.rules.rules[k.rule].problem.as_str()))
            .collect();
        let cut_off =
            |n: &NodeId| incident::ancestors(&self.topo, n).any(|a| firing.contains(&(a, incident::UNREACHABLE)));
        let mut children: HashMap<(NodeId, String), HashSet<&NodeId>> = HashMap::new();
        for (key, i) in &self.instances {
            let problem = &self.rules.rules[key.rule].problem;
            // A service judged by quorum is not its nodes' problem.
            let by_quorum = matches!(judged.verdict(key), Some(Verdict::Stands | Verdict::Forming));
            if problem == incident::UNREACHABLE || i.phase == Phase::Inactive || cut_off(&i.subject) || by_quorum {
                continue;
            }
            if let Some(parent) = self.topo.get(&i.subject).and_then(|n| n.parent.clone()) {
                if !firing.contains(&(&parent, problem.as_str())) {
                    children.entry((parent, problem.clone())).or_default().insert(&i.subject);
                }
            }
        }
        children.into_iter().filter(|(_, c)| c.len() >= self.rules.min_children).map(|(k, _)| k).collect()
    }

    /// The longest `for` of the rules reporting `problem`.
    fn slowest_for(&self, problem: &str) -> Duration {
        self.rules.rules.iter().filter(|r| r.problem == problem).map(|r| r.for_).max().unwrap_or_default()
    }

    /// A sample of a rule about anything but reachability whose round
    /// overlapped an outage of its node, of the node it is about or of an
    /// ancestor of either belongs to that outage: a `mean_over` rule leaves
    /// it out of its window; any other reads a breach of it as missing (a
    /// firing alert stays, a pending one is dropped, nothing new opens).
    fn attribute_to_outages(&mut self, readings: &mut HashMap<AlertKey, readings::Read>) {
        // Reachability breaking in this very evaluation (the batch that
        // brings a cut's first failed round): not recorded as an outage yet.
        let breaking: HashSet<NodeId> = readings
            .iter()
            .filter(|(k, r)| r.reading == Reading::Breach && self.rules.rules[k.rule].problem == incident::UNREACHABLE)
            .map(|(_, r)| r.subject.clone())
            .collect();
        // Links degraded now (firing, or pending: the loss is already past
        // the threshold): a probe failing across one is its symptom.
        let degraded: HashSet<NodeId> = self
            .instances
            .iter()
            .filter(|(k, i)| i.phase != Phase::Inactive && self.rules.rules[k.rule].problem == incident::DEGRADED)
            .map(|(_, i)| i.subject.clone())
            .collect();
        let topo = &self.topo;
        let covered = |n: &NodeId| std::iter::once(n).chain(incident::ancestors(topo, n)).any(|a| breaking.contains(a));
        let lossy = |n: &NodeId| std::iter::once(n).chain(incident::ancestors(topo, n)).any(|a| degraded.contains(a));
        let probe_failure = |rule: usize| {
            matches!(&self.rules.rules[rule].kind, RuleKind::Threshold { metric, .. }
                if metric == tierwatch_protocol::catalogue::PROBE_SUCCESS.name)
        };
        let mut outage: HashSet<AlertKey> = readings
            .iter()
            .filter(|(key, r)| {
                let Some((from, to)) = r.sample else { return false };
                self.rules.rules[key.rule].problem != incident::UNREACHABLE
                    && (self.outages.overlaps(topo, &key.node, from, to)
                        || self.outages.overlaps(topo, &r.subject, from, to)
                        || covered(&key.node)
                        || covered(&r.subject)
                        || (probe_failure(key.rule) && (lossy(&key.node) || lossy(&r.subject))))
            })
            .map(|(k, _)| k.clone())
            .collect();
        self.means.apply(&self.rules, readings, &mut outage);
        for key in outage {
            if let Some(r) = readings.get_mut(&key).filter(|r| r.reading == Reading::Breach) {
                r.reading = Reading::Missing;
            }
        }
    }

    /// Nodes unreachable now: late by their heartbeat (since they were last
    /// heard) with their link not answering, or the subject of a firing
    /// reachability alert (since it fired).
    fn track_outages(&mut self, silences: &HashMap<NodeId, Silence>, answering: &HashSet<NodeId>, now_ms: i64) {
        let mut out: HashMap<NodeId, i64> = HashMap::new();
        // Late but its link answering is an agent down or a delayed push,
        // not an outage: what others measure of it still counts.
        for n in self.late.iter().filter(|n| !answering.contains(*n)) {
            let age = silences.get(n).map_or(0, |s| s.0);
            out.insert(n.clone(), now_ms - age);
        }
        for (key, i) in &self.instances {
            if self.rules.rules[key.rule].problem != incident::UNREACHABLE {
                continue;
            }
            if let Phase::Firing { since_ms } | Phase::Clearing { since_ms, .. } = i.phase {
                let start = out.entry(i.subject.clone()).or_insert(since_ms);
                *start = (*start).min(since_ms);
            }
        }
        self.outages.update(&out, now_ms);
    }

    fn changes(
        &mut self,
        suspect: &HashSet<NodeId>,
        breaching: &HashSet<AlertKey>,
        judged: &Judged,
        now_ms: i64,
    ) -> Vec<Change> {
        // Alerts of a service standing by quorum are its incident's; those
        // of a service whose quorum is forming wait (unless their node's
        // incident is open already); the rest are their nodes'.
        let mut by_service: BTreeMap<usize, Vec<(&AlertKey, &Instance)>> = BTreeMap::new();
        let firing: Vec<(&AlertKey, &Instance)> = {
            let mut v: Vec<_> = Vec::new();
            for (k, i) in self.instances.iter().filter(|(_, i)| is_firing(i.phase)) {
                match judged.of.get(k).map(|&s| (s, judged.services[s].verdict)) {
                    Some((s, Verdict::Stands)) => by_service.entry(s).or_default().push((k, i)),
                    Some((_, Verdict::Forming))
                        if !self.open.contains_key(&format!("{}/{}", i.subject, self.rules.rules[k.rule].problem)) => {}
                    _ => v.push((k, i)),
                }
            }
            v.sort_by(|a, b| a.0.cmp(b.0));
            v
        };
        let active: Vec<Active> = firing.iter().map(|(k, i)| self.active(k, i, now_ms)).collect();
        let incidents = incident::group(&active, &self.topo, suspect, self.rules.min_children);
        let forming = self.forming(judged);
        note_dissolved(&mut self.dissolved, &self.open, &self.rules.rules, &incidents, &firing);
        let mut present: BTreeMap<String, IncidentView> = BTreeMap::new();
        for inc in &incidents {
            // Held: an ancestor is late. Waiting: a problem that may yet be grouped.
            let waiting = inc.problem != incident::UNREACHABLE
                && now_ms - inc.since_ms < self.rules.group_wait.as_millis() as i64;
            // A group of its siblings is forming (enough of them pending or
            // firing): wait for it. Bounded: a sibling pending by the time
            // this one fired (its `for` after its breach began) fires within
            // the slowest `for` after that.
            let joining = inc.scope == super::model::Scope::Node
                && inc.problem != incident::UNREACHABLE
                && self.topo.get(&inc.node).and_then(|n| n.parent.clone()).is_some_and(|parent| {
                    let hold = self.rules.group_wait + self.slowest_for(&inc.problem) * 2;
                    forming.contains(&(parent, inc.problem.clone())) && now_ms - inc.since_ms < hold.as_millis() as i64
                });
            // A member of a group that dissolved pages only while it breaks its rule.
            let lingering = inc.scope == super::model::Scope::Node
                && self.dissolved.contains(&(inc.node.clone(), inc.problem.clone()))
                && !inc.alerts.iter().any(|&i| breaching.contains(firing[i].0));
            if (inc.held || waiting || joining || lingering) && !self.open.contains_key(&inc.key()) {
                continue;
            }
            present.insert(inc.key(), view::incident(&self.rules, &self.topo, inc, &firing, &active));
        }
        // One incident per key: services of two quorum rules with the same
        // problem and name are one.
        let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &s in by_service.keys() {
            let service = &judged.services[s];
            by_key
                .entry(incident::service_key(&service.name, &self.rules.rules[service.rule].problem))
                .or_default()
                .push(s);
        }
        let mut stood = HashSet::new();
        for (key, services) in by_key {
            let mut members: Vec<(&AlertKey, &Instance)> =
                services.iter().flat_map(|s| by_service[s].iter().copied()).collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            let first = &judged.services[services[0]];
            let active: Vec<Active> = members.iter().map(|(k, i)| self.active(k, i, now_ms)).collect();
            // Those failing now; those firing when nobody counts as failing
            // (all cut off since), so the page names someone.
            let mut failing: Vec<NodeId> = Vec::new();
            for n in services.iter().flat_map(|&s| judged.services[s].failing.iter()) {
                if !failing.contains(n) {
                    failing.push(n.clone());
                }
            }
            if failing.is_empty() {
                failing = members.iter().map(|(_, i)| i.subject.clone()).collect();
                failing.dedup();
            }
            let order: HashMap<&NodeId, usize> =
                self.topo.nodes().iter().enumerate().map(|(i, n)| (&n.id, i)).collect();
            failing.sort_by_key(|n| order.get(n).copied().unwrap_or(usize::MAX));
            failing.dedup();
            let rule = &self.rules.rules[first.rule];
            // Its node is a label receivers key on: fixed once paged, though
            // who fails changes (the last ones failing may be one commune);
            // failing nodes with no common ancestor (provinces without a
            // parent): the first of them.
            let paged = self.open.get(&key).and_then(|v| NodeId::new(&v.node).ok());
            let Some(node) =
                paged.or_else(|| incident::common_ancestor(&self.topo, &failing)).or_else(|| failing.first().cloned())
            else {
                continue;
            };
            let seen_by = services.iter().map(|&s| judged.services[s].seen_by).max().unwrap_or(0);
            let inc = incident::Incident {
                node,
                problem: rule.problem.clone(),
                scope: super::model::Scope::Service,
                severity: active.iter().map(|a| a.severity).max().unwrap_or(rule.severity),
                since_ms: active.iter().map(|a| a.since_ms).min().unwrap_or(now_ms),
                alerts: (0..members.len()).collect(),
                affected: failing,
                held: false,
                service: Some((first.name.clone(), seen_by)),
            };
            debug_assert_eq!(inc.key(), key);
            present.insert(key, view::incident(&self.rules, &self.topo, &inc, &members, &active));
            stood.extend(services.iter().map(|&s| (judged.services[s].rule, judged.services[s].name.clone())));
        }
        // Restored incidents still held open are present for the quorum
        // (they linger) and for flap detection (not gone, not a new opening).
        for key in &self.restored {
            if let Some(v) = self.open.get(key).filter(|v| v.scope == super::model::Scope::Service) {
                if let Some(s) = judged.services.iter().find(|s| Some(&s.name) == v.service.as_ref()) {
                    stood.insert((s.rule, s.name.clone()));
                }
            }
        }
        self.quorums.presented(&stood);
        let held: HashSet<String> = self
            .restored
            .iter()
            .map(|k| k.strip_suffix(&format!("/{}", super::flap::FLAPPING)).unwrap_or(k).to_string())
            .collect();
        let present = self.flaps.apply(present, &held, now_ms);
        let mut now_open: BTreeMap<String, IncidentView> = BTreeMap::new();
        let was_muted = std::mem::take(&mut self.muted);
        let mut changes = Vec::new();
        for (key, mut view) in present {
            match self.open.get(&key) {
                Some(old) => view.ack = old.ack.clone(),
                None => {
                    // Not paged yet: a maintenance window keeps it quiet.
                    if let Some(w) = maintenance::covering(&self.windows, &self.topo, &view, now_ms) {
                        view.muted = Some(w.describe(&self.rules.locale));
                        if !was_muted.contains_key(&key) {
                            changes.push(Change::Muted(view.clone()));
                        }
                        self.muted.insert(key, view);
                        continue;
                    }
                }
            }
            now_open.insert(key, view);
        }
        for (key, old) in was_muted {
            if !self.muted.contains_key(&key) && !now_open.contains_key(&key) {
                changes.push(Change::MutedResolved { incident: old, ended_ms: now_ms });
            }
        }
        for (key, view) in &now_open {
            match self.open.get(key) {
                None => changes.push(Change::Opened(view.clone())),
                Some(old) if old.affected != view.affected || old.alerts.len() != view.alerts.len() => {
                    changes.push(Change::Updated(view.clone()))
                }
                Some(_) => {}
            }
        }
        for (key, old) in &self.open {
            if now_open.contains_key(key) {
                self.restored.remove(key);
            } else if self.restored.contains(key)
                && ((now_ms < self.restored_until_ms && !self.all_decided(old)) || self.any_pending(old))
            {
                now_open.insert(key.clone(), old.clone());
            } else {
                self.restored.remove(key);
                changes.push(Change::Resolved { incident: old.clone(), ended_ms: now_ms });
            }
        }
        self.open = now_open;
        if self.restored.is_empty() {
            self.decided.clear();
        }
        changes
    }

    /// A firing alert instance as grouping needs it.
    fn active(&self, k: &AlertKey, i: &Instance, now_ms: i64) -> Active {
        let rule = &self.rules.rules[k.rule];
        let since_ms = match i.phase {
            Phase::Firing { since_ms } | Phase::Clearing { since_ms, .. } => since_ms,
            _ => now_ms,
        };
        Active {
            rule: rule.name.clone(),
            subject: i.subject.clone(),
            problem: rule.problem.clone(),
            severity: rule.severity,
            since_ms,
        }
    }

    /// Whether every alert of a restored incident has been decided since
    /// this start (an incident without alerts, a flapping one, never is).
    fn all_decided(&self, v: &IncidentView) -> bool {
        !v.alerts.is_empty() && v.alerts.iter().all(|a| self.key_of(a).is_none_or(|k| self.decided.contains(&k)))
    }

    /// Whether an alert of a restored incident is pending again: its `for`
    /// (in time and samples) is running, so the restored page waits for it.
    fn any_pending(&self, v: &IncidentView) -> bool {
        v.alerts.iter().any(|a| {
            self.key_of(a)
                .is_some_and(|k| matches!(self.instances.get(&k).map(|i| i.phase), Some(Phase::Pending { .. })))
        })
    }

    /// The alert instance of an alert as shown in a (restored) incident.
    fn key_of(&self, a: &super::model::AlertView) -> Option<AlertKey> {
        let rule = self.rules.rules.iter().position(|r| r.name == a.rule)?;
        let node = NodeId::new(&a.node).ok()?;
        let labels = a.labels.iter().map(|(k, v)| tierwatch_protocol::Label::new(k.clone(), v.clone())).collect();
        Some(AlertKey { rule, node, labels })
    }
}

/// Remembers the members of every open children group that is no longer
/// formed, and forgets members with nothing firing.
/// Tests only: the readings kept between evaluations are what reading
/// every node afresh gives, and so are their indexes.
#[cfg(test)]
fn same_as_read_afresh(
    current: &Current,
    rules: &Rules,
    topo: &Topology,
    store: &Store,
    silences: &HashMap<NodeId, Silence>,
    now_ms: i64,
) {
    let mut fresh = Current::default();
    fresh.refresh(rules, topo, store, silences, now_ms);
    let all = |c: &Current| c.iter().map(|(k, r)| (k, r.clone())).collect::<HashMap<_, _>>();
    assert_eq!(all(current), all(&fresh), "readings kept at {now_ms}");
    assert_eq!(current.breaches(), fresh.breaches(), "breaches at {now_ms}");
    assert_eq!(current.answering(), fresh.answering(), "links answering at {now_ms}");
    assert_eq!(current.suspect(), fresh.suspect(), "suspects at {now_ms}");
    current.same_services(&fresh);
}

fn note_dissolved(
    dissolved: &mut HashSet<(NodeId, String)>,
    open: &BTreeMap<String, IncidentView>,
    rules: &[super::rules::Rule],
    incidents: &[incident::Incident],
    firing: &[(&AlertKey, &Instance)],
) {
    let formed: HashSet<String> = incidents.iter().map(|i| i.key()).collect();
    for (key, v) in open {
        if v.scope == super::model::Scope::Children && !formed.contains(key) {
            for (member, _) in &v.affected {
                if let Ok(id) = NodeId::new(member) {
                    dissolved.insert((id, v.problem.clone()));
                }
            }
        }
    }
    dissolved
        .retain(|(node, problem)| firing.iter().any(|(k, i)| i.subject == *node && rules[k.rule].problem == *problem));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tierwatch_protocol::{Batch, Label, MetricKind, Point, Series};

    const RULES: &str = "grouping:\n  min_children: 3\n  group_wait: 0s\nrules:\n  - name: node_down\n    heartbeat: {missed: 3}\n    problem: unreachable\n    severity: critical\n    summary: \"{{ node_name }} stopped reporting\"\n  - name: wan_link_down\n    metric: tierwatch_probe_success\n    match: {tier: province, probe: icmp}\n    subject: target\n    below: 1\n    problem: unreachable\n    severity: critical\n    summary: \"link to {{ target }} down\"\n";

    fn setup() -> (Engine, Store) {
        let mut t = String::from("nodes:\n  - id: p\n    tier: province\n    name: Tỉnh\n");
        for i in 1..=4 {
            t.push_str(&format!("  - id: c{i}\n    tier: commune\n    name: Xã {i}\n    parent: p\n"));
        }
        let topo = Arc::new(Topology::parse(Path::new("t.yaml"), &t).unwrap());
        let rules = Rules::parse(Path::new("r.yaml"), RULES).unwrap();
        (Engine::new(rules, topo.clone(), 0), Store::new(topo, Duration::from_secs(300)))
    }

    fn push(store: &Store, node: &str, now: i64, probes: &[(&str, f64)]) {
        let batch = Batch {
            node_id: node.into(),
            push_interval_ms: 1000,
            series: probes
                .iter()
                .map(|(target, v)| Series {
                    name: "tierwatch_probe_success".into(),
                    kind: MetricKind::Gauge as i32,
                    labels: vec![Label::new("probe", "icmp"), Label::new("target", *target)],
                    points: vec![Point { timestamp_ms: now, value: *v }],
                })
                .collect(),
            ..Default::default()
        };
        store.ingest(&NodeId::new(node).unwrap(), batch, now);
    }

    /// One point of a gauge `name{labels}` of `node` at `at`, ingested at `at`.
    fn gauge(store: &Store, node: &str, name: &str, labels: &[(&str, &str)], value: f64, at: i64) {
        let batch = Batch {
            node_id: node.into(),
            push_interval_ms: 1000,
            series: vec![Series {
                name: name.into(),
                kind: MetricKind::Gauge as i32,
                labels: labels.iter().map(|(k, v)| Label::new(*k, *v)).collect(),
                points: vec![Point { timestamp_ms: at, value }],
            }],
            ..Default::default()
        };
        store.ingest(&NodeId::new(node).unwrap(), batch, at);
    }

    /// The test rules plus a service rule with `for_`.
    fn with_service_rule(for_: &str) -> Rules {
        let text = format!(
            "{RULES}  - name: service_down\n    metric: tierwatch_probe_success\n    not_match: {{probe: icmp}}\n    below: 1\n    for: {for_}\n    problem: service\n    severity: critical\n    summary: \"{{{{ target }}}} down\"\n"
        );
        Rules::parse(Path::new("r.yaml"), &text).unwrap()
    }

    fn kinds(c: &[Change]) -> Vec<String> {
        c.iter()
            .map(|c| match c {
                Change::Opened(i) => format!("open {}", i.key),
                Change::Updated(i) => format!("update {}", i.key),
                Change::Resolved { incident, .. } => format!("resolve {}", incident.key),
                Change::Acknowledged(i) => format!("ack {}", i.key),
                Change::Muted(i) => format!("muted {}", i.key),
                Change::MutedResolved { incident, .. } => format!("muted-resolve {}", incident.key),
            })
            .collect()
    }

    #[test]
    fn a_series_that_stopped_feeds_no_pending_alert() {
        // `for: 400s` outlasts the store's 300 s staleness: the failed probe
        // of c1 is pending when its series stops, and must not fire later.
        let rules = RULES.replace("    subject: target\n", "    subject: target\n    for: 400s\n");
        let (e0, store) = setup();
        let mut e = Engine::new(Rules::parse(Path::new("r.yaml"), &rules).unwrap(), e0.topo.clone(), 0);
        let mut opened = Vec::new();
        for t in (1..=500).map(|s| s * 1000) {
            // c1's probe fails once, then only c2's is reported; p stays up.
            let probes: &[(&str, f64)] = if t == 1000 { &[("c1", 0.0), ("c2", 1.0)] } else { &[("c2", 1.0)] };
            push(&store, "p", t, probes);
            opened.extend(kinds(&e.evaluate(&store, t)));
        }
        assert!(opened.is_empty(), "{opened:?}");
        // The same failure still reported is paged once `for` is over.
        let (mut e, store) =
            (Engine::new(Rules::parse(Path::new("r.yaml"), &rules).unwrap(), e0.topo.clone(), 0), setup().1);
        for t in (1..=402).map(|s| s * 1000) {
            push(&store, "p", t, &[("c1", 0.0)]);
            opened.extend(kinds(&e.evaluate(&store, t)));
        }
        assert_eq!(opened, ["open c1/unreachable"]);
    }

    #[test]
    fn a_cut_commune_link_pages_once_at_the_first_failed_probe_and_resolves() {
        let (mut e, store) = setup();
        let all_ok: Vec<(&str, f64)> = (1..=4).map(|i| (["c1", "c2", "c3", "c4"][i - 1], 1.0)).collect();
        push(&store, "p", 1000, &all_ok);
        for c in ["c1", "c2", "c3", "c4"] {
            push(&store, c, 1000, &[]);
        }
        assert!(e.evaluate(&store, 1000).is_empty());
        // The province's probe of c2 fails: paged at once, naming c2.
        push(&store, "p", 2000, &[("c1", 1.0), ("c2", 0.0), ("c3", 1.0), ("c4", 1.0)]);
        let c = e.evaluate(&store, 2000);
        assert_eq!(kinds(&c), ["open c2/unreachable"]);
        let Change::Opened(v) = &c[0] else { panic!() };
        assert_eq!(v.summary, "link to c2 down");
        // c2's own heartbeat fails later: same incident, no new page.
        for t in (3000..=6000).step_by(1000) {
            push(&store, "p", t, &[("c1", 1.0), ("c2", 0.0), ("c3", 1.0), ("c4", 1.0)]);
            for c in ["c1", "c3", "c4"] {
                push(&store, c, t, &[]);
            }
            let ch = e.evaluate(&store, t);
            assert!(kinds(&ch).iter().all(|k| k == "update c2/unreachable"), "{ch:?}");
        }
        // Restored: one resolve, nothing left open.
        push(&store, "p", 7000, &all_ok);
        for c in ["c1", "c2", "c3", "c4"] {
            push(&store, c, 7000, &[]);
        }
        assert_eq!(kinds(&e.evaluate(&store, 7000)), ["resolve c2/unreachable"]);
        assert_eq!(e.open_incidents().count(), 0);
    }

    #[test]
    fn a_restart_during_an_outage_pages_nothing_again() {
        let (mut e, store) = setup();
        push(&store, "p", 1000, &[("c1", 0.0)]);
        let opened = e.evaluate(&store, 1000);
        assert_eq!(kinds(&opened), ["open c1/unreachable"]);
        let Change::Opened(view) = opened[0].clone() else { panic!() };
        // A new engine and an empty store, as after a restart.
        let (mut e, store) = setup();
        e.restore(vec![view]);
        assert!(e.evaluate(&store, 500).is_empty(), "kept while nodes have not reported yet");
        push(&store, "p", 1000, &[("c1", 0.0)]);
        assert!(e.evaluate(&store, 1000).is_empty(), "still true: no second page");
        push(&store, "p", 2000, &[("c1", 1.0)]);
        assert_eq!(kinds(&e.evaluate(&store, 2000)), ["resolve c1/unreachable"]);
    }

    /// Issue 22: an incident restored after a restart that is over (the
    /// link came back while the collector was down) resolves as soon as its
    /// alerts are decided again: the province's probe read, the node's
    /// heartbeat once it pushed; not after the restart's grace of 40 s.
    #[test]
    fn a_restored_incident_that_is_over_resolves_at_the_first_decision() {
        let (mut e, store) = setup();
        push(&store, "p", 1000, &[("c1", 0.0)]);
        for c in ["c1", "c2", "c3", "c4"] {
            push(&store, c, 1000, &[]);
        }
        let mut views = Vec::new();
        for t in (1000..=6000).step_by(500) {
            push(&store, "p", t, &[("c1", 0.0)]);
            for c in ["c1", "c3", "c4"] {
                push(&store, c, t, &[]);
            }
            // c2's agent went silent too: node_down.
            for ch in e.evaluate(&store, t) {
                if let Change::Opened(v) = ch {
                    views.push(v);
                }
            }
        }
        let keys: Vec<&str> = views.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["c1/unreachable", "c2/unreachable"]);
        // Restart at 100 s: c1's link and c2's agent came back meanwhile.
        let (e0, store) = setup();
        let mut e = Engine::new(e0.rules.clone(), e0.topo.clone(), 100_000);
        e.set_known(["p", "c1", "c2", "c3", "c4"].iter().map(|n| NodeId::new(n).unwrap()).collect());
        e.restore(views);
        assert!(e.evaluate(&store, 100_500).is_empty(), "nothing decided yet");
        push(&store, "p", 101_000, &[("c1", 1.0), ("c2", 1.0)]);
        assert_eq!(kinds(&e.evaluate(&store, 101_000)), ["resolve c1/unreachable"], "the probe decides c1");
        push(&store, "c2", 102_000, &[]);
        assert_eq!(kinds(&e.evaluate(&store, 102_000)), ["resolve c2/unreachable"], "its push decides c2");
    }

    /// A restart while a service is still down (`for: 30s`, a probe once a
    /// minute): its first failed sample after the restart leaves the
    /// restored incident open (pending is not decided), the second keeps
    /// it: no resolve, no second page.
    #[test]
    fn a_restart_during_a_service_outage_neither_resolves_nor_pages_again() {
        let rules = with_service_rule("30s");
        let portal = |store: &Store, at: i64| {
            gauge(store, "c1", "tierwatch_probe_success", &[("probe", "tcp"), ("target", "portal")], 0.0, at)
        };
        let (e0, store) = setup();
        let mut e = Engine::new(rules.clone(), e0.topo.clone(), 0);
        let mut opened = Vec::new();
        for t in [1000, 61_000] {
            portal(&store, t);
            for ch in e.evaluate(&store, t) {
                if let Change::Opened(v) = ch {
                    opened.push(v);
                }
            }
        }
        assert_eq!(opened.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(), ["c1/service"]);
        let (_, store) = setup();
        let mut e = Engine::new(rules, e0.topo.clone(), 100_000);
        e.restore(opened);
        let mut changes = Vec::new();
        for t in (100_000..=230_000).step_by(1000) {
            if t == 121_000 || t == 181_000 {
                portal(&store, t);
            } else {
                push(&store, "c1", t, &[]);
            }
            changes.extend(kinds(&e.evaluate(&store, t)).into_iter().map(|k| format!("{t}: {k}")));
        }
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(e.open_incidents().count(), 1);
    }

    #[test]
    fn incident_texts_follow_the_configured_language() {
        let (e, store) = setup();
        let locale = crate::i18n::Locale { language: crate::i18n::Language::Vi, ..Default::default() };
        let rules = Rules { locale, ..e.rules.clone() };
        let mut e = Engine::new(rules, e.topo.clone(), 0);
        for c in ["c1", "c2", "c3", "c4", "p"] {
            push(&store, c, 1000, &[]);
        }
        e.evaluate(&store, 1000);
        for t in (1500..=8000).step_by(250) {
            e.evaluate(&store, t);
        }
        let v = e.open_incidents().next().expect("the province's incident");
        assert_eq!(v.summary, "Tỉnh mất kết nối; 4 điểm phía sau bị mất kết nối theo: Xã 1, Xã 2, Xã 3, Xã 4");
    }

    #[test]
    fn a_silent_province_is_one_page_listing_its_communes() {
        let (mut e, store) = setup();
        for c in ["c1", "c2", "c3", "c4"] {
            push(&store, c, 1000, &[]);
        }
        // The province pushed last, just before its uplink failed: its
        // communes are overdue before it is.
        push(&store, "p", 1950, &[]);
        e.evaluate(&store, 1950);
        let mut pages = Vec::new();
        // Everything goes silent; communes might be detected before the province.
        for t in (1500..=8000).step_by(250) {
            pages.extend(kinds(&e.evaluate(&store, t)));
        }
        assert_eq!(pages, ["open p/unreachable"], "one page, none for the communes");
        let v = e.open_incidents().next().unwrap();
        assert_eq!(v.affected.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(), ["c1", "c2", "c3", "c4"]);
        assert!(
            v.summary.contains("Tỉnh is unreachable; 4 node(s) behind it are cut off: Xã 1, Xã 2, Xã 3, Xã 4"),
            "{}",
            v.summary
        );
        for c in ["p", "c1", "c2", "c3", "c4"] {
            push(&store, c, 9000, &[]);
        }
        assert_eq!(kinds(&e.evaluate(&store, 9000)), ["resolve p/unreachable"]);
        assert_eq!(e.open_incidents().count(), 0, "nothing left open");
    }

    #[test]
    fn a_maintenance_window_mutes_exactly_its_nodes_until_it_ends() {
        let (mut e, store) = setup();
        let window = |node: &str| Window {
            id: "mw-1".into(),
            matchers: BTreeMap::from([("node".into(), node.into())]),
            starts_ms: 0,
            ends_ms: 5000,
            reason: "router swap".into(),
            by: None,
            source: "api".into(),
        };
        e.set_windows(vec![window("c1")]);
        push(&store, "p", 1000, &[("c1", 0.0), ("c2", 0.0)]);
        assert_eq!(kinds(&e.evaluate(&store, 1000)), ["muted c1/unreachable", "open c2/unreachable"]);
        let muted: Vec<_> = e.muted_incidents().collect();
        assert_eq!(muted.len(), 1);
        assert!(muted[0].muted.as_deref().unwrap().contains("router swap"), "{muted:?}");
        // A tier matcher covers both; c2 was paged before, so it stays open.
        e.set_windows(vec![Window { matchers: BTreeMap::from([("tier".into(), "commune".into())]), ..window("") }]);
        assert!(e.evaluate(&store, 2000).is_empty());
        // The window ends with c1 still down: it pages now.
        push(&store, "p", 5000, &[("c1", 0.0), ("c2", 0.0)]);
        assert_eq!(kinds(&e.evaluate(&store, 5000)), ["open c1/unreachable"]);
        assert_eq!(e.muted_incidents().count(), 0);
        // One that begins and ends inside a window is in the history only.
        e.set_windows(vec![Window { ends_ms: 20_000, ..window("c3") }]);
        push(&store, "p", 6000, &[("c1", 1.0), ("c2", 1.0), ("c3", 0.0)]);
        let c = e.evaluate(&store, 6000);
        assert_eq!(kinds(&c), ["muted c3/unreachable", "resolve c1/unreachable", "resolve c2/unreachable"]);
        assert!(e.evaluate(&store, 6500).is_empty(), "said once");
        push(&store, "p", 7000, &[("c1", 1.0), ("c2", 1.0), ("c3", 1.0)]);
        let c = e.evaluate(&store, 7000);
        assert_eq!(kinds(&c), ["muted-resolve c3/unreachable"]);
        assert!(c.iter().all(|c| !c.notifies()));
    }

    #[test]
    fn an_acknowledgement_stays_with_the_incident() {
        let (mut e, store) = setup();
        push(&store, "p", 1000, &[("c1", 0.0)]);
        e.evaluate(&store, 1000);
        let ack = Ack { by: "Trực ban".into(), comment: "on my way".into(), at_ms: 1500 };
        assert!(e.acknowledge("c9/unreachable", ack.clone()).is_none());
        assert_eq!(kinds(&[e.acknowledge("c1/unreachable", ack.clone()).unwrap()]), ["ack c1/unreachable"]);
        push(&store, "p", 2000, &[("c1", 0.0), ("c2", 0.0)]);
        e.evaluate(&store, 2000);
        assert_eq!(e.open_incidents().find(|v| v.key == "c1/unreachable").unwrap().ack, Some(ack));
    }

    #[test]
    fn a_node_never_heard_from_is_unknown_unless_it_pushed_before_a_restart() {
        let (mut e, store) = setup();
        push(&store, "p", 100_000, &[]);
        assert!(e.evaluate(&store, 100_000).is_empty(), "agents not installed yet page nothing");
        let (mut e, store) = setup();
        e.set_known([NodeId::new("c1").unwrap()].into_iter().collect());
        push(&store, "p", 100_000, &[]);
        assert_eq!(kinds(&e.evaluate(&store, 100_000)), ["open c1/unreachable"]);
    }

    #[test]
    fn communes_get_time_to_reconnect_after_their_province_returns() {
        let (mut e, store) = setup();
        for c in ["p", "c1", "c2", "c3", "c4"] {
            push(&store, c, 1000, &[]);
        }
        let mut pages = Vec::new();
        for t in (1250..=8000).step_by(250) {
            pages.extend(kinds(&e.evaluate(&store, t)));
        }
        assert_eq!(pages, ["open p/unreachable"]);
        // The province is back; its communes reconnect one after the other.
        let mut pages = Vec::new();
        for t in (8250..=14000).step_by(250) {
            push(&store, "p", t, &[]);
            if t >= 9000 {
                push(&store, "c1", t, &[]);
            }
            if t >= 9500 {
                for c in ["c2", "c3"] {
                    push(&store, c, t, &[]);
                }
            }
            // c4 never comes back.
            pages.extend(kinds(&e.evaluate(&store, t)));
        }
        assert_eq!(pages, ["resolve p/unreachable", "open c4/unreachable"], "only the commune that stayed silent");
    }

    #[test]
    fn security_events_fire_per_source_and_clear_after_their_hold() {
        let (topo, store) = {
            let (e, store) = setup();
            (e.topo.clone(), store)
        };
        let rules = Rules::parse(
            Path::new("r.yaml"),
            "grouping:\n  group_wait: 0s\nrules:\n  - name: scans\n    event: {kind: port_scan, hold: 10s, group_by: [src]}\n    problem: security\n    severity: warning\n    summary: \"{{ node_name }}: {{ kind }} from {{ src }} ({{ value }})\"\n",
        )
        .unwrap();
        let mut e = Engine::new(rules, topo, 0);
        let event = |kind: &str, src: &str, at: i64| {
            tierwatch_protocol::Event::new(kind, tierwatch_protocol::Severity::Warning, at, [("src", src)])
        };
        let batch = Batch {
            node_id: "c1".into(),
            push_interval_ms: 1000,
            events: vec![
                event("port_scan", "10.2.1.50", 1000),
                event("port_scan", "10.2.1.50", 1500),
                event("arp_spoof", "x", 1500),
            ],
            ..Default::default()
        };
        store.ingest(&NodeId::new("c1").unwrap(), batch, 2000);
        let c = e.evaluate(&store, 2000);
        assert_eq!(kinds(&c), ["open c1/security"]);
        let Change::Opened(v) = &c[0] else { panic!() };
        assert_eq!(v.summary, "Xã 1: port_scan from 10.2.1.50 (2)");
        assert_eq!(v.alerts[0].labels["src"], "10.2.1.50");
        // A second source joins the same incident.
        let batch = Batch {
            node_id: "c1".into(),
            push_interval_ms: 1000,
            events: vec![event("port_scan", "10.2.1.77", 5000)],
            ..Default::default()
        };
        store.ingest(&NodeId::new("c1").unwrap(), batch, 5000);
        assert_eq!(kinds(&e.evaluate(&store, 5000)), ["update c1/security"]);
        // The first source's hold ends at 11.5 s, the second's at 15 s.
        push(&store, "c1", 12_000, &[]);
        assert_eq!(kinds(&e.evaluate(&store, 12_000)), ["update c1/security"]);
        push(&store, "c1", 15_000, &[]);
        assert_eq!(kinds(&e.evaluate(&store, 15_000)), ["resolve c1/security"]);
    }

    /// Issue 22: a once-a-minute service probe of c1 whose round overlapped
    /// a cut of c1's link fails, stamped after the restore: it opens
    /// nothing, neither with `for: 30s` (one failed sample never satisfies
    /// it) nor with `for: 0s` (the round belongs to the outage). A real
    /// failure later pages: at its second sample, or at once.
    #[test]
    fn what_was_measured_during_an_outage_belongs_to_it() {
        for (for_, real) in [("30s", "241000: open c1/service"), ("0s", "181000: open c1/service")] {
            let (e0, store) = setup();
            let mut e = Engine::new(with_service_rule(for_), e0.topo.clone(), 0);
            let portal = |store: &Store, at: i64, ok: bool| {
                let v = if ok { 1.0 } else { 0.0 };
                gauge(store, "c1", "tierwatch_probe_success", &[("probe", "tcp"), ("target", "portal")], v, at)
            };
            let mut pages = Vec::new();
            portal(&store, 1000, true);
            for t in (1000..=300_000).step_by(1000) {
                // c1's link is cut from 10 s to 40 s: the province's probe
                // fails and c1 is silent; its portal round from 1 s to 61 s fails.
                let cut = (10_000..40_000).contains(&t);
                push(&store, "p", t, &[("c1", if cut { 0.0 } else { 1.0 })]);
                if !cut {
                    push(&store, "c1", t, &[]);
                }
                match t {
                    61_000 => portal(&store, t, false),
                    121_000 => portal(&store, t, true),
                    // A real failure later: two samples a minute apart.
                    181_000 | 241_000 => portal(&store, t, false),
                    _ => {}
                }
                pages.extend(kinds(&e.evaluate(&store, t)).into_iter().map(|k| format!("{t}: {k}")));
            }
            assert_eq!(
                pages,
                ["10000: open c1/unreachable", "13000: update c1/unreachable", "40000: resolve c1/unreachable", real],
                "for: {for_}"
            );
        }
    }

    /// The province's 5-request rounds of a lossy c1 read 0 to 80 % loss:
    /// judged on the mean over a minute it is one degradation page and no
    /// "down"; a clean c2 cut for 30 s (its rounds 100 % lost while its
    /// link-down alert fires) leaves no degradation behind.
    #[test]
    fn a_lossy_link_is_degraded_by_its_mean_and_a_cut_leaves_no_loss() {
        let rules = format!(
            "{RULES}  - name: service_down\n    metric: tierwatch_probe_success\n    not_match: {{probe: icmp}}\n    below: 1\n    problem: service\n    severity: critical\n    summary: s\n  - name: wan_link_loss_high\n    metric: tierwatch_icmp_loss_ratio\n    match: {{tier: province}}\n    subject: target\n    mean_over: 1m\n    above: 0.1\n    clear_below: 0.03\n    for: 1m\n    problem: degraded\n    severity: warning\n    summary: \"{{{{ target }}}} loses {{{{ value | percent }}}}\"\n"
        );
        let (e0, store) = setup();
        let mut e = Engine::new(Rules::parse(Path::new("r.yaml"), &rules).unwrap(), e0.topo.clone(), 0);
        let series = |target: &str, name: &str, v: f64, t: i64| Series {
            name: name.into(),
            kind: MetricKind::Gauge as i32,
            labels: vec![Label::new("probe", "icmp"), Label::new("target", target)],
            points: vec![Point { timestamp_ms: t, value: v }],
        };
        let mut pages = Vec::new();
        let pattern = [0.0, 0.6, 0.2, 0.8, 0.4, 0.0, 0.6, 0.4];
        for (i, t) in (5000..=400_000).step_by(5000).enumerate() {
            let cut = (100_000..130_000).contains(&t);
            let batch = Batch {
                node_id: "p".into(),
                push_interval_ms: 5000,
                series: vec![
                    series("c1", "tierwatch_probe_success", 1.0, t),
                    series("c1", "tierwatch_icmp_loss_ratio", pattern[i % pattern.len()], t),
                    series("c2", "tierwatch_probe_success", if cut { 0.0 } else { 1.0 }, t),
                    series("c2", "tierwatch_icmp_loss_ratio", if cut { 1.0 } else { 0.0 }, t),
                ],
                ..Default::default()
            };
            store.ingest(&NodeId::new("p").unwrap(), batch, t);
            for c in ["c1", "c2", "c3", "c4"] {
                if !(cut && c == "c2") {
                    let b = Batch { node_id: c.into(), push_interval_ms: 5000, ..Default::default() };
                    store.ingest(&NodeId::new(c).unwrap(), b, t);
                }
            }
            // Once c1's link is degraded, its own probes across it fail now and then.
            if t >= 150_000 {
                let v = if (t / 5000) % 2 == 0 { 0.0 } else { 1.0 };
                gauge(&store, "c1", "tierwatch_probe_success", &[("probe", "tcp"), ("target", "portal")], v, t);
            }
            pages.extend(kinds(&e.evaluate(&store, t)).into_iter().filter(|k| k.starts_with("open")));
        }
        assert_eq!(
            pages,
            ["open c1/degraded", "open c2/unreachable"],
            "c1's failing probe is a symptom of its degraded link"
        );
        let v = e.open_incidents().find(|v| v.key == "c1/degraded").unwrap();
        assert!(v.summary.starts_with("c1 loses 3") || v.summary.starts_with("c1 loses 4"), "{}", v.summary);
    }

    /// Issue 22: jitter on four communes whose `for` timers run out one
    /// after another is one group page, not members first; when the group
    /// shrinks below three it resolves as one, and the member whose jitter
    /// sank below the firing threshold (still firing by hysteresis) pages
    /// nothing, while one still above it does.
    #[test]
    fn groups_form_without_paging_members_and_dissolve_quietly() {
        let rules = format!(
            "{RULES}  - name: jitter\n    metric: tierwatch_icmp_jitter_seconds\n    match: {{tier: commune}}\n    above: 0.03\n    clear_below: 0.015\n    for: 5s\n    problem: degraded\n    severity: warning\n    summary: \"{{{{ node_name }}}} jitter {{{{ value | ms }}}}\"\n"
        );
        let (e0, store) = setup();
        let mut e = Engine::new(Rules::parse(Path::new("r.yaml"), &rules).unwrap(), e0.topo.clone(), 0);
        let jitter = |c: &str, v: f64, t: i64| {
            gauge(&store, c, "tierwatch_icmp_jitter_seconds", &[("target", "provincial-gateway")], v, t)
        };
        let mut changes = Vec::new();
        for t in (1000..=40_000).step_by(1000) {
            push(&store, "p", t, &[]);
            // c1 from 1 s, c2 from 2 s, c3 from 3 s at 50 ms; c4 stays at 5 ms.
            // From 20 s: c2 recovers, c3 sinks to 28 ms (below 30, above 15), c1 stays.
            for (c, from) in [("c1", 1000), ("c2", 2000), ("c3", 3000)] {
                let v = match (c, t) {
                    (_, t) if t < from => 0.005,
                    ("c2", t) if t >= 20_000 => 0.0,
                    ("c3", t) if t >= 20_000 => 0.028,
                    _ => 0.05,
                };
                jitter(c, v, t);
            }
            jitter("c4", 0.005, t);
            changes.extend(kinds(&e.evaluate(&store, t)).into_iter().map(|k| format!("{t}: {k}")));
        }
        assert_eq!(
            changes,
            ["8000: open p/degraded/children", "20000: open c1/degraded", "20000: resolve p/degraded/children"],
            "one group page; dissolved, only the member still above its threshold pages"
        );
    }

    /// A silent commune whose WAN end the province still reaches is its
    /// agent down (its own key); one the province cannot reach is unreachable.
    #[test]
    fn agent_down_and_link_down_are_told_apart() {
        let rules = RULES.replace("heartbeat: {missed: 3}\n", "heartbeat: {missed: 3, link: down}\n")
            + "  - name: agent_down\n    heartbeat: {missed: 3, link: up}\n    problem: agent_down\n    severity: critical\n    summary: \"agent on {{ node_name }} silent\"\n";
        let (e0, store) = setup();
        let mut e = Engine::new(Rules::parse(Path::new("r.yaml"), &rules).unwrap(), e0.topo.clone(), 0);
        let mut pages = Vec::new();
        for t in (1000..=30_000).step_by(500) {
            // c1's agent stops at 5 s, its link answering; c2's link is cut at 5 s.
            push(&store, "p", t, &[("c1", 1.0), ("c2", if t < 5000 { 1.0 } else { 0.0 }), ("c3", 1.0), ("c4", 1.0)]);
            for c in ["c1", "c2", "c3", "c4"] {
                if t < 5000 || (c != "c1" && c != "c2") {
                    push(&store, c, t, &[]);
                }
            }
            pages.extend(kinds(&e.evaluate(&store, t)).into_iter().filter(|k| k.starts_with("open")));
        }
        assert_eq!(pages, ["open c2/unreachable", "open c1/agent_down"]);
        let v = e.open_incidents().find(|v| v.key == "c1/agent_down").unwrap();
        assert_eq!(v.summary, "agent on Xã 1 silent");
        assert!(
            e.open_incidents().find(|v| v.key == "c2/unreachable").unwrap().alerts.len() == 2,
            "c2's heartbeat joined its link"
        );
    }

    #[test]
    fn a_subject_label_naming_no_node_is_not_taken() {
        let (mut e, store) = setup();
        // The province's probe of its upstream gateway fails: no commune is cut.
        push(&store, "p", 1000, &[("provincial-gateway", 0.0), ("c1", 1.0)]);
        assert!(e.evaluate(&store, 1000).is_empty());
    }

    /// The test rules plus a shipped-like service rule judged by quorum.
    fn with_quorum_rule() -> Rules {
        let text = format!(
            "{RULES}  - name: service_down\n    metric: tierwatch_probe_success\n    not_match: {{probe: icmp}}\n    below: 1\n    for: 30s\n    quorum: {{at_least: majority}}\n    problem: service\n    severity: critical\n    summary: \"{{{{ target }}}} down\"\n"
        );
        Rules::parse(Path::new("r.yaml"), &text).unwrap()
    }

    /// Runs 400 s: every node pushes each second, the province probes the
    /// communes' WAN ends (up); `portal` is probed by the province every 10 s
    /// and by each commune once a minute (staggered), failing for whoever
    /// `fails(node, t)` says. Returns the changes, with the times.
    fn run_portal(e: &mut Engine, store: &Store, fails: impl Fn(&str, i64) -> bool) -> Vec<(i64, Change)> {
        run_portal_over(e, store, 1..=400, fails)
    }

    /// [`run_portal`] over the seconds `secs`.
    fn run_portal_over(
        e: &mut Engine,
        store: &Store,
        secs: std::ops::RangeInclusive<i64>,
        fails: impl Fn(&str, i64) -> bool,
    ) -> Vec<(i64, Change)> {
        let mut out = Vec::new();
        for t in secs.map(|s| s * 1000) {
            push(store, "p", t, &[("c1", 1.0), ("c2", 1.0), ("c3", 1.0), ("c4", 1.0)]);
            for (n, c) in ["c1", "c2", "c3", "c4"].iter().enumerate() {
                push(store, c, t, &[]);
                if (t / 1000) % 60 == n as i64 * 15 {
                    let v = if fails(c, t) { 0.0 } else { 1.0 };
                    gauge(store, c, "tierwatch_probe_success", &[("probe", "tcp"), ("target", "portal")], v, t);
                }
            }
            if (t / 1000) % 10 == 5 {
                let v = if fails("p", t) { 0.0 } else { 1.0 };
                gauge(store, "p", "tierwatch_probe_success", &[("probe", "tcp"), ("target", "portal")], v, t);
            }
            out.extend(e.evaluate(store, t).into_iter().map(|c| (t, c)));
        }
        out
    }

    #[test]
    fn a_shared_service_down_from_every_vantage_point_is_one_page() {
        let (e0, store) = setup();
        let mut e = Engine::new(with_quorum_rule(), e0.topo.clone(), 0);
        // Down 100..250 s for everyone: the province's probe and the four communes'.
        let changes = run_portal(&mut e, &store, |_, t| (100_000..250_000).contains(&t));
        let k: Vec<String> = changes.iter().map(|(_, c)| kinds(std::slice::from_ref(c))[0].clone()).collect();
        let pages: Vec<&String> = k.iter().filter(|k| !k.starts_with("update")).collect();
        assert_eq!(pages, ["open service:portal/service", "resolve service:portal/service"], "{changes:#?}");
        let (at, Change::Opened(v)) = &changes[0] else { panic!("{changes:#?}") };
        assert_eq!(
            (v.scope, v.node.as_str(), v.service.as_deref()),
            (super::super::model::Scope::Service, "p", Some("portal"))
        );
        assert!(v.summary.starts_with("portal: service seen from "), "{}", v.summary);
        assert!(v.summary.contains("of 5 nodes"), "{}", v.summary);
        // Paged once a majority saw it, one past its `for` (2 samples, 30 s).
        assert!((130_000..=200_000).contains(at), "paged at {at}");
        // Its node (a label receivers key on) stays while those failing change.
        assert!(changes.iter().all(|(_, c)| c.view().node == "p"), "{changes:#?}");
        let Some((end, _)) = changes.last() else { panic!() };
        assert!(*end >= 250_000 && *end <= 320_000, "resolved at {end}");
    }

    #[test]
    fn a_restart_during_a_shared_outage_pages_nothing_again() {
        let (e0, store) = setup();
        let mut e = Engine::new(with_quorum_rule(), e0.topo.clone(), 0);
        let down = |_: &str, t: i64| (100_000..250_000).contains(&t);
        let mut changes = run_portal_over(&mut e, &store, 1..=210, down);
        assert!(changes.iter().any(|(_, c)| matches!(c, Change::Opened(_))), "paged before the restart: {changes:#?}");
        let (mut e, store) = restarted(&e, with_quorum_rule(), 211_000);
        changes.extend(run_portal_over(&mut e, &store, 211..=400, down));
        let k: Vec<String> = changes.iter().map(|(_, c)| kinds(std::slice::from_ref(c))[0].clone()).collect();
        let pages: Vec<&String> = k.iter().filter(|k| !k.starts_with("update")).collect();
        assert_eq!(pages, ["open service:portal/service", "resolve service:portal/service"], "{changes:#?}");
    }

    #[test]
    fn a_service_failing_from_one_node_only_is_that_nodes_page() {
        let (e0, store) = setup();
        let mut e = Engine::new(with_quorum_rule(), e0.topo.clone(), 0);
        // c2 alone fails it (its own firewall), from 100 s on.
        let changes = run_portal(&mut e, &store, |n, t| n == "c2" && t >= 100_000);
        let k: Vec<String> = changes.iter().map(|(_, c)| kinds(std::slice::from_ref(c))[0].clone()).collect();
        assert_eq!(k, ["open c2/service"], "{changes:#?}");
        let Change::Opened(v) = &changes[0].1 else { panic!() };
        assert_eq!(v.summary, "portal down");
    }

    #[test]
    fn a_province_failing_a_service_its_communes_reach_is_its_own_page() {
        let (e0, store) = setup();
        let mut e = Engine::new(with_quorum_rule(), e0.topo.clone(), 0);
        let changes = run_portal(&mut e, &store, |n, t| n == "p" && t >= 100_000);
        let k: Vec<String> = changes.iter().map(|(_, c)| kinds(std::slice::from_ref(c))[0].clone()).collect();
        assert_eq!(k, ["open p/service"], "{changes:#?}");
    }

    /// A restart as the collector does it: a new engine over an empty
    /// store, given the timers (through their JSON) and the open incidents.
    fn restarted(e: &Engine, rules: Rules, at: i64) -> (Engine, Store) {
        let json = serde_json::to_string(&e.timers()).unwrap();
        let open: Vec<IncidentView> = e.open_incidents().cloned().collect();
        let (e0, store) = setup();
        let mut e = Engine::new(rules, e0.topo.clone(), at);
        e.restore_timers(serde_json::from_str(&json).unwrap(), at);
        e.restore(open);
        (e, store)
    }

    fn service(store: &Store, node: &str, v: f64, at: i64) {
        gauge(store, node, "tierwatch_probe_success", &[("probe", "tcp"), ("target", "portal")], v, at);
    }

    #[test]
    fn a_restart_keeps_a_pending_for() {
        let (e0, store) = setup();
        let mut e = Engine::new(with_service_rule("30s"), e0.topo.clone(), 0);
        for t in [1000, 11_000, 21_000] {
            push(&store, "p", t, &[("c1", 1.0)]);
            service(&store, "c1", 0.0, t);
            assert!(e.evaluate(&store, t).is_empty());
        }
        // Restarted at 22 s; c1's next failed round at 31 s is 30 s after the first.
        let (mut e, store) = restarted(&e, with_service_rule("30s"), 22_000);
        push(&store, "p", 23_000, &[("c1", 1.0)]);
        assert!(e.evaluate(&store, 23_000).is_empty(), "no reading of c1's service yet: the timer waits");
        push(&store, "p", 31_000, &[("c1", 1.0)]);
        service(&store, "c1", 0.0, 31_000);
        assert_eq!(kinds(&e.evaluate(&store, 31_000)), ["open c1/service"], "the `for` went on across the restart");
    }

    #[test]
    fn a_restart_keeps_flap_openings_and_quiet() {
        let (e0, store) = setup();
        let mut e = Engine::new(with_service_rule("0s"), e0.topo.clone(), 0);
        let mut opened = Vec::new();
        // c1's link bounces twice before the restart...
        for (t, v) in [(1000, 0.0), (2000, 1.0), (3000, 0.0), (4000, 1.0)] {
            push(&store, "p", t, &[("c1", v)]);
            opened.extend(kinds(&e.evaluate(&store, t)));
        }
        assert_eq!(opened.iter().filter(|k| k.starts_with("open")).count(), 2, "{opened:?}");
        // ...and once after: the third opening within the window is flapping.
        let (mut e, store) = restarted(&e, with_service_rule("0s"), 5000);
        push(&store, "p", 6000, &[("c1", 0.0)]);
        assert_eq!(kinds(&e.evaluate(&store, 6000)), ["open c1/unreachable/flapping"]);
        // The quiet period runs from the last change, across another restart.
        push(&store, "p", 7000, &[("c1", 1.0)]);
        e.evaluate(&store, 7000);
        let (mut e, store) = restarted(&e, with_service_rule("0s"), 100_000);
        push(&store, "p", 307_500, &[("c1", 1.0)]);
        assert_eq!(kinds(&e.evaluate(&store, 307_500)), ["resolve c1/unreachable/flapping"]);
    }

    /// The shipped rules over a province and four communes pushing at
    /// random (probes up and down, lossy links, certificates near expiry,
    /// security events, silences and returns): the engine acting on what
    /// changed pages exactly as one acting on every reading each time.
    mod incremental {
        use super::*;
        use proptest::prelude::*;

        /// One step: the time passes by `dt` ms, one thing about the nodes
        /// may change (`toggle`), one node may report a security event, and
        /// every node not silent pushes what it measures now.
        #[derive(Debug, Clone)]
        struct Step {
            dt: i64,
            toggle: Option<usize>,
            event: Option<(usize, usize)>,
            evaluate: bool,
        }

        /// What the nodes measure (p, c1..c4), changed one thing at a time.
        #[derive(Debug, Default)]
        struct World {
            silent: [bool; 5],
            /// Per node, services `portal` and `mail` failing.
            failing: [[bool; 2]; 5],
            /// The province's probe of each commune's WAN end failing.
            cut: [bool; 4],
            loss: [usize; 5],
            cert: [usize; 5],
        }

        impl World {
            fn toggle(&mut self, i: usize) {
                match i {
                    0..5 => self.silent[i] = !self.silent[i],
                    5..15 => self.failing[(i - 5) / 2][(i - 5) % 2] ^= true,
                    15..19 => self.cut[i - 15] = !self.cut[i - 15],
                    19..24 => self.loss[i - 19] = (self.loss[i - 19] + 1) % 4,
                    _ => self.cert[(i - 24) % 5] = (self.cert[(i - 24) % 5] + 1) % 3,
                }
            }
        }

        fn step() -> impl Strategy<Value = Step> {
            (
                prop_oneof![4 => Just(500i64), 4 => Just(1000), 2 => Just(2500), 1 => Just(12_000), 1 => Just(40_000)],
                prop::option::weighted(0.3, 0usize..29),
                prop::option::weighted(0.05, (0usize..5, 0usize..3)),
                prop::bool::weighted(0.8),
            )
                .prop_map(|(dt, toggle, event, evaluate)| Step { dt, toggle, event, evaluate })
        }

        const NODES: [&str; 5] = ["p", "c1", "c2", "c3", "c4"];

        fn push_node(store: &Store, w: &World, n: usize, event: Option<usize>, now: i64) {
            let gauge = |name: &str, labels: &[(&str, &str)], v: f64| Series {
                name: name.into(),
                kind: MetricKind::Gauge as i32,
                labels: labels.iter().map(|(k, v)| Label::new(*k, *v)).collect(),
                points: vec![Point { timestamp_ms: now, value: v }],
            };
            let up = |failing: bool| if failing { 0.0 } else { 1.0 };
            let loss = [0.0, 0.05, 0.2, 0.6][w.loss[n]];
            let mut series = Vec::new();
            if n == 0 {
                for (i, c) in NODES[1..].iter().enumerate() {
                    series.push(gauge("tierwatch_probe_success", &[("probe", "icmp"), ("target", c)], up(w.cut[i])));
                    series.push(gauge("tierwatch_icmp_loss_ratio", &[("target", c)], loss));
                }
            } else {
                series.push(gauge("tierwatch_icmp_loss_ratio", &[("target", "provincial-gateway")], loss));
            }
            for (i, svc) in ["portal", "mail"].iter().enumerate() {
                series.push(gauge(
                    "tierwatch_probe_success",
                    &[("probe", "http"), ("target", svc)],
                    up(w.failing[n][i]),
                ));
            }
            let expiry = now as f64 / 1000.0 + [1.0, 5.0, 30.0][w.cert[n]] * 86_400.0;
            series.push(gauge("tierwatch_tls_leaf_expiry_timestamp_seconds", &[("target", "portal")], expiry));
            let events = event
                .map(|e| {
                    let (kind, sev) = [
                        ("dns_mismatch", tierwatch_protocol::Severity::Warning),
                        ("port_scan", tierwatch_protocol::Severity::Critical),
                        ("arp_spoof", tierwatch_protocol::Severity::Warning),
                    ][e];
                    let mut ev = tierwatch_protocol::Event::new(kind, sev, now, [("src", "10.0.0.9")]);
                    ev.attributes.insert("target".into(), "portal".into());
                    vec![ev]
                })
                .unwrap_or_default();
            let batch =
                Batch { node_id: NODES[n].into(), push_interval_ms: 1000, series, events, ..Default::default() };
            store.ingest(&NodeId::new(NODES[n]).unwrap(), batch, now);
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            #[test]
            fn acting_on_what_changed_pages_as_acting_on_everything(steps in prop::collection::vec(step(), 20..160)) {
                let (e0, store) = setup();
                let topo = e0.topo.clone();
                let file = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/rules.yaml"));
                let rules = Rules::parse(file, &std::fs::read_to_string(file).unwrap()).unwrap();
                let mut kept = Engine::new(rules.clone(), topo.clone(), 0);
                let mut every = Engine::new(rules, topo, 0);
                every.every_reading = true;
                let (mut now, mut world, mut opened) = (0, World::default(), 0);
                for st in &steps {
                    now += st.dt;
                    if let Some(t) = st.toggle {
                        world.toggle(t);
                    }
                    for n in (0..5).filter(|&n| !world.silent[n]) {
                        push_node(&store, &world, n, st.event.filter(|e| e.0 == n).map(|e| e.1), now);
                    }
                    if st.evaluate {
                        let (a, b) = (kept.evaluate(&store, now), every.evaluate(&store, now));
                        prop_assert_eq!(format!("{a:?}"), format!("{b:?}"), "changes at {}", now);
                        opened += a.iter().filter(|c| matches!(c, Change::Opened(_))).count();
                        prop_assert_eq!(kept.timers(), every.timers(), "alert instances at {}", now);
                    }
                }
                // Not a test of nothing: print what the cases paged (`--nocapture`).
                eprintln!("incremental: {} steps, {opened} incidents opened", steps.len());
            }
        }
    }
}
