//! The sparse offset index of one segment: `offset -> byte position` every [`INDEX_INTERVAL_BYTES`] of log.
//!
//! ```text
//! header, 32 bytes:
//! 0   magic        [u8; 8]  "WALQIDX\0"
//! 8   version      u16      2 (version 1 had zeros where max_seconds is: its files are rebuilt)
//! 10  reserved     u16      zero
//! 12  base_offset  u64      the segment's base offset
//! 20  segment_id   u64      the segment's id: an index left from an older file of the same name is ignored
//! 28  crc32        u32      CRC-32 of bytes 0..28
//! entries, 16 bytes each, in increasing order:
//! 0   rel_offset   u32      offset - base_offset
//! 4   position     u32      byte position of that frame in the segment file
//! 8   max_seconds  u32      the segment's frames before this one: their greatest timestamp in whole seconds,
//!                           rounded up (an upper bound); u32::MAX: not known
//! 12  crc32        u32      CRC-32 of segment_id (8 bytes, LE), the version (2 bytes, LE), bytes 0..12 of the entry
//! ```
//!
//! `max_seconds` is the time index (Kafka's `.timeindex`, folded into the offset index): it never decreases along
//! a segment, so a time lookup finds by binary search the last entry before which every frame is earlier than the
//! time it looks for.
//!
//! The index is a cache: it is never fsynced, every entry is checked (its CRC, and the frame it points at) before
//! it is used, and a missing, stale or damaged index is rebuilt from the segment.

use crate::limits::INDEX_INTERVAL_BYTES;

/// Bytes of the index file header.
pub(crate) const INDEX_HEADER_BYTES: usize = 32;
/// Bytes of one index entry.
pub(crate) const INDEX_ENTRY_BYTES: usize = 16;
const INDEX_MAGIC: [u8; 8] = *b"WALQIDX\0";
const INDEX_VERSION: u16 = 2;

/// One index entry: the frame with offset `base_offset + rel_offset` starts at `position`; the frames of the
/// segment before it have timestamps of at most `max_seconds_before` seconds ([`MAX_SECONDS_UNKNOWN`]: not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) rel_offset: u32,
    pub(crate) position: u32,
    pub(crate) max_seconds_before: u32,
}

/// `max_seconds_before` of an entry whose frames before it are not known (or later than what 32 bits of seconds
/// hold): no time lookup starts at or after it.
pub(crate) const MAX_SECONDS_UNKNOWN: u32 = u32::MAX;

/// The greatest timestamp of the frames walked so far, for the entries' `max_seconds_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunningMax {
    /// The greatest timestamp is at most this many milliseconds (none: no frame yet).
    AtMost(Option<u64>),
    /// Not known (frames were written before anything counted them).
    Unknown,
}

impl RunningMax {
    /// Before the first frame of a segment.
    pub(crate) const EMPTY: RunningMax = RunningMax::AtMost(None);

    /// Continuing after an entry whose frames before it were at most `max_seconds_before`.
    pub(crate) fn after(entry: &IndexEntry) -> RunningMax {
        match entry.max_seconds_before {
            MAX_SECONDS_UNKNOWN => RunningMax::Unknown,
            seconds => RunningMax::AtMost(Some(u64::from(seconds) * 1000)),
        }
    }

    /// Counts a frame with `timestamp_ms`.
    pub(crate) fn add(&mut self, timestamp_ms: u64) {
        if let RunningMax::AtMost(max) = self {
            *max = Some(max.map_or(timestamp_ms, |m| m.max(timestamp_ms)));
        }
    }

    /// The value an entry for the next frame carries: whole seconds, rounded up.
    pub(crate) fn seconds(&self) -> u32 {
        match *self {
            RunningMax::AtMost(None) => 0,
            RunningMax::AtMost(Some(ms)) => u32::try_from(ms.div_ceil(1000)).unwrap_or(MAX_SECONDS_UNKNOWN),
            RunningMax::Unknown => MAX_SECONDS_UNKNOWN,
        }
    }
}

/// Whether every frame before `entry` is earlier than `time_ms` (so that a time lookup may start at it).
pub(crate) fn all_before_earlier(entry: &IndexEntry, time_ms: u64) -> bool {
    entry.max_seconds_before != MAX_SECONDS_UNKNOWN && u64::from(entry.max_seconds_before) * 1000 < time_ms
}

/// Encodes the index file header.
pub(crate) fn encode_header(base_offset: u64, segment_id: u64) -> [u8; INDEX_HEADER_BYTES] {
    let mut out = [0u8; INDEX_HEADER_BYTES];
    out[0..8].copy_from_slice(&INDEX_MAGIC);
    out[8..10].copy_from_slice(&INDEX_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&base_offset.to_le_bytes());
    out[20..28].copy_from_slice(&segment_id.to_le_bytes());
    let crc = crc32fast::hash(&out[0..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Whether `bytes` starts with a valid header for exactly this segment. Anything else (another segment's index, a
/// newer version, damage) means the index must be rebuilt, so no finer error is needed.
pub(crate) fn header_matches(bytes: &[u8], base_offset: u64, segment_id: u64) -> bool {
    bytes.len() >= INDEX_HEADER_BYTES && bytes[..INDEX_HEADER_BYTES] == encode_header(base_offset, segment_id)
}

/// The bytes of an index file: the header, then `entries`.
pub(crate) fn encode_file(base_offset: u64, segment_id: u64, entries: &[IndexEntry]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(INDEX_HEADER_BYTES + entries.len() * INDEX_ENTRY_BYTES);
    bytes.extend_from_slice(&encode_header(base_offset, segment_id));
    for entry in entries {
        bytes.extend_from_slice(&encode_entry(segment_id, *entry));
    }
    bytes
}

/// Encodes one entry.
pub(crate) fn encode_entry(segment_id: u64, entry: IndexEntry) -> [u8; INDEX_ENTRY_BYTES] {
    let mut out = [0u8; INDEX_ENTRY_BYTES];
    out[0..4].copy_from_slice(&entry.rel_offset.to_le_bytes());
    out[4..8].copy_from_slice(&entry.position.to_le_bytes());
    out[8..12].copy_from_slice(&entry.max_seconds_before.to_le_bytes());
    let crc = entry_crc(segment_id, &out[0..12]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The version is covered too: a version-1 entry (whose `max_seconds` bytes were zeros, which would claim that
/// every frame before it is from 1970) never passes for one of this version, even where the header is not read.
fn entry_crc(segment_id: u64, covered: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment_id.to_le_bytes());
    hasher.update(&INDEX_VERSION.to_le_bytes());
    hasher.update(covered);
    hasher.finalize()
}

/// Decodes entry number `n` of an index file's bytes; `None` when it is missing or fails its checks.
#[cfg(test)]
pub(crate) fn decode_entry(file: &[u8], segment_id: u64, n: usize) -> Option<IndexEntry> {
    let start = entry_position(n)?;
    decode_entry_bytes(file.get(start..start.checked_add(INDEX_ENTRY_BYTES)?)?, segment_id)
}

/// Where entry number `n` starts in an index file.
pub(crate) fn entry_position(n: usize) -> Option<usize> {
    INDEX_HEADER_BYTES.checked_add(n.checked_mul(INDEX_ENTRY_BYTES)?)
}

/// Decodes one entry's bytes; `None` when they are too short or fail the entry's checks.
pub(crate) fn decode_entry_bytes(bytes: &[u8], segment_id: u64) -> Option<IndexEntry> {
    let bytes = bytes.get(..INDEX_ENTRY_BYTES)?;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().ok()?);
    if crc != entry_crc(segment_id, &bytes[0..12]) {
        return None;
    }
    Some(IndexEntry {
        rel_offset: u32::from_le_bytes(bytes[0..4].try_into().ok()?),
        position: u32::from_le_bytes(bytes[4..8].try_into().ok()?),
        max_seconds_before: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
    })
}

/// Decodes consecutive entries from `bytes` (entries only, no header) up to the first that fails its checks: its
/// checksum (over `segment_id`), coming strictly after the entry before it (in offset and in position, its time
/// not below), and lying
/// inside the bounds (`positions`: byte positions in the segment; `rel_offsets`: offsets relative to its base).
/// Every reader of index entries goes through this one check; each decides what a shorter run means.
pub(crate) fn decode_run(
    bytes: &[u8],
    segment_id: u64,
    positions: std::ops::Range<u64>,
    rel_offsets: std::ops::Range<u64>,
) -> Vec<IndexEntry> {
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / INDEX_ENTRY_BYTES);
    for chunk in bytes.chunks_exact(INDEX_ENTRY_BYTES) {
        let Some(entry) = decode_entry_bytes(chunk, segment_id) else { break };
        let increasing = entries.last().is_none_or(|last| {
            entry.rel_offset > last.rel_offset
                && entry.position > last.position
                && entry.max_seconds_before >= last.max_seconds_before
        });
        let inside =
            positions.contains(&u64::from(entry.position)) && rel_offsets.contains(&u64::from(entry.rel_offset));
        if !increasing || !inside {
            break;
        }
        entries.push(entry);
    }
    entries
}

/// How many whole entries an index file of `len_bytes` holds.
pub(crate) fn entry_count(len_bytes: usize) -> usize {
    len_bytes.saturating_sub(INDEX_HEADER_BYTES) / INDEX_ENTRY_BYTES
}

/// Decides which frames get an index entry, so that the rule is the same when appending and when rebuilding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexCadence {
    last_position: u64,
}

impl IndexCadence {
    /// A cadence continuing after an entry at `position` (or after the segment header, at the first frame, which
    /// needs no entry).
    pub(crate) fn after(position: u64) -> IndexCadence {
        IndexCadence { last_position: position }
    }

    /// Whether the frame at `position` gets an entry; records it if so.
    pub(crate) fn take(&mut self, position: u64) -> bool {
        if position >= self.last_position + INDEX_INTERVAL_BYTES {
            self.last_position = position;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(entries: &[IndexEntry]) -> Vec<u8> {
        let mut file = encode_header(100, 7).to_vec();
        for e in entries {
            file.extend_from_slice(&encode_entry(7, *e));
        }
        file
    }

    #[test]
    fn entries_round_trip_and_the_header_names_its_segment() {
        let entries: Vec<IndexEntry> = (0..10)
            .map(|i| IndexEntry { rel_offset: i * 10, position: 64 + i * 4096, max_seconds_before: i })
            .collect();
        let file = file_with(&entries);
        assert_eq!(file, encode_file(100, 7, &entries));
        assert!(header_matches(&file, 100, 7));
        assert!(!header_matches(&file, 100, 8));
        assert_eq!(entry_count(file.len()), 10);
        for (n, entry) in entries.iter().enumerate() {
            assert_eq!(decode_entry(&file, 7, n), Some(*entry));
            assert_eq!(decode_entry(&file, 8, n), None, "another segment's id fails the entry's checksum");
        }
    }

    #[test]
    fn the_running_maximum_rounds_up_and_knows_what_it_does_not_know() {
        let mut max = RunningMax::EMPTY;
        assert_eq!(max.seconds(), 0);
        max.add(1_500);
        max.add(900);
        assert_eq!(max.seconds(), 2, "1.5 s rounds up to 2");
        let entry = IndexEntry { rel_offset: 1, position: 100, max_seconds_before: max.seconds() };
        assert!(all_before_earlier(&entry, 2_001) && !all_before_earlier(&entry, 2_000));
        assert_eq!(RunningMax::after(&entry), RunningMax::AtMost(Some(2_000)));
        let mut unknown = RunningMax::Unknown;
        unknown.add(5);
        assert_eq!(unknown.seconds(), MAX_SECONDS_UNKNOWN);
        let unknown_entry = IndexEntry { max_seconds_before: unknown.seconds(), ..entry };
        assert!(!all_before_earlier(&unknown_entry, u64::MAX));
        let mut far = RunningMax::EMPTY;
        far.add(u64::MAX);
        assert_eq!(far.seconds(), MAX_SECONDS_UNKNOWN, "beyond 32 bits of seconds: not known");
    }

    #[test]
    fn damaged_entry_is_rejected() {
        let mut file = file_with(&[IndexEntry { rel_offset: 1, position: 2, max_seconds_before: 3 }]);
        file[INDEX_HEADER_BYTES] ^= 1;
        assert_eq!(decode_entry(&file, 7, 0), None);
        assert_eq!(decode_entry(&file, 7, 1), None);
    }
}
