//! Per-key order for a group with competing consumers (`QueueBuilder::order_by_key`, SQS FIFO's message groups):
//! at most one message per key is out at a time, and a key's messages go out in offset order, its redeliveries
//! included, while different keys flow to different consumers in parallel. Messages without a key are unordered.
//!
//! Each key with a message out has an *owner*: the offset delivered (leased, or waiting to be delivered again after
//! a nack, an expiry or a drop) until it is done. A later message of an owned key is *parked* behind it; when the
//! owner is done (acked, dead-lettered, gone) the lowest parked offset becomes the owner and is delivered next.
//!
//! Nothing here is journaled: after a restart the group reads every message not done from its floor in offset
//! order, which rebuilds the same order. Memory follows the keys in flight and the messages parked behind them
//! (at most [`PARKED_MAX`]: past it the group reads no further until some are delivered), never the keys ever
//! seen.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Most messages parked behind busy keys at once. Past it the group stops reading new messages (the owners'
/// answers release the parked ones), so that one stuck key cannot make the group hold the log in memory.
pub(crate) const PARKED_MAX: usize = 100_000;

/// What a group does with a message it is about to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Deliver it: it has no key, its key was free (now it owns it), or it owns its key already.
    Deliver,
    /// Another message of its key is out: it waits behind it.
    Parked,
}

/// The owners of busy keys and the messages parked behind them.
#[derive(Debug, Default)]
pub(crate) struct KeyOrder {
    /// key -> the offset that owns it.
    owners: HashMap<Box<[u8]>, u64>,
    /// owner offset -> its key (an answer names an offset).
    owned: BTreeMap<u64, Box<[u8]>>,
    /// key -> offsets waiting behind its owner.
    parked: HashMap<Box<[u8]>, BTreeSet<u64>>,
    parked_count: usize,
}

impl KeyOrder {
    /// Decides whether the message at `offset` with `key` may go out now; records it as its key's owner if so.
    pub(crate) fn admit(&mut self, offset: u64, key: Option<&[u8]>) -> Admit {
        let Some(key) = key else { return Admit::Deliver };
        match self.owners.get(key) {
            None => {
                self.owners.insert(key.into(), offset);
                self.owned.insert(offset, key.into());
                Admit::Deliver
            }
            Some(&owner) if owner == offset => Admit::Deliver,
            Some(_) => {
                if self.parked.entry(key.into()).or_default().insert(offset) {
                    self.parked_count += 1;
                }
                Admit::Parked
            }
        }
    }

    /// Makes `offset` the owner of `key` if no message owns it (a message waiting for redelivery, found again
    /// after a restart); changes nothing otherwise.
    pub(crate) fn claim_if_free(&mut self, offset: u64, key: &[u8]) {
        if !self.owners.contains_key(key) {
            self.owners.insert(key.into(), offset);
            self.owned.insert(offset, key.into());
        }
    }

    /// The owners among `done` are done: their keys pass to the lowest parked offset each, skipping parked
    /// offsets `is_done` says are done too. Returns the new owners, to deliver next. Costs the owners in `done`,
    /// not its width.
    pub(crate) fn finished(&mut self, done: std::ops::Range<u64>, is_done: impl Fn(u64) -> bool) -> Vec<u64> {
        let finished: Vec<u64> = self.owned.range(done).map(|(&offset, _)| offset).collect();
        let mut next_owners = Vec::new();
        for offset in finished {
            let Some(key) = self.owned.remove(&offset) else { continue };
            self.owners.remove(&key);
            if let Some(next) = self.pass_on(&key, &is_done) {
                self.owners.insert(key.clone(), next);
                self.owned.insert(next, key);
                next_owners.push(next);
            }
        }
        next_owners
    }

    /// Takes the lowest parked offset of `key` that is not done.
    fn pass_on(&mut self, key: &[u8], is_done: &impl Fn(u64) -> bool) -> Option<u64> {
        let waiting = self.parked.get_mut(key)?;
        let mut next = None;
        while let Some(offset) = waiting.pop_first() {
            self.parked_count -= 1;
            if !is_done(offset) {
                next = Some(offset);
                break;
            }
        }
        if waiting.is_empty() {
            self.parked.remove(key);
        }
        next
    }

    /// Whether so many messages are parked that the group should read no further.
    pub(crate) fn is_full(&self) -> bool {
        self.parked_count >= PARKED_MAX
    }

    /// Messages parked behind busy keys.
    #[cfg(test)]
    pub(crate) fn parked(&self) -> usize {
        self.parked_count
    }

    /// Forgets everything (the group's state was replaced: a reset).
    pub(crate) fn clear(&mut self) {
        *self = KeyOrder::default();
    }

    /// Checks the bookkeeping (under `debug_assertions`).
    pub(crate) fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        debug_assert_eq!(self.owners.len(), self.owned.len(), "owners and owned mirror each other");
        debug_assert!(self.owned.iter().all(|(o, k)| self.owners.get(k) == Some(o)), "owned names each owner");
        debug_assert_eq!(self.parked.values().map(BTreeSet::len).sum::<usize>(), self.parked_count);
        debug_assert!(self.parked.values().all(|p| !p.is_empty()), "no empty parking");
        debug_assert!(self.parked.keys().all(|k| self.owners.contains_key(k)), "only busy keys park messages");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_passes_to_its_lowest_parked_message_when_its_owner_is_done() {
        let mut order = KeyOrder::default();
        assert_eq!(order.admit(0, Some(b"a")), Admit::Deliver);
        assert_eq!(order.admit(1, Some(b"b")), Admit::Deliver);
        assert_eq!(order.admit(3, Some(b"a")), Admit::Parked);
        assert_eq!(order.admit(2, Some(b"a")), Admit::Parked);
        assert_eq!(order.admit(4, None), Admit::Deliver);
        assert_eq!(order.admit(0, Some(b"a")), Admit::Deliver, "the owner again (a redelivery)");
        assert_eq!(order.parked(), 2);
        order.check_invariants();
        assert_eq!(order.finished(0..1, |_| false), vec![2]);
        assert_eq!(order.admit(2, Some(b"a")), Admit::Deliver);
        assert_eq!(order.admit(3, Some(b"a")), Admit::Parked, "still behind 2");
        assert_eq!(order.finished(0..10, |o| o == 3), Vec::<u64>::new(), "3 was done meanwhile: b and a free");
        assert_eq!(order.parked(), 0);
        order.check_invariants();
        assert_eq!(order.admit(9, Some(b"a")), Admit::Deliver);
    }
}
