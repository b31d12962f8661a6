//! [`RangeSet`]: which entries of a log a holder has, as sorted disjoint half-open ranges. A
//! writer's own log is one range; a sparse mirror's is a few. Cheap to send and to compare.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A set of entry indices stored as disjoint, non-adjacent `[start, end)` ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<(u64, u64)>", into = "Vec<(u64, u64)>")]
pub struct RangeSet {
    /// start → end, never overlapping or touching.
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `[start, end)`, merging with neighbours.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        // Every range that overlaps or touches [start, end) is merged into it.
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Removes `[start, end)`, splitting ranges that straddle its edges.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let overlapping: Vec<(u64, u64)> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|&(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, start);
            }
            if e > end {
                self.ranges.insert(end, e);
            }
        }
    }

    /// The indices in both sets.
    pub fn intersection(&self, other: &RangeSet) -> RangeSet {
        let mut out = RangeSet::new();
        for (s, e) in self.iter() {
            for (os, oe) in other
                .ranges
                .range(..e)
                .rev()
                .take_while(|&(_, &oe)| oe > s)
                .map(|(&a, &b)| (a, b))
            {
                out.insert(s.max(os), e.min(oe));
            }
        }
        out
    }

    /// The indices in `self` but not in `other`.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = self.clone();
        for (s, e) in other.iter() {
            out.remove(s, e);
        }
        out
    }

    /// The first held index, if any.
    pub fn first(&self) -> Option<u64> {
        self.ranges.keys().next().copied()
    }

    /// The number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn contains(&self, index: u64) -> bool {
        self.ranges
            .range(..=index)
            .next_back()
            .is_some_and(|(_, &e)| index < e)
    }

    /// Whether every index in `[start, end)` is held.
    pub fn contains_range(&self, start: u64, end: u64) -> bool {
        start >= end
            || self
                .ranges
                .range(..=start)
                .next_back()
                .is_some_and(|(_, &e)| end <= e)
    }

    /// The number of indices held.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// The ranges of `[0, length)` not held: what to ask a peer for.
    pub fn missing(&self, length: u64) -> RangeSet {
        let mut out = RangeSet::new();
        let mut at = 0;
        for (s, e) in self.iter() {
            if s >= length {
                break;
            }
            out.insert(at, s);
            at = e;
        }
        out.insert(at, length);
        out
    }
}

impl From<Vec<(u64, u64)>> for RangeSet {
    fn from(v: Vec<(u64, u64)>) -> Self {
        let mut set = RangeSet::new();
        for (s, e) in v {
            set.insert(s, e);
        }
        set
    }
}

impl From<RangeSet> for Vec<(u64, u64)> {
    fn from(set: RangeSet) -> Self {
        set.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn merges_touching_and_overlapping_ranges() {
        let mut s = RangeSet::new();
        s.insert(10, 20);
        s.insert(30, 40);
        s.insert(20, 30);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(10, 40)]);
        s.insert(0, 5);
        s.insert(3, 12);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(0, 40)]);
        s.insert(50, 50);
        assert_eq!(s.count(), 40);
        assert!(s.contains_range(0, 40));
        assert!(!s.contains_range(39, 41));
        assert_eq!(s.missing(60).iter().collect::<Vec<_>>(), vec![(40, 60)]);
    }

    proptest! {
        #[test]
        fn behaves_like_a_set_of_indices(
            ops in proptest::collection::vec((0u64..200, 0u64..20, any::<bool>()), 0..40),
            other in proptest::collection::vec((0u64..200, 0u64..30), 0..10),
        ) {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for (s, len, add) in ops {
                if add {
                    set.insert(s, s + len);
                    model.extend(s..s + len);
                } else {
                    set.remove(s, s + len);
                    for i in s..s + len {
                        model.remove(&i);
                    }
                }
            }
            let mut o = RangeSet::new();
            let mut o_model = BTreeSet::new();
            for (s, len) in other {
                o.insert(s, s + len);
                o_model.extend(s..s + len);
            }
            let both = set.intersection(&o);
            let only = set.difference(&o);
            for i in 0..230 {
                prop_assert_eq!(both.contains(i), model.contains(&i) && o_model.contains(&i));
                prop_assert_eq!(only.contains(i), model.contains(&i) && !o_model.contains(&i));
            }
            prop_assert_eq!(set.first(), model.iter().next().copied());
            prop_assert_eq!(set.count(), model.len() as u64);
            for i in 0..230 {
                prop_assert_eq!(set.contains(i), model.contains(&i));
            }
            // Canonical: disjoint and not touching.
            let v: Vec<_> = set.iter().collect();
            for w in v.windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
            let missing = set.missing(230);
            for i in 0..230 {
                prop_assert_eq!(missing.contains(i), !model.contains(&i));
            }
            let back: RangeSet = Vec::<(u64, u64)>::from(set.clone()).into();
            prop_assert_eq!(back, set);
        }
    }
}
