//! What a sensor reported recently, so each thing is said once per quiet
//! period: bounded, because an attacker picks the keys (forged servers,
//! routers, stations). Full of recent keys, it still says yes (the
//! sensor's per-kind event limit holds a flood) but remembers nothing more.

use std::collections::HashMap;
use std::hash::Hash;

/// Keys reported and when, at most `max` of them.
#[derive(Debug)]
pub struct Recently<K> {
    quiet_ms: i64,
    max: usize,
    at: HashMap<K, i64>,
    /// When the oldest key remembered stops being recent (set when full).
    next_expiry_ms: i64,
}

impl<K: Hash + Eq> Recently<K> {
    /// Each key said at most once per `quiet_ms`, `max` keys remembered.
    pub fn new(quiet_ms: i64, max: usize) -> Self {
        Recently { quiet_ms, max, at: HashMap::new(), next_expiry_ms: i64::MIN }
    }

    /// True (and remembered) unless `key` was reported within the quiet period.
    pub fn first(&mut self, key: K, now_ms: i64) -> bool {
        if self.at.get(&key).is_some_and(|t| now_ms - t < self.quiet_ms) {
            return false;
        }
        // Full of recent keys, nothing expires before the earliest does:
        // a flood of new keys must not sweep the map at every one.
        if self.at.len() >= self.max && now_ms >= self.next_expiry_ms {
            self.at.retain(|_, t| now_ms - *t < self.quiet_ms);
            self.next_expiry_ms = self.at.values().min().map_or(i64::MIN, |t| t + self.quiet_ms);
        }
        if self.at.len() < self.max {
            self.at.insert(key, now_ms);
        }
        true
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn once_per_quiet_period() {
        let mut r = Recently::new(1_000, 10);
        assert!(r.first("a", 0));
        assert!(!r.first("a", 999));
        assert!(r.first("a", 1_000));
        assert!(r.first("b", 1_000));
    }

    proptest! {
        /// Whatever the keys and times, at most `max` are kept, and a key
        /// remembered is never said twice within its quiet period.
        #[test]
        fn bounded_and_quiet(events in proptest::collection::vec((0u16..64, 0i64..10_000), 0..500)) {
            let mut r = Recently::new(500, 16);
            let mut said: HashMap<u16, i64> = HashMap::new();
            let mut now = 0;
            for (k, dt) in events {
                now += dt % 100;
                let yes = r.first(k, now);
                if yes {
                    if r.at.contains_key(&k) {
                        said.insert(k, now);
                    }
                } else {
                    prop_assert!(said.get(&k).is_some_and(|t| now - t < 500));
                }
                prop_assert!(r.len() <= 16);
            }
        }
    }
}
