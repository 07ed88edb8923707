//! Rules judged on the mean of a window of samples (`mean_over`): the loss
//! of a five-request round on a link losing 25 % each way jumps between 0
//! and 80 %, so a rule on the latest round never holds for its `for`; the
//! mean over a minute says 44 %. Samples whose round belongs to an outage
//! are left out, so a cut does not leave a "degraded" link behind it.

use std::collections::{HashMap, HashSet, VecDeque};

use super::readings::{AlertKey, Read};
use super::rules::{RuleKind, Rules};
use super::state::Reading;

/// Samples kept per series at most, whatever the window: a node pushing
/// far more often than it should cannot grow this.
const MAX_SAMPLES: usize = 256;

/// The recent samples of every series a `mean_over` rule reads.
#[derive(Debug, Default)]
pub struct Means {
    by_key: HashMap<AlertKey, VecDeque<(i64, f64)>>,
}

impl Means {
    /// Replaces each `mean_over` rule's reading by the one of its window's
    /// mean (the value shown becomes the mean). A sample in `outage` is
    /// not taken; those keys are taken out of `outage`, being handled.
    pub fn apply(&mut self, rules: &Rules, readings: &mut HashMap<AlertKey, Read>, outage: &mut HashSet<AlertKey>) {
        for (key, r) in readings.iter_mut() {
            let RuleKind::Threshold { condition, mean_over: Some(window), .. } = &rules.rules[key.rule].kind else {
                continue;
            };
            let Some((_, at)) = r.sample else { continue };
            let samples = self.by_key.entry(key.clone()).or_default();
            if !outage.remove(key) && samples.back().is_none_or(|&(last, _)| at > last) {
                samples.push_back((at, r.value));
                if samples.len() > MAX_SAMPLES {
                    samples.pop_front();
                }
            }
            // Anchored at the sample read now: during an outage (its samples
            // left out) the window empties, rather than freezing what came before.
            let from = at - window.as_millis() as i64;
            while samples.front().is_some_and(|&(t, _)| t <= from) {
                samples.pop_front();
            }
            if samples.is_empty() {
                r.reading = Reading::Missing;
                continue;
            }
            let mean = samples.iter().map(|&(_, v)| v).sum::<f64>() / samples.len() as f64;
            r.value = mean;
            r.reading = if condition.fires(mean) {
                Reading::Breach
            } else if condition.clears(mean) {
                Reading::Clear
            } else {
                Reading::Between
            };
        }
        // A series that stopped (stale) is no reading: its window goes.
        self.by_key.retain(|k, _| readings.contains_key(k));
    }
}
