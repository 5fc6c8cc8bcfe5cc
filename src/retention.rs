//! What space reclamation needs from a consumer of the log, as a trait that sits below both: groups implement it,
//! cleanup and compaction (`compaction`) call it, and neither module imports the other. A group tells the queue
//! that its floor moved through a [`FloorListener`], the queue's wiring, not by calling cleanup itself.

use std::ops::Range;
use std::sync::Arc;

use crate::error::Result;

/// A consumer of the log whose progress bounds what may be deleted or compacted.
pub(crate) trait RetentionSource: Send + Sync + std::fmt::Debug {
    /// The group's ack floor, made durable before it is returned.
    fn durable_floor(&self) -> Result<u64>;
    /// Whether the group still needs any offset in `start..end` below its floor.
    fn retains(&self, start: u64, end: u64) -> bool;
    /// Every offset the group keeps whatever its floor (dead letters, redriven messages).
    fn retained_offsets(&self) -> Vec<u64>;
    /// Offsets below `first` were deleted by a size, age or count limit, or purged: forget them.
    fn forget_below(&self, first: u64) -> Result<()>;
    /// The offsets of `window` the group still needs (not acked, dead letters, redriven), as sorted disjoint
    /// ranges, in the group's state of now: durable only after the next [`RetentionSource::sync`].
    fn needed_in(&self, window: Range<u64>) -> Vec<Range<u64>>;
    /// Every offset below this was handed out at least once since open (or is done): sweeping what lies below it
    /// does not race the group's first reading.
    fn read_below(&self) -> u64;
    /// Makes the group's state so far durable.
    fn sync(&self) -> Result<()>;
}

/// Sorts `ranges` and merges the ones that overlap or touch.
pub(crate) fn merge_ranges(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges.into_iter().filter(|r| !r.is_empty()) {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// Called with a group's new floor after an answer moved it (the queue deletes what became consumed).
#[derive(Clone)]
pub(crate) struct FloorListener(Arc<dyn Fn(u64) + Send + Sync>);

impl FloorListener {
    pub(crate) fn new(listener: impl Fn(u64) + Send + Sync + 'static) -> FloorListener {
        FloorListener(Arc::new(listener))
    }

    /// Tells the listener that a floor moved to `floor`.
    pub(crate) fn floor_moved(&self, floor: u64) {
        (self.0)(floor)
    }
}

impl std::fmt::Debug for FloorListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FloorListener")
    }
}
