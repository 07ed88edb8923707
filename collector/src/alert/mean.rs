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
    by_key: HashMap<AlertKey, Window>,
}

/// One series' window and what its mean read when last taken.
#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<(i64, f64)>,
    reading: Option<(Reading, f64)>,
    /// The sample read then was left out (its round belongs to an outage):
    /// taken if it no longer does.
    withheld: bool,
}

impl Means {
    /// Replaces each `mean_over` rule's reading in `readings` by the one of
    /// its window's mean (the value shown becomes the mean). A sample in
    /// `outage` is not taken; those keys are taken out of `outage`, being
    /// handled. Taking the same sample again changes nothing, so a series
    /// whose sample did not change need not be taken (see [`Means::retake`]).
    pub fn apply(&mut self, rules: &Rules, readings: &mut HashMap<AlertKey, Read>, outage: &mut HashSet<AlertKey>) {
        for (key, r) in readings.iter_mut() {
            let RuleKind::Threshold { condition, mean_over: Some(window), .. } = &rules.rules[key.rule].kind else {
                continue;
            };
            let Some((_, at)) = r.sample else { continue };
            let w = self.by_key.entry(key.clone()).or_default();
            let samples = &mut w.samples;
            if !outage.remove(key) && samples.back().is_none_or(|&(last, _)| at > last) {
                samples.push_back((at, r.value));
                if samples.len() > MAX_SAMPLES {
                    samples.pop_front();
                }
            }
            w.withheld = samples.back().is_none_or(|&(last, _)| last < at);
            // Anchored at the sample read now: during an outage (its samples
            // left out) the window empties, rather than freezing what came before.
            let from = at - window.as_millis() as i64;
            while samples.front().is_some_and(|&(t, _)| t <= from) {
                samples.pop_front();
            }
            if samples.is_empty() {
                r.reading = Reading::Missing;
            } else {
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
            w.reading = Some((r.reading, r.value));
        }
    }

    /// The series to take again though their sample did not change: a
    /// withheld sample may be taken now, a breach must be seen by the engine.
    pub fn retake(&self) -> impl Iterator<Item = &AlertKey> {
        self.by_key
            .iter()
            .filter(|(_, w)| w.withheld || w.reading.is_some_and(|(r, _)| r == Reading::Breach))
            .map(|(k, _)| k)
    }

    /// `r` as its mean read when last taken (a series of a `mean_over` rule).
    pub fn as_taken(&self, key: &AlertKey, r: &mut Read) {
        if let Some((reading, value)) = self.by_key.get(key).and_then(|w| w.reading) {
            (r.reading, r.value) = (reading, value);
        }
    }

    /// A series that stopped (stale) is no reading: its window goes.
    pub fn forget(&mut self, gone: impl IntoIterator<Item = AlertKey>) {
        for k in gone {
            self.by_key.remove(&k);
        }
    }
}
