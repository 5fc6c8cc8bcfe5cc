//! The segment being written: appending frames (through an optional write buffer), its index entries, sealing.
//!
//! Only the log, under its lock, touches an [`ActiveSegment`]. Frames are written at `write_pos` and never
//! rewritten; sealing cuts the file to its last frame, after which it is a sealed segment (`sealed`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::format::{index_file_name, segment_file_name, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::error::{Error, Result};
use crate::index::{self, IndexCadence, IndexEntry, RunningMax, INDEX_ENTRY_BYTES, INDEX_HEADER_BYTES};
use crate::record::CrcSeed;
use crate::storage::{read_range, OpenMode, Storage, StorageFile};

/// Index entries buffered in memory before they are written to the index file.
const INDEX_FLUSH_ENTRIES: usize = 64;
/// Capacity the frame buffer keeps between writes (more if the write buffer is larger): a big batch grows it, and
/// it gives the memory back after.
const ENCODE_BUFFER_KEEP_BYTES: usize = 1024 * 1024;

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
    /// Entries in the index file before `index_entries[0]`: left on disk by recovery, which reads only the newest
    /// (open time must not grow with the segment), and read by the first lookup below `index_entries`.
    index_entries_before: usize,
    index_prefix: OnceLock<IndexPrefix>,
    /// A damaged index header found by `index_prefix` was written again.
    index_header_repaired: bool,
    index_entries: Vec<IndexEntry>,
    /// How many of `index_entries` are in the index file.
    index_entries_written: usize,
    cadence: IndexCadence,
    /// The greatest timestamp of the segment's frames so far: what the next index entry carries.
    running_max: RunningMax,
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
    /// Disk space to reserve (fallocate) before the next write: a reopened segment reserves its space at its
    /// first write, not at open (a clean close gave the reservation back; see `trim`).
    reserve_before_write: Option<u64>,
    /// A failed write's bytes were cleared (`scrub_failed_write`) and no fsync of this segment is known to have made
    /// the clearing durable: the close must fsync even where every frame is covered.
    scrubbed_unsynced: bool,
    /// Where the next background writeback starts (see `start_writeback_if_due`).
    writeback_pos: u64,
}

/// Bytes written to a segment between two requests to start writing them back (`sync_file_range`).
const WRITEBACK_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// The page size writeback ranges are aligned to (4 KiB pages; a larger page only makes a range's last page shared).
const WRITEBACK_PAGE_BYTES: u64 = 4096;

impl ActiveSegment {
    /// Creates a new segment file with its header (naming `previous_base`, the segment before it, if any), fsynced,
    /// and a fresh index; with `reserve_bytes`, that much disk
    /// space is reserved for it first (`Preallocation::Reserve`). The caller fsyncs the directory before
    /// acknowledging anything written to it. On failure, removes what it created.
    pub(crate) fn create(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: u64,
        previous_base: Option<u64>,
        reserve_bytes: Option<u64>,
    ) -> Result<ActiveSegment> {
        let path = dir.join(segment_file_name(base_offset));
        let header = SegmentHeader {
            base_offset,
            segment_id: crate::ids::new_file_id(),
            created_ms: crate::clock::now_ms(),
            previous_base,
        };
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
            if let Some(size_bytes) = reserve_bytes {
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
            index_entries_before: 0,
            index_prefix: OnceLock::new(),
            index_header_repaired: false,
            index_entries: Vec::new(),
            index_entries_written: 0,
            cadence: IndexCadence::after(SEGMENT_HEADER_BYTES as u64),
            running_max: RunningMax::EMPTY,
            write_pos: SEGMENT_HEADER_BYTES as u64,
            next_offset: base_offset,
            pending: Vec::new(),
            written_pos: SEGMENT_HEADER_BYTES as u64,
            written_offset: base_offset,
            reserve_before_write: None,
            scrubbed_unsynced: false,
            writeback_pos: 0,
        };
        segment.rewrite_index_file(storage);
        Ok(segment)
    }

    /// An existing segment, recovered: frames end at `write_pos`, the next offset is `next_offset`, and
    /// `index_entries` are verified entries (the last one at `cadence`'s position), after `index_entries_before`
    /// entries of the index file that were not read.
    /// With `reserve_bytes`, that much disk space is reserved before the first write.
    pub(crate) fn reopen(
        storage: &dyn Storage,
        dir: &Path,
        header: SegmentHeader,
        file: Arc<dyn StorageFile>,
        recovered: RecoveredTail,
        reserve_bytes: Option<u64>,
    ) -> ActiveSegment {
        let mut segment = ActiveSegment {
            header,
            crc: CrcSeed::new(header.segment_id),
            path: dir.join(segment_file_name(header.base_offset)),
            file,
            index_path: dir.join(index_file_name(header.base_offset)),
            index_file: None,
            index_entries_before: recovered.index_entries_before,
            index_prefix: OnceLock::new(),
            index_header_repaired: false,
            index_entries: recovered.index_entries,
            index_entries_written: 0,
            cadence: recovered.cadence,
            running_max: recovered.running_max,
            write_pos: recovered.write_pos,
            next_offset: recovered.next_offset,
            pending: Vec::new(),
            written_pos: recovered.write_pos,
            written_offset: recovered.next_offset,
            reserve_before_write: reserve_bytes.map(|b| b.max(recovered.write_pos)),
            scrubbed_unsynced: false,
            // What recovery read is on disk or in the page cache as it is: written back by whoever syncs it.
            writeback_pos: recovered.write_pos - recovered.write_pos % WRITEBACK_PAGE_BYTES,
        };
        if segment.index_entries_before + recovered.index_entries_on_disk == 0 {
            segment.rewrite_index_file(storage);
        } else {
            segment.continue_index_file(storage, recovered.index_entries_on_disk);
        }
        segment
    }

    /// Opens the index file, whose first `index_entries_before + on_disk` entries are in place, and writes the rest
    /// after them (cutting what followed: entries of frames recovery cut, or damage). After a clean close that is
    /// nothing: an open writes no index.
    fn continue_index_file(&mut self, storage: &dyn Storage, on_disk: usize) {
        debug_assert!(on_disk <= self.index_entries.len());
        let kept = self.index_entries_before + on_disk;
        let result = (|| -> std::io::Result<Arc<dyn StorageFile>> {
            let file = storage.open_file(&self.index_path, OpenMode::ReadWrite)?;
            let mut bytes = Vec::with_capacity((self.index_entries.len() - on_disk) * INDEX_ENTRY_BYTES);
            for entry in &self.index_entries[on_disk..] {
                bytes.extend_from_slice(&index::encode_entry(self.header.segment_id, *entry));
            }
            let at = index_entry_position(kept);
            if file.len_bytes()? > at {
                // Entries past what recovery kept (a tail it cut) go first, and durably: a later power cut must not
                // bring them back beside frames written since, whose times they do not describe.
                file.set_len(at)?;
                file.sync_data()?;
            }
            if !bytes.is_empty() {
                file.write_all_at(&bytes, at)?;
            }
            Ok(file)
        })();
        self.adopt_index_file(result);
    }

    /// Keeps the index file a (re)write opened, every entry in memory now in it; or, on failure, none (the index is
    /// a cache: failures are logged and cost only lookup speed).
    fn adopt_index_file(&mut self, result: std::io::Result<Arc<dyn StorageFile>>) {
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
        self.adopt_index_file(result);
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
        frames: (&[usize], &[u64]),
        buffer_bytes: usize,
    ) -> std::io::Result<()> {
        let (frame_starts, frame_times) = frames;
        debug_assert!(!frame_starts.is_empty() && frame_starts[0] == 0);
        debug_assert_eq!(frame_starts.len(), frame_times.len(), "a timestamp per frame");
        debug_assert_eq!(from as u64, self.write_pos - self.written_pos, "frames before `from` are the buffered ones");
        let written = self.pending.len() > buffer_bytes;
        if written {
            self.reserve();
            if let Err(error) = self.file.write_all_at(&self.pending, self.written_pos) {
                self.scrub_failed_write(self.pending.len() as u64);
                self.pending.truncate(from);
                return Err(error);
            }
        }
        let new_bytes = self.pending.len() - from;
        for (i, (&start, &timestamp_ms)) in frame_starts.iter().zip(frame_times).enumerate() {
            let position = self.write_pos + start as u64;
            if self.cadence.take(position) {
                let rel_offset = (self.next_offset - self.header.base_offset) as u32 + i as u32;
                let max_seconds_before = self.running_max.seconds();
                self.index_entries.push(IndexEntry { rel_offset, position: position as u32, max_seconds_before });
            }
            self.running_max.add(timestamp_ms);
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

    /// Removes what a failed write (a full disk) may have left past `written_pos`: whole, valid frames the caller
    /// was told are not appended. A crash before the next write would otherwise bring them back as the log's tail,
    /// and a later, shorter write would leave the rest of them behind it, in sequence. Best effort: a file that
    /// the write extended (no preallocation) is cut back; preallocated space is zeroed over what was attempted.
    fn scrub_failed_write(&mut self, attempted_bytes: u64) {
        self.scrubbed_unsynced = true;
        let end = self.written_pos + attempted_bytes;
        let scrubbed = match self.file.len_bytes() {
            Ok(len) if len <= end => self.file.set_len(self.written_pos.min(len)),
            Ok(_) => self.file.write_all_at(&vec![0; attempted_bytes as usize], self.written_pos),
            Err(error) => Err(error),
        };
        if let Err(error) = scrubbed {
            tracing::warn!(path = %self.path.display(), %error, "cannot clear a failed write's bytes");
        }
    }

    /// Empties the buffer once its frames are in the file.
    fn mark_written(&mut self) {
        self.pending.clear();
        self.written_pos = self.write_pos;
        self.written_offset = self.next_offset;
        self.start_writeback_if_due();
    }

    /// Starts writing the segment's full pages to disk every [`WRITEBACK_CHUNK_BYTES`], in the background: the
    /// fsync that seals a full segment (in every durability mode, so that what survives a crash is a prefix of
    /// the log) then waits for the last chunk only, not for the whole segment, which stalled the append that
    /// rolled. Pages are taken whole below the write position, so that none being written is written again.
    fn start_writeback_if_due(&mut self) {
        let end = self.written_pos - self.written_pos % WRITEBACK_PAGE_BYTES;
        if end < self.writeback_pos + WRITEBACK_CHUNK_BYTES {
            return;
        }
        if let Err(error) = self.file.start_writeback(self.writeback_pos, end - self.writeback_pos) {
            tracing::debug!(path = %self.path.display(), %error, "cannot start writing the segment back");
        }
        self.writeback_pos = end;
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
        self.reserve();
        self.file.write_all_at(&self.pending, self.written_pos)?;
        self.mark_written();
        Ok(())
    }

    /// Reserves the space a reopened segment has not reserved yet, best effort: on a disk without that much room
    /// the segment grows as written instead (as with `Preallocation::Grow`), so that writes that fit still land;
    /// what a partial reservation took past the written frames is given back.
    fn reserve(&mut self) {
        let Some(size_bytes) = self.reserve_before_write.take() else { return };
        if let Err(error) = self.file.allocate(size_bytes) {
            tracing::warn!(path = %self.path.display(), %error, "cannot reserve the segment's space; it grows as written");
            if self.file.len_bytes().is_ok_and(|len| len > self.written_pos) {
                let _ = self.file.set_len(self.written_pos);
            }
        }
    }

    /// Writes buffered index entries to the index file (not fsynced: the index is a cache). Entries of frames
    /// still in the write buffer wait: an entry is written only once its frame is.
    pub(crate) fn flush_index(&mut self) {
        let Some(file) = &self.index_file else { return };
        if self.index_prefix.get().is_some_and(|p| p.header_damaged) && !self.index_header_repaired {
            let header = index::encode_header(self.header.base_offset, self.header.segment_id);
            match file.write_all_at(&header, 0) {
                Ok(()) => self.index_header_repaired = true,
                Err(error) => tracing::warn!(path = %self.index_path.display(), %error, "cannot repair index header"),
            }
        }
        // Searched among the entries not yet flushed only, and not at all when the first of them is still
        // buffered: with a write buffer, every append past `INDEX_FLUSH_ENTRIES` pending entries calls this, and a
        // search of the whole index each time cost a seventh of a buffered append.
        let unflushed = &self.index_entries[self.index_entries_written..];
        if unflushed.first().is_none_or(|e| u64::from(e.position) >= self.written_pos) {
            return;
        }
        let pending = &unflushed[..unflushed.partition_point(|e| u64::from(e.position) < self.written_pos)];
        let mut bytes = Vec::with_capacity(pending.len() * INDEX_ENTRY_BYTES);
        for entry in pending {
            bytes.extend_from_slice(&index::encode_entry(self.header.segment_id, *entry));
        }
        let position = index_entry_position(self.index_entries_before + self.index_entries_written);
        match file.write_all_at(&bytes, position) {
            Ok(()) => self.index_entries_written += pending.len(),
            Err(error) => {
                tracing::warn!(path = %self.index_path.display(), %error, "cannot write index entries")
            }
        }
    }

    /// Where to start reading for `offset`: the position and offset of the greatest indexed frame at or below it,
    /// or of the first frame.
    pub(crate) fn position_for(&self, offset: u64) -> (u64, u64) {
        let rel = offset.saturating_sub(self.header.base_offset);
        let below = |entries: &[IndexEntry]| {
            let i = entries.partition_point(|e| u64::from(e.rel_offset) <= rel);
            i.checked_sub(1).map(|i| entries[i])
        };
        let entry = match below(&self.index_entries) {
            None if rel > 0 && self.index_entries_before > 0 => below(self.index_prefix()),
            entry => entry,
        };
        match entry {
            None => (SEGMENT_HEADER_BYTES as u64, self.header.base_offset),
            Some(entry) => (u64::from(entry.position), self.header.base_offset + u64::from(entry.rel_offset)),
        }
    }

    /// Where a time lookup starts in this segment: the offset of the last indexed frame below `visible_pos` (what
    /// readers can see) before which every frame is earlier than `time_ms` (the segment's first offset if none is).
    pub(crate) fn offset_for_time_start(&self, time_ms: u64, visible_pos: u64) -> u64 {
        let last_before = |entries: &[IndexEntry]| {
            let i = entries
                .partition_point(|e| index::all_before_earlier(e, time_ms) && u64::from(e.position) < visible_pos);
            i.checked_sub(1).map(|i| entries[i])
        };
        let entry = match last_before(&self.index_entries) {
            None if self.index_entries_before > 0 => last_before(self.index_prefix()),
            entry => entry,
        };
        self.header.base_offset + entry.map_or(0, |e| u64::from(e.rel_offset))
    }

    /// The index entries recovery left on disk (`index_entries_before`), read and checked once: each passes its
    /// checksum (which covers the segment id) and lies, in increasing order, below the first entry in memory. They
    /// are read up to the first that does not (a shorter prefix only makes lookups below it scan further; the
    /// segment's index is rebuilt once it is sealed, see [`index_needs_rebuild`](Self::index_needs_rebuild)). A
    /// read that fails is tried again at the next lookup. The read happens under the log's lock, once per open
    /// (at most `segment_bytes_max / INDEX_INTERVAL_BYTES` entries: 256 KiB for 64 MiB segments).
    fn index_prefix(&self) -> &[IndexEntry] {
        if let Some(prefix) = self.index_prefix.get() {
            return &prefix.entries;
        }
        let Some(file) = &self.index_file else { return &[] };
        let bytes = match read_range(file.as_ref(), 0, index_entry_position(self.index_entries_before) as usize) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(path = %self.index_path.display(), %error, "cannot read segment index; lookups scan");
                return &[];
            }
        };
        let prefix = decode_prefix(&bytes, &self.header, self.index_entries.first().copied());
        if prefix.header_damaged || prefix.entries.len() < self.index_entries_before {
            tracing::warn!(path = %self.index_path.display(), "segment index is damaged; it is rebuilt once sealed");
        }
        &self.index_prefix.get_or_init(|| prefix).entries
    }

    /// Whether the index file needs a rebuild from the frames: a lookup found damaged entries in it (its header
    /// alone is written again by `flush_index`). The log notes it for maintenance when the segment is sealed.
    pub(crate) fn index_needs_rebuild(&self) -> bool {
        self.index_prefix.get().is_some_and(|p| p.entries.len() < self.index_entries_before)
    }

    /// Seals the segment: index written, file cut to its last frame and fsynced. It is never written again.
    pub(crate) fn seal(&mut self) -> std::io::Result<()> {
        self.reserve_before_write = None; // cut right after: nothing to reserve
        self.write_pending()?;
        self.flush_index();
        self.file.set_len(self.write_pos)?;
        self.file.sync_all()
    }

    /// Cuts preallocated space on a clean close, so that the next open has no zeros to look behind, and makes the
    /// segment durable. `durable_pos` is the end of what an fsync already covered: a close that finds nothing past it,
    /// nothing to cut and no cleared failed write (a queue opened to read, or whose appends were all synced) syncs
    /// nothing.
    pub(crate) fn trim(&mut self, durable_pos: u64) -> std::io::Result<()> {
        debug_assert!(durable_pos <= self.written_pos);
        self.reserve_before_write = None; // cut right after: nothing to reserve
        self.write_pending()?;
        self.flush_index();
        let cut = self.file.len_bytes()? != self.write_pos;
        if cut {
            self.file.set_len(self.write_pos)?;
        }
        if cut || self.scrubbed_unsynced || self.write_pos > durable_pos {
            self.file.sync_all()?;
            self.scrubbed_unsynced = false;
        }
        Ok(())
    }
}

/// The entries of an index file before the ones recovery read, as far as they are valid.
#[derive(Debug)]
struct IndexPrefix {
    entries: Vec<IndexEntry>,
    /// The file's header is not this segment's (damage: each entry's checksum, not the header, ties it to the
    /// segment); `flush_index` writes it again.
    header_damaged: bool,
}

/// Decodes the start of an index file (`bytes`: the header, then entries) up to its first entry that fails its
/// checksum or does not lie, in increasing order, below `limit` (the first entry recovery read).
fn decode_prefix(bytes: &[u8], header: &SegmentHeader, limit: Option<IndexEntry>) -> IndexPrefix {
    let header_damaged = !index::header_matches(bytes, header.base_offset, header.segment_id);
    let limit = limit.map_or((u32::MAX, u32::MAX), |e| (e.rel_offset, e.position));
    // The first frame has no entry: relative offsets start at 1.
    let (positions, rel_offsets) = (SEGMENT_HEADER_BYTES as u64..u64::from(limit.1), 1..u64::from(limit.0));
    let entry_bytes = bytes.get(INDEX_HEADER_BYTES..).unwrap_or_default();
    IndexPrefix { entries: index::decode_run(entry_bytes, header.segment_id, positions, rel_offsets), header_damaged }
}

/// Where entry number `n` starts in an index file (`n` counts entries this segment wrote: it cannot overflow).
fn index_entry_position(n: usize) -> u64 {
    index::entry_position(n).expect("an entry count of one segment") as u64
}

/// What recovery found at the end of the last segment.
#[derive(Debug)]
pub(crate) struct RecoveredTail {
    pub(crate) write_pos: u64,
    pub(crate) next_offset: u64,
    /// Entries in the index file before `index_entries[0]`, not read.
    pub(crate) index_entries_before: usize,
    pub(crate) index_entries: Vec<IndexEntry>,
    /// How many of `index_entries` are in the index file as they are.
    pub(crate) index_entries_on_disk: usize,
    pub(crate) cadence: IndexCadence,
    /// The greatest timestamp of the frames kept (for the entries appends add).
    pub(crate) running_max: RunningMax,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Parts;
    use crate::storage::FsStorage;

    /// Appends `count` frames of a 1 KiB value, unbuffered, as the log does.
    fn append(segment: &mut ActiveSegment, count: usize) {
        let value = [7u8; 1024];
        for _ in 0..count {
            let (crc, offset) = (segment.crc.clone(), segment.next_offset);
            let buf = segment.frame_buffer();
            let from = buf.len();
            crate::record::encode(buf, &crc, offset, 0, 1, Parts::value(&value));
            segment.commit_frames(from, (&[0], &[1]), 0).unwrap();
        }
    }

    #[test]
    fn writeback_is_started_in_whole_page_chunks_behind_the_write_position() {
        let temp = tempfile::tempdir().unwrap();
        let mut segment = ActiveSegment::create(&FsStorage, temp.path(), 0, None, None).unwrap();
        append(&mut segment, 1_000);
        assert_eq!(segment.writeback_pos, 0, "less than a chunk written: nothing started");
        let mut started = Vec::new();
        for _ in 0..20 {
            append(&mut segment, 1_000);
            if started.last() != Some(&segment.writeback_pos) {
                started.push(segment.writeback_pos);
            }
        }
        assert!(started.len() >= 4, "a chunk every 4 MiB of a 21 MiB segment: {started:?}");
        for pair in started.windows(2) {
            assert!(pair[1] - pair[0] >= WRITEBACK_CHUNK_BYTES, "{started:?}");
        }
        assert!(started.iter().all(|&pos| pos % WRITEBACK_PAGE_BYTES == 0 && pos <= segment.written_pos));
    }
}
