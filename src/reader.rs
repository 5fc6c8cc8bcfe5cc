//! Replaying the log in offset order: [`Reader`], returned by [`Queue::read_from`](crate::Queue::read_from).

use std::sync::Arc;

use crate::error::{CorruptionKind, Error, Result};
use crate::log::{Log, Refresh, Source, Window};
use crate::message::{Offset, Record};
use crate::record::{self, CrcSeed, FrameError, FRAME_BYTES_LIMIT};
use crate::segment::find_next_valid;
use crate::storage::{read_up_to, StorageFile};

/// Bytes read at once from the segment being written (sealed segments are mapped instead).
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// An iterator over stored records from some offset on, independent of consumer groups.
///
/// Every frame's checksum is verified; a damaged frame is returned as [`Error::Corrupt`] and ends the iteration
/// (unless the queue was opened with [`RecoveryMode::SkipCorrupt`](crate::RecoveryMode::SkipCorrupt), which skips
/// it). Offsets only increase, with gaps where messages were removed. When the reader has caught up it returns
/// `None`; calling `next` again later returns records appended since.
#[derive(Debug)]
pub struct Reader {
    log: Arc<Log>,
    next_offset: u64,
    cursor: Option<Cursor>,
    skip_corrupt: bool,
    failed: bool,
    skipped_regions: u64,
}

#[derive(Debug)]
struct Cursor {
    window: Window,
    /// The window's segment id as frame checksums use it.
    crc: CrcSeed,
    pos: u64,
    /// Offsets must increase: a frame below this is misplaced.
    min_offset: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

/// What the frame at the cursor turned out to be.
enum Step {
    Record(Record),
    Below,
    Bad(CorruptionKind),
}

impl Cursor {
    fn new(window: Window) -> Cursor {
        Cursor {
            pos: window.start_pos,
            min_offset: window.base_offset,
            crc: CrcSeed::new(window.segment_id),
            window,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    /// Makes `buf` hold the file's bytes `[from, from + len)` (clamped to the visible end).
    fn ensure(&mut self, file: &dyn StorageFile, from: u64, len: usize) -> std::io::Result<()> {
        let buf_end = self.buf_start + self.buf.len() as u64;
        if from >= self.buf_start && from + len as u64 <= buf_end {
            return Ok(());
        }
        let available = (self.window.end_pos - from) as usize;
        let want = len.max(READ_CHUNK_BYTES).min(available);
        self.buf.resize(want, 0);
        let n = read_up_to(file, &mut self.buf, from)?;
        self.buf.truncate(n);
        self.buf_start = from;
        Ok(())
    }

    /// The visible bytes from the cursor on, reading at least `len_hint` of them in if the segment is not mapped.
    fn bytes_from_cursor(&mut self, len_hint: usize) -> std::io::Result<&[u8]> {
        let end = self.window.end_pos;
        let file = match &self.window.source {
            Source::Active(file) => Some(file.clone()),
            Source::Sealed(_) => None,
        };
        match file {
            Some(file) => {
                let len = len_hint.min((end - self.pos) as usize);
                self.ensure(file.as_ref(), self.pos, len)?;
                let start = (self.pos - self.buf_start) as usize;
                Ok(&self.buf[start..])
            }
            None => {
                let Source::Sealed(view) = &self.window.source else { unreachable!("matched above") };
                let end = (end as usize).min(view.data.len());
                Ok(&view.data[(self.pos as usize).min(end)..end])
            }
        }
    }

    fn step(&mut self, want_offset: u64) -> Result<Step> {
        let (crc, min_offset) = (self.crc.clone(), self.min_offset);
        let visible = (self.window.end_pos - self.pos) as usize;
        // A mapped segment hands over every visible byte at once; the file being written is read in chunks, and a
        // frame cut by a chunk's end is read again whole (the length field says how much that takes).
        let mut want = 8;
        loop {
            let bytes = match self.bytes_from_cursor(want) {
                Ok(bytes) => bytes,
                Err(e) => return Err(Error::io("read segment", &self.window.path, e)),
            };
            let have = bytes.len();
            let (len_bytes, offset, record) = match record::decode(bytes, &crc) {
                Ok(frame) if frame.offset < min_offset => return Ok(Step::Bad(CorruptionKind::BadOffset)),
                Ok(frame) => (frame.len_bytes, frame.offset, (frame.offset >= want_offset).then(|| frame.to_record())),
                Err(FrameError::Truncated { need_bytes }) if have < need_bytes && want < need_bytes => {
                    if need_bytes > visible.min(FRAME_BYTES_LIMIT) {
                        return Ok(Step::Bad(CorruptionKind::Truncated));
                    }
                    want = need_bytes;
                    continue;
                }
                Err(FrameError::Truncated { .. }) => return Ok(Step::Bad(CorruptionKind::Truncated)),
                Err(FrameError::Invalid(kind)) => return Ok(Step::Bad(kind)),
            };
            self.pos += len_bytes as u64;
            self.min_offset = offset + 1;
            return Ok(record.map_or(Step::Below, Step::Record));
        }
    }

    /// Moves past a damaged frame to the next valid one in this segment, or to the segment's visible end.
    fn resync(&mut self) -> Result<()> {
        let path = self.window.path.clone();
        let remaining = (self.window.end_pos - self.pos) as usize;
        let (segment_id, min_offset) = (self.window.segment_id, self.min_offset);
        let bytes = self.bytes_from_cursor(remaining).map_err(|e| Error::io("read segment", &path, e))?;
        match find_next_valid(bytes, 1, segment_id, min_offset) {
            Some((skip, _)) => self.pos += skip as u64,
            None => self.pos = self.window.end_pos,
        }
        Ok(())
    }
}

impl Reader {
    pub(crate) fn new(log: Arc<Log>, next_offset: u64, skip_corrupt: bool) -> Reader {
        Reader { log, next_offset, cursor: None, skip_corrupt, failed: false, skipped_regions: 0 }
    }

    /// The offset this reader will look for next (one past the last record returned).
    pub fn next_offset(&self) -> Offset {
        Offset(self.next_offset)
    }

    /// Damaged regions skipped so far (only with [`RecoveryMode::SkipCorrupt`](crate::RecoveryMode::SkipCorrupt)).
    pub fn skipped_regions(&self) -> u64 {
        self.skipped_regions
    }

    fn next_record(&mut self) -> Result<Option<Record>> {
        loop {
            let Some(cursor) = &mut self.cursor else {
                self.cursor = Some(Cursor::new(self.log.window_for(self.next_offset)?));
                continue;
            };
            if cursor.pos < cursor.window.end_pos {
                match cursor.step(self.next_offset)? {
                    Step::Record(record) => {
                        self.next_offset = record.offset.0 + 1;
                        return Ok(Some(record));
                    }
                    Step::Below => continue,
                    Step::Bad(kind) if self.skip_corrupt => {
                        tracing::warn!(path = %cursor.window.path.display(), position = cursor.pos, %kind, "skipping damaged frame");
                        self.skipped_regions += 1;
                        cursor.resync()?;
                        continue;
                    }
                    Step::Bad(kind) => {
                        return Err(Error::Corrupt { file: cursor.window.path.clone(), position: cursor.pos, kind });
                    }
                }
            }
            match self.log.refresh(cursor.window.base_offset, cursor.window.segment_id, cursor.window.end_pos)? {
                Refresh::Grew(end_pos) => cursor.window.end_pos = end_pos,
                Refresh::Sealed(view) => {
                    cursor.window.end_pos = view.data.len() as u64;
                    cursor.window.source = Source::Sealed(view);
                }
                Refresh::Unchanged => return Ok(None),
                Refresh::Replaced => *cursor = Cursor::new(self.log.window_for(self.next_offset)?),
                Refresh::Done => match self.log.window_after(cursor.window.base_offset)? {
                    Some(window) => *cursor = Cursor::new(window),
                    None => return Ok(None),
                },
            }
        }
    }
}

impl Iterator for Reader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(record) => record.map(Ok),
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}
