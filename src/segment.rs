//! One segment file: its header, appending frames to it, sealing it, reading and scanning it.
//!
//! ```text
//! header, 64 bytes:
//! 0   magic              [u8; 8]  "WALQSEG\0"
//! 8   format_version     u16      1
//! 10  checksum_algorithm u16      1 = CRC-32 (IEEE 802.3, as crc32fast computes it)
//! 12  header_len         u32      64
//! 16  base_offset        u64      offset of the first frame; also the file name, zero-padded to 20 digits
//! 24  segment_id         u64      random, never zero; inside every frame's CRC
//! 32  created_ms         u64      creation time, milliseconds since the Unix epoch
//! 40  reserved           [u8; 20] zero
//! 60  crc32              u32      CRC-32 of bytes 0..60
//! frames follow (see `record`), then, in the segment being written, preallocated zeros.
//! ```
//!
//! A sealed segment is truncated to its last frame and never written again, which is what makes it safe to map.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{CorruptionKind, Error, Result};
use crate::index::{self, IndexCadence, IndexEntry, INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES};
use crate::options::Preallocation;
use crate::record::{self, CrcSeed, Frame, FrameError, FRAME_BYTES_LIMIT, FRAME_HEADER_BYTES};
use crate::storage::{OpenMode, ReadView, Storage, StorageFile};

/// Bytes of the segment header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 64;
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
const SEGMENT_MAGIC: [u8; 8] = *b"WALQSEG\0";
const CHECKSUM_CRC32: u16 = 1;
/// Index entries buffered in memory before they are written to the index file.
const INDEX_FLUSH_ENTRIES: usize = 64;
/// Capacity the frame buffer keeps between writes (more if the write buffer is larger): a big batch grows it, and
/// it gives the memory back after.
const ENCODE_BUFFER_KEEP_BYTES: usize = 1024 * 1024;

/// The decoded header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) base_offset: u64,
    pub(crate) segment_id: u64,
    pub(crate) created_ms: u64,
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
        out[8..10].copy_from_slice(&(FORMAT_VERSION as u16).to_le_bytes());
        out[10..12].copy_from_slice(&CHECKSUM_CRC32.to_le_bytes());
        out[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.base_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment_id.to_le_bytes());
        out[32..40].copy_from_slice(&self.created_ms.to_le_bytes());
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
        let version = u32::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let algorithm = u16::from_le_bytes([bytes[10], bytes[11]]);
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        if algorithm != CHECKSUM_CRC32 || header_len as usize != SEGMENT_HEADER_BYTES || bytes[40..60] != [0; 20] {
            return Err(HeaderError::Corrupt(BadLayout));
        }
        let header = SegmentHeader { base_offset: u64_at(16), segment_id: u64_at(24), created_ms: u64_at(32) };
        if header.segment_id == 0 {
            return Err(HeaderError::Corrupt(BadLayout));
        }
        Ok(header)
    }
}

/// Turns a header decoding failure into the public error for `path`.
pub(crate) fn header_error(path: &Path, error: HeaderError) -> Error {
    match error {
        HeaderError::Corrupt(kind) => Error::Corrupt { file: path.to_path_buf(), position: 0, kind },
        HeaderError::UnsupportedVersion(found) => Error::UnsupportedVersion { found, supported: FORMAT_VERSION },
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

/// Where a scan over frames stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// The bytes ended exactly after a frame.
    End,
    /// The bytes end inside a frame.
    Partial,
    /// The bytes at the stop position are not the expected frame.
    Invalid(CorruptionKind),
}

/// The result of scanning a run of contiguous frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Bytes from the start of the scanned slice to the end of the last valid frame.
    pub(crate) valid_bytes: usize,
    /// The offset after the last valid frame.
    pub(crate) next_offset: u64,
    /// The largest `durable_below` among the valid frames.
    pub(crate) durable_below_max: u64,
    /// Why the scan stopped.
    pub(crate) stop: ScanStop,
}

/// Scans frames at the start of `bytes` whose offsets are exactly `first_offset`, `first_offset + 1`, ...
/// Calls `visit(position_in_bytes, frame)` for each.
pub(crate) fn scan_contiguous(
    bytes: &[u8],
    segment_id: u64,
    first_offset: u64,
    mut visit: impl FnMut(usize, &Frame<'_>),
) -> Scan {
    let mut scan = Scan { valid_bytes: 0, next_offset: first_offset, durable_below_max: 0, stop: ScanStop::End };
    let crc = CrcSeed::new(segment_id);
    while scan.valid_bytes < bytes.len() {
        match record::decode(&bytes[scan.valid_bytes..], &crc) {
            Ok(frame) if frame.offset == scan.next_offset => {
                visit(scan.valid_bytes, &frame);
                scan.valid_bytes += frame.len_bytes;
                scan.next_offset += 1;
                scan.durable_below_max = scan.durable_below_max.max(frame.durable_below);
            }
            Ok(_) => {
                scan.stop = ScanStop::Invalid(CorruptionKind::BadOffset);
                return scan;
            }
            Err(FrameError::Truncated { need_bytes }) => {
                // A frame whose length field is plausible but runs past the data is a torn write.
                scan.stop = if need_bytes <= FRAME_BYTES_LIMIT {
                    ScanStop::Partial
                } else {
                    ScanStop::Invalid(CorruptionKind::BadLength)
                };
                return scan;
            }
            Err(FrameError::Invalid(kind)) => {
                scan.stop = ScanStop::Invalid(kind);
                return scan;
            }
        }
    }
    scan
}

/// The first position at or after `from` where a valid frame with offset `>= min_offset` starts, with that frame.
/// Used to look behind a damaged region: slow (tries every byte position), so only on the rare damaged path.
pub(crate) fn find_next_valid(
    bytes: &[u8],
    from: usize,
    segment_id: u64,
    min_offset: u64,
) -> Option<(usize, Frame<'_>)> {
    let mut position = from;
    let crc = CrcSeed::new(segment_id);
    while position + FRAME_HEADER_BYTES <= bytes.len() {
        let len_field = u32::from_le_bytes(bytes[position + 4..position + 8].try_into().expect("4 bytes")) as usize;
        if (FRAME_HEADER_BYTES..=FRAME_BYTES_LIMIT).contains(&len_field) && position + len_field <= bytes.len() {
            if let Ok(frame) = record::decode(&bytes[position..], &crc) {
                if frame.offset >= min_offset {
                    return Some((position, frame));
                }
            }
        }
        position += 1;
    }
    None
}

/// The segment being appended to. Owned by the log, behind its lock.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub(crate) header: SegmentHeader,
    /// The header's segment id as frame checksums use it.
    pub(crate) crc: CrcSeed,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn StorageFile>,
    index_path: PathBuf,
    index_file: Option<Arc<dyn StorageFile>>,
    index_entries: Vec<IndexEntry>,
    index_entries_written: usize,
    cadence: IndexCadence,
    /// Where the next frame goes.
    pub(crate) write_pos: u64,
    /// The offset of the next frame.
    pub(crate) next_offset: u64,
    /// Frames appended but not yet written to the file (a write buffer, only in the modes that allow one): the
    /// bytes from `written_pos` to `write_pos`.
    pending: Vec<u8>,
    /// The end of what has been written to the file (handed to the OS); `write_pos` when nothing is pending.
    pub(crate) written_pos: u64,
    /// The offset after the last frame written to the file.
    pub(crate) written_offset: u64,
}

impl ActiveSegment {
    /// Creates a new segment file with its header, fsynced, and a fresh index. The caller fsyncs the directory
    /// before acknowledging anything written to it. On failure, removes what it created.
    pub(crate) fn create(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: u64,
        size_bytes: u64,
        preallocation: Preallocation,
    ) -> Result<ActiveSegment> {
        let path = dir.join(segment_file_name(base_offset));
        let header =
            SegmentHeader { base_offset, segment_id: crate::ids::new_file_id(), created_ms: crate::clock::now_ms() };
        let result = (|| -> std::io::Result<Arc<dyn StorageFile>> {
            let file = match storage.open_file(&path, OpenMode::CreateNew) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Left by a failed roll of this process: it holds no acknowledged record.
                    storage.remove_file(&path)?;
                    storage.open_file(&path, OpenMode::CreateNew)?
                }
                other => other?,
            };
            file.write_all_at(&header.encode(), 0)?;
            if preallocation == Preallocation::Reserve {
                file.allocate(size_bytes)?;
            }
            file.sync_all()?;
            Ok(file)
        })();
        let file = match result {
            Ok(file) => file,
            Err(e) => {
                let _ = storage.remove_file(&path);
                return Err(Error::io("create segment", &path, e));
            }
        };
        let index_path = dir.join(index_file_name(base_offset));
        let mut segment = ActiveSegment {
            header,
            crc: CrcSeed::new(header.segment_id),
            path,
            file,
            index_path,
            index_file: None,
            index_entries: Vec::new(),
            index_entries_written: 0,
            cadence: IndexCadence::new(),
            write_pos: SEGMENT_HEADER_BYTES as u64,
            next_offset: base_offset,
            pending: Vec::new(),
            written_pos: SEGMENT_HEADER_BYTES as u64,
            written_offset: base_offset,
        };
        segment.rewrite_index_file(storage);
        Ok(segment)
    }

    /// An existing segment, recovered: frames end at `write_pos`, the next offset is `next_offset`, and
    /// `index_entries` are verified entries (the last one at `cadence`'s position).
    pub(crate) fn reopen(
        storage: &dyn Storage,
        dir: &Path,
        header: SegmentHeader,
        file: Arc<dyn StorageFile>,
        recovered: RecoveredTail,
    ) -> ActiveSegment {
        let mut segment = ActiveSegment {
            header,
            crc: CrcSeed::new(header.segment_id),
            path: dir.join(segment_file_name(header.base_offset)),
            file,
            index_path: dir.join(index_file_name(header.base_offset)),
            index_file: None,
            index_entries: recovered.index_entries,
            index_entries_written: 0,
            cadence: recovered.cadence,
            write_pos: recovered.write_pos,
            next_offset: recovered.next_offset,
            pending: Vec::new(),
            written_pos: recovered.write_pos,
            written_offset: recovered.next_offset,
        };
        segment.rewrite_index_file(storage);
        segment
    }

    /// Writes the whole index file anew. The index is a cache: failures are logged and cost only lookup speed.
    fn rewrite_index_file(&mut self, storage: &dyn Storage) {
        let result = (|| -> std::io::Result<Arc<dyn StorageFile>> {
            let file = match storage.open_file(&self.index_path, OpenMode::ReadWrite) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    storage.open_file(&self.index_path, OpenMode::CreateNew)?
                }
                other => other?,
            };
            let mut bytes = index::encode_header(self.header.base_offset, self.header.segment_id).to_vec();
            for entry in &self.index_entries {
                bytes.extend_from_slice(&index::encode_entry(self.header.segment_id, *entry));
            }
            file.write_all_at(&bytes, 0)?;
            file.set_len(bytes.len() as u64)?;
            Ok(file)
        })();
        match result {
            Ok(file) => {
                self.index_file = Some(file);
                self.index_entries_written = self.index_entries.len();
            }
            Err(error) => {
                tracing::warn!(path = %self.index_path.display(), %error, "cannot write segment index; lookups will scan");
                self.index_file = None;
            }
        }
    }

    /// Whether no frame has been written.
    pub(crate) fn is_empty(&self) -> bool {
        self.next_offset == self.header.base_offset
    }

    /// The buffer new frames are encoded into, after the frames waiting in the write buffer (it is empty when
    /// there is no write buffer).
    pub(crate) fn frame_buffer(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// Records the frames encoded into [`frame_buffer`](Self::frame_buffer) from byte `from` on (`frame_starts`
    /// are their starts, relative to `from`) as appended. They are written now, together with any buffered before
    /// them, unless the whole fits a write buffer of `buffer_bytes` (0: none). On error they are dropped from the
    /// buffer and nothing of them is recorded (frames buffered before stay buffered); a later write overwrites
    /// whatever part reached the file.
    pub(crate) fn commit_frames(
        &mut self,
        from: usize,
        frame_starts: &[usize],
        buffer_bytes: usize,
    ) -> std::io::Result<()> {
        debug_assert!(!frame_starts.is_empty() && frame_starts[0] == 0);
        debug_assert_eq!(from as u64, self.write_pos - self.written_pos, "frames before `from` are the buffered ones");
        let written = self.pending.len() > buffer_bytes;
        if written {
            if let Err(error) = self.file.write_all_at(&self.pending, self.written_pos) {
                self.pending.truncate(from);
                return Err(error);
            }
        }
        let new_bytes = self.pending.len() - from;
        for (i, &start) in frame_starts.iter().enumerate() {
            let position = self.write_pos + start as u64;
            if self.cadence.take(position) {
                let rel_offset = (self.next_offset - self.header.base_offset) as u32 + i as u32;
                self.index_entries.push(IndexEntry { rel_offset, position: position as u32 });
            }
        }
        self.write_pos += new_bytes as u64;
        self.next_offset += frame_starts.len() as u64;
        if written {
            self.mark_written();
            // A big batch may have grown the buffer far past what the write buffer needs: give the memory back.
            let keep = buffer_bytes.max(ENCODE_BUFFER_KEEP_BYTES);
            if self.pending.capacity() > 2 * keep {
                self.pending.shrink_to(keep);
            }
        }
        if self.index_entries.len() - self.index_entries_written >= INDEX_FLUSH_ENTRIES {
            self.flush_index();
        }
        Ok(())
    }

    /// Empties the buffer once its frames are in the file.
    fn mark_written(&mut self) {
        self.pending.clear();
        self.written_pos = self.write_pos;
        self.written_offset = self.next_offset;
    }

    /// Whether frames wait in the write buffer.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the write buffer's frames to the file. On error they stay buffered, to be written again.
    pub(crate) fn write_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.pending, self.written_pos)?;
        self.mark_written();
        Ok(())
    }

    /// Writes buffered index entries to the index file (not fsynced: the index is a cache). Entries of frames
    /// still in the write buffer wait: an entry is written only once its frame is.
    pub(crate) fn flush_index(&mut self) {
        let Some(file) = &self.index_file else { return };
        let written = self.index_entries.partition_point(|e| u64::from(e.position) < self.written_pos);
        let pending = &self.index_entries[self.index_entries_written..written.max(self.index_entries_written)];
        if pending.is_empty() {
            return;
        }
        let mut bytes = Vec::with_capacity(pending.len() * INDEX_ENTRY_BYTES);
        for entry in pending {
            bytes.extend_from_slice(&index::encode_entry(self.header.segment_id, *entry));
        }
        let position = (INDEX_HEADER_BYTES + self.index_entries_written * INDEX_ENTRY_BYTES) as u64;
        match file.write_all_at(&bytes, position) {
            Ok(()) => self.index_entries_written += pending.len(),
            Err(error) => {
                tracing::warn!(path = %self.index_path.display(), %error, "cannot write index entries")
            }
        }
    }

    /// Where to start reading for `offset`: the greatest indexed frame at or below it, or the first frame.
    pub(crate) fn position_for(&self, offset: u64) -> u64 {
        let rel = offset.saturating_sub(self.header.base_offset);
        let i = self.index_entries.partition_point(|e| u64::from(e.rel_offset) <= rel);
        if i == 0 {
            SEGMENT_HEADER_BYTES as u64
        } else {
            u64::from(self.index_entries[i - 1].position)
        }
    }

    /// Seals the segment: index written, file cut to its last frame and fsynced. It is never written again.
    pub(crate) fn seal(&mut self) -> std::io::Result<()> {
        self.write_pending()?;
        self.flush_index();
        self.file.set_len(self.write_pos)?;
        self.file.sync_all()
    }

    /// Cuts preallocated space on a clean close, so that the next open has no zeros to look behind.
    pub(crate) fn trim(&mut self) -> std::io::Result<()> {
        self.write_pending()?;
        self.flush_index();
        if self.file.len_bytes()? != self.write_pos {
            self.file.set_len(self.write_pos)?;
        }
        self.file.sync_all()
    }
}

/// What recovery found at the end of the last segment.
#[derive(Debug)]
pub(crate) struct RecoveredTail {
    pub(crate) write_pos: u64,
    pub(crate) next_offset: u64,
    pub(crate) index_entries: Vec<IndexEntry>,
    pub(crate) cadence: IndexCadence,
}

/// A sealed segment: immutable, opened and mapped on first use.
#[derive(Debug)]
pub(crate) struct SealedSegment {
    pub(crate) base_offset: u64,
    pub(crate) path: PathBuf,
    pub(crate) index_path: PathBuf,
    storage: Arc<dyn Storage>,
    view: Mutex<Option<Arc<SealedView>>>,
}

/// The bytes of a sealed segment and its index.
#[derive(Debug)]
pub(crate) struct SealedView {
    pub(crate) header: SegmentHeader,
    pub(crate) data: ReadView,
    index: IndexData,
}

#[derive(Debug)]
enum IndexData {
    Mapped(ReadView),
    Rebuilt(Vec<IndexEntry>),
}

impl SealedSegment {
    pub(crate) fn new(storage: Arc<dyn Storage>, dir: &Path, base_offset: u64) -> SealedSegment {
        SealedSegment {
            base_offset,
            path: dir.join(segment_file_name(base_offset)),
            index_path: dir.join(index_file_name(base_offset)),
            storage,
            view: Mutex::new(None),
        }
    }

    /// The segment's bytes, mapped on first use.
    pub(crate) fn view(&self) -> Result<Arc<SealedView>> {
        let mut slot = self.view.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(view) = &*slot {
            return Ok(view.clone());
        }
        let data = self.storage.map_read_only(&self.path).map_err(|e| Error::io("map segment", &self.path, e))?;
        let header = SegmentHeader::decode(&data).map_err(|e| header_error(&self.path, e))?;
        if header.base_offset != self.base_offset {
            return Err(Error::Corrupt { file: self.path.clone(), position: 16, kind: CorruptionKind::WrongSegment });
        }
        let index = match self.storage.map_read_only(&self.index_path) {
            Ok(bytes) if index::header_matches(&bytes, header.base_offset, header.segment_id) => {
                IndexData::Mapped(bytes)
            }
            _ => IndexData::Rebuilt(self.rebuild_index(&header, &data)),
        };
        let view = Arc::new(SealedView { header, data, index });
        *slot = Some(view.clone());
        Ok(view)
    }

    /// Forgets the mapped view, after the file under this name was replaced (compaction): the next use maps the new
    /// file. Readers holding the old view keep reading the old file.
    pub(crate) fn forget_view(&self) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The byte position to start reading at for `offset`, checked against the frame it points to. A stale or
    /// damaged index is rebuilt from the segment.
    pub(crate) fn position_for(&self, offset: u64) -> Result<(Arc<SealedView>, u64)> {
        let view = self.view()?;
        if let Some(position) = view.checked_position(offset) {
            return Ok((view, position));
        }
        tracing::info!(path = %self.index_path.display(), "segment index is stale or damaged; rebuilding it");
        let entries = self.rebuild_index(&view.header, &view.data);
        let view =
            Arc::new(SealedView { header: view.header, data: view.data.clone(), index: IndexData::Rebuilt(entries) });
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(view.clone());
        let position = view.checked_position(offset).unwrap_or(SEGMENT_HEADER_BYTES as u64);
        Ok((view, position))
    }

    /// Scans the segment and writes a new index file (atomically, by rename; not fsynced, as it is a cache).
    fn rebuild_index(&self, header: &SegmentHeader, data: &[u8]) -> Vec<IndexEntry> {
        let entries = index_frames(data, header);
        let mut bytes = index::encode_header(header.base_offset, header.segment_id).to_vec();
        for entry in &entries {
            bytes.extend_from_slice(&index::encode_entry(header.segment_id, *entry));
        }
        let temp = self.index_path.with_extension("idx.tmp");
        let result = (|| -> std::io::Result<()> {
            let _ = self.storage.remove_file(&temp);
            let file = self.storage.open_file(&temp, OpenMode::CreateNew)?;
            file.write_all_at(&bytes, 0)?;
            self.storage.rename(&temp, &self.index_path)
        })();
        if let Err(error) = result {
            tracing::warn!(path = %self.index_path.display(), %error, "cannot write rebuilt index");
        }
        entries
    }
}

/// Index entries for the frames of a sealed segment (increasing offsets, gaps allowed), by the index cadence.
fn index_frames(data: &[u8], header: &SegmentHeader) -> Vec<IndexEntry> {
    let mut entries = Vec::new();
    let mut cadence = IndexCadence::new();
    let mut position = SEGMENT_HEADER_BYTES;
    let mut min_offset = header.base_offset;
    let crc = CrcSeed::new(header.segment_id);
    while position < data.len() {
        let Ok(frame) = record::decode(&data[position..], &crc) else {
            break;
        };
        if frame.offset < min_offset || frame.offset - header.base_offset > u64::from(u32::MAX) {
            break;
        }
        if cadence.take(position as u64) {
            entries
                .push(IndexEntry { rel_offset: (frame.offset - header.base_offset) as u32, position: position as u32 });
        }
        min_offset = frame.offset + 1;
        position += frame.len_bytes;
    }
    entries
}

impl SealedView {
    fn entry_count(&self) -> usize {
        match &self.index {
            IndexData::Mapped(bytes) => index::entry_count(bytes.len()),
            IndexData::Rebuilt(entries) => entries.len(),
        }
    }

    fn entry(&self, n: usize) -> Option<IndexEntry> {
        match &self.index {
            IndexData::Mapped(bytes) => index::decode_entry(bytes, self.header.segment_id, n),
            IndexData::Rebuilt(entries) => entries.get(n).copied(),
        }
    }

    /// The indexed position for `offset`, if the index entry is intact and points at the frame it names.
    fn checked_position(&self, offset: u64) -> Option<u64> {
        let rel = offset.saturating_sub(self.header.base_offset);
        let found = index::search(self.entry_count(), rel, |n| self.entry(n)).ok()?;
        let Some(entry) = found else {
            return Some(SEGMENT_HEADER_BYTES as u64);
        };
        let frame =
            record::decode(self.data.get(entry.position as usize..)?, &CrcSeed::new(self.header.segment_id)).ok()?;
        (frame.offset == self.header.base_offset + u64::from(entry.rel_offset)).then_some(u64::from(entry.position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = SegmentHeader { base_offset: 42, segment_id: 9, created_ms: 1 };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
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
        let mut bytes = SegmentHeader { base_offset: 0, segment_id: 9, created_ms: 1 }.encode();
        bytes[8] = 2;
        let crc = crc32fast::hash(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&bytes), Err(HeaderError::UnsupportedVersion(2)));
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
