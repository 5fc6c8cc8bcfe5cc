//! A consumer group's state, in memory: what is done, what was tried how often, what is dead-lettered (persisted
//! through the journal), and what is leased, ready or delayed right now (volatile: after a restart, everything not
//! done is delivered again). Pure: no I/O, no clock reads; the caller passes `now`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use super::attempts::Attempts;
use super::journal::{Entry, DELIVERED_RUN_MAX};
use super::ranges::{remove_range, remove_set_range, single, split_keeping, RangeSet};

/// Hashes the offsets that key the lease table with one multiplication (Fibonacci hashing) instead of SipHash,
/// which showed in profiles of batched takes. Offsets are walq's own counter, not input an attacker chooses, so
/// SipHash's resistance to flooding buys nothing here.
#[derive(Debug, Default, Clone, Copy)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A message handed to one consumer until `deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) id: u64,
    pub(crate) deadline: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct GroupState {
    /// Every offset below this is done, except those in `redriven`.
    floor: u64,
    /// Offsets above the floor that are acked or gone, as ranges: memory grows with the ranges, not their width.
    acked_above: RangeSet,
    /// Delivery attempts of offsets not done.
    attempts: Attempts,
    /// Dead letters, with their attempt counts. They count as done for the floor.
    dead: BTreeMap<u64, u32>,
    /// Offsets below the floor put back by a redrive, to be delivered again.
    redriven: BTreeSet<u64>,
    /// The next offset that has not been handed out since open.
    next_fresh: u64,
    leases: HashMap<u64, Lease, BuildHasherDefault<OffsetHasher>>,
    /// No lease expires before this (a lower bound: extensions and removals leave it low, never high). Spares
    /// every take a scan of all leases, which made taking O(leases) with many in flight.
    leases_expire_from: Option<Instant>,
    /// Offsets to hand out again now, lowest first.
    ready: BTreeSet<u64>,
    /// Offsets to hand out again after a nack's delay.
    delayed: BTreeSet<(Instant, u64)>,
    /// The offsets of `delayed`, for membership tests without a scan.
    delayed_offsets: HashMap<u64, Instant, BuildHasherDefault<OffsetHasher>>,
    /// Persisted delays: offset -> not before (milliseconds since the Unix epoch). Turned into `delayed` entries
    /// on open, so that a restart does not deliver a delayed message early.
    delays: BTreeMap<u64, u64>,
    next_lease_id: u64,
}

impl GroupState {
    /// A group whose first message is `floor`.
    pub(crate) fn new(floor: u64) -> GroupState {
        GroupState {
            floor,
            acked_above: RangeSet::default(),
            attempts: Attempts::default(),
            dead: BTreeMap::new(),
            redriven: BTreeSet::new(),
            next_fresh: floor,
            leases: HashMap::default(),
            leases_expire_from: None,
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            delayed_offsets: HashMap::default(),
            delays: BTreeMap::new(),
            next_lease_id: 1,
        }
    }

    /// Rebuilds a state from journal entries. Everything not done is delivered again, redriven messages first.
    pub(crate) fn replay(entries: &[Entry]) -> GroupState {
        let mut state = GroupState::new(0);
        for entry in entries {
            state.apply(*entry);
        }
        state.next_fresh = state.floor;
        state.ready = state.redriven.clone();
        state
    }

    /// Schedules the persisted delays (after a replay): each delayed message is due at its not-before time,
    /// converted with `now` and `now_ms` (the same moment on both clocks); one whose time has passed is due now.
    pub(crate) fn restore_delays(&mut self, now: Instant, now_ms: u64) {
        let delays: Vec<(u64, u64)> = self.delays.iter().map(|(&o, &t)| (o, t)).collect();
        for (offset, not_before_ms) in delays {
            if self.is_done(offset) {
                self.delays.remove(&offset);
                continue;
            }
            // One millisecond more: the wall clock counts whole milliseconds, and early is what must not happen.
            let due = now + Duration::from_millis(not_before_ms.saturating_sub(now_ms) + 1);
            self.delay(offset, due);
        }
    }

    fn delay(&mut self, offset: u64, due: Instant) {
        if let Some(previous) = self.delayed_offsets.insert(offset, due) {
            self.delayed.remove(&(previous, offset));
        }
        self.delayed.insert((due, offset));
    }

    /// Forgets `offset`'s persisted delay (it was answered, delivered again, or is gone).
    fn forget_delay(&mut self, offset: u64) {
        self.delays.remove(&offset);
    }

    /// Applies one persisted change. Work is bounded by the entries it touches, never by a range's width.
    pub(crate) fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Floor(floor) => {
                if floor > self.floor {
                    self.floor = floor;
                    self.acked_above.remove_below(floor);
                    self.forget_below_floor();
                    self.next_fresh = self.next_fresh.max(floor);
                    self.advance_floor();
                }
            }
            Entry::Delivered { offset, attempt } => self.delivered(offset, attempt),
            Entry::DeliveredFirst { from, to } => self.delivered_first(from..to),
            Entry::Acked(offset) => self.acked(single(offset)),
            Entry::AckedRange { from, to } => self.acked(from..to),
            // An ack above the floor wins over a dead letter (only a damaged or hand-made journal has both for one
            // offset). Below the floor a dead letter is recorded: a checkpoint lists them after its Floor record.
            Entry::DeadLettered { offset, .. } if self.acked_above.contains(offset) => {}
            Entry::DeadLettered { offset, attempts } => {
                self.dead.insert(offset, attempts);
                self.attempts.forget(single(offset));
                self.redriven.remove(&offset);
                self.forget_delay(offset);
                self.advance_floor();
            }
            Entry::Redriven(offset) => {
                self.dead.remove(&offset);
                self.attempts.forget(single(offset));
                if offset < self.floor {
                    self.redriven.insert(offset);
                }
            }
            Entry::Gone { from, to } => {
                remove_range(&mut self.dead, from..to);
                self.attempts.forget(from..to);
                remove_range(&mut self.delays, from..to);
                remove_set_range(&mut self.redriven, from..to);
                self.mark_done(from..to);
            }
            Entry::Delayed { offset, not_before_ms } => {
                if !self.is_done(offset) {
                    self.delays.insert(offset, not_before_ms);
                }
            }
        }
        debug_assert!(self.acked_above.first().is_none_or(|first| first > self.floor));
    }

    fn delivered(&mut self, offset: u64, attempt: u32) {
        if !self.is_done(offset) {
            self.attempts.record(offset, attempt);
            self.forget_delay(offset);
        }
    }

    /// First deliveries of `range` (one take's fresh run): the offsets not done are counted, as ranges. Work: the
    /// done pieces inside it (acked ranges, dead letters, redriven offsets below the floor), never its width.
    fn delivered_first(&mut self, range: std::ops::Range<u64>) {
        // Below the floor only redriven messages are not done. (`BTreeSet::range` panics on a reversed range.)
        if range.start < self.floor {
            let below = range.start..range.end.min(self.floor);
            let redriven: Vec<u64> = self.redriven.range(below).copied().collect();
            for offset in redriven {
                self.delivered(offset, 1);
            }
        }
        let above = range.start.max(self.floor)..range.end;
        if above.is_empty() {
            return;
        }
        let mut done: Vec<std::ops::Range<u64>> = self.acked_above.overlapping(above.clone()).collect();
        done.extend(self.dead.range(above.clone()).map(|(&offset, _)| offset..offset + 1));
        done.sort_unstable_by_key(|range| range.start);
        self.attempts.record_first(above.clone(), done);
        remove_range(&mut self.delays, above);
    }

    fn acked(&mut self, range: std::ops::Range<u64>) {
        if range.end - range.start == 1 {
            let offset = range.start;
            self.dead.remove(&offset);
            self.attempts.forget(single(offset));
            self.forget_delay(offset);
            if offset < self.floor {
                self.redriven.remove(&offset);
                return;
            }
        } else {
            remove_range(&mut self.dead, range.clone());
            self.attempts.forget(range.clone());
            remove_range(&mut self.delays, range.clone());
            remove_set_range(&mut self.redriven, range.clone());
        }
        self.mark_done(range);
    }

    /// Records `range` as done above the floor (acked or gone), moving the floor over it when it starts there.
    fn mark_done(&mut self, range: std::ops::Range<u64>) {
        let start = range.start.max(self.floor);
        if start >= range.end {
            return;
        }
        if start == self.floor {
            // The common case, acks in order: the floor moves without a detour through `acked_above`.
            self.floor = range.end;
            self.acked_above.remove_below(self.floor);
            self.forget_below_floor();
        } else {
            self.acked_above.insert(start..range.end);
        }
        self.advance_floor();
    }

    /// Drops the attempt counts and persisted delays below the floor, except those of redriven messages (still to
    /// be delivered: a redriven poison message must be dead-lettered again after `max_deliveries`). Each entry is
    /// dropped once, so the cost is amortized over the deliveries that made it.
    fn forget_below_floor(&mut self) {
        self.attempts.forget_below(self.floor, &self.redriven);
        split_keeping(&mut self.delays, self.floor, &self.redriven);
    }

    fn advance_floor(&mut self) {
        loop {
            if let Some(range) = self.acked_above.take_starting_at(self.floor) {
                self.floor = range.end;
                self.forget_below_floor();
            } else if self.dead.contains_key(&self.floor) {
                self.attempts.forget(single(self.floor));
                self.floor += 1;
            } else {
                break;
            }
        }
        self.next_fresh = self.next_fresh.max(self.floor);
    }

    /// Forgets anything at or past `end` (the log's end after recovery): a group never runs ahead of its log.
    /// Returns whether anything changed.
    pub(crate) fn clamp_to(&mut self, end: u64) -> bool {
        let before = self.footprint();
        self.floor = self.floor.min(end);
        self.acked_above.remove_from(end);
        self.attempts.forget_from(end);
        self.dead.split_off(&end);
        self.redriven.split_off(&end);
        self.delays.split_off(&end);
        self.ready.split_off(&end);
        self.next_fresh = self.next_fresh.min(end);
        before != self.footprint()
    }

    /// What `clamp_to` compares to tell whether it changed anything.
    fn footprint(&self) -> (u64, Option<u64>, usize, u64, usize, usize, usize) {
        let acked_end = self.acked_above.iter().last().map(|r| r.end);
        (
            self.floor,
            acked_end,
            self.acked_above.range_count(),
            self.attempts.len(),
            self.dead.len(),
            self.redriven.len(),
            self.delays.len(),
        )
    }

    /// The entries that rebuild this state's persisted part: the content of a checkpoint. Their number grows
    /// with the acked ranges and the per-offset exceptions (attempts, dead letters, delays), not with the offsets.
    pub(crate) fn checkpoint_entries(&self) -> Vec<Entry> {
        let mut entries = vec![Entry::Floor(self.floor)];
        entries.extend(self.acked_above.iter().map(|r| Entry::AckedRange { from: r.start, to: r.end }));
        entries.extend(self.dead.iter().map(|(&offset, &attempts)| Entry::DeadLettered { offset, attempts }));
        entries.extend(self.redriven.iter().map(|&o| Entry::Redriven(o)));
        let (first_runs, redelivered) = self.attempts.runs(DELIVERED_RUN_MAX);
        entries.extend(first_runs.into_iter().map(|run| Entry::DeliveredFirst { from: run.start, to: run.end }));
        entries.extend(redelivered.into_iter().map(|(offset, attempt)| Entry::Delivered { offset, attempt }));
        entries.extend(self.delays.iter().map(|(&offset, &not_before_ms)| Entry::Delayed { offset, not_before_ms }));
        entries
    }

    /// Whether `offset` needs no more delivery.
    pub(crate) fn is_done(&self, offset: u64) -> bool {
        (offset < self.floor && !self.redriven.contains(&offset))
            || self.acked_above.contains(offset)
            || self.dead.contains_key(&offset)
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    pub(crate) fn attempts(&self, offset: u64) -> u32 {
        self.attempts.get(offset)
    }

    pub(crate) fn dead_letters(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.dead.iter().map(|(&o, &n)| (o, n))
    }

    pub(crate) fn is_dead(&self, offset: u64) -> bool {
        self.dead.contains_key(&offset)
    }

    /// Dead letters put back for delivery (all below the floor).
    pub(crate) fn redriven_count(&self) -> usize {
        self.redriven.len()
    }

    /// The lowest offset the group still needs: the floor, or a lower redriven message.
    pub(crate) fn lowest_needed(&self) -> u64 {
        self.redriven.first().map_or(self.floor, |&o| o.min(self.floor))
    }

    /// Dead letters and redriven offsets: messages this group still needs below or above its floor.
    pub(crate) fn retained(&self) -> Vec<u64> {
        self.dead.keys().chain(self.redriven.iter()).copied().collect()
    }

    /// Whether any offset in `start..end` is a dead letter or redriven (so its segment must be kept).
    pub(crate) fn retains_any(&self, start: u64, end: u64) -> bool {
        self.dead.range(start..end).next().is_some() || self.redriven.range(start..end).next().is_some()
    }

    /// The offsets of `window` this group still needs, as sorted disjoint ranges: those at or above the floor that
    /// are not acked, and dead letters and redriven messages anywhere. Work: the acked ranges and retained
    /// messages inside the window.
    pub(crate) fn needed_in(&self, window: std::ops::Range<u64>) -> Vec<std::ops::Range<u64>> {
        let mut needed: Vec<std::ops::Range<u64>> = Vec::new();
        let mut from = window.start.max(self.floor);
        for acked in self.acked_above.overlapping(from..window.end) {
            if acked.start > from {
                needed.push(from..acked.start);
            }
            from = from.max(acked.end);
        }
        if from < window.end {
            needed.push(from..window.end);
        }
        let retained = self.dead.range(window.clone()).map(|(&o, _)| o).chain(self.redriven.range(window).copied());
        for offset in retained {
            needed.push(offset..offset + 1);
        }
        crate::retention::merge_ranges(needed)
    }

    /// Messages at or above the floor that are done, below `end`: to compute lag.
    pub(crate) fn done_between(&self, start: u64, end: u64) -> u64 {
        self.acked_above.count_in(start..end) + self.dead.range(start..end).count() as u64
    }

    /// How many messages were delivered at least once and are not done.
    pub(crate) fn delivered_not_done(&self) -> usize {
        usize::try_from(self.attempts.len()).unwrap_or(usize::MAX)
    }

    /// How many messages are leased now.
    pub(crate) fn in_flight(&self) -> usize {
        self.leases.len()
    }

    /// How many messages are leased now and not expired at `now` (without ending the expired ones).
    pub(crate) fn in_flight_at(&self, now: Instant) -> usize {
        self.leases.values().filter(|lease| lease.deadline > now).count()
    }

    /// The messages leased now and not expired at `now`, lowest first.
    pub(crate) fn leased_at(&self, now: Instant) -> Vec<u64> {
        let mut leased: Vec<u64> =
            self.leases.iter().filter(|(_, lease)| lease.deadline > now).map(|(&offset, _)| offset).collect();
        leased.sort_unstable();
        leased
    }

    /// Removes expired leases and returns their offsets, lowest first.
    pub(crate) fn expire_leases(&mut self, now: Instant) -> Vec<u64> {
        if self.leases_expire_from.is_none_or(|from| from > now) {
            debug_assert!(self.leases.values().all(|lease| lease.deadline > now), "the bound is a lower bound");
            return Vec::new();
        }
        let mut expired: Vec<u64> =
            self.leases.iter().filter(|(_, lease)| lease.deadline <= now).map(|(&offset, _)| offset).collect();
        expired.sort_unstable();
        for offset in &expired {
            self.leases.remove(offset);
        }
        self.leases_expire_from = self.leases.values().map(|lease| lease.deadline).min();
        expired
    }

    /// The next message to deliver again (a redelivery), if one is due.
    pub(crate) fn take_ready(&mut self, now: Instant) -> Option<u64> {
        while let Some(&(due, offset)) = self.delayed.first() {
            if due > now {
                break;
            }
            self.delayed.pop_first();
            self.delayed_offsets.remove(&offset);
            self.ready.insert(offset);
        }
        while let Some(offset) = self.ready.pop_first() {
            if !self.is_done(offset) && !self.leases.contains_key(&offset) {
                return Some(offset);
            }
        }
        None
    }

    /// Where the fresh (first-time since open) deliveries continue.
    pub(crate) fn next_fresh(&self) -> u64 {
        self.next_fresh
    }

    /// Marks `offset` as handed out fresh; returns whether it should actually be delivered.
    pub(crate) fn take_fresh(&mut self, offset: u64) -> bool {
        debug_assert!(offset >= self.next_fresh);
        self.next_fresh = offset + 1;
        !self.is_done(offset)
            && !self.leases.contains_key(&offset)
            && !self.ready.contains(&offset)
            && !self.delayed_offsets.contains_key(&offset)
    }

    /// Leases `offset` (whose Delivered entry the caller journals); returns the lease.
    pub(crate) fn lease(&mut self, offset: u64, now: Instant, ack_timeout: Duration) -> Lease {
        let lease = Lease { id: self.next_lease_id, deadline: now + ack_timeout };
        self.next_lease_id += 1;
        self.leases.insert(offset, lease);
        self.leases_expire_from = Some(self.leases_expire_from.map_or(lease.deadline, |from| from.min(lease.deadline)));
        lease
    }

    /// Whether `offset` is leased (by any delivery).
    pub(crate) fn is_leased(&self, offset: u64) -> bool {
        self.leases.contains_key(&offset)
    }

    /// Whether lease `id` on `offset` is current.
    pub(crate) fn holds(&self, offset: u64, id: u64) -> bool {
        self.leases.get(&offset).is_some_and(|lease| lease.id == id)
    }

    /// Extends a current lease.
    pub(crate) fn extend(&mut self, offset: u64, id: u64, deadline: Instant) -> bool {
        match self.leases.get_mut(&offset) {
            Some(lease) if lease.id == id => {
                lease.deadline = deadline;
                true
            }
            _ => false,
        }
    }

    /// Messages waiting for a time (a delay, a backoff, their own delivery time).
    pub(crate) fn delayed_count(&self) -> usize {
        self.delayed.len()
    }

    /// Whether `offset` waits to be delivered again (not done, not leased: ready, or delayed).
    pub(crate) fn is_waiting(&self, offset: u64) -> bool {
        !self.is_done(offset) && (self.ready.contains(&offset) || self.delayed_offsets.contains_key(&offset))
    }

    /// Holds `offset` (taken, not leased) back until `due`: a message whose delivery time is still to come.
    pub(crate) fn hold(&mut self, offset: u64, due: Instant) {
        debug_assert!(!self.leases.contains_key(&offset), "a held message is not leased: {offset}");
        self.delay(offset, due);
    }

    /// Ends a lease without an ack; the message is to be delivered again at `due` (now for a drop).
    pub(crate) fn release(&mut self, offset: u64, due: Option<Instant>) {
        self.leases.remove(&offset);
        match due {
            None => {
                self.ready.insert(offset);
            }
            Some(due) => self.delay(offset, due),
        }
    }

    /// Ends the leases of offsets below `first` (deleted by a size or age limit: nothing is left to deliver).
    pub(crate) fn end_leases_below(&mut self, first: u64) {
        self.leases.retain(|&offset, _| offset >= first);
    }

    /// Checks what the state promises between two operations (under `debug_assertions`: the tests' debug builds
    /// and the fuzzers). Costs a pass over the state, so never in release builds.
    pub(crate) fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        debug_assert!(self.acked_above.first().is_none_or(|first| first > self.floor), "acked_above above the floor");
        debug_assert!(self.dead.keys().all(|&o| !self.acked_above.contains(o)), "dead letters and acks are disjoint");
        debug_assert!(self.delayed.len() == self.delayed_offsets.len(), "delayed_offsets mirrors delayed");
        debug_assert!(self.redriven.iter().all(|&o| o < self.floor), "only offsets below the floor are redriven");
        debug_assert!(
            self.attempts.ranges().all(|r| {
                let below = r.start..r.end.min(self.floor);
                below.is_empty() || self.redriven.range(below.clone()).count() as u64 == below.end - below.start
            }),
            "attempts are counted only at or above the floor, or for redriven offsets"
        );
        debug_assert!(
            self.attempts
                .ranges()
                .all(|r| { self.acked_above.count_in(r.clone()) == 0 && self.dead.range(r.clone()).next().is_none() }),
            "attempts are counted only for what is not done"
        );
        debug_assert!(self.leases.keys().all(|&o| !self.is_done(o)), "a leased message is not done");
        debug_assert!(self.next_fresh >= self.floor, "fresh deliveries never go below the floor");
        debug_assert!(
            self.leases_expire_from.is_none_or(|from| self.leases.values().all(|lease| lease.deadline >= from)),
            "leases_expire_from is a lower bound"
        );
    }

    /// Ends a lease, if any (on ack or dead letter).
    pub(crate) fn end_lease(&mut self, offset: u64) {
        self.leases.remove(&offset);
    }

    /// Puts a redriven message up for delivery.
    pub(crate) fn schedule_now(&mut self, offset: u64) {
        self.ready.insert(offset);
    }

    /// The earliest moment a lease expires or a delayed message becomes due.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        // A bound that is early only wakes a waiter to find nothing due; expire_leases then tightens it.
        let lease = self.leases_expire_from;
        let delayed = self.delayed.first().map(|&(due, _)| due);
        lease.into_iter().chain(delayed).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a `DeliveredFirst` run above the floor, once a redriven message had been recorded, looked for
    /// redriven offsets in a reversed range (`start..floor` with `start > floor`), which `BTreeSet::range` panics on:
    /// a take panicked, and so did every reopen replaying that journal.
    #[test]
    fn a_first_delivery_run_above_the_floor_after_a_redrive() {
        let mut state = GroupState::new(0);
        state.apply(Entry::DeadLettered { offset: 3, attempts: 3 });
        state.apply(Entry::AckedRange { from: 0, to: 3 });
        state.apply(Entry::AckedRange { from: 4, to: 10 });
        assert_eq!(state.floor(), 10);
        state.apply(Entry::Redriven(3));
        state.apply(Entry::DeliveredFirst { from: 11, to: 20 });
        assert_eq!((state.attempts(11), state.attempts(19), state.attempts(3)), (1, 1, 0));
        state.apply(Entry::DeliveredFirst { from: 3, to: 4 });
        assert_eq!(state.attempts(3), 1, "the redriven message below the floor is counted");
        let rebuilt = GroupState::replay(&state.checkpoint_entries());
        assert_eq!((rebuilt.attempts(3), rebuilt.attempts(11), rebuilt.attempts(10)), (1, 1, 0));
    }

    #[test]
    fn floor_advances_over_acks_and_dead_letters() {
        let mut state = GroupState::new(10);
        state.apply(Entry::Acked(11));
        assert_eq!(state.floor(), 10);
        state.apply(Entry::DeadLettered { offset: 10, attempts: 5 });
        assert_eq!(state.floor(), 12);
        assert!(state.is_done(10) && state.is_done(11) && !state.is_done(12));
        state.apply(Entry::Redriven(10));
        assert!(!state.is_done(10));
        assert_eq!(state.lowest_needed(), 10);
        assert!(state.retains_any(10, 11));
        state.apply(Entry::Acked(10));
        assert!(state.is_done(10));
        assert!(!state.retains_any(0, 100));
    }

    /// Regression: a redriven dead letter (below the floor) lost its attempt count, and its persisted delay, when
    /// the floor moved (the maps were cut at the floor); a redriven poison message was then never dead-lettered
    /// again.
    #[test]
    fn a_redriven_message_keeps_its_attempts_and_delay_when_the_floor_moves() {
        let mut state = GroupState::new(0);
        state.apply(Entry::DeadLettered { offset: 0, attempts: 3 });
        state.apply(Entry::Redriven(0));
        state.apply(Entry::Delivered { offset: 0, attempt: 2 });
        state.apply(Entry::Delayed { offset: 0, not_before_ms: 99 });
        state.apply(Entry::Delivered { offset: 1, attempt: 1 });
        state.apply(Entry::AckedRange { from: 1, to: 5 });
        state.apply(Entry::Floor(7));
        assert_eq!(state.floor(), 7);
        assert_eq!(state.attempts(0), 2);
        assert_eq!(state.attempts(1), 0, "done: forgotten");
        let rebuilt = GroupState::replay(&state.checkpoint_entries());
        assert_eq!(rebuilt.attempts(0), 2);
        assert_eq!(rebuilt.checkpoint_entries(), state.checkpoint_entries());
        assert!(state.checkpoint_entries().contains(&Entry::Delayed { offset: 0, not_before_ms: 99 }));
    }

    #[test]
    fn checkpoint_rebuilds_the_persisted_state() {
        let mut state = GroupState::new(0);
        for entry in [
            Entry::Acked(0),
            Entry::Acked(2),
            Entry::Delivered { offset: 1, attempt: 3 },
            Entry::DeadLettered { offset: 5, attempts: 4 },
            Entry::Acked(7),
        ] {
            state.apply(entry);
        }
        let rebuilt = GroupState::replay(&state.checkpoint_entries());
        assert_eq!(rebuilt.checkpoint_entries(), state.checkpoint_entries());
        assert_eq!(rebuilt.floor(), 1);
        assert_eq!(rebuilt.attempts(1), 3);
        assert!(rebuilt.is_dead(5));
    }

    #[test]
    fn redeliveries_come_lowest_first_and_skip_done() {
        let now = Instant::now();
        let mut state = GroupState::new(0);
        for offset in 0..4 {
            assert!(state.take_fresh(offset));
            state.lease(offset, now, Duration::from_secs(1));
        }
        state.release(3, None);
        state.release(1, None);
        state.release(2, Some(now + Duration::from_secs(5)));
        state.apply(Entry::Acked(1));
        assert_eq!(state.take_ready(now), Some(3));
        assert_eq!(state.take_ready(now), None);
        assert_eq!(state.take_ready(now + Duration::from_secs(5)), Some(2));
        assert_eq!(state.expire_leases(now + Duration::from_secs(2)), vec![0]);
    }

    #[test]
    fn gone_offsets_are_done_and_forgotten() {
        let mut state = GroupState::new(0);
        state.apply(Entry::DeadLettered { offset: 1, attempts: 5 });
        state.apply(Entry::Delivered { offset: 2, attempt: 2 });
        state.apply(Entry::Gone { from: 0, to: 3 });
        assert_eq!(state.floor(), 3);
        assert!(state.retained().is_empty());
        state.apply(Entry::Gone { from: 5, to: 7 });
        assert_eq!(state.floor(), 3);
        state.apply(Entry::Acked(3));
        state.apply(Entry::Acked(4));
        assert_eq!(state.floor(), 7);
    }

    /// Random journal entries (acks one by one and in ranges, gone ranges wider than the universe's middle, dead
    /// letters, redrives, deliveries) against a plain model that keeps every offset: after each entry, and after a
    /// checkpoint is replayed, `is_done` and the attempt counts agree for every offset.
    #[test]
    fn ranges_behave_as_the_plain_model() {
        use std::collections::BTreeSet;
        const UNIVERSE: u64 = 400;
        let mut next = super::super::ranges::xorshift(0x9E37_79B9_7F4A_7C15);
        for _run in 0..20 {
            let mut state = GroupState::new(0);
            let (mut acked, mut dead, mut attempts) = (BTreeSet::new(), BTreeMap::new(), BTreeMap::new());
            for _step in 0..400 {
                let o = next(UNIVERSE);
                let width = 1 + next(40);
                let entry = match next(7) {
                    0 => Entry::Acked(o),
                    1 => Entry::AckedRange { from: o, to: o + width },
                    2 => Entry::Gone { from: o, to: o + width },
                    3 => Entry::DeadLettered { offset: o, attempts: 3 },
                    4 if dead.contains_key(&o) => Entry::Redriven(o),
                    5 => Entry::DeliveredFirst { from: o, to: o + width },
                    _ => Entry::Delivered { offset: o, attempt: 1 + next(4) as u32 },
                };
                let done = |acked: &BTreeSet<u64>, dead: &BTreeMap<u64, u32>, o: u64| {
                    acked.contains(&o) || dead.contains_key(&o)
                };
                match entry {
                    Entry::Acked(o) => {
                        acked.insert(o);
                        dead.remove(&o);
                        attempts.remove(&o);
                    }
                    Entry::AckedRange { from, to } | Entry::Gone { from, to } => {
                        for o in from..to {
                            acked.insert(o);
                            dead.remove(&o);
                            attempts.remove(&o);
                        }
                    }
                    Entry::DeadLettered { offset, .. } if acked.contains(&offset) => {}
                    Entry::DeadLettered { offset, attempts: n } => {
                        dead.insert(offset, n);
                        attempts.remove(&offset);
                    }
                    Entry::Redriven(o) => {
                        dead.remove(&o);
                        acked.remove(&o);
                    }
                    Entry::DeliveredFirst { from, to } => {
                        for o in from..to {
                            if !done(&acked, &dead, o) {
                                let a = attempts.entry(o).or_insert(0);
                                *a = (*a).max(1);
                            }
                        }
                    }
                    Entry::Delivered { offset, attempt } => {
                        if !done(&acked, &dead, offset) {
                            let a = attempts.entry(offset).or_insert(0);
                            *a = (*a).max(attempt);
                        }
                    }
                    _ => unreachable!(),
                }
                state.apply(entry);
                state.check_invariants();
                let replayed = GroupState::replay(&state.checkpoint_entries());
                for o in 0..UNIVERSE + 50 {
                    let expected = done(&acked, &dead, o);
                    assert_eq!(state.is_done(o), expected, "offset {o} after {entry:?}");
                    assert_eq!(replayed.is_done(o), expected, "offset {o} after a checkpoint");
                    assert_eq!(state.attempts(o), attempts.get(&o).copied().unwrap_or(0), "attempts of {o}");
                    assert_eq!(replayed.attempts(o), state.attempts(o), "attempts of {o} after a checkpoint");
                }
                assert!(state.acked_above.range_count() as u64 <= UNIVERSE, "ranges, not offsets");
            }
        }
    }

    #[test]
    fn an_absurd_range_costs_one_entry() {
        let mut state = GroupState::new(0);
        state.apply(Entry::Delivered { offset: 0, attempt: 1 });
        state.apply(Entry::Gone { from: 1, to: u64::MAX });
        assert_eq!(state.checkpoint_entries().len(), 3, "floor, one range, one attempt");
        assert!(state.clamp_to(1_000));
        assert!(!state.is_done(0) && state.is_done(999));
        state.apply(Entry::Acked(0));
        assert_eq!(state.floor(), 1_000);
    }

    #[test]
    fn clamp_forgets_what_is_past_the_log() {
        let mut state = GroupState::new(0);
        for offset in 0..10 {
            state.apply(Entry::Acked(offset));
        }
        state.apply(Entry::Acked(12));
        assert!(state.clamp_to(5));
        assert_eq!(state.floor(), 5);
        assert!(!state.is_done(5));
        assert!(!state.clamp_to(5));
    }
}
