//! A consumer group's state, in memory: what is done, what was tried how often, what is dead-lettered (persisted
//! through the journal), and what is leased, ready or delayed right now (volatile: after a restart, everything not
//! done is delivered again). Pure: no I/O, no clock reads; the caller passes `now`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use super::journal::Entry;

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
    /// Acknowledged offsets at or above the floor.
    acked_above: BTreeSet<u64>,
    /// Delivery attempts of offsets not done.
    attempts: BTreeMap<u64, u32>,
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
    next_lease_id: u64,
}

impl GroupState {
    /// A group whose first message is `floor`.
    pub(crate) fn new(floor: u64) -> GroupState {
        GroupState {
            floor,
            acked_above: BTreeSet::new(),
            attempts: BTreeMap::new(),
            dead: BTreeMap::new(),
            redriven: BTreeSet::new(),
            next_fresh: floor,
            leases: HashMap::default(),
            leases_expire_from: None,
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
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

    /// Applies one persisted change.
    pub(crate) fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Floor(floor) => {
                if floor > self.floor {
                    self.floor = floor;
                    self.acked_above = self.acked_above.split_off(&floor);
                    self.attempts = self.attempts.split_off(&floor);
                    self.next_fresh = self.next_fresh.max(floor);
                    self.advance_floor();
                }
            }
            Entry::Delivered { offset, attempt } => {
                if !self.is_done(offset) {
                    let count = self.attempts.entry(offset).or_insert(0);
                    *count = (*count).max(attempt);
                }
            }
            Entry::Acked(offset) => {
                self.dead.remove(&offset);
                self.attempts.remove(&offset);
                if offset < self.floor {
                    self.redriven.remove(&offset);
                } else if offset == self.floor {
                    // The common case, acks in order: the floor moves without a detour through `acked_above`.
                    self.floor += 1;
                    self.advance_floor();
                } else {
                    self.acked_above.insert(offset);
                }
            }
            Entry::DeadLettered { offset, attempts } => {
                self.dead.insert(offset, attempts);
                self.attempts.remove(&offset);
                self.redriven.remove(&offset);
                self.advance_floor();
            }
            Entry::Redriven(offset) => {
                self.dead.remove(&offset);
                self.attempts.remove(&offset);
                if offset < self.floor {
                    self.redriven.insert(offset);
                }
            }
            Entry::Gone { from, to } => {
                let gone = |o: &u64| (from..to).contains(o);
                self.dead.retain(|o, _| !gone(o));
                self.attempts.retain(|o, _| !gone(o));
                self.redriven.retain(|o| !gone(o));
                if from <= self.floor {
                    self.floor = self.floor.max(to);
                    self.acked_above = self.acked_above.split_off(&self.floor);
                } else {
                    self.acked_above.extend(from..to);
                }
                self.advance_floor();
            }
        }
        debug_assert!(self.acked_above.first().is_none_or(|&first| first > self.floor));
    }

    fn advance_floor(&mut self) {
        while self.acked_above.remove(&self.floor) || self.dead.contains_key(&self.floor) {
            self.attempts.remove(&self.floor);
            self.floor += 1;
        }
        self.next_fresh = self.next_fresh.max(self.floor);
    }

    /// Forgets anything at or past `end` (the log's end after recovery): a group never runs ahead of its log.
    /// Returns whether anything changed.
    pub(crate) fn clamp_to(&mut self, end: u64) -> bool {
        let before = (self.floor, self.acked_above.len(), self.attempts.len(), self.dead.len(), self.redriven.len());
        self.floor = self.floor.min(end);
        self.acked_above.retain(|&o| o < end);
        self.attempts.retain(|&o, _| o < end);
        self.dead.retain(|&o, _| o < end);
        self.redriven.retain(|&o| o < end);
        self.ready.retain(|&o| o < end);
        self.next_fresh = self.next_fresh.min(end);
        before != (self.floor, self.acked_above.len(), self.attempts.len(), self.dead.len(), self.redriven.len())
    }

    /// The entries that rebuild this state's persisted part: the content of a checkpoint.
    pub(crate) fn checkpoint_entries(&self) -> Vec<Entry> {
        let mut entries = vec![Entry::Floor(self.floor)];
        entries.extend(self.acked_above.iter().map(|&o| Entry::Acked(o)));
        entries.extend(self.dead.iter().map(|(&offset, &attempts)| Entry::DeadLettered { offset, attempts }));
        entries.extend(self.redriven.iter().map(|&o| Entry::Redriven(o)));
        entries.extend(self.attempts.iter().map(|(&offset, &attempt)| Entry::Delivered { offset, attempt }));
        entries
    }

    /// Whether `offset` needs no more delivery.
    pub(crate) fn is_done(&self, offset: u64) -> bool {
        (offset < self.floor && !self.redriven.contains(&offset))
            || self.acked_above.contains(&offset)
            || self.dead.contains_key(&offset)
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    pub(crate) fn attempts(&self, offset: u64) -> u32 {
        self.attempts.get(&offset).copied().unwrap_or(0)
    }

    pub(crate) fn dead_letters(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.dead.iter().map(|(&o, &n)| (o, n))
    }

    pub(crate) fn is_dead(&self, offset: u64) -> bool {
        self.dead.contains_key(&offset)
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

    /// Messages at or above the floor that are done, below `end`: to compute lag.
    pub(crate) fn done_between(&self, start: u64, end: u64) -> usize {
        self.acked_above.range(start..end).count() + self.dead.range(start..end).count()
    }

    /// How many messages were delivered at least once and are not done.
    pub(crate) fn delivered_not_done(&self) -> usize {
        self.attempts.len()
    }

    /// How many messages are leased now.
    pub(crate) fn in_flight(&self) -> usize {
        self.leases.len()
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
            && !self.delayed.iter().any(|&(_, o)| o == offset)
    }

    /// Leases `offset` (whose Delivered entry the caller journals); returns the lease.
    pub(crate) fn lease(&mut self, offset: u64, now: Instant, ack_timeout: Duration) -> Lease {
        let lease = Lease { id: self.next_lease_id, deadline: now + ack_timeout };
        self.next_lease_id += 1;
        self.leases.insert(offset, lease);
        self.leases_expire_from = Some(self.leases_expire_from.map_or(lease.deadline, |from| from.min(lease.deadline)));
        lease
    }

    /// Whether lease `id` of `offset` is still the current one.
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

    /// Ends a lease without an ack; the message is to be delivered again at `due` (now for a drop).
    pub(crate) fn release(&mut self, offset: u64, due: Option<Instant>) {
        self.leases.remove(&offset);
        match due {
            None => {
                self.ready.insert(offset);
            }
            Some(due) => {
                self.delayed.insert((due, offset));
            }
        }
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
