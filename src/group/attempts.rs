//! How many times each message not yet done was handed out: what decides a dead letter after `max_deliveries`.
//!
//! Most messages are delivered once and acked, and a take hands out fresh messages in runs of consecutive offsets.
//! So first deliveries are kept as ranges and only redeliveries one by one: leasing a batch of 1,000 fresh messages
//! is one range insert, and acking it one range removal, where a map entry per message made both cost a tree
//! operation each (the largest share of a batched consume in profiles).
//!
//! One offset's range is `ranges::single`: a damaged journal may name `u64::MAX`, which no message has; it is then
//! simply not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::ranges::{remove_range, single, split_keeping, RangeSet};

/// Delivery attempts of offsets: 0 for an offset never handed out (or forgotten).
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    /// Offsets handed out exactly once.
    first: RangeSet,
    /// Offsets handed out more than once, with their count (always at least 2).
    more: BTreeMap<u64, u32>,
}

impl Attempts {
    /// How many times `offset` was handed out.
    pub(crate) fn get(&self, offset: u64) -> u32 {
        match self.more.get(&offset) {
            Some(&count) => count,
            None => u32::from(self.first.contains(offset)),
        }
    }

    /// Records that `offset` was handed out for the `attempt`-th time (counts never go down: a replayed older
    /// record does not lower a later one).
    pub(crate) fn record(&mut self, offset: u64, attempt: u32) {
        let count = attempt.max(self.get(offset));
        match count {
            0 => {}
            1 => self.first.insert(single(offset)),
            _ => {
                self.first.remove(single(offset));
                self.more.insert(offset, count);
            }
        }
    }

    /// Records first deliveries of every offset in `range` but those in `skip` (sorted, disjoint; offsets done)
    /// and those counted more than once already. Work: the pieces, never the width.
    pub(crate) fn record_first(&mut self, range: Range<u64>, skip: impl IntoIterator<Item = Range<u64>>) {
        let mut from = range.start;
        for skipped in skip {
            let skipped = skipped.start.max(range.start)..skipped.end.min(range.end);
            if skipped.is_empty() {
                continue;
            }
            if skipped.start > from {
                self.first.insert(from..skipped.start);
            }
            from = from.max(skipped.end);
        }
        if from < range.end {
            self.first.insert(from..range.end);
        }
        // Only a hand-made or damaged journal names an offset as first delivered after a redelivery.
        let counted: Vec<u64> = self.more.range(range).map(|(&offset, _)| offset).collect();
        for offset in counted {
            self.first.remove(single(offset));
        }
    }

    /// Forgets the counts of `range` (done: acked, gone, dead-lettered).
    pub(crate) fn forget(&mut self, range: Range<u64>) {
        self.first.remove(range.clone());
        remove_range(&mut self.more, range);
    }

    /// Forgets the counts below `floor`, except those of offsets in `keep` (redriven messages, still to be
    /// delivered). Work: the ranges and entries below `floor`, which are those of redriven messages once the
    /// others are forgotten (as before ranges: redriven messages are few, and dead letters when they are many).
    pub(crate) fn forget_below(&mut self, floor: u64, keep: &BTreeSet<u64>) {
        for removed in self.first.remove_below(floor) {
            for &offset in keep.range(removed) {
                self.first.insert(single(offset));
            }
        }
        split_keeping(&mut self.more, floor, keep);
    }

    /// Forgets every count at or past `end`.
    pub(crate) fn forget_from(&mut self, end: u64) {
        self.first.remove_from(end);
        self.more.split_off(&end);
    }

    /// How many offsets have a count.
    pub(crate) fn len(&self) -> u64 {
        self.first.len() + self.more.len() as u64
    }

    /// The state as runs of first deliveries (each at most `run_max` wide) and single counts: what a checkpoint
    /// writes. Their number grows with the ranges and the redeliveries, not with the offsets.
    pub(crate) fn runs(&self, run_max: u64) -> (Vec<Range<u64>>, Vec<(u64, u32)>) {
        let mut runs = Vec::new();
        for range in self.first.iter() {
            let mut from = range.start;
            while from < range.end {
                let to = range.end.min(from.saturating_add(run_max));
                runs.push(from..to);
                from = to;
            }
        }
        (runs, self.more.iter().map(|(&offset, &count)| (offset, count)).collect())
    }

    /// Every counted offset's range (first deliveries as ranges, redeliveries one each): for invariant checks.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.first.iter().chain(self.more.keys().map(|&offset| single(offset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random walk checked offset by offset against a plain map of counts.
    #[test]
    fn behaves_as_a_plain_map_of_counts() {
        let mut next = super::super::ranges::xorshift(0x9E37_79B9_7F4A_7C15);
        let mut attempts = Attempts::default();
        let mut model: BTreeMap<u64, u32> = BTreeMap::new();
        let keep: BTreeSet<u64> = [7, 50, 51].into();
        for _ in 0..5_000 {
            match next(6) {
                0 => {
                    let (offset, attempt) = (next(200), next(4) as u32);
                    attempts.record(offset, attempt);
                    let count = model.get(&offset).copied().unwrap_or(0).max(attempt);
                    if count > 0 {
                        model.insert(offset, count);
                    }
                }
                1 => {
                    let start = next(200);
                    let range = start..start + next(30);
                    let skip = next(200)..next(200);
                    let skip = skip.start..skip.end.max(skip.start);
                    attempts.record_first(range.clone(), [skip.clone()]);
                    for offset in range.filter(|o| !skip.contains(o)) {
                        model.entry(offset).or_insert(1);
                    }
                }
                2 => {
                    let start = next(200);
                    let range = start..start + next(30);
                    attempts.forget(range.clone());
                    model.retain(|o, _| !range.contains(o));
                }
                3 => {
                    let floor = next(200);
                    attempts.forget_below(floor, &keep);
                    model.retain(|o, _| *o >= floor || keep.contains(o));
                }
                4 => {
                    let end = next(220);
                    attempts.forget_from(end);
                    model.retain(|o, _| *o < end);
                }
                _ => {
                    let (runs, more) = attempts.runs(3);
                    let mut rebuilt = Attempts::default();
                    for run in runs {
                        assert!(run.end - run.start <= 3);
                        rebuilt.record_first(run, []);
                    }
                    for (offset, count) in more {
                        rebuilt.record(offset, count);
                    }
                    attempts = rebuilt;
                }
            }
            let probe = next(220);
            assert_eq!(attempts.get(probe), model.get(&probe).copied().unwrap_or(0), "offset {probe}");
            assert_eq!(attempts.len(), model.len() as u64);
        }
    }
}
