//! A sealed segment: cut to its last frame, fsynced, and never written again. Compaction may replace the file under
//! its name (a new file, renamed over it) and cleanup may unlink it; neither touches an open handle's inode, so a
//! reader holding a [`SealedFile`] reads one consistent file to its end.
//!
//! Nothing about a sealed segment is kept open or in memory between reads: [`SealedSegment::open`] opens the file
//! for each reader that needs it, so the number of sealed segments is bounded by the disk, not by file descriptors
//! or `vm.max_map_count`. The file is read with `pread` (see `read`), never mapped.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::format::{
    header_error, index_file_name, segment_file_name, SegmentHeader, SEGMENT_FILE_BYTES_MAX, SEGMENT_HEADER_BYTES,
};
use super::read::{frame_at_position, FrameReader, Next};
use super::walk::Order;
use crate::error::{io_err, CorruptionKind, Error, Result};
use crate::index::{self, IndexCadence, IndexEntry, RunningMax, INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES};
use crate::limits::INDEX_INTERVAL_BYTES;
use crate::storage::{read_range, OpenMode, Storage, StorageFile};

/// A sealed segment of the log, by name.
#[derive(Debug)]
pub(crate) struct SealedSegment {
    pub(crate) base_offset: u64,
    pub(crate) path: PathBuf,
    pub(crate) index_path: PathBuf,
    storage: Arc<dyn Storage>,
    /// See [`SealedSegment::max_timestamp_ms`].
    max_timestamp_ms: OnceLock<TimeBound>,
}

/// What a time lookup knows of a sealed segment: an upper bound of its frames' greatest timestamp (`None`: no frame;
/// `u64::MAX`: not known), and whether its index was usable (if not, the owner rebuilds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeBound {
    pub(crate) max_ms: Option<u64>,
    pub(crate) index_usable: bool,
}

/// An open sealed segment file: its header, its handle, and its length when it was opened.
#[derive(Debug, Clone)]
pub(crate) struct SealedFile {
    pub(crate) header: SegmentHeader,
    pub(crate) file: Arc<dyn StorageFile>,
    pub(crate) len_bytes: u64,
}

impl SealedFile {
    /// A reader of this file's frames from `position` (where the frame with offset `offset`, or the first at or
    /// after it, starts) to the end.
    pub(crate) fn frames_from(&self, position: u64, offset: u64) -> FrameReader {
        let position = position.min(self.len_bytes);
        FrameReader::new(self.file.clone(), self.header.segment_id, Order::Increasing, position, self.len_bytes, offset)
    }

    /// A reader of all of this file's frames.
    pub(crate) fn frames(&self) -> FrameReader {
        self.frames_from(SEGMENT_HEADER_BYTES as u64, self.header.base_offset)
    }
}

impl SealedSegment {
    pub(crate) fn new(storage: Arc<dyn Storage>, dir: &Path, base_offset: u64) -> SealedSegment {
        SealedSegment {
            base_offset,
            path: dir.join(segment_file_name(base_offset)),
            index_path: dir.join(index_file_name(base_offset)),
            storage,
            max_timestamp_ms: OnceLock::new(),
        }
    }

    /// Opens the file under the segment's name and checks its header. A missing file is `Error::Io` with
    /// `ErrorKind::NotFound` (see [`Error::is_not_found`]).
    pub(crate) fn open(&self) -> Result<SealedFile> {
        let file =
            self.storage.open_file(&self.path, OpenMode::ReadOnly).map_err(io_err("open segment", &self.path))?;
        let len_bytes = file.len_bytes().map_err(io_err("read segment length", &self.path))?;
        let head = read_range(file.as_ref(), 0, SEGMENT_HEADER_BYTES).map_err(io_err("read segment", &self.path))?;
        let header = SegmentHeader::decode(&head).map_err(|e| header_error(&self.path, e))?;
        if header.base_offset != self.base_offset {
            return Err(Error::Corrupt { file: self.path.clone(), position: 16, kind: CorruptionKind::WrongSegment });
        }
        if len_bytes > SEGMENT_FILE_BYTES_MAX {
            return Err(Error::Corrupt { file: self.path.clone(), position: 0, kind: CorruptionKind::BadLength });
        }
        Ok(SealedFile { header, file, len_bytes })
    }

    /// Opens the segment for the log's cache of open segments. Its index is loaded by the first lookup that needs
    /// it, then kept: a later lookup (a reader entering the segment, a group reading one message to deliver it
    /// again) costs a search in memory and one frame check, not opens and a binary search of reads. A reader that
    /// starts at the segment's first frame (the first read after an open, a reader moving on from the segment
    /// before) never reads the index.
    pub(crate) fn open_indexed(&self) -> Result<OpenSealed> {
        let sealed = self.open()?;
        Ok(OpenSealed {
            sealed,
            storage: self.storage.clone(),
            index_path: self.index_path.clone(),
            index: OnceLock::new(),
        })
    }
}

/// A sealed segment's index file, if its header names exactly this segment file, and how many whole entries it
/// holds (not yet checked).
fn open_index(storage: &dyn Storage, index_path: &Path, sealed: &SealedFile) -> Option<(Arc<dyn StorageFile>, usize)> {
    let header = &sealed.header;
    let file = storage.open_file(index_path, OpenMode::ReadOnly).ok()?;
    let head = read_range(file.as_ref(), 0, INDEX_HEADER_BYTES).ok()?;
    if !index::header_matches(&head, header.base_offset, header.segment_id) {
        return None;
    }
    let count = index::entry_count(usize::try_from(file.len_bytes().ok()?).ok()?);
    Some((file, count))
}

/// The index file's entries, each checked (checksum, order, within the segment); `None` if the index is missing,
/// belongs to another file, or has a damaged entry. At most what the segment's length allows is read.
fn load_index(storage: &dyn Storage, index_path: &Path, sealed: &SealedFile) -> Option<Vec<IndexEntry>> {
    let header = &sealed.header;
    let (file, count) = open_index(storage, index_path, sealed)?;
    if count as u64 > sealed.len_bytes / INDEX_INTERVAL_BYTES + 1 {
        return None; // longer than its segment allows: damaged
    }
    let bytes = read_range(file.as_ref(), INDEX_HEADER_BYTES as u64, count * INDEX_ENTRY_BYTES).ok()?;
    let positions = SEGMENT_HEADER_BYTES as u64..sealed.len_bytes;
    let entries = index::decode_run(&bytes, header.segment_id, positions, 0..u64::MAX);
    (entries.len() == count).then_some(entries) // any entry failing its checks makes the whole index unusable
}

impl SealedSegment {
    /// Writes the segment's index anew from its frames (maintenance, for an index a reader found unusable).
    pub(crate) fn rebuild_index(&self) -> Result<()> {
        let sealed = self.open()?;
        let entries = index_entries(&sealed).map_err(io_err("read segment", &self.path))?;
        write_index(self.storage.as_ref(), &self.index_path, &sealed.header, &entries)
            .map_err(io_err("write segment index", &self.index_path))?;
        tracing::info!(path = %self.index_path.display(), "rebuilt segment index");
        Ok(())
    }
}

/// An open sealed segment and its index, loaded at the first lookup that needs it (`None` inside: unusable); see
/// [`SealedSegment::open_indexed`].
#[derive(Debug)]
pub(crate) struct OpenSealed {
    pub(crate) sealed: SealedFile,
    storage: Arc<dyn Storage>,
    index_path: PathBuf,
    index: OnceLock<Option<Vec<IndexEntry>>>,
}

impl OpenSealed {
    /// Where to start reading for `offset`: the position and offset of the greatest indexed frame at or below it
    /// (checked against the frame it points at), or of the first frame when the index is unusable
    /// ([`Start::index_usable`] is false then: the owner rebuilds it, see [`SealedSegment::rebuild_index`]; the
    /// read path never writes).
    pub(crate) fn start_for(&self, offset: u64) -> Start {
        let header = &self.sealed.header;
        let first = Start { position: SEGMENT_HEADER_BYTES as u64, offset: header.base_offset, index_usable: true };
        let rel = offset.saturating_sub(header.base_offset);
        if rel == 0 {
            return first; // the first frame has no entry: no index needed
        }
        let index = self.index.get_or_init(|| load_index(self.storage.as_ref(), &self.index_path, &self.sealed));
        let Some(entries) = index else { return Start { index_usable: false, ..first } };
        let before = entries.partition_point(|e| u64::from(e.rel_offset) <= rel);
        let Some(entry) = before.checked_sub(1).map(|i| entries[i]) else { return first };
        let (position, offset) = (u64::from(entry.position), header.base_offset + u64::from(entry.rel_offset));
        match frame_at_position(self.sealed.file.as_ref(), position, header.segment_id) {
            Ok(Some((found, _))) if found == offset => Start { position, offset, index_usable: true },
            _ => Start { index_usable: false, ..first },
        }
    }
}

impl OpenSealed {
    /// Where a time lookup starts in this segment: the offset of the last indexed frame before which every frame
    /// is earlier than `time_ms` (the segment's first offset if none is, or if the index is unusable).
    pub(crate) fn offset_for_time_start(&self, time_ms: u64) -> u64 {
        let base = self.sealed.header.base_offset;
        let index = self.index.get_or_init(|| load_index(self.storage.as_ref(), &self.index_path, &self.sealed));
        let Some(entries) = index else { return base };
        let i = entries.partition_point(|e| index::all_before_earlier(e, time_ms));
        base + i.checked_sub(1).map_or(0, |i| u64::from(entries[i].rel_offset))
    }
}

impl SealedSegment {
    /// An upper bound of the greatest timestamp of the segment's frames ([`TimeBound`]), cached after the first
    /// call: its index's last entry and the frames after it (at most about
    /// `INDEX_INTERVAL_BYTES`), or every frame when the index is unusable. Compaction only removes frames, so the
    /// bound stays one.
    pub(crate) fn max_timestamp_ms(&self) -> Result<TimeBound> {
        if let Some(bound) = self.max_timestamp_ms.get() {
            return Ok(*bound);
        }
        let sealed = self.open()?;
        let last = last_index_entry(self.storage.as_ref(), &self.index_path, &sealed);
        let (mut running, mut frames) = match last {
            Some(entry) => (
                RunningMax::after(&entry),
                sealed.frames_from(u64::from(entry.position), sealed.header.base_offset + u64::from(entry.rel_offset)),
            ),
            None => (RunningMax::EMPTY, sealed.frames()),
        };
        loop {
            match frames.next().map_err(io_err("read segment", &self.path))? {
                Next::Frame { frame, .. } => running.add(frame.timestamp_ms),
                Next::Stop { position, .. } => {
                    if position < sealed.len_bytes {
                        // Damage before the end, salvage's holes, or a stale last entry: what lies behind is not
                        // known.
                        running = RunningMax::Unknown;
                    }
                    break;
                }
            }
        }
        let max_ms = match running {
            RunningMax::AtMost(max) => max,
            RunningMax::Unknown => Some(u64::MAX),
        };
        let bound = TimeBound { max_ms, index_usable: last.is_some() };
        Ok(*self.max_timestamp_ms.get_or_init(|| bound))
    }
}

/// The last entry of a sealed segment's index, checked (header, checksum, within the segment); `None` if unusable.
fn last_index_entry(storage: &dyn Storage, index_path: &Path, sealed: &SealedFile) -> Option<IndexEntry> {
    let header = &sealed.header;
    let (file, count) = open_index(storage, index_path, sealed)?;
    let at = index::entry_position(count.checked_sub(1)?)?;
    let bytes = read_range(file.as_ref(), at as u64, INDEX_ENTRY_BYTES).ok()?;
    let entry = index::decode_entry_bytes(&bytes, header.segment_id)?;
    let inside = (SEGMENT_HEADER_BYTES as u64..sealed.len_bytes).contains(&u64::from(entry.position));
    // The frame it names must be there: an entry left by a file this one replaced does not describe its frames.
    let offset = header.base_offset + u64::from(entry.rel_offset);
    let found = frame_at_position(sealed.file.as_ref(), u64::from(entry.position), header.segment_id).ok()??;
    (inside && found.0 == offset).then_some(entry)
}

/// Where a reader starts in a sealed segment; see [`OpenSealed::start_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    pub(crate) position: u64,
    pub(crate) offset: u64,
    pub(crate) index_usable: bool,
}

/// The index entries of a sealed segment's frames (by the index cadence), up to its end or its first damage.
fn index_entries(sealed: &SealedFile) -> io::Result<Vec<IndexEntry>> {
    let mut entries = Vec::new();
    let mut cadence = IndexCadence::after(SEGMENT_HEADER_BYTES as u64);
    let mut running = RunningMax::EMPTY;
    let mut frames = sealed.frames();
    while let Next::Frame { position, frame } = frames.next()? {
        let Ok(rel_offset) = u32::try_from(frame.offset - sealed.header.base_offset) else { break };
        if cadence.take(position) {
            entries.push(IndexEntry { rel_offset, position: position as u32, max_seconds_before: running.seconds() });
        }
        running.add(frame.timestamp_ms);
    }
    Ok(entries)
}

/// Writes a sealed segment's index file anew, atomically (a temporary file renamed over it), not fsynced: the index
/// is a cache, checked before use. A failure costs lookup speed only; the caller decides whether to say so.
pub(crate) fn write_index(
    storage: &dyn Storage,
    index_path: &Path,
    header: &SegmentHeader,
    entries: &[IndexEntry],
) -> io::Result<()> {
    let bytes = index::encode_file(header.base_offset, header.segment_id, entries);
    let temp = index_path.with_extension("idx.tmp");
    let result = (|| -> io::Result<()> {
        let _ = storage.remove_file(&temp);
        let file = storage.open_file(&temp, OpenMode::CreateNew)?;
        file.write_all_at(&bytes, 0)?;
        storage.rename(&temp, index_path)
    })();
    if result.is_err() {
        let _ = storage.remove_file(&temp);
    }
    result
}
