//! Frames: how one message is laid out in a segment, and its checksum. Pure functions over bytes, no I/O.
//!
//! ```text
//! 0   crc32         u32  CRC-32 of segment_id (8 bytes, LE) followed by bytes 4..len of this frame
//! 4   len           u32  whole frame length in bytes, header included (44..=FRAME_BYTES_LIMIT)
//! 8   offset        u64  the message's offset
//! 16  durable_below u64  every offset below this was fsynced before this frame was written
//! 24  timestamp_ms  u64
//! 32  flags         u8   bit 0: key present; bit 1: value present; other bits zero
//! 33  reserved      u8   zero
//! 34  header_count  u16
//! 36  key_len       u32  zero when no key
//! 40  value_len     u32  zero when no value
//! 44  key bytes, value bytes, then per header: name_len u16, value_len u32, name, value
//! ```
//!
//! Why these fields: the segment's random id inside the CRC rejects a frame copied from another segment or left
//! from an older file with the same name; the offset inside the CRC rejects a frame copied to another place of the
//! same segment; a length of zero is invalid, so an all-zero region never decodes as frames (the CRC of nothing is
//! zero, which would make a plain `[len][crc][payload]` layout accept zeros). `durable_below` lets recovery tell a
//! torn tail (never acknowledged, safe to cut) from damage to a frame that had been acknowledged.

use crate::error::CorruptionKind;
use crate::limits::{HEADERS_COUNT_MAX, HEADER_NAME_BYTES_MAX, MESSAGE_BYTES_LIMIT};
use crate::message::{Header, Offset, Parts, Record};

/// Bytes of a frame before its key.
pub(crate) const FRAME_HEADER_BYTES: usize = 44;
/// The largest frame any walq writes, whatever the queue's settings: a decoder bound, checked before allocating.
pub(crate) const FRAME_BYTES_LIMIT: usize = FRAME_HEADER_BYTES + MESSAGE_BYTES_LIMIT;
/// Bytes a header adds before its name and value.
const HEADER_ENTRY_BYTES: usize = 6;

const FLAG_KEY: u8 = 1;
const FLAG_VALUE: u8 = 2;

/// A file's identity as its checksums use it: a CRC-32 hasher that has hashed the segment (or journal) id. Built
/// once per file; each frame or record clones it, which skips both hashing the id again and the CPU feature
/// detection that every new `crc32fast::Hasher` runs (together a tenth of a small frame's cost).
#[derive(Debug, Clone)]
pub(crate) struct CrcSeed {
    after_id: crc32fast::Hasher,
}

impl CrcSeed {
    pub(crate) fn new(id: u64) -> CrcSeed {
        let mut after_id = crc32fast::Hasher::new();
        after_id.update(&id.to_le_bytes());
        CrcSeed { after_id }
    }

    /// CRC-32 of the id (8 bytes, LE) followed by `covered`.
    pub(crate) fn checksum(&self, covered: &[u8]) -> u32 {
        let mut hasher = self.after_id.clone();
        hasher.update(covered);
        hasher.finalize()
    }
}

/// A decoded frame, borrowing from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    /// The whole frame, as stored (compaction copies it).
    pub(crate) bytes: &'a [u8],
    pub(crate) len_bytes: usize,
    pub(crate) offset: u64,
    pub(crate) durable_below: u64,
    pub(crate) timestamp_ms: u64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    header_count: u16,
    headers: &'a [u8],
}

/// Why bytes did not decode as a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The bytes end before the frame does; `need_bytes` is how many a whole frame takes (known once the length
    /// field is readable). Not corruption by itself: the caller may have more bytes.
    Truncated { need_bytes: usize },
    /// The bytes are not a valid frame.
    Invalid(CorruptionKind),
}

/// The bytes of the frame that encodes `message`: its header and its payload.
pub(crate) fn frame_len(message: Parts<'_>) -> usize {
    FRAME_HEADER_BYTES + payload_len(message)
}

/// The payload size (key, value, headers) that counts against the message size limit.
pub(crate) fn payload_len(message: Parts<'_>) -> usize {
    let key = message.key.map_or(0, <[u8]>::len);
    let value = message.value.map_or(0, <[u8]>::len);
    let headers: usize = message.headers.iter().map(|h| HEADER_ENTRY_BYTES + h.name.len() + h.value.len()).sum();
    key + value + headers
}

/// Checks the header limits that the frame layout relies on.
pub(crate) fn check_headers(message: Parts<'_>) -> Result<(), &'static str> {
    if message.headers.len() > HEADERS_COUNT_MAX {
        return Err("more headers than HEADERS_COUNT_MAX");
    }
    if message.headers.iter().any(|h| h.name.len() > HEADER_NAME_BYTES_MAX) {
        return Err("a header name is longer than HEADER_NAME_BYTES_MAX");
    }
    Ok(())
}

/// Appends the frame for `message` to `out`. The caller has checked the size and header limits.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    crc: &CrcSeed,
    offset: u64,
    durable_below: u64,
    timestamp_ms: u64,
    message: Parts<'_>,
) {
    let len = frame_len(message);
    debug_assert!(len <= FRAME_BYTES_LIMIT, "caller checks the message size limit");
    debug_assert!(check_headers(message).is_ok(), "caller checks the header limits");
    let start = out.len();
    let (key, value) = (message.key, message.value);
    let flags = if key.is_some() { FLAG_KEY } else { 0 } | if value.is_some() { FLAG_VALUE } else { 0 };
    // The fixed part is built on the stack and copied once: a dozen small appends to the Vec cost a tenth of a
    // 100 B append in capacity checks.
    let mut head = [0u8; FRAME_HEADER_BYTES]; // bytes 0..4, the CRC, are filled in below
    head[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    head[8..16].copy_from_slice(&offset.to_le_bytes());
    head[16..24].copy_from_slice(&durable_below.to_le_bytes());
    head[24..32].copy_from_slice(&timestamp_ms.to_le_bytes());
    head[32] = flags;
    head[34..36].copy_from_slice(&(message.headers.len() as u16).to_le_bytes());
    head[36..40].copy_from_slice(&(key.map_or(0, <[u8]>::len) as u32).to_le_bytes());
    head[40..44].copy_from_slice(&(value.map_or(0, <[u8]>::len) as u32).to_le_bytes());
    out.reserve(len);
    out.extend_from_slice(&head);
    out.extend_from_slice(key.unwrap_or_default());
    out.extend_from_slice(value.unwrap_or_default());
    for header in message.headers {
        out.extend_from_slice(&(header.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(header.value.len() as u32).to_le_bytes());
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(&header.value);
    }
    debug_assert_eq!(out.len() - start, len);
    let crc = crc.checksum(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Re-seals a valid frame for another segment (compaction copies frames into a new file with a new id): the bytes
/// stay, the CRC is recomputed over them with `segment_id`.
pub(crate) fn reseal(frame: &mut [u8], crc: &CrcSeed) {
    debug_assert!(frame.len() >= FRAME_HEADER_BYTES && u32_at(frame, 4) as usize == frame.len());
    let crc = crc.checksum(&frame[4..]);
    frame[0..4].copy_from_slice(&crc.to_le_bytes());
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// A cheap look at the fixed part of a would-be frame at the start of `bytes`, before any checksum: its length and
/// offset if every field that can be checked alone is plausible (length in range, known flags, zero reserved byte,
/// header count in range, key and value lengths within the frame), `None` otherwise. Scans for the next valid frame
/// behind damage run this at every byte position and checksum only what passes: random bytes almost never do, so
/// the scan is linear in the bytes instead of a checksum of up to a frame's length at each position.
pub(crate) fn plausible_header(bytes: &[u8]) -> Option<(usize, u64)> {
    let head = bytes.get(..FRAME_HEADER_BYTES)?;
    let len = u32_at(head, 4) as usize;
    let flags = head[32];
    let (key_len, value_len) = (u32_at(head, 36) as usize, u32_at(head, 40) as usize);
    let plausible = (FRAME_HEADER_BYTES..=FRAME_BYTES_LIMIT).contains(&len)
        && flags & !(FLAG_KEY | FLAG_VALUE) == 0
        && head[33] == 0
        && usize::from(u16_at(head, 34)) <= HEADERS_COUNT_MAX
        && (flags & FLAG_KEY != 0 || key_len == 0)
        && (flags & FLAG_VALUE != 0 || value_len == 0)
        && key_len.saturating_add(value_len) <= len - FRAME_HEADER_BYTES;
    plausible.then(|| (len, u64_at(head, 8)))
}

/// A bug planted on purpose, compiled only with `--cfg walq_planted_bug`: CI checks that the frame-decoding fuzzer
/// reaches it, so that a fuzzing run that finds nothing means the harness does reach the decoder and a panic there
/// would have failed the run. The bytes "BUG!" anywhere in the first `PLANTED_WINDOW_BYTES` of what a decode is given
/// panic; CI hands libFuzzer the token in a dictionary (fuzz/planted.dict), so a run finds it in under 100
/// executions. A check at byte 0 alone, searched without the dictionary, took from 47 s to more than 600 s and
/// failed a CI run that had nothing wrong.
#[cfg(walq_planted_bug)]
#[inline(never)]
fn planted_bug(bytes: &[u8]) {
    const PLANTED_WINDOW_BYTES: usize = 256;
    let head = &bytes[..bytes.len().min(PLANTED_WINDOW_BYTES)];
    for window in head.windows(4) {
        let word = std::hint::black_box(u32::from_le_bytes([window[0], window[1], window[2], window[3]]));
        if word == u32::from_le_bytes(*b"BUG!") {
            panic!("planted bug reached: the fuzzer works");
        }
    }
}

/// Decodes the frame at the start of `bytes`. Checks the length, then the checksum, then the layout; trusts
/// nothing and never panics on any input.
pub(crate) fn decode<'a>(bytes: &'a [u8], crc: &CrcSeed) -> Result<Frame<'a>, FrameError> {
    use CorruptionKind::*;
    #[cfg(walq_planted_bug)]
    planted_bug(bytes);
    if bytes.len() < 8 {
        return Err(FrameError::Truncated { need_bytes: 8 });
    }
    let len = u32_at(bytes, 4) as usize;
    if !(FRAME_HEADER_BYTES..=FRAME_BYTES_LIMIT).contains(&len) {
        return Err(FrameError::Invalid(BadLength));
    }
    if bytes.len() < len {
        return Err(FrameError::Truncated { need_bytes: len });
    }
    let frame = &bytes[..len];
    if u32_at(frame, 0) != crc.checksum(&frame[4..]) {
        return Err(FrameError::Invalid(BadChecksum));
    }
    let flags = frame[32];
    if flags & !(FLAG_KEY | FLAG_VALUE) != 0 || frame[33] != 0 {
        return Err(FrameError::Invalid(BadLayout));
    }
    let header_count = u16_at(frame, 34);
    let key_len = u32_at(frame, 36) as usize;
    let value_len = u32_at(frame, 40) as usize;
    let has_key = flags & FLAG_KEY != 0;
    let has_value = flags & FLAG_VALUE != 0;
    if (!has_key && key_len != 0) || (!has_value && value_len != 0) {
        return Err(FrameError::Invalid(BadLayout));
    }
    let body = &frame[FRAME_HEADER_BYTES..];
    if key_len.checked_add(value_len).is_none_or(|n| n > body.len()) {
        return Err(FrameError::Invalid(BadLayout));
    }
    let (key, rest) = body.split_at(key_len);
    let (value, headers) = rest.split_at(value_len);
    check_header_layout(headers, header_count).map_err(FrameError::Invalid)?;
    Ok(Frame {
        bytes: frame,
        len_bytes: len,
        offset: u64_at(frame, 8),
        durable_below: u64_at(frame, 16),
        timestamp_ms: u64_at(frame, 24),
        key: has_key.then_some(key),
        value: has_value.then_some(value),
        header_count,
        headers,
    })
}

/// Checks that `headers` holds exactly `count` well-formed headers, so that later iteration cannot fail.
fn check_header_layout(mut headers: &[u8], count: u16) -> Result<(), CorruptionKind> {
    if count as usize > HEADERS_COUNT_MAX {
        return Err(CorruptionKind::BadLayout);
    }
    for _ in 0..count {
        if headers.len() < HEADER_ENTRY_BYTES {
            return Err(CorruptionKind::BadLayout);
        }
        let name_len = u16_at(headers, 0) as usize;
        let value_len = u32_at(headers, 2) as usize;
        let entry_len = HEADER_ENTRY_BYTES + name_len + value_len;
        if name_len > HEADER_NAME_BYTES_MAX || entry_len > headers.len() {
            return Err(CorruptionKind::BadLayout);
        }
        if std::str::from_utf8(&headers[HEADER_ENTRY_BYTES..HEADER_ENTRY_BYTES + name_len]).is_err() {
            return Err(CorruptionKind::BadLayout);
        }
        headers = &headers[entry_len..];
    }
    if headers.is_empty() {
        Ok(())
    } else {
        Err(CorruptionKind::BadLayout)
    }
}

impl Frame<'_> {
    /// The headers, in order. The layout was checked by [`decode`].
    pub(crate) fn headers(self) -> Vec<Header> {
        let mut out = Vec::with_capacity(self.header_count as usize);
        let mut rest = self.headers;
        for _ in 0..self.header_count {
            let name_len = u16_at(rest, 0) as usize;
            let value_len = u32_at(rest, 2) as usize;
            let name = &rest[HEADER_ENTRY_BYTES..HEADER_ENTRY_BYTES + name_len];
            let value = &rest[HEADER_ENTRY_BYTES + name_len..HEADER_ENTRY_BYTES + name_len + value_len];
            out.push(Header { name: String::from_utf8_lossy(name).into_owned(), value: value.to_vec() });
            rest = &rest[HEADER_ENTRY_BYTES + name_len + value_len..];
        }
        out
    }

    /// An owned copy of the message.
    pub(crate) fn to_record(self) -> Record {
        Record {
            offset: Offset(self.offset),
            timestamp_ms: self.timestamp_ms,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self.headers(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AsParts, Message};

    const SEGMENT_ID: u64 = 0x1234_5678_9abc_def0;

    fn sample() -> Message {
        Message::new(b"value".to_vec()).key(b"key".to_vec()).timestamp_ms(7).header("trace", b"abc".to_vec())
    }

    fn encoded(message: &Message, offset: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, &CrcSeed::new(SEGMENT_ID), offset, 3, 99, message.parts());
        out
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let bytes = encoded(&sample(), 42);
        let frame = decode(&bytes, &CrcSeed::new(SEGMENT_ID)).unwrap();
        assert_eq!(frame.len_bytes, bytes.len());
        assert_eq!(frame.offset, 42);
        assert_eq!(frame.durable_below, 3);
        let record = frame.to_record();
        assert_eq!(record.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(record.value.as_deref(), Some(&b"value"[..]));
        assert_eq!(record.headers, vec![Header { name: "trace".into(), value: b"abc".to_vec() }]);
    }

    #[test]
    fn the_seal_continues_the_crc_of_the_segment_id() {
        let bytes = encoded(&sample(), 42);
        let mut plain = crc32fast::Hasher::new();
        plain.update(&SEGMENT_ID.to_le_bytes());
        plain.update(&bytes[4..]);
        assert_eq!(CrcSeed::new(SEGMENT_ID).checksum(&bytes[4..]), plain.finalize());
        assert_eq!(u32_at(&bytes, 0), CrcSeed::new(SEGMENT_ID).checksum(&bytes[4..]));
    }

    #[test]
    fn tombstone_and_empty_value_differ() {
        let tomb = encoded(&Message::tombstone(b"k".to_vec()), 0);
        let empty = encoded(&Message::new(Vec::new()).key(b"k".to_vec()), 0);
        assert_eq!(decode(&tomb, &CrcSeed::new(SEGMENT_ID)).unwrap().value, None);
        assert_eq!(decode(&empty, &CrcSeed::new(SEGMENT_ID)).unwrap().value, Some(&b""[..]));
    }

    #[test]
    fn zeros_never_decode() {
        for len in [0, 8, 44, 100, 4096] {
            let zeros = vec![0u8; len];
            assert!(decode(&zeros, &CrcSeed::new(SEGMENT_ID)).is_err());
            assert!(decode(&zeros, &CrcSeed::new(0)).is_err());
        }
    }

    #[test]
    fn resealed_frame_verifies_only_in_its_new_segment() {
        let mut bytes = encoded(&sample(), 9);
        reseal(&mut bytes, &CrcSeed::new(SEGMENT_ID + 1));
        assert_eq!(decode(&bytes, &CrcSeed::new(SEGMENT_ID + 1)).unwrap().offset, 9);
        assert!(decode(&bytes, &CrcSeed::new(SEGMENT_ID)).is_err());
    }

    #[test]
    fn frame_from_another_segment_is_rejected() {
        let bytes = encoded(&sample(), 1);
        assert_eq!(
            decode(&bytes, &CrcSeed::new(SEGMENT_ID + 1)),
            Err(FrameError::Invalid(CorruptionKind::BadChecksum))
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encoded(&sample(), 5);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&flipped, &CrcSeed::new(SEGMENT_ID)).is_err(), "flip of bit {bit} went undetected");
        }
    }

    #[test]
    fn every_truncation_is_reported_as_truncated_or_invalid() {
        let bytes = encoded(&sample(), 5);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], &CrcSeed::new(SEGMENT_ID)).is_err());
        }
    }
}
