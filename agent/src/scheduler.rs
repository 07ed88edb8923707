//! Runs each target on its own schedule. The first round starts at a random
//! phase within the interval and every round adds a random delay up to the
//! jitter, so a hundred agents started together do not probe in lockstep;
//! the schedule itself does not drift.

use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::Measurement;
use crate::config::NodeHealthSpec;
use crate::probe::node_health::NodeSampler;
use crate::probe::{Icmp, Prober};

/// The start offsets of a target's rounds: phase, then interval steps, each plus jitter.
pub struct Schedule {
    next: Instant,
    interval: Duration,
    jitter: Duration,
}

impl Schedule {
    /// A schedule starting at a random phase after `now`.
    pub fn new(now: Instant, interval: Duration, jitter: Duration, rng: &mut impl Rng) -> Self {
        let phase = Duration::from_secs_f64(rng.gen_range(0.0..interval.as_secs_f64()));
        Schedule { next: now + phase, interval, jitter }
    }

    /// When the next round starts; rounds missed while the previous one ran
    /// long are skipped rather than run back to back.
    pub fn next_start(&mut self, now: Instant, rng: &mut impl Rng) -> Instant {
        while self.next + self.interval <= now {
            self.next += self.interval;
        }
        let at = self.next;
        self.next += self.interval;
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(rng.gen_range(0.0..self.jitter.as_secs_f64()))
        };
        at.max(now) + jitter
    }
}

/// Spawns one task per prober on `tracker`; outcomes go to `results`.
pub fn spawn(
    probers: Vec<Prober>,
    icmp: Icmp,
    results: mpsc::Sender<Measurement>,
    token: &CancellationToken,
    tracker: &TaskTracker,
) {
    for prober in probers {
        let (icmp, results, token) = (icmp.clone(), results.clone(), token.clone());
        let target = prober.target().clone();
        tracker.spawn(async move {
            let mut schedule = Schedule::new(Instant::now(), target.interval, target.jitter, &mut rand::thread_rng());
            let early = results.clone();
            // A full inbox only delays the news to the round's end: the
            // prober then reports the round's failure as the flip.
            let report = std::sync::Arc::new(move |o| early.try_send(Measurement::Probe(o)).is_ok());
            let mut prober = prober.reporting_early(report);
            loop {
                let at = schedule.next_start(Instant::now(), &mut rand::thread_rng());
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = token.cancelled() => break,
                }
                // A round in progress finishes (it is bounded by its timeout) so its data is kept.
                let outcome = prober.run(&icmp).await;
                if let Some(e) = &outcome.error {
                    tracing::debug!(target = %target.name, probe = outcome.kind.as_str(), error = %e, "probe failed");
                }
                if results.send(Measurement::Probe(outcome)).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Spawns the node health sampler: file reads run on the blocking pool.
pub fn spawn_node_health(
    spec: &NodeHealthSpec,
    results: mpsc::Sender<Measurement>,
    token: &CancellationToken,
    tracker: &TaskTracker,
) {
    let sampler = std::sync::Arc::new(NodeSampler::new(spec.wan_interface.clone(), spec.filesystems.clone()));
    let (interval, token) = (spec.interval, token.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = token.cancelled() => break,
            }
            let s = sampler.clone();
            let ts = tierwatch_protocol::now_ms();
            let Ok((series, errors)) = tokio::task::spawn_blocking(move || s.sample(ts)).await else { continue };
            // Missing sources do not change while running: say so once.
            if !errors.is_empty() && !reported {
                tracing::warn!(errors = ?errors, "node health: some sources are unreadable");
                reported = true;
            }
            if results.send(Measurement::Node(series)).await.is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn phases_spread_and_schedule_does_not_drift() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let interval = Duration::from_secs(30);
        let phases: Vec<Duration> =
            (0..100).map(|_| Schedule::new(t0, interval, Duration::ZERO, &mut rng).next - t0).collect();
        let early = phases.iter().filter(|p| **p < interval / 2).count();
        assert!((30..=70).contains(&early), "phases not spread: {early} of 100 in the first half");
        assert!(phases.iter().all(|p| *p < interval));

        let mut s = Schedule::new(t0, interval, Duration::from_secs(1), &mut rng);
        let first = s.next;
        for k in 0..10u32 {
            let at = s.next_start(first + interval * k, &mut rng);
            let base = first + interval * k;
            assert!(at >= base && at < base + Duration::from_secs(1), "round {k} off schedule");
        }
    }

    #[test]
    fn missed_rounds_are_skipped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let interval = Duration::from_secs(10);
        let mut s = Schedule::new(t0, interval, Duration::ZERO, &mut rng);
        let first = s.next;
        // The process was stalled for 35 s: the next round starts now, not four times in a row.
        let now = first + Duration::from_secs(35);
        let at = s.next_start(now, &mut rng);
        assert_eq!(at, now);
        assert_eq!(s.next_start(now, &mut rng), first + Duration::from_secs(40));
    }
}
