//! Reading a segment file's frames through a reused buffer, with `pread`: [`FrameReader`].
//!
//! Why not a memory map: a mapped file that shrinks under the mapping (an outside `truncate`), or a page that cannot
//! be read (EIO on bad media, a network file system), raises SIGBUS, which kills the whole process: the owner with
//! all its producers, or `walq verify`, the tool meant to find bad media. A `pread` into a buffer returns an error or
//! fewer bytes instead, which walq reports as `Error::Io` or `Error::Corrupt`. Copying from the page cache costs
//! little next to decoding (benches/replay_open.rs measures replay through this reader), and the buffer is reused,
//! so memory stays flat whatever the segment's size.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use super::walk::{self, Order, Stop};
use crate::record::{self, CrcSeed, Frame, FRAME_BYTES_LIMIT, FRAME_HEADER_BYTES};
use crate::storage::{read_up_to, StorageFile};

/// Bytes read at once, at most.
pub(crate) const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Bytes of a reader's first read: a reader often wants one message (a group redelivering it) or a few, so it
/// starts small and doubles up to `READ_CHUNK_BYTES` as it keeps reading.
pub(crate) const FIRST_CHUNK_BYTES: usize = 16 * 1024;
/// The page size reads align their ends to (4 KiB pages; a larger page size only makes the alignment partial).
const PAGE_BYTES: u64 = 4096;

/// What [`FrameReader::next`] found at its position.
#[derive(Debug)]
pub(crate) enum Next<'a> {
    /// A valid frame, in order, at `position`.
    Frame { position: u64, frame: Frame<'a> },
    /// No frame at `position`: the walk's stop. At the reader's end this is `Stop::End`; before it, the bytes there
    /// are not a frame (or the file delivered fewer bytes than its end promised: it shrank).
    Stop { position: u64, stop: Stop },
}

/// Walks the frames of one segment file from a position up to an end, by the rules of `walk`.
#[derive(Debug)]
pub(crate) struct FrameReader {
    file: Arc<dyn StorageFile>,
    crc: CrcSeed,
    order: Order,
    /// Where the next frame starts.
    position: u64,
    /// Bytes at or past this are not read (the visible end of the segment being written, a sealed file's length).
    end: u64,
    next_offset: u64,
    buf: Vec<u8>,
    /// The file position of `buf[0]`.
    buf_start: u64,
    /// Bytes the next read asks for (see `FIRST_CHUNK_BYTES`).
    chunk_bytes: usize,
}

impl FrameReader {
    /// A reader of `file` (of the segment with id `segment_id`) from byte `position`, whose first frame has offset
    /// `next_offset` (or at least that, with `Order::Increasing`), up to byte `end`.
    pub(crate) fn new(
        file: Arc<dyn StorageFile>,
        segment_id: u64,
        order: Order,
        position: u64,
        end: u64,
        next_offset: u64,
    ) -> FrameReader {
        debug_assert!(position <= end);
        FrameReader {
            file,
            crc: CrcSeed::new(segment_id),
            order,
            position,
            end,
            next_offset,
            buf: Vec::new(),
            buf_start: position,
            chunk_bytes: FIRST_CHUNK_BYTES,
        }
    }

    /// Where the next frame starts.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// The end of what this reader reads.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// The offset the next frame must have (or exceed, with `Order::Increasing`).
    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Forgets the bytes read so far, so that the next frame is read from the file again: for a reader whose end
    /// includes bytes still being written (the tool following a live queue), which may have changed since.
    pub(crate) fn forget_read_bytes(&mut self) {
        self.buf.clear();
        self.buf_start = self.position;
    }

    /// Moves the end (more of the segment being written became visible, or it was sealed).
    pub(crate) fn set_end(&mut self, end: u64) {
        debug_assert!(end >= self.position);
        self.end = end;
    }

    /// Makes `buf` hold the file's bytes from `from` on, at least `len` of them where the end allows (more, up to a
    /// chunk). Returns the bytes available from `from` (fewer than asked only at the end, or if the file shrank).
    fn fill(&mut self, from: u64, len: usize) -> io::Result<usize> {
        let reachable = (self.end.saturating_sub(from)) as usize;
        let want = len.min(reachable);
        let buf_end = self.buf_start + self.buf.len() as u64;
        if from >= self.buf_start && from + want as u64 <= buf_end {
            return Ok((buf_end - from) as usize);
        }
        // Keep what is already read from `from` on; read the rest behind it.
        let kept = if from >= self.buf_start && from < buf_end {
            self.buf.drain(..(from - self.buf_start) as usize);
            self.buf.len()
        } else {
            self.buf.clear();
            0
        };
        self.buf_start = from;
        // A chunk ends at a page boundary where that still covers `want`: the next read starts on a page of its
        // own, and a cold first read after the header's (whose page the kernel read ahead with a few more) asks
        // for no page twice.
        let chunk_end = (from + want.max(self.chunk_bytes) as u64) / PAGE_BYTES * PAGE_BYTES;
        let chunk = (chunk_end.saturating_sub(from) as usize).max(want);
        let target = chunk.min(reachable).max(kept);
        self.chunk_bytes = (self.chunk_bytes * 2).min(READ_CHUNK_BYTES);
        self.buf.resize(target, 0);
        let read = read_up_to(self.file.as_ref(), &mut self.buf[kept..], from + kept as u64)?;
        self.buf.truncate(kept + read);
        Ok(self.buf.len())
    }

    /// The next frame, or why there is none. The buffer is first made to hold the whole frame its length field
    /// announces (where the end allows; a frame cut by a chunk's end is read again whole), then the frame is
    /// decoded and checksummed once.
    pub(crate) fn next(&mut self) -> io::Result<Next<'_>> {
        let mut want = FRAME_HEADER_BYTES;
        let (start, len) = loop {
            let available = self.fill(self.position, want)?;
            let reachable = (self.end - self.position) as usize;
            let start = (self.position - self.buf_start) as usize;
            let len = available.min(reachable);
            let announced = self
                .buf
                .get(start + 4..start + 8)
                .map(|field| u32::from_le_bytes(field.try_into().expect("4 bytes")) as usize);
            match announced {
                Some(need)
                    if need > len
                        && need > want
                        && need <= reachable
                        && (FRAME_HEADER_BYTES..=FRAME_BYTES_LIMIT).contains(&need) =>
                {
                    want = need;
                }
                _ => break (start, len),
            }
        };
        let position = self.position;
        match walk::frame_at(&self.buf[start..start + len], &self.crc, self.order, self.next_offset) {
            Ok(frame) => {
                self.position += frame.len_bytes as u64;
                self.next_offset = frame.offset + 1;
                Ok(Next::Frame { position, frame })
            }
            Err(stop) => Ok(Next::Stop { position, stop }),
        }
    }

    /// Calls `visit(position, frame)` for every frame up to the walk's stop, and returns where and why it stopped.
    pub(crate) fn walk_to_stop(&mut self, mut visit: impl FnMut(u64, &Frame<'_>)) -> io::Result<(u64, Stop)> {
        loop {
            match self.next()? {
                Next::Frame { position, frame } => visit(position, &frame),
                Next::Stop { position, stop } => return Ok((position, stop)),
            }
        }
    }

    /// Moves past damage at the current position to the next valid frame (an offset in `offsets`, at least the next
    /// offset) before the end, or to the end. Returns whether a frame was found. Each byte position gets the cheap
    /// checks of `record::plausible_header`; only what passes them is read whole and checksummed.
    pub(crate) fn skip_damage(&mut self, offsets: Range<u64>) -> io::Result<bool> {
        let offsets = offsets.start.max(self.next_offset)..offsets.end;
        let mut from = self.position + 1;
        while from + FRAME_HEADER_BYTES as u64 <= self.end {
            if self.fill(from, FRAME_HEADER_BYTES)? < FRAME_HEADER_BYTES {
                break; // the file ended early
            }
            let start = (from - self.buf_start) as usize;
            if let Some((len, offset)) = record::plausible_header(&self.buf[start..]) {
                if offsets.contains(&offset) && from + len as u64 <= self.end && self.fill(from, len)? >= len {
                    let start = (from - self.buf_start) as usize;
                    if record::decode(&self.buf[start..start + len], &self.crc).is_ok() {
                        self.position = from;
                        self.next_offset = offset;
                        self.order = Order::Increasing; // offsets resume after a gap
                        return Ok(true);
                    }
                }
            }
            from += 1;
        }
        self.position = self.end;
        // Nothing behind the damage so far: whatever is found past it later (the segment being written grows)
        // follows a gap, so the next offset is a lower bound from here on, not the exact one.
        self.order = Order::Increasing;
        Ok(false)
    }
}

/// The frame at `position` of `file` (of the segment with id `segment_id`), read with two small `pread`s: its offset
/// and `durable_below` if a whole valid frame is there. For checks of single positions (index entries), where a
/// [`FrameReader`]'s chunked reads would read far more than the frame.
pub(crate) fn frame_at_position(
    file: &dyn StorageFile,
    position: u64,
    segment_id: u64,
) -> io::Result<Option<(u64, u64)>> {
    let mut head = [0u8; FRAME_HEADER_BYTES];
    if read_up_to(file, &mut head, position)? < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let Some((len, _)) = record::plausible_header(&head) else { return Ok(None) };
    let mut frame = vec![0u8; len];
    if read_up_to(file, &mut frame, position)? < len {
        return Ok(None);
    }
    Ok(record::decode(&frame, &CrcSeed::new(segment_id)).ok().map(|f| (f.offset, f.durable_below)))
}

/// The bytes in `from..to` of `file` up to its last non-zero one (0 if all are zero), read a chunk at a time.
pub(crate) fn nonzero_extent(file: &dyn StorageFile, from: u64, to: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_CHUNK_BYTES.min(to.saturating_sub(from) as usize)];
    let (mut position, mut extent) = (from, 0);
    while position < to {
        let len = buf.len().min((to - position) as usize);
        let read = read_up_to(file, &mut buf[..len], position)?;
        if let Some(last) = buf[..read].iter().rposition(|&b| b != 0) {
            extent = position + last as u64 + 1 - from;
        }
        if read < len {
            break;
        }
        position += read as u64;
    }
    Ok(extent)
}

/// Whether the file's bytes in `from..to` are all zero (preallocated space; what a torn creation leaves), read a
/// chunk at a time so that memory does not depend on what the file's length claims. Bytes missing because the
/// file is shorter count as zeros.
pub(crate) fn zeros_between(file: &dyn StorageFile, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; READ_CHUNK_BYTES.min(to.saturating_sub(from) as usize)];
    let mut position = from;
    while position < to {
        let len = buf.len().min((to - position) as usize);
        let read = read_up_to(file, &mut buf[..len], position)?;
        if !walk::is_zeros(&buf[..read]) {
            return Ok(false);
        }
        if read < len {
            break;
        }
        position += read as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CorruptionKind;
    use crate::message::{AsParts, Message};
    use crate::storage::{FsStorage, OpenMode, Storage};

    const ID: u64 = 77;

    fn frames(offsets: &[u64], value_bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for &offset in offsets {
            record::encode(
                &mut out,
                &CrcSeed::new(ID),
                offset,
                0,
                1,
                Message::new(vec![offset as u8; value_bytes]).parts(),
            );
        }
        out
    }

    /// A real file holding `bytes`, in a temporary directory kept alive with it.
    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, Arc<dyn StorageFile>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let file = FsStorage.open_file(&path, OpenMode::CreateNew).unwrap();
        file.write_all_at(bytes, 0).unwrap();
        (dir, file)
    }

    fn offsets(reader: &mut FrameReader) -> (Vec<u64>, u64, Stop) {
        let mut offsets = Vec::new();
        loop {
            match reader.next().unwrap() {
                Next::Frame { frame, .. } => offsets.push(frame.offset),
                Next::Stop { position, stop } => return (offsets, position, stop),
            }
        }
    }

    #[test]
    fn frames_larger_than_a_chunk_and_frames_cut_by_chunks_are_read_whole() {
        // 300 KiB frames straddle every 256 KiB chunk boundary.
        let bytes = frames(&[10, 11, 12, 13], 300 * 1024);
        let (_dir, file) = file_with(&bytes);
        let mut reader = FrameReader::new(file, ID, Order::Contiguous, 0, bytes.len() as u64, 10);
        assert_eq!(offsets(&mut reader), (vec![10, 11, 12, 13], bytes.len() as u64, Stop::End));
    }

    #[test]
    fn a_file_shorter_than_its_end_says_is_a_stop_not_a_crash() {
        let bytes = frames(&[0, 1, 2], 1000);
        let (_dir, file) = file_with(&bytes);
        let one = frames(&[0], 1000).len() as u64;
        file.set_len(one + 10).unwrap(); // shrunk under the reader, as an outside truncate would
        let mut reader = FrameReader::new(file, ID, Order::Contiguous, 0, bytes.len() as u64, 0);
        let (seen, position, stop) = offsets(&mut reader);
        assert_eq!((seen, position), (vec![0], one));
        assert_eq!(stop.kind(), CorruptionKind::Truncated);
    }

    #[test]
    fn the_frame_behind_damage_is_found_and_offsets_out_of_range_are_not() {
        let mut bytes = vec![0xAB; 1000];
        bytes.extend_from_slice(&frames(&[9], 50));
        let (_dir, file) = file_with(&bytes);
        let end = bytes.len() as u64;
        let mut reader = FrameReader::new(file.clone(), ID, Order::Increasing, 0, end, 0);
        assert!(matches!(reader.next().unwrap(), Next::Stop { position: 0, .. }));
        assert!(reader.skip_damage(0..100).unwrap());
        assert_eq!((reader.position(), reader.next_offset()), (1000, 9));
        let mut reader = FrameReader::new(file, ID, Order::Increasing, 0, end, 0);
        assert!(!reader.skip_damage(10..100).unwrap());
        assert_eq!(reader.position(), end);
    }

    #[test]
    fn a_megabyte_of_garbage_is_scanned_without_checksumming_it_at_every_byte() {
        // Random bytes rarely pass the cheap checks of `plausible_header`, so the scan is a pass over the bytes.
        let mut state = 0x1234_5678_u64;
        let garbage: Vec<u8> = (0..1 << 20)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect();
        let (_dir, file) = file_with(&garbage);
        let mut reader = FrameReader::new(file, ID, Order::Increasing, 0, garbage.len() as u64, 0);
        assert!(!reader.skip_damage(0..1 << 20).unwrap());
    }

    #[test]
    fn zero_checks_stream_and_count_what_is_not_zero() {
        let mut bytes = vec![0u8; 600 * 1024];
        bytes[300 * 1024] = 1;
        let (_dir, file) = file_with(&bytes);
        let len = bytes.len() as u64;
        assert!(!zeros_between(file.as_ref(), 0, len).unwrap());
        assert!(zeros_between(file.as_ref(), 300 * 1024 + 1, len).unwrap());
        assert_eq!(nonzero_extent(file.as_ref(), 1024, len).unwrap(), 299 * 1024 + 1);
        assert_eq!(nonzero_extent(file.as_ref(), 300 * 1024 + 1, len * 4).unwrap(), 0);
    }
}
