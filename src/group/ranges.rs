//! A set of offsets stored as disjoint ranges: what a group has acked (or lost to compaction and limits) above its
//! floor. Memory and work grow with the number of ranges, never with their width: a gap of ten million offsets is
//! one entry, and acks in order merge into the range before them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// Disjoint, non-adjacent half-open ranges, keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// `start -> end`; invariant: sorted, disjoint, and never adjacent (adjacent ranges are merged).
    ranges: BTreeMap<u64, u64>,
    /// How many offsets the ranges hold, kept as they change (a sum over the ranges would cost their number).
    len: u64,
}

impl RangeSet {
    /// Adds `range` (merging with what it touches). Work: the ranges it absorbs, no allocation.
    pub(crate) fn insert(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let (mut start, mut end) = (range.start, range.end);
        // A range starting at or before `start` that reaches it absorbs the new one's start.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                self.ranges.remove(&s);
                self.len -= e - s;
                start = s;
                end = end.max(e);
            }
        }
        // Every range starting inside (or adjacent to) the new one is absorbed.
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            self.ranges.remove(&s);
            self.len -= e - s;
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        self.len += end - start;
        self.debug_check();
    }

    /// Removes the offsets of `range`, cutting the ranges it overlaps. Work: the ranges it touches.
    pub(crate) fn remove(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        // A range starting before `range` and reaching into it keeps its head (and its tail past `range`).
        if let Some((&s, &e)) = self.ranges.range(..range.start).next_back() {
            if e > range.start {
                self.ranges.insert(s, range.start);
                self.len -= e - range.start;
                if e > range.end {
                    self.ranges.insert(range.end, e);
                    self.len += e - range.end;
                }
            }
        }
        while let Some((&s, &e)) = self.ranges.range(range.start..range.end).next() {
            self.ranges.remove(&s);
            self.len -= e - s;
            if e > range.end {
                self.ranges.insert(range.end, e);
                self.len += e - range.end;
            }
        }
        self.debug_check();
    }

    /// Whether `offset` is in the set.
    pub(crate) fn contains(&self, offset: u64) -> bool {
        self.ranges.range(..=offset).next_back().is_some_and(|(_, &end)| offset < end)
    }

    /// The range that starts exactly at `start`, removed from the set.
    pub(crate) fn take_starting_at(&mut self, start: u64) -> Option<Range<u64>> {
        let end = self.ranges.remove(&start)?;
        self.len -= end - start;
        Some(start..end)
    }

    /// Removes every offset below `floor`.
    /// Removes every offset below `floor`; returns the ranges removed (work: those ranges, each removed once).
    pub(crate) fn remove_below(&mut self, floor: u64) -> Vec<Range<u64>> {
        let kept = self.ranges.split_off(&floor);
        let mut below: Vec<Range<u64>> =
            std::mem::replace(&mut self.ranges, kept).into_iter().map(|(s, e)| s..e).collect();
        if let Some(last) = below.last_mut() {
            if last.end > floor {
                self.ranges.insert(floor, last.end);
                last.end = floor;
            }
        }
        self.len -= below.iter().map(|r| r.end - r.start).sum::<u64>();
        self.debug_check();
        below
    }

    /// Removes every offset at or above `end`.
    pub(crate) fn remove_from(&mut self, end: u64) {
        let above = self.ranges.split_off(&end);
        self.len -= above.iter().map(|(&s, &e)| e - s).sum::<u64>();
        if let Some((_, e)) = self.ranges.iter_mut().next_back() {
            if *e > end {
                self.len -= *e - end;
                *e = end;
            }
        }
        self.debug_check();
    }

    /// How many offsets the set holds.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// How many offsets of `window` are in the set (work: the ranges overlapping it).
    pub(crate) fn count_in(&self, window: Range<u64>) -> u64 {
        let first = self.ranges.range(..=window.start).next_back().map_or(window.start, |(&s, _)| s);
        self.ranges.range(first..window.end).map(|(&s, &e)| e.min(window.end).saturating_sub(s.max(window.start))).sum()
    }

    /// The ranges that overlap `window`, clipped to it, lowest first.
    pub(crate) fn overlapping(&self, window: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        let first = self.ranges.range(..=window.start).next_back().map_or(window.start, |(&s, _)| s);
        self.ranges
            .range(first..window.end.max(first))
            .map(move |(&s, &e)| s.max(window.start)..e.min(window.end))
            .filter(|r| !r.is_empty())
    }

    /// The lowest offset in the set.
    pub(crate) fn first(&self) -> Option<u64> {
        self.ranges.keys().next().copied()
    }

    /// The ranges, lowest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges.iter().map(|(&s, &e)| s..e)
    }

    /// How many ranges the set holds.
    pub(crate) fn range_count(&self) -> usize {
        self.ranges.len()
    }

    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            let mut previous_end = None;
            let mut len = 0u64;
            for (&s, &e) in &self.ranges {
                debug_assert!(s < e, "empty range {s}..{e}");
                debug_assert!(previous_end.is_none_or(|p| p < s), "ranges overlap or touch at {s}");
                previous_end = Some(e);
                len = len.wrapping_add(e - s);
            }
            debug_assert_eq!(len, self.len, "the kept length is the ranges' sum");
        }
    }
}

/// The range of the one offset `offset`. Saturates at `u64::MAX`, which no message has (a damaged journal may name
/// it): that range is empty, so such an offset is simply not counted.
pub(crate) fn single(offset: u64) -> Range<u64> {
    offset..offset.saturating_add(1)
}

/// Removes the keys of `map` in `range`, touching only them (`O(k log n)` for `k` keys in the range; a split and
/// an append would cost the whole map).
pub(crate) fn remove_range<V>(map: &mut BTreeMap<u64, V>, range: Range<u64>) {
    let keys: Vec<u64> = map.range(range).map(|(&k, _)| k).collect();
    for key in keys {
        map.remove(&key);
    }
}

/// Removes the members of `set` in `range`, touching only them.
pub(crate) fn remove_set_range(set: &mut BTreeSet<u64>, range: Range<u64>) {
    let members: Vec<u64> = set.range(range).copied().collect();
    for member in members {
        set.remove(&member);
    }
}

/// Keeps the entries of `map` at or above `floor`, and those below it whose offset is in `keep`.
pub(crate) fn split_keeping<V>(map: &mut BTreeMap<u64, V>, floor: u64, keep: &BTreeSet<u64>) {
    let above = map.split_off(&floor);
    let below = std::mem::replace(map, above);
    if !keep.is_empty() {
        map.extend(below.into_iter().filter(|(offset, _)| keep.contains(offset)));
    }
}

/// A small deterministic generator (xorshift64) for the random walks of the group's unit tests: `next(bound)` is
/// below `bound`.
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |bound| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A random walk of inserts and removals, checked offset by offset against a plain set.
    #[test]
    fn behaves_as_a_plain_set_of_offsets() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        let mut set = RangeSet::default();
        let mut model = BTreeSet::new();
        for _ in 0..5_000 {
            match next(10) {
                0 => {
                    let floor = next(300);
                    set.remove_below(floor);
                    model.retain(|&o| o >= floor);
                }
                1 => {
                    let end = next(300);
                    set.remove_from(end);
                    model.retain(|&o| o < end);
                }
                2 | 3 => {
                    let start = next(300);
                    let end = start + next(40);
                    set.remove(start..end);
                    model.retain(|&o| !(start..end).contains(&o));
                }
                _ => {
                    let start = next(300);
                    let end = start + next(8);
                    set.insert(start..end);
                    model.extend(start..end);
                }
            }
            let window = next(300)..next(300) + 300;
            assert_eq!(set.count_in(window.clone()), model.range(window).count() as u64);
            let probe = next(310);
            assert_eq!(set.contains(probe), model.contains(&probe), "offset {probe}");
            assert_eq!(set.first(), model.first().copied());
            assert_eq!(set.len(), model.len() as u64);
        }
    }

    #[test]
    fn a_huge_range_is_one_entry() {
        let mut set = RangeSet::default();
        set.insert(1..u64::MAX);
        set.insert(0..1);
        assert_eq!(set.range_count(), 1);
        assert_eq!(set.count_in(0..u64::MAX), u64::MAX);
        assert_eq!(set.len(), u64::MAX);
        set.remove(5..6);
        assert_eq!((set.range_count(), set.len()), (2, u64::MAX - 1));
        set.insert(5..6);
        assert_eq!(set.take_starting_at(0), Some(0..u64::MAX));
    }
}
