//! The rules of the one frame walker: how frames follow each other in a segment, written once in [`frame_at`] and
//! applied by `read::FrameReader`, which every path that reads frames uses (recovery, readers and consumers,
//! compaction, index rebuilds, the `walq` tool).
//!
//! The rules, as FORMAT.md states them:
//! - a frame is valid where `record::decode` accepts it with the segment's id (length, checksum, layout);
//! - in the segment being written (and so in the tail recovery scans), offsets are contiguous: each frame's offset is
//!   the previous one's plus one, the first is the segment's base offset ([`Order::Contiguous`]);
//! - in a sealed segment offsets increase, with gaps where compaction or salvage removed messages, and are at least
//!   the base offset ([`Order::Increasing`]);
//! - no frame has offset `u64::MAX` (the offset after it would not exist; `Offset::LATEST` means "the end");
//! - a walk stops at the end of the bytes ([`Stop::End`]), inside a frame ([`Stop::Partial`]: a torn write, or bytes
//!   not read yet), or at bytes that are not the frame expected there ([`Stop::Invalid`]). What a stop means (a torn
//!   tail, damage, the end of what is written) is for the caller to judge: it knows whether the bytes are sealed,
//!   proven durable, or still being written.
//!
//! Pure: reads nothing but the bytes it is given. The file reading, chunking and the scan behind damage are in
//! `read`.

use std::ops::Range;

use crate::error::CorruptionKind;
use crate::record::{self, CrcSeed, Frame, FrameError, FRAME_HEADER_BYTES};

/// How offsets follow each other in the bytes walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Each frame's offset is the previous one's plus one (the segment being written, recovery's tail).
    Contiguous,
    /// Offsets increase, gaps allowed (a sealed segment).
    Increasing,
}

/// Why a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The bytes end exactly after the last frame.
    End,
    /// The bytes end inside a frame; `need_bytes` from the stop position would hold it whole.
    Partial { need_bytes: usize },
    /// The bytes at the stop position are not the frame expected there.
    Invalid(CorruptionKind),
}

impl Stop {
    /// The corruption kind of this stop where a whole frame was required.
    pub(crate) fn kind(self) -> CorruptionKind {
        match self {
            Stop::Invalid(kind) => kind,
            Stop::End | Stop::Partial { .. } => CorruptionKind::Truncated,
        }
    }
}

/// The frame at the start of `bytes`, if it is the one expected after offset order `order` with `next` the next
/// offset (exact for `Contiguous`, the least allowed for `Increasing`).
pub(crate) fn frame_at<'a>(bytes: &'a [u8], crc: &CrcSeed, order: Order, next: u64) -> Result<Frame<'a>, Stop> {
    if bytes.is_empty() {
        return Err(Stop::End);
    }
    match record::decode(bytes, crc) {
        Ok(frame) => {
            let in_order = match order {
                Order::Contiguous => frame.offset == next,
                Order::Increasing => frame.offset >= next,
            };
            if in_order && frame.offset < u64::MAX {
                Ok(frame)
            } else {
                Err(Stop::Invalid(CorruptionKind::BadOffset))
            }
        }
        // `decode` checks the length field's range before it reports a truncation, so `need_bytes` is bounded.
        Err(FrameError::Truncated { need_bytes }) => Err(Stop::Partial { need_bytes }),
        Err(FrameError::Invalid(kind)) => Err(Stop::Invalid(kind)),
    }
}

/// The offsets a segment of `len_bytes` written contiguously from `base_offset` can hold: each frame takes at
/// least a frame header, so no frame of it can have an offset past this range. Bounds the scans behind damage.
pub(crate) fn contiguous_offsets(base_offset: u64, len_bytes: u64) -> Range<u64> {
    let frames_max = len_bytes / FRAME_HEADER_BYTES as u64 + 1;
    base_offset..base_offset.saturating_add(frames_max)
}

/// Whether every byte is zero (preallocated space, or a zeroed tail).
pub(crate) fn is_zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AsParts, Message};

    const ID: u64 = 77;

    fn frames(offsets: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        for &offset in offsets {
            record::encode(&mut out, &CrcSeed::new(ID), offset, 0, 1, Message::new(vec![offset as u8; 50]).parts());
        }
        out
    }

    /// The offsets `frame_at` accepts one after another from `first`, and where and why it stops.
    fn walk(bytes: &[u8], order: Order, first: u64) -> (Vec<u64>, usize, Stop) {
        let (mut offsets, mut position, mut next) = (Vec::new(), 0, first);
        loop {
            match frame_at(&bytes[position..], &CrcSeed::new(ID), order, next) {
                Ok(frame) => {
                    offsets.push(frame.offset);
                    position += frame.len_bytes;
                    next = frame.offset + 1;
                }
                Err(stop) => return (offsets, position, stop),
            }
        }
    }

    #[test]
    fn contiguous_order_stops_at_a_gap_and_increasing_order_does_not() {
        let bytes = frames(&[5, 6, 8]);
        let (offsets, _, stop) = walk(&bytes, Order::Contiguous, 5);
        assert_eq!((offsets, stop), (vec![5, 6], Stop::Invalid(CorruptionKind::BadOffset)));
        assert_eq!(walk(&bytes, Order::Increasing, 5), (vec![5, 6, 8], bytes.len(), Stop::End));
    }

    #[test]
    fn a_decreasing_offset_is_invalid_and_a_cut_frame_is_partial() {
        let bytes = frames(&[5, 4]);
        assert_eq!(walk(&bytes, Order::Increasing, 5).2, Stop::Invalid(CorruptionKind::BadOffset));
        let one = frames(&[5]).len();
        assert_eq!(walk(&bytes[..one + 10], Order::Increasing, 5).2, Stop::Partial { need_bytes: one });
    }

    #[test]
    fn offset_max_is_never_a_frame() {
        let bytes = frames(&[u64::MAX]);
        assert_eq!(walk(&bytes, Order::Increasing, 0).2, Stop::Invalid(CorruptionKind::BadOffset));
    }

    #[test]
    fn offsets_past_what_the_length_allows_are_out_of_range() {
        let range = contiguous_offsets(100, 10 * FRAME_HEADER_BYTES as u64);
        assert_eq!(range, 100..111);
        assert_eq!(contiguous_offsets(u64::MAX - 1, 1 << 20).end, u64::MAX);
    }
}
