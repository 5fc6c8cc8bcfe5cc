//! Producer deduplication (JetStream's `Nats-Msg-Id`, Kafka's idempotent producer): a message may carry an id (the
//! header [`DEDUP_ID_HEADER`]); while the id is in the window, appending it again writes nothing and answers the
//! first append's offset, so a producer that retries after a timeout or a crash does not store its message twice.
//!
//! The window is the newest `messages` ids whose message timestamps lie within `window_ms` of now. It lives in
//! memory, beside the log's state (checked and updated under the log's lock, so that two appends of one id
//! cannot both write), and is rebuilt at open by reading the last `messages` records: its memory and the open's
//! extra reading are bounded by the count, never by the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::message::Parts;

/// The header that carries a message's id for deduplication ([`Message::dedup_id`](crate::Message::dedup_id)).
pub const DEDUP_ID_HEADER: &str = "walq-dedup-id";

/// A message's id, if it has one: its first [`DEDUP_ID_HEADER`] header.
pub(crate) fn message_id<'a>(parts: &Parts<'a>) -> Option<&'a [u8]> {
    parts.headers.iter().find(|h| h.name == DEDUP_ID_HEADER).map(|h| h.value.as_slice())
}

/// What the window says about a batch about to be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// No message of it was appended within the window: append it.
    New,
    /// All of it was, as one run of offsets from this one: answer it without writing.
    Appended { first_offset: u64 },
}

/// The ids remembered, newest last.
#[derive(Debug)]
pub(crate) struct DedupWindow {
    window_ms: u64,
    messages: usize,
    /// id -> the offset it was appended at, and its message's timestamp.
    offsets: HashMap<Arc<[u8]>, (u64, u64)>,
    /// (timestamp, offset, id), in append order: what expires first is at the front.
    order: VecDeque<(u64, u64, Arc<[u8]>)>,
}

impl DedupWindow {
    pub(crate) fn new(window_ms: u64, messages: u64) -> DedupWindow {
        let messages = usize::try_from(messages).unwrap_or(usize::MAX);
        DedupWindow { window_ms, messages, offsets: HashMap::new(), order: VecDeque::new() }
    }

    /// Whether `ids` (the batch's, in order; `None` for a message without one) were appended within the window.
    pub(crate) fn check(&mut self, ids: &[Option<&[u8]>], now_ms: u64) -> Result<Seen> {
        if ids.iter().all(Option::is_none) {
            return Ok(Seen::New);
        }
        self.expire(now_ms);
        let oldest_kept_ms = now_ms.saturating_sub(self.window_ms);
        let mut positions = Vec::new();
        let mut in_batch = std::collections::HashSet::new();
        let mut earlier = Vec::with_capacity(ids.len());
        for (position, id) in ids.iter().enumerate() {
            let Some(id) = id else { continue };
            // An entry older than the window that `expire` has not reached (timestamps need not grow) is gone.
            match self.offsets.get(*id).filter(|&&(_, timestamp_ms)| timestamp_ms >= oldest_kept_ms) {
                Some(&(offset, _)) => {
                    positions.push(position);
                    earlier.push(offset);
                }
                None if !in_batch.insert(*id) => positions.push(position),
                None => {}
            }
        }
        if positions.is_empty() {
            return Ok(Seen::New);
        }
        // A whole earlier batch again: every message seen, at consecutive offsets in the same order.
        let whole = positions.len() == ids.len() && earlier.windows(2).all(|pair| pair[1] == pair[0] + 1);
        match earlier.first() {
            Some(&first_offset) if whole => Ok(Seen::Appended { first_offset }),
            _ => Err(Error::DuplicateIds { positions }),
        }
    }

    /// Remembers that the message with `id` and `timestamp_ms` was appended at `offset`.
    pub(crate) fn remember(&mut self, id: &[u8], offset: u64, timestamp_ms: u64) {
        let id: Arc<[u8]> = id.into();
        self.offsets.insert(id.clone(), (offset, timestamp_ms));
        self.order.push_back((timestamp_ms, offset, id));
        while self.order.len() > self.messages {
            self.forget_oldest();
        }
    }

    /// Drops the ids that left the window: more than `messages` back, or older than `window_ms`. A message whose
    /// timestamp lies far in the past (set by its producer) leaves at the next check.
    fn expire(&mut self, now_ms: u64) {
        let oldest_kept_ms = now_ms.saturating_sub(self.window_ms);
        while self.order.front().is_some_and(|&(timestamp_ms, _, _)| timestamp_ms < oldest_kept_ms) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_answered_while_in_the_window_and_partial_repeats_are_refused() {
        let mut window = DedupWindow::new(1_000, 3);
        assert_eq!(window.check(&[Some(b"a"), None], 10).unwrap(), Seen::New);
        window.remember(b"a", 0, 10);
        window.remember(b"b", 1, 10);
        assert_eq!(window.check(&[Some(b"a")], 20).unwrap(), Seen::Appended { first_offset: 0 });
        assert_eq!(window.check(&[Some(b"a"), Some(b"b")], 20).unwrap(), Seen::Appended { first_offset: 0 });
        assert!(matches!(window.check(&[Some(b"b"), Some(b"a")], 20), Err(Error::DuplicateIds { .. })));
        assert!(matches!(window.check(&[Some(b"a"), None], 20), Err(Error::DuplicateIds { .. })));
        match window.check(&[Some(b"c"), Some(b"c")], 20) {
            Err(Error::DuplicateIds { positions }) => assert_eq!(positions, vec![1]),
            other => panic!("a repeat inside the batch: {other:?}"),
        }
        // By count: a, b, c, d: a leaves.
        window.remember(b"c", 2, 10);
        window.remember(b"d", 3, 10);
        assert_eq!(window.check(&[Some(b"a")], 20).unwrap(), Seen::New);
        // By time: everything at 10 is older than 1,010.
        assert_eq!(window.check(&[Some(b"d")], 1_011).unwrap(), Seen::New);
        assert_eq!(window.capacity(), 3);
    }
}
