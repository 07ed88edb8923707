//! The life of one alert instance (one rule, one series or node): inactive,
//! pending (breaching, waiting out `for`), firing, clearing (back past the
//! clear threshold, waiting out `clear_for`), with hysteresis between the
//! firing and the clear threshold. Pure: time comes in, transitions go out.
//!
//! `for` is judged in time and in samples: a reading of a sampled series
//! carries its sample's timestamp, and a pending alert fires only once
//! `for` has passed *and* a second sample breached too, so one failed
//! round of a probe run once a minute can never satisfy a 30 s `for`.

use std::time::Duration;

use tierwatch_protocol::NodeId;

/// One alert instance between evaluations: where it stands, the node it
/// is about and its last value.
#[derive(Debug, Clone)]
pub struct Instance {
    pub phase: Phase,
    pub subject: NodeId,
    pub value: f64,
}

/// Where an alert instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    Inactive,
    /// Breaching since this time (ms), not yet for `for`; `samples`
    /// distinct breaching samples seen, the last stamped `last_sample_ms`
    /// (`None` for readings without samples: heartbeats, events).
    Pending {
        since_ms: i64,
        samples: u32,
        last_sample_ms: Option<i64>,
    },
    /// Firing since this time (ms).
    Firing {
        since_ms: i64,
    },
    /// Firing, but on the good side of the clear threshold since `clear_ms`.
    Clearing {
        since_ms: i64,
        clear_ms: i64,
    },
}

/// What one observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The alert starts firing (at `since_ms`, when the breach began).
    Fired {
        since_ms: i64,
    },
    /// The alert stopped firing.
    Resolved {
        since_ms: i64,
    },
}

/// What the rule says about the current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Past the firing threshold.
    Breach,
    /// Between the thresholds: keeps the current phase (hysteresis).
    Between,
    /// On the good side of the clear threshold.
    Clear,
    /// No data (stale series): firing alerts stay, pending ones are dropped.
    Missing,
}

/// Advances `phase` by one reading at `now_ms`; `sample_ms` is the
/// timestamp of the sample read, if the reading is of a sampled series.
pub fn step(
    phase: Phase,
    reading: Reading,
    sample_ms: Option<i64>,
    now_ms: i64,
    for_: Duration,
    clear_for: Duration,
) -> (Phase, Transition) {
    let for_ms = for_.as_millis() as i64;
    let clear_ms_needed = clear_for.as_millis() as i64;
    match (phase, reading) {
        (Phase::Inactive, Reading::Breach) => {
            if for_ms == 0 {
                (Phase::Firing { since_ms: now_ms }, Transition::Fired { since_ms: now_ms })
            } else {
                (Phase::Pending { since_ms: now_ms, samples: 1, last_sample_ms: sample_ms }, Transition::None)
            }
        }
        (Phase::Inactive, _) => (Phase::Inactive, Transition::None),
        (Phase::Pending { since_ms, samples, last_sample_ms }, Reading::Breach) => {
            let samples = if sample_ms.is_some() && sample_ms != last_sample_ms { samples + 1 } else { samples };
            let enough = sample_ms.is_none() || samples >= 2;
            if now_ms - since_ms >= for_ms && enough {
                (Phase::Firing { since_ms }, Transition::Fired { since_ms })
            } else {
                (Phase::Pending { since_ms, samples, last_sample_ms: sample_ms.or(last_sample_ms) }, Transition::None)
            }
        }
        // Below the firing threshold before `for` passed: not an alert.
        (Phase::Pending { .. }, _) => (Phase::Inactive, Transition::None),
        (Phase::Firing { since_ms }, Reading::Clear) => {
            if clear_ms_needed == 0 {
                (Phase::Inactive, Transition::Resolved { since_ms })
            } else {
                (Phase::Clearing { since_ms, clear_ms: now_ms }, Transition::None)
            }
        }
        (Phase::Firing { .. }, _) => (phase, Transition::None),
        (Phase::Clearing { since_ms, clear_ms }, Reading::Clear) => {
            if now_ms - clear_ms >= clear_ms_needed {
                (Phase::Inactive, Transition::Resolved { since_ms })
            } else {
                (phase, Transition::None)
            }
        }
        (Phase::Clearing { since_ms, .. }, Reading::Breach) => (Phase::Firing { since_ms }, Transition::None),
        (Phase::Clearing { .. }, _) => (phase, Transition::None),
    }
}

/// True while the alert counts as firing (including while it clears).
pub fn is_firing(p: Phase) -> bool {
    matches!(p, Phase::Firing { .. } | Phase::Clearing { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn for_duration_and_hysteresis() {
        let mut p = Phase::Inactive;
        let mut t;
        (p, t) = step(p, Reading::Breach, None, 0, 2 * S, S);
        assert_eq!((p, t), (Phase::Pending { since_ms: 0, samples: 1, last_sample_ms: None }, Transition::None));
        (p, t) = step(p, Reading::Breach, None, 1000, 2 * S, S);
        assert_eq!(t, Transition::None);
        (p, t) = step(p, Reading::Breach, None, 2000, 2 * S, S);
        assert_eq!(t, Transition::Fired { since_ms: 0 });
        // Between the thresholds: still firing.
        (p, t) = step(p, Reading::Between, None, 3000, 2 * S, S);
        assert_eq!((is_firing(p), t), (true, Transition::None));
        (p, _) = step(p, Reading::Clear, None, 4000, 2 * S, S);
        assert!(is_firing(p), "clear_for not over yet");
        (p, t) = step(p, Reading::Clear, None, 5000, 2 * S, S);
        assert_eq!((p, t), (Phase::Inactive, Transition::Resolved { since_ms: 0 }));
    }

    #[test]
    fn a_short_breach_never_fires() {
        let (p, _) = step(Phase::Inactive, Reading::Breach, None, 0, 10 * S, S);
        let (p, t) = step(p, Reading::Between, None, 5000, 10 * S, S);
        assert_eq!((p, t), (Phase::Inactive, Transition::None));
    }

    /// A probe run once a minute with `for: 30s`: its one failed sample,
    /// read again and again for a minute, never fires; the next one failing
    /// too does.
    #[test]
    fn one_sample_never_satisfies_for() {
        let mut p = Phase::Inactive;
        for now in (0..60_000).step_by(1000) {
            let t;
            (p, t) = step(p, Reading::Breach, Some(0), now, 30 * S, S);
            assert_eq!(t, Transition::None, "at {now} ms");
        }
        let t;
        assert!(matches!(p, Phase::Pending { samples: 1, .. }), "{p:?}");
        (p, t) = step(p, Reading::Breach, Some(60_000), 60_000, 30 * S, S);
        assert_eq!((is_firing(p), t), (true, Transition::Fired { since_ms: 0 }));
        // Two samples inside `for` are not enough either: time counts too.
        let (p, _) = step(Phase::Inactive, Reading::Breach, Some(0), 0, 30 * S, S);
        let (p, t) = step(p, Reading::Breach, Some(5000), 5000, 30 * S, S);
        assert_eq!((is_firing(p), t), (false, Transition::None));
    }

    fn reading() -> impl Strategy<Value = Reading> {
        prop_oneof![Just(Reading::Breach), Just(Reading::Between), Just(Reading::Clear), Just(Reading::Missing)]
    }

    proptest! {
        /// Fired and Resolved alternate, starting with Fired; a resolve
        /// carries the start of its firing; nothing fires before `for`, nor
        /// (for sampled readings) on one breaching sample.
        #[test]
        fn transitions_alternate(
            readings in proptest::collection::vec((reading(), 0i64..3000, 0i64..4), 1..200),
            for_s in 0u64..5, clear_s in 0u64..5, sampled_rule: bool,
        ) {
            let (f, c) = (Duration::from_secs(for_s), Duration::from_secs(clear_s));
            let mut p = Phase::Inactive;
            let mut now = 0i64;
            let mut firing: Option<i64> = None;
            // Distinct samples read while breaching since the alert was last inactive.
            let mut breaching: std::collections::HashSet<i64> = Default::default();
            for (r, dt, k) in readings {
                now += dt;
                // A rule reads samples (stamped up to 3 ms before now) or none.
                let sample = sampled_rule.then_some(now - k);
                let (np, t) = step(p, r, sample, now, f, c);
                if r == Reading::Breach {
                    breaching.extend(sample);
                }
                match t {
                    Transition::Fired { since_ms } => {
                        prop_assert!(firing.is_none());
                        prop_assert!(now - since_ms >= f.as_millis() as i64);
                        if !f.is_zero() && sampled_rule {
                            prop_assert!(breaching.len() >= 2, "fired on {} sample(s)", breaching.len());
                        }
                        firing = Some(since_ms);
                    }
                    Transition::Resolved { since_ms } => {
                        prop_assert_eq!(firing, Some(since_ms));
                        firing = None;
                    }
                    Transition::None => {}
                }
                if np == Phase::Inactive {
                    breaching.clear();
                }
                prop_assert_eq!(is_firing(np), firing.is_some());
                p = np;
            }
        }
    }
}
