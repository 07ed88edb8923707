//! A set of sequence numbers stored as sorted, disjoint, non-adjacent
//! inclusive ranges. Batches of one agent boot arrive mostly in order, with
//! the newest ahead of a backlog after an outage, so a boot's set is a
//! handful of ranges however many batches it sent. A node sending every
//! other sequence number would make a range per batch, and every commit
//! rewrites the set: past [`MAX_RANGES`] the oldest gap is forgotten
//! (filled), so the work per batch stays bounded.

/// Ranges a set keeps at most: far more than an honest agent's gaps (one
/// per outage whose backlog it had to drop), a 40 KB row at most.
pub(crate) const MAX_RANGES: usize = 10_000;

/// Sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SeqSet {
    ranges: Vec<(u64, u64)>,
}

impl SeqSet {
    /// True if `n` is in the set. (the tests' view of the set)
    #[cfg(test)]
    pub(crate) fn contains(&self, n: u64) -> bool {
        match self.ranges.binary_search_by(|&(lo, _)| lo.cmp(&n)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => self.ranges[i - 1].1 >= n,
        }
    }

    /// Adds `n`; returns false if it was already there.
    pub(crate) fn insert(&mut self, n: u64) -> bool {
        let i = match self.ranges.binary_search_by(|&(lo, _)| lo.cmp(&n)) {
            Ok(_) => return false,
            Err(i) => i,
        };
        if i > 0 && self.ranges[i - 1].1 >= n {
            return false;
        }
        let joins_prev = i > 0 && self.ranges[i - 1].1.checked_add(1) == Some(n);
        let joins_next = i < self.ranges.len() && n.checked_add(1) == Some(self.ranges[i].0);
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = n,
            (false, true) => self.ranges[i].0 = n,
            (false, false) => {
                self.ranges.insert(i, (n, n));
                if self.ranges.len() > MAX_RANGES {
                    // The oldest gap is filled: a batch that old arriving
                    // later is taken for a copy (acknowledged, not stored).
                    self.ranges[0].1 = self.ranges[1].1;
                    self.ranges.remove(1);
                }
            }
        }
        true
    }

    /// Number of ranges. (the tests' view of the set)
    #[cfg(test)]
    pub(crate) fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// Highest member. (the tests' view of the set)
    #[cfg(test)]
    pub(crate) fn max(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    /// Compact encoding: LEB128 varints, each range as (gap from the
    /// previous end, length - 1).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ranges.len() * 4);
        let mut prev = 0u64;
        for &(lo, hi) in &self.ranges {
            put_varint(&mut out, lo - prev);
            put_varint(&mut out, hi - lo);
            prev = hi;
        }
        out
    }

    /// Decodes [`SeqSet::encode`]'s output; `None` if it is not well formed.
    pub(crate) fn decode(mut b: &[u8]) -> Option<SeqSet> {
        let mut ranges = Vec::new();
        let mut prev = 0u64;
        while !b.is_empty() {
            let gap = get_varint(&mut b)?;
            let len = get_varint(&mut b)?;
            let lo = prev.checked_add(gap)?;
            let hi = lo.checked_add(len)?;
            if !ranges.is_empty() && gap < 2 {
                return None;
            }
            ranges.push((lo, hi));
            prev = hi;
        }
        Some(SeqSet { ranges })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= ((byte & 0x7f) as u64).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn live_first_then_backlog_collapses_to_one_range() {
        let mut s = SeqSet::default();
        for n in [1, 2, 3, 60, 61] {
            assert!(s.insert(n));
        }
        assert_eq!(s.ranges(), 2);
        for n in 4..60 {
            assert!(s.insert(n));
        }
        assert_eq!((s.ranges(), s.max()), (1, Some(61)));
        assert!(!s.insert(30));
        assert_eq!(SeqSet::decode(&s.encode()), Some(s));
    }

    #[test]
    fn a_scattered_boot_stays_bounded() {
        let mut s = SeqSet::default();
        for n in (1..=(2 * MAX_RANGES as u64 + 2000)).step_by(2) {
            assert!(s.insert(n));
        }
        assert_eq!(s.ranges(), MAX_RANGES);
        assert!(s.encode().len() <= 4 * MAX_RANGES, "{} bytes", s.encode().len());
        // The newest gaps are still gaps; the oldest were filled.
        assert!(!s.contains(2 * MAX_RANGES as u64 + 1998) && s.contains(2));
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec(0u64..200, 0..300)) {
            let mut s = SeqSet::default();
            let mut model = BTreeSet::new();
            for n in ops {
                prop_assert_eq!(s.insert(n), model.insert(n));
            }
            for n in 0..201 {
                prop_assert_eq!(s.contains(n), model.contains(&n));
            }
            prop_assert_eq!(SeqSet::decode(&s.encode()), Some(s.clone()));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SeqSet::decode(&bytes);
        }
    }
}
