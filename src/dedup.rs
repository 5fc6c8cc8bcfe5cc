//! Producer deduplication (JetStream's `Nats-Msg-Id`, Kafka's idempotent producer): a message may carry an id (the
//! header [`DEDUP_ID_HEADER`]); while the id is in the window, appending it again writes nothing and answers the
//! first append's offset, so a producer that retries after a timeout or a crash does not store its message twice.
//!
//! The window is the newest `messages` ids appended within `window_ms` of now (by the wall clock at the append;
//! after a restart, by the messages' timestamps, the only time stored), kept as 128-bit
//! keyed hashes (see [`IdHash`]). It lives in memory, beside the log's state (checked and updated under the log's lock, so that two appends of one id
//! cannot both write), and is rebuilt at open by reading the last `messages` records: its memory and the open's
//! extra reading are bounded by the count, never by the queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use crate::error::{Error, Result};
use crate::message::Parts;

/// The header that carries a message's id for deduplication ([`Message::dedup_id`](crate::Message::dedup_id)).
pub const DEDUP_ID_HEADER: &str = "walq-dedup-id";

/// A message's id, if it has one: its first [`DEDUP_ID_HEADER`] header.
pub(crate) fn message_id<'a>(parts: &Parts<'a>) -> Option<&'a [u8]> {
    parts.headers.iter().find(|h| h.name == DEDUP_ID_HEADER).map(|h| h.value.as_slice())
}

/// Most expired ids one check drops (more than an append adds, so the window keeps up).
const EXPIRE_PER_CHECK: usize = 64;

/// What the window says about a batch about to be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// No message of it was appended within the window: append it.
    New,
    /// All of it was, as one run of offsets from this one: answer it without writing.
    Appended { first_offset: u64 },
}

/// An id as the window keeps it: 128 bits of two keyed hashes (keys random per process). Two ids of one window
/// share it with a probability below 2^-80 even at the largest window, and no id is kept as bytes: an append costs
/// no allocation and no pointer chase for it.
pub(crate) type IdHash = u128;

/// The ids remembered, newest last.
#[derive(Debug)]
pub(crate) struct DedupWindow {
    window_ms: u64,
    messages: usize,
    keys: (RandomState, RandomState),
    /// id -> the offset it was appended at, and when (ms since the Unix epoch; at open, the message's timestamp).
    offsets: HashMap<IdHash, (u64, u64), BuildHasherDefault<IdHasher>>,
    /// (appended at, offset, id), in append order: what expires first is at the front.
    order: VecDeque<(u64, u64, IdHash)>,
}

impl DedupWindow {
    pub(crate) fn new(window_ms: u64, messages: u64) -> DedupWindow {
        let messages = usize::try_from(messages).unwrap_or(usize::MAX);
        let keys = (RandomState::new(), RandomState::new());
        DedupWindow { window_ms, messages, keys, offsets: HashMap::default(), order: VecDeque::new() }
    }

    /// The window's key for `id`.
    pub(crate) fn hash(&self, id: &[u8]) -> IdHash {
        let (high, low) = (self.keys.0.hash_one(id), self.keys.1.hash_one(id));
        (IdHash::from(high) << 64) | IdHash::from(low)
    }

    /// Whether `ids` (the batch's, in order, as [`DedupWindow::hash`]es; `None` for a message without one) were
    /// appended within the window, at `first_offset` or later (offsets below it were purged or deleted: an id
    /// that names one of them is appended anew).
    pub(crate) fn check(&mut self, ids: &[Option<IdHash>], now_ms: u64, first_offset: u64) -> Result<Seen> {
        if ids.iter().all(Option::is_none) {
            return Ok(Seen::New);
        }
        self.expire(now_ms);
        let oldest_kept_ms = now_ms.saturating_sub(self.window_ms);
        let mut positions = Vec::new();
        let mut in_batch = HashSet::new(); // allocates only for a batch with two ids or more
        let mut earlier: Vec<(usize, u64)> = Vec::new();
        for (position, id) in ids.iter().enumerate() {
            let Some(id) = id else { continue };
            // An entry older than the window that `expire` has not reached yet is gone.
            let kept = |&&(offset, appended_ms): &&(u64, u64)| appended_ms >= oldest_kept_ms && offset >= first_offset;
            match self.offsets.get(id).filter(kept) {
                Some(&(offset, _)) => {
                    positions.push(position);
                    earlier.push((position, offset));
                }
                None if ids.len() > 1 && !in_batch.insert(*id) => positions.push(position),
                None => {}
            }
        }
        if positions.is_empty() {
            return Ok(Seen::New);
        }
        // A whole earlier batch again: every id seen, each at the offset its position in the batch gives. Messages
        // without an id count only between two with one (at an edge nothing says they were appended).
        let ids_count = ids.iter().filter(|id| id.is_some()).count();
        let bracketed = ids.first().is_some_and(Option::is_some) && ids.last().is_some_and(Option::is_some);
        let batch_first = earlier.first().and_then(|&(position, offset)| offset.checked_sub(position as u64));
        let in_place = |first: u64| earlier.iter().all(|&(position, offset)| offset == first + position as u64);
        let whole = bracketed && positions.len() == ids_count && batch_first.is_some_and(in_place);
        match batch_first {
            Some(first_offset) if whole => Ok(Seen::Appended { first_offset }),
            _ => Err(Error::DuplicateIds { positions }),
        }
    }

    /// Remembers that the message with `id` was appended at `offset` at `appended_ms`.
    pub(crate) fn remember(&mut self, id: IdHash, offset: u64, appended_ms: u64) {
        self.offsets.insert(id, (offset, appended_ms));
        self.order.push_back((appended_ms, offset, id));
        while self.order.len() > self.messages {
            self.forget_oldest();
        }
    }

    /// Drops ids that left the window by time, at most [`EXPIRE_PER_CHECK`] per call: an append after a long
    /// pause does not stall the log for a whole window's worth (`check` ignores expired ids meanwhile).
    fn expire(&mut self, now_ms: u64) {
        let oldest_kept_ms = now_ms.saturating_sub(self.window_ms);
        for _ in 0..EXPIRE_PER_CHECK {
            if self.order.front().is_none_or(|&(appended_ms, _, _)| appended_ms >= oldest_kept_ms) {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, offset, id)) = self.order.pop_front() {
            // Only if the id still names this offset (an id appended again after it left the window is newer).
            if self.offsets.get(&id).is_some_and(|&(kept, _)| kept == offset) {
                self.offsets.remove(&id);
            }
        }
    }

    /// How many ids the window can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.messages
    }
}

/// The map's hasher: its keys are hashes already, so it takes their low bits as they are.
#[derive(Debug, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_answered_while_in_the_window_and_partial_repeats_are_refused() {
        let mut window = DedupWindow::new(1_000, 3);
        let [a, b, c, d] = [b"a", b"b", b"c", b"d"].map(|id| Some(window.hash(id)));
        assert_ne!(a, b);
        assert_eq!(window.check(&[a, None], 10, 0).unwrap(), Seen::New);
        window.remember(a.unwrap(), 0, 10);
        window.remember(b.unwrap(), 2, 10); // a message without an id at 1
        assert_eq!(window.check(&[a], 20, 0).unwrap(), Seen::Appended { first_offset: 0 });
        assert_eq!(window.check(&[a, None, b], 20, 0).unwrap(), Seen::Appended { first_offset: 0 });
        assert!(matches!(window.check(&[a, b], 20, 0), Err(Error::DuplicateIds { .. })), "b is not at 1");
        assert!(matches!(window.check(&[b, a], 20, 0), Err(Error::DuplicateIds { .. })));
        assert!(matches!(window.check(&[a, None], 20, 0), Err(Error::DuplicateIds { .. })), "an edge without id");
        assert!(matches!(window.check(&[None, b], 20, 0), Err(Error::DuplicateIds { .. })));
        assert_eq!(window.check(&[a], 20, 1).unwrap(), Seen::New, "offset 0 was purged");
        match window.check(&[c, c], 20, 0) {
            Err(Error::DuplicateIds { positions }) => assert_eq!(positions, vec![1]),
            other => panic!("a repeat inside the batch: {other:?}"),
        }
        // By count: a, b, c, d: a leaves.
        window.remember(c.unwrap(), 2, 10);
        window.remember(d.unwrap(), 3, 10);
        assert_eq!(window.check(&[a], 20, 0).unwrap(), Seen::New);
        // By time: everything at 10 is older than 1,010.
        assert_eq!(window.check(&[d], 1_011, 0).unwrap(), Seen::New);
        assert_eq!(window.capacity(), 3);
    }
}
