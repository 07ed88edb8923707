//! Flap detection: an incident that opens `opens` times within `window`
//! becomes one "flapping" incident instead of a page per bounce. It stays
//! open until the underlying incident has kept its state (open or closed)
//! for `quiet`; then it resolves, and if the problem is still there, the
//! ordinary incident opens again.
//!
//! Counting happens before notification (on the incidents the engine would
//! page), so a link that bounces during a maintenance window or while held
//! still counts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use super::model::IncidentView;

/// The problem name of a flapping incident.
pub const FLAPPING: &str = "flapping";

/// When an incident counts as flapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlapPolicy {
    /// Openings within `window` that make it flapping; 0 disables detection.
    pub opens: usize,
    pub window: Duration,
    /// How long the state must hold still for the flapping to end.
    pub quiet: Duration,
}

impl Default for FlapPolicy {
    fn default() -> Self {
        FlapPolicy { opens: 3, window: Duration::from_secs(600), quiet: Duration::from_secs(300) }
    }
}

/// Flap detection's timers as saved across a restart.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlapTimers {
    /// Openings within the window, per incident key.
    pub opens: BTreeMap<String, Vec<i64>>,
    /// The incidents present at the last evaluation.
    pub present: Vec<String>,
    /// The last change of each flapping incident's problem (its quiet period runs from it).
    pub quiet_since: BTreeMap<String, i64>,
}

#[derive(Debug, Clone)]
struct Flapping {
    last_change_ms: i64,
    view: IncidentView,
}

/// Openings per incident key and the keys flapping now.
#[derive(Debug, Default)]
pub struct Flaps {
    policy: FlapPolicy,
    language: crate::i18n::Language,
    opens: HashMap<String, VecDeque<i64>>,
    flapping: HashMap<String, Flapping>,
    present: HashSet<String>,
}

/// The key of the flapping incident standing for `key`.
pub fn flapping_key(key: &str) -> String {
    format!("{key}/{FLAPPING}")
}

impl Flaps {
    /// A tracker with `policy`, writing its summaries in `language`.
    pub fn new(policy: FlapPolicy, language: crate::i18n::Language) -> Flaps {
        Flaps { policy, language, ..Default::default() }
    }

    /// Feeds the incidents present at `now_ms` and returns them with every
    /// flapping one replaced by its flapping incident.
    /// `held`: incidents kept open without being present (restored after
    /// a restart, not yet judged): neither gone nor opened again.
    pub fn apply(
        &mut self,
        mut present: BTreeMap<String, IncidentView>,
        held: &HashSet<String>,
        now_ms: i64,
    ) -> BTreeMap<String, IncidentView> {
        let seen: HashSet<String> =
            present.keys().chain(held.iter().filter(|k| self.present.contains(*k))).cloned().collect();
        for key in &seen {
            if !self.present.contains(key) {
                self.opens.entry(key.clone()).or_default().push_back(now_ms);
                if let Some(f) = self.flapping.get_mut(key) {
                    f.last_change_ms = now_ms;
                }
            }
        }
        for key in &self.present {
            if !seen.contains(key) {
                if let Some(f) = self.flapping.get_mut(key) {
                    f.last_change_ms = now_ms;
                }
            }
        }
        self.present = seen;
        let window = self.policy.window.as_millis() as i64;
        self.opens.retain(|_, q| {
            while q.front().is_some_and(|&t| now_ms - t > window) {
                q.pop_front();
            }
            !q.is_empty()
        });
        if self.policy.opens > 0 {
            for (key, q) in &self.opens {
                if q.len() >= self.policy.opens && !self.flapping.contains_key(key) {
                    if let Some(v) = present.get(key) {
                        let view = self.flapping_view(v, q.len(), q.front().copied().unwrap_or(now_ms));
                        tracing::warn!(incident = %key, opens = q.len(), "incident is flapping");
                        self.flapping.insert(key.clone(), Flapping { last_change_ms: now_ms, view });
                    }
                }
            }
        }
        let quiet = self.policy.quiet.as_millis() as i64;
        let opens = &mut self.opens;
        self.flapping.retain(|key, f| {
            let goes_on = now_ms - f.last_change_ms < quiet;
            if !goes_on {
                tracing::info!(incident = %key, "incident stopped flapping");
                opens.remove(key);
            }
            goes_on
        });
        for (key, f) in &self.flapping {
            present.remove(key);
            present.insert(f.view.key.clone(), f.view.clone());
        }
        present
    }

    /// Takes back a flapping incident that was open before a restart; its
    /// quiet period goes on from the last change saved (`saved`), else
    /// starts again at `now_ms`.
    pub fn restore(&mut self, view: &IncidentView, saved: Option<&FlapTimers>, now_ms: i64) {
        if let Some(base) = view.key.strip_suffix(&format!("/{FLAPPING}")) {
            let last_change_ms = saved.and_then(|s| s.quiet_since.get(base).copied()).unwrap_or(now_ms);
            self.flapping.insert(base.to_string(), Flapping { last_change_ms, view: view.clone() });
        }
    }

    /// Takes back the openings and the incidents present before a restart,
    /// so a restored incident seen again is no new opening.
    pub fn restore_timers(&mut self, saved: &FlapTimers) {
        self.opens = saved.opens.iter().map(|(k, v)| (k.clone(), v.iter().copied().collect())).collect();
        self.present = saved.present.iter().cloned().collect();
    }

    /// What a restart must not forget.
    pub fn timers(&self) -> FlapTimers {
        FlapTimers {
            opens: self.opens.iter().map(|(k, q)| (k.clone(), q.iter().copied().collect())).collect(),
            present: {
                let mut p: Vec<String> = self.present.iter().cloned().collect();
                p.sort();
                p
            },
            quiet_since: self.flapping.iter().map(|(k, f)| (k.clone(), f.last_change_ms)).collect(),
        }
    }

    fn flapping_view(&self, v: &IncidentView, opens: usize, since_ms: i64) -> IncidentView {
        let mut f = v.clone();
        f.key = flapping_key(&v.key);
        let t = self.language.texts();
        let (opens, window) = (opens.to_string(), tierwatch_runtime::duration::format(self.policy.window));
        f.summary = t.fill(
            t.incident_flapping,
            &[
                ("node", v.service.as_deref().unwrap_or(&v.node_name)),
                ("problem", t.problem(&v.problem)),
                ("count", &opens),
                ("window", &window),
            ],
        );
        f.problem = FLAPPING.to_string();
        f.since_ms = since_ms;
        // Fixed for its life: a bounce changes the alerts, not the page.
        f.alerts.clear();
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(key: &str) -> IncidentView {
        IncidentView {
            key: key.into(),
            node: "c1".into(),
            node_name: "Xã 1".into(),
            problem: "unreachable".into(),
            scope: crate::alert::model::Scope::Node,
            severity: crate::alert::model::Severity::Critical,
            since_ms: 0,
            summary: "down".into(),
            affected: vec![],
            service: None,
            alerts: vec![],
            muted: None,
            ack: None,
        }
    }

    fn policy() -> FlapPolicy {
        FlapPolicy { opens: 3, window: Duration::from_secs(60), quiet: Duration::from_secs(30) }
    }

    fn keys(m: &BTreeMap<String, IncidentView>) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    #[test]
    fn the_third_bounce_becomes_one_flapping_incident_until_quiet() {
        let mut f = Flaps::new(policy(), Default::default());
        let down = || BTreeMap::from([("c1/unreachable".to_string(), view("c1/unreachable"))]);
        let mut t = 0;
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(keys(&f.apply(down(), &HashSet::new(), t)).join(","));
            t += 5_000;
            seen.push(keys(&f.apply(BTreeMap::new(), &HashSet::new(), t)).join(","));
            t += 5_000;
        }
        assert_eq!(seen, ["c1/unreachable", "", "c1/unreachable", ""]);
        // Third opening: flapping, and it stays through further bounces.
        for _ in 0..5 {
            assert_eq!(keys(&f.apply(down(), &HashSet::new(), t)), ["c1/unreachable/flapping"]);
            t += 5_000;
            assert_eq!(keys(&f.apply(BTreeMap::new(), &HashSet::new(), t)), ["c1/unreachable/flapping"]);
            t += 5_000;
        }
        let last = t - 5_000;
        let out = f.apply(BTreeMap::new(), &HashSet::new(), last + 29_000);
        assert_eq!(out["c1/unreachable/flapping"].summary, "Xã 1 is flapping: unreachable 3 times in 1m");
        // Down again, then steadily for 30 s: the flapping ends, the outage shows.
        assert_eq!(keys(&f.apply(down(), &HashSet::new(), last + 31_000)), ["c1/unreachable/flapping"]);
        assert_eq!(keys(&f.apply(down(), &HashSet::new(), last + 60_000)), ["c1/unreachable/flapping"]);
        assert_eq!(keys(&f.apply(down(), &HashSet::new(), last + 61_000)), ["c1/unreachable"]);
    }

    #[test]
    fn slow_bounces_outside_the_window_do_not_flap() {
        let mut f = Flaps::new(policy(), Default::default());
        for i in 0..10 {
            let t = i * 40_000;
            let out = f.apply(BTreeMap::from([("k".to_string(), view("k"))]), &HashSet::new(), t);
            assert_eq!(keys(&out), ["k"]);
            f.apply(BTreeMap::new(), &HashSet::new(), t + 1_000);
        }
    }

    #[test]
    fn zero_disables() {
        let mut f = Flaps::new(FlapPolicy { opens: 0, ..policy() }, Default::default());
        for t in 0..20 {
            let present = if t % 2 == 0 { BTreeMap::from([("k".to_string(), view("k"))]) } else { BTreeMap::new() };
            assert!(f.apply(present, &HashSet::new(), t * 1000).keys().all(|k| k == "k"));
        }
    }
}
