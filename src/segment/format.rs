//! A segment file's header and name: the bytes every segment starts with, and how its name gives its base offset.
//!
//! ```text
//! header, 64 bytes:
//! 0   magic              [u8; 8]  "WALQSEG\0"
//! 8   format_version     u16      2 (1: written by earlier builds, read as ever; it has no previous_base)
//! 10  checksum_algorithm u16      1 = CRC-32 (IEEE 802.3, as crc32fast computes it)
//! 12  header_len         u32      64
//! 16  base_offset        u64      offset of the first frame; also the file name, zero-padded to 20 digits
//! 24  segment_id         u64      random, never zero; inside every frame's CRC
//! 32  created_ms         u64      creation time, milliseconds since the Unix epoch
//! 40  previous_base      u64      version 2: the base offset of the segment before this one, plus one (0: none,
//!                                 the queue's first segment); lets readers and `verify` tell a lost segment
//!                                 from ones cleanup deleted (only the oldest are ever deleted)
//! 48  reserved           [u8; 12] zero (version 1: bytes 40..60 are all reserved, zero)
//! 60  crc32              u32      CRC-32 of bytes 0..60
//! frames follow (see `record` and `walk`), then, in the segment being written, preallocated zeros.
//! ```

use std::path::Path;

use crate::error::{CorruptionKind, Error};

/// Bytes of the segment header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 64;
/// No segment file is longer: frames are added only while they fit `segment_bytes_max` (at most
/// `SEGMENT_BYTES_LIMIT`), and a preallocated segment is exactly that long. A longer file is damage (or a sparse
/// file's claim), refused before anything is sized by it.
pub(crate) const SEGMENT_FILE_BYTES_MAX: u64 = crate::limits::SEGMENT_BYTES_LIMIT;
/// The format version of the manifest this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The segment header version this build writes (and the newest it reads); `SEGMENT_VERSION_FIRST` is read too.
pub(crate) const SEGMENT_VERSION: u16 = 2;
/// The first segment header version: no `previous_base`.
const SEGMENT_VERSION_FIRST: u16 = 1;
const SEGMENT_MAGIC: [u8; 8] = *b"WALQSEG\0";
const CHECKSUM_CRC32: u16 = 1;

/// The decoded header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) base_offset: u64,
    pub(crate) segment_id: u64,
    pub(crate) created_ms: u64,
    /// The base offset of the segment written before this one (`None` for the first segment of a queue, and in
    /// version 1 headers, which did not record it).
    pub(crate) previous_base: Option<u64>,
}

/// Why a segment header did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    Corrupt(CorruptionKind),
    UnsupportedVersion(u32),
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&CHECKSUM_CRC32.to_le_bytes());
        out[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.base_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment_id.to_le_bytes());
        out[32..40].copy_from_slice(&self.created_ms.to_le_bytes());
        let previous = self.previous_base.map_or(0, |base| base + 1);
        out[40..48].copy_from_slice(&previous.to_le_bytes());
        let crc = crc32fast::hash(&out[0..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header: length, magic, version, then checksum and fields. Never panics.
    pub(crate) fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        use CorruptionKind::*;
        let Some(bytes) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err(HeaderError::Corrupt(Truncated));
        };
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::Corrupt(BadMagic));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[60..64].try_into().expect("4 bytes"));
        if crc != crc32fast::hash(&bytes[0..60]) {
            return Err(HeaderError::Corrupt(BadChecksum));
        }
        // The version is checked after the CRC so that a flipped bit is reported as damage, not as a newer format.
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != SEGMENT_VERSION && version != SEGMENT_VERSION_FIRST {
            return Err(HeaderError::UnsupportedVersion(u32::from(version)));
        }
        let algorithm = u16::from_le_bytes([bytes[10], bytes[11]]);
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let reserved_from = if version == SEGMENT_VERSION_FIRST { 40 } else { 48 };
        if algorithm != CHECKSUM_CRC32
            || header_len as usize != SEGMENT_HEADER_BYTES
            || bytes[reserved_from..60].iter().any(|&b| b != 0)
        {
            return Err(HeaderError::Corrupt(BadLayout));
        }
        let previous = u64_at(40);
        let header = SegmentHeader {
            base_offset: u64_at(16),
            segment_id: u64_at(24),
            created_ms: u64_at(32),
            previous_base: previous.checked_sub(1),
        };
        let previous_in_order = header.previous_base.is_none_or(|previous| previous < header.base_offset);
        if header.segment_id == 0 || !previous_in_order {
            return Err(HeaderError::Corrupt(BadLayout));
        }
        Ok(header)
    }
}

/// Turns a header decoding failure into the public error for `path`.
pub(crate) fn header_error(path: &Path, error: HeaderError) -> Error {
    match error {
        HeaderError::Corrupt(kind) => Error::Corrupt { file: path.to_path_buf(), position: 0, kind },
        HeaderError::UnsupportedVersion(found) => {
            Error::UnsupportedVersion { found, supported: u32::from(SEGMENT_VERSION) }
        }
    }
}

/// `00000000000000000042.seg` for base offset 42.
pub(crate) fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.seg")
}

/// `00000000000000000042.idx` for base offset 42.
pub(crate) fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.idx")
}

/// The base offset named by a segment file name, if it is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = SegmentHeader { base_offset: 42, segment_id: 9, created_ms: 1, previous_base: Some(7) };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        let first = SegmentHeader { previous_base: None, ..header };
        assert_eq!(SegmentHeader::decode(&first.encode()), Ok(first));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&flipped).is_err(), "bit {bit}");
        }
        assert!(SegmentHeader::decode(&[0u8; 64]).is_err());
        assert!(SegmentHeader::decode(&bytes[..63]).is_err());
    }

    #[test]
    fn newer_version_is_reported_as_such() {
        let mut bytes = SegmentHeader { base_offset: 0, segment_id: 9, created_ms: 1, previous_base: None }.encode();
        bytes[8] = 3;
        let crc = crc32fast::hash(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&bytes), Err(HeaderError::UnsupportedVersion(3)));
    }

    #[test]
    fn a_version_1_header_has_no_previous_base_and_reads_as_before() {
        let header = SegmentHeader { base_offset: 42, segment_id: 9, created_ms: 1, previous_base: None };
        let mut bytes = header.encode();
        bytes[8] = 1;
        let crc = crc32fast::hash(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        bytes[40] = 1; // a version 1 header's bytes 40..60 are reserved
        let crc = crc32fast::hash(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&bytes), Err(HeaderError::Corrupt(CorruptionKind::BadLayout)));
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_file_name("00000000000000000042.seg"), Some(42));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.idx"), None);
    }
}
