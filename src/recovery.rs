//! Open-time recovery: find where the log really ends, repair what a crash left, and report it.
//!
//! Only the last segment is read, and only from its last verified index entry on, so open time does not grow with
//! the log (sealed segments are checked when read). The end of the log is the end of the last run of valid,
//! contiguous frames. What follows it is one of:
//! - nothing, or zeros (preallocated space): a clean end;
//! - invalid bytes with no valid frame behind them that proves they were durable: a torn tail, left by a crash in
//!   the middle of unsynced writes. Nothing there was acknowledged as durable, so it is cut;
//! - invalid bytes behind which a valid frame says (`durable_below`) that the invalid one had been fsynced: damage to
//!   acknowledged data, reported as [`Error::Corrupt`] unless the mode salvages.
//!
//! A last segment whose header is invalid and which holds nothing past its first sector is a segment whose creation
//! was torn (no record in it can have been acknowledged: the header is fsynced before the first record is written);
//! it is removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{io_err, CorruptionKind, Error, Result};
use crate::index::{self, IndexCadence, IndexEntry, RunningMax, INDEX_HEADER_BYTES};
use crate::limits::INDEX_INTERVAL_BYTES;
use crate::options::{RecoveryMode, Settings};
use crate::record;
use crate::segment::walk::{self, Order, Stop};
use crate::segment::{
    frame_at_position, header_error, index_file_name, parse_segment_file_name, segment_file_name, zeros_between,
    ActiveSegment, FrameReader, HeaderError, Next, RecoveredTail, SegmentHeader, FIRST_CHUNK_BYTES,
    SEGMENT_FILE_BYTES_MAX, SEGMENT_HEADER_BYTES,
};
use crate::storage::{read_range, FilePart, OpenMode, Storage, StorageFile};

/// How many times the tail scan goes on after a frame landed at its stop position while it read (the `walq` tool
/// reading a live queue; see `plan_tail`).
const LIVE_WRITE_RETRIES: u32 = 64;
/// Index entries tried, newest first, when looking for where to start the tail scan.
const INDEX_ENTRIES_TRIED_MAX: usize = 8;
/// Index entries read at open from the end of the last segment's index (512 bytes): the scan starts at one of
/// them unless a crash left the log unproven farther back. The entries before them are read when a lookup first
/// needs them, so open reads the same few bytes of index whatever the segment's size.
const INDEX_TAIL_ENTRIES: usize = 4 * INDEX_ENTRIES_TRIED_MAX;
/// A torn segment creation can leave garbage in the sector holding the header, and nothing beyond it.
const HEADER_SECTOR_BYTES: u64 = 512;
/// Bytes at the end of the last segment asked for ahead of the tail scan: the scan starts at an index entry, at
/// most `INDEX_INTERVAL_BYTES` before the last frame's start, and usually reads a few pages.
const TAIL_HINT_BYTES: u64 = 4 * INDEX_INTERVAL_BYTES;

/// What recovery found and did when the queue was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    /// The recovery mode used.
    pub mode: RecoveryMode,
    /// Segment files found.
    pub segments: usize,
    /// The segment whose tail was scanned.
    pub scanned_segment: Option<PathBuf>,
    /// Bytes read by the tail scan.
    pub scanned_bytes: u64,
    /// Tails cut off.
    pub truncations: Vec<Truncation>,
    /// Damaged regions skipped by [`RecoveryMode::SkipCorrupt`].
    pub skipped: Vec<SkippedRange>,
    /// Files removed: torn segment creations and leftover temporary files.
    pub removed_files: Vec<PathBuf>,
    /// The offset the next append gets.
    pub next_offset: u64,
}

impl RecoveryReport {
    /// True when recovery lost no bytes that could have held a message: no tail with data was cut, nothing was
    /// skipped, no segment was removed.
    pub fn lost_nothing(&self) -> bool {
        self.truncations.is_empty() && self.skipped.is_empty() && self.removed_files.iter().all(|p| is_temporary(p))
    }
}

/// A tail cut off the last segment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Truncation {
    /// The segment file.
    pub file: PathBuf,
    /// The new end of the file: the end of its last valid frame.
    pub position: u64,
    /// Bytes cut.
    pub bytes: u64,
    /// Valid frames among the cut bytes (written, never acknowledged as durable).
    pub frames_dropped: u64,
}

/// A damaged region kept in place and skipped by readers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedRange {
    /// The segment file.
    pub file: PathBuf,
    /// Where the damage starts.
    pub position: u64,
    /// How long it is.
    pub bytes: u64,
    /// The first offset missing.
    pub first_missing_offset: u64,
    /// The offset of the first frame after the damage.
    pub resumes_at_offset: u64,
}

/// The recovered log, ready to be appended to.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) sealed_bases: Vec<u64>,
    pub(crate) active: ActiveSegment,
    pub(crate) report: RecoveryReport,
    /// Salvage left holes in the last segment: it must be sealed before anything is appended.
    pub(crate) roll_needed: bool,
}

fn is_temporary(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tmp")
}

/// Recovers the log in `dir` (whose manifest has been read and whose lock is held). `durable_end` is the
/// manifest's `durable_end_offset` (0 when none): every offset below it is known durable.
pub(crate) fn recover(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    settings: &Settings,
    mode: RecoveryMode,
    durable_end: u64,
) -> Result<Recovered> {
    let mut report = RecoveryReport { mode, ..RecoveryReport::default() };
    let names = storage.list_dir(dir).map_err(io_err("list directory", dir))?;
    for name in names.iter().filter(|n| n.ends_with(".tmp")) {
        let path = dir.join(name);
        storage.remove_file(&path).map_err(io_err("remove leftover", &path))?;
        report.removed_files.push(path);
    }
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_file_name(n)).collect();
    bases.sort_unstable();
    // An index whose segment was deleted (a crash between the two unlinks of cleanup) is removed.
    for name in &names {
        let Some(base) = name.strip_suffix(".idx").and_then(|stem| parse_segment_file_name(&format!("{stem}.seg")))
        else {
            continue;
        };
        if bases.binary_search(&base).is_err() {
            let path = dir.join(name);
            storage.remove_file(&path).map_err(io_err("remove orphan index", &path))?;
        }
    }
    report.segments = bases.len();
    let mut next_base = 0;
    while let Some(&base) = bases.last() {
        let path = dir.join(segment_file_name(base));
        let file = storage.open_file(&path, OpenMode::ReadWrite).map_err(io_err("open segment", &path))?;
        let len = file.len_bytes().map_err(io_err("read segment length", &path))?;
        hint_open_reads(storage.as_ref(), dir, file.as_ref(), len, base, bases[0]);
        let head = read_range(file.as_ref(), 0, SEGMENT_HEADER_BYTES).map_err(io_err("read segment header", &path))?;
        match SegmentHeader::decode(&head) {
            Ok(header) if header.base_offset == base => {
                bases.pop();
                let (tail, roll_needed) = recover_tail(
                    storage.as_ref(),
                    dir,
                    LastSegment { file: file.clone(), header, len },
                    durable_end,
                    &mut report,
                )?;
                // A segment sealed after salvage is never written: it reserves nothing.
                let reserve = settings.reserve_bytes().filter(|_| !roll_needed);
                let active = ActiveSegment::reopen(storage.as_ref(), dir, header, file, tail, reserve);
                report.next_offset = active.next_offset;
                report.scanned_segment = Some(path);
                return Ok(Recovered { sealed_bases: bases, active, report, roll_needed });
            }
            Ok(_) => {
                return Err(Error::Corrupt { file: path, position: 16, kind: CorruptionKind::WrongSegment });
            }
            Err(HeaderError::Corrupt(kind)) if is_torn_create(file.as_ref(), len, base, &head)? => {
                tracing::warn!(path = %path.display(), ?kind, "removing segment whose creation was torn by a crash");
                remove_segment(storage.as_ref(), dir, base)?;
                report.removed_files.push(path);
                bases.pop();
                next_base = base;
            }
            Err(error) => return Err(header_error(&path, error)),
        }
    }
    // No segment: a new queue, or one whose only segment's creation was torn.
    let active = ActiveSegment::create(storage.as_ref(), dir, next_base, None, settings.reserve_bytes())?;
    storage.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    report.next_offset = next_base;
    Ok(Recovered { sealed_bases: Vec::new(), active, report, roll_needed: false })
}

/// Asks for what open and the first read after it will read, each read waiting for the one before: the last
/// segment's header and tail, its index's tail, and the head of the oldest segment (where a reader from the start
/// begins, and, once cleanup has deleted what every group acked, the lowest group floor). With nothing cached each
/// of those reads is a disk round trip, one after another; asked for first, they are fetched together. A hint:
/// failures are ignored, and a cached page costs a lookup. The tail asked for is the file's: after a crash with
/// space reserved ahead, or behind a frame longer than `TAIL_HINT_BYTES`, the scan reads pages not asked for,
/// which are read as before.
fn hint_open_reads(storage: &dyn Storage, dir: &Path, last: &dyn StorageFile, len_bytes: u64, base: u64, oldest: u64) {
    let _ = last.will_need(0, SEGMENT_HEADER_BYTES as u64);
    let tail_from = len_bytes.saturating_sub(TAIL_HINT_BYTES).max(SEGMENT_HEADER_BYTES as u64);
    let _ = last.will_need(tail_from, len_bytes.saturating_sub(tail_from));
    let index_tail_bytes = (INDEX_TAIL_ENTRIES * index::INDEX_ENTRY_BYTES) as u64;
    let _ = storage.will_need(&dir.join(index_file_name(base)), FilePart::Tail { len_bytes: index_tail_bytes });
    if oldest != base {
        let head_bytes = (SEGMENT_HEADER_BYTES + FIRST_CHUNK_BYTES) as u64;
        let _ = storage.will_need(&dir.join(segment_file_name(oldest)), FilePart::Head { len_bytes: head_bytes });
    }
}

fn remove_segment(storage: &dyn Storage, dir: &Path, base: u64) -> Result<()> {
    let index_path = dir.join(index_file_name(base));
    let _ = storage.remove_file(&index_path); // a cache; may not exist
    let path = dir.join(segment_file_name(base));
    storage.remove_file(&path).map_err(io_err("remove torn segment", &path))?;
    storage.sync_dir(dir).map_err(io_err("fsync directory", dir))
}

/// Whether a segment with an invalid header is the remains of a creation that a crash tore: nothing past the
/// header's sector, and no frame right after the header that verifies with the header's segment id (which would
/// mean the header was durable and has been damaged since).
pub(crate) fn is_torn_create(file: &dyn StorageFile, len: u64, base: u64, head: &[u8]) -> Result<bool> {
    let io = |e| Error::io("read segment", PathBuf::new(), e);
    if len > SEGMENT_FILE_BYTES_MAX || !zeros_between(file, HEADER_SECTOR_BYTES, len).map_err(io)? {
        return Ok(false);
    }
    let Some(id_bytes) = head.get(24..32) else {
        return Ok(true);
    };
    let segment_id = u64::from_le_bytes(id_bytes.try_into().expect("8 bytes"));
    let first = frame_at_position(file, SEGMENT_HEADER_BYTES as u64, segment_id).map_err(io)?;
    Ok(first.is_none_or(|(offset, _)| offset != base))
}

/// Where the tail scan starts: the newest index entry that points at the frame it names.
struct ScanStart {
    position: u64,
    offset: u64,
    /// Entries in the index file before `entries[0]`: not read (see `INDEX_TAIL_ENTRIES`).
    entries_before: usize,
    entries: Vec<IndexEntry>,
}

fn scan_start(
    storage: &dyn Storage,
    dir: &Path,
    file: &dyn StorageFile,
    header: &SegmentHeader,
    len: u64,
    durable_end: u64,
) -> ScanStart {
    let from_start = ScanStart {
        position: SEGMENT_HEADER_BYTES as u64,
        offset: header.base_offset,
        entries_before: 0,
        entries: Vec::new(),
    };
    let index_path = dir.join(index_file_name(header.base_offset));
    let Ok(index_file) = storage.open_file(&index_path, OpenMode::ReadOnly) else {
        return from_start;
    };
    // Past the first `INDEX_TAIL_ENTRIES` entries the index header is not read (one read less when nothing is
    // cached): each entry's checksum covers the segment id, so an index left by another file of this name has no
    // valid entry, and the entry the scan starts at is checked against its frame. The header is checked when the
    // rest of the index is read (`ActiveSegment::index_prefix`), and written again if it is damaged.
    let Some(index_len) = index_file.len_bytes().ok().and_then(|l| usize::try_from(l).ok()) else {
        return from_start;
    };
    // A segment of `len` bytes cannot need more entries than this; what a longer index file holds past it is
    // damage.
    let count = index::entry_count(index_len).min((len / INDEX_INTERVAL_BYTES + 1) as usize);
    // The newest entries first; all of them only when none of those can start the scan (a crash left frames
    // unproven farther back than they reach).
    let tail_first = count.saturating_sub(INDEX_TAIL_ENTRIES);
    let start = start_among(index_file.as_ref(), file, header, len, durable_end, tail_first..count);
    let start = match start {
        None if tail_first > 0 => start_among(index_file.as_ref(), file, header, len, durable_end, 0..count),
        start => start,
    };
    start.unwrap_or(from_start)
}

/// The scan's start among the index entries `range` (numbers in the index file), each checked (checksum, order,
/// inside the segment); `None` when none of them can start it.
fn start_among(
    index_file: &dyn StorageFile,
    file: &dyn StorageFile,
    header: &SegmentHeader,
    len: u64,
    durable_end: u64,
    range: std::ops::Range<usize>,
) -> Option<ScanStart> {
    // From the first entry on, the header comes in the same read and is checked; past it, each entry's checksum
    // (over the segment id) is what ties it to this file.
    let at = if range.start == 0 { 0 } else { index::entry_position(range.start)? };
    let bytes = read_range(index_file, at as u64, index::entry_position(range.end)? - at).ok()?;
    let entry_bytes = if range.start == 0 {
        if !index::header_matches(&bytes, header.base_offset, header.segment_id) {
            return None;
        }
        &bytes[INDEX_HEADER_BYTES..]
    } else {
        &bytes[..]
    };
    let mut entries = index::decode_run(entry_bytes, header.segment_id, SEGMENT_HEADER_BYTES as u64..len, 0..u64::MAX);
    // The newest entry whose frame verifies is a start only if every frame before it was durable: the index is
    // written without fsync, so an entry (and its frame) can survive a power cut that tore an earlier, unsynced
    // frame. That frame's `durable_below` (or the last clean close) says how far back the log is proven; start at
    // or before it.
    let (newest, durable_below) = newest_verified(file, header, &entries, u64::MAX)?;
    let durable_below = durable_below.max(durable_end);
    let k = if durable_below >= header.base_offset + u64::from(entries[newest].rel_offset) {
        newest
    } else {
        newest_verified(file, header, &entries[..newest], durable_below)?.0
    };
    let entry = entries[k];
    entries.truncate(k + 1);
    Some(ScanStart {
        position: u64::from(entry.position),
        offset: header.base_offset + u64::from(entry.rel_offset),
        entries_before: range.start,
        entries,
    })
}

/// Among the newest `INDEX_ENTRIES_TRIED_MAX` entries whose offset is at most `offset_max`, the newest whose frame
/// verifies: its place in `entries` and the frame's `durable_below`.
fn newest_verified(
    file: &dyn StorageFile,
    header: &SegmentHeader,
    entries: &[IndexEntry],
    offset_max: u64,
) -> Option<(usize, u64)> {
    let candidates = entries.iter().enumerate().rev();
    let candidates = candidates.filter(|(_, e)| header.base_offset + u64::from(e.rel_offset) <= offset_max);
    candidates.take(INDEX_ENTRIES_TRIED_MAX).find_map(|(k, entry)| {
        let offset = header.base_offset + u64::from(entry.rel_offset);
        verified_durable_below(file, u64::from(entry.position), header.segment_id, offset).map(|d| (k, d))
    })
}

/// The `durable_below` of the frame at `position`, if a frame with `offset` verifies there.
fn verified_durable_below(file: &dyn StorageFile, position: u64, segment_id: u64, offset: u64) -> Option<u64> {
    let (found, durable_below) = frame_at_position(file, position, segment_id).ok()??;
    (found == offset).then_some(durable_below)
}

/// A run of contiguous valid frames found behind damaged bytes (file positions).
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    end: u64,
    first_offset: u64,
    next_offset: u64,
    durable_below_max: u64,
}

/// The frames `frames` reads from its position on, contiguous, until it stops: calls `visit` for each and returns
/// where and why it stopped, and the largest `durable_below` seen.
fn walk_run(
    frames: &mut FrameReader,
    mut visit: impl FnMut(u64, &record::Frame<'_>),
) -> std::io::Result<(u64, Stop, u64)> {
    let mut durable_below_max = 0;
    let (position, stop) = frames.walk_to_stop(|position, frame| {
        durable_below_max = durable_below_max.max(frame.durable_below);
        visit(position, frame);
    })?;
    Ok((position, stop, durable_below_max))
}

/// Every run of valid contiguous frames behind the damage `frames` stopped at, up to the end. The scan checks each
/// byte position cheaply first (`record::plausible_header`, and offsets the segment's length allows), so garbage
/// costs a pass over its bytes, not a checksum at each of them.
fn runs_behind(frames: &mut FrameReader, offsets: std::ops::Range<u64>) -> std::io::Result<Vec<Run>> {
    let mut runs = Vec::new();
    while frames.skip_damage(offsets.clone())? {
        let (start, first_offset) = (frames.position(), frames.next_offset());
        let (end, _, durable_below_max) = walk_run(frames, |_, _| {})?;
        debug_assert!(end > start, "the frame found is valid");
        runs.push(Run { start, end, first_offset, next_offset: frames.next_offset(), durable_below_max });
    }
    Ok(runs)
}

/// What recovery decided about the tail of the last segment, before touching any file.
#[derive(Debug)]
pub(crate) struct TailPlan {
    /// The position of the first frame no later frame (nor the manifest's durable end) proves durable, or of the
    /// first salvaged run: the frames from here on are written again before recovery's fsync (see
    /// `recover_tail`); `u64::MAX` when every frame is proven.
    pub(crate) unproven_from: u64,
    pub(crate) write_pos: u64,
    pub(crate) next_offset: u64,
    pub(crate) scanned_bytes: u64,
    /// The tail to cut, if any.
    pub(crate) cut: Option<Truncation>,
    pub(crate) skipped: Vec<SkippedRange>,
    /// Salvage left holes: the segment must be sealed before anything is appended.
    pub(crate) roll_needed: bool,
    /// Entries in the index file before `index_entries[0]`, not read.
    pub(crate) index_entries_before: usize,
    /// The index entries from the scan's start on (see `index_entries_before`).
    pub(crate) index_entries: Vec<IndexEntry>,
    /// How many of `index_entries` are in the index file as they are.
    pub(crate) index_entries_on_disk: usize,
    /// The greatest timestamp of the frames kept, for the index entries appends add.
    pub(crate) running_max: RunningMax,
}

/// Reads the tail of the last segment and decides, as `mode` says, where the log ends and what to cut. Reads only;
/// used by open (which then applies the plan) and by `walq verify --dry-run` (which only reports it).
/// `durable_end`: every offset below it is known durable (the manifest's record of the last clean close).
pub(crate) fn plan_tail(
    storage: &dyn Storage,
    dir: &Path,
    file: &Arc<dyn StorageFile>,
    header: SegmentHeader,
    len: u64,
    mode: RecoveryMode,
    durable_end: u64,
) -> Result<TailPlan> {
    let path = dir.join(segment_file_name(header.base_offset));
    if len > SEGMENT_FILE_BYTES_MAX {
        // Longer than any segment walq writes: damage, or a sparse file's claim; nothing is sized by it.
        return Err(Error::Corrupt { file: path, position: 0, kind: CorruptionKind::BadLength });
    }
    let read_error = |e| Error::io("read segment tail", &path, e);
    let start = scan_start(storage, dir, file.as_ref(), &header, len, durable_end);
    let (entries_before, mut entries) = (start.entries_before, start.entries);
    let entries_on_disk = entries.len();
    let mut cadence = IndexCadence::after(start.position);
    // The scan starts at the last entry's frame, or at the first frame: what the entry says of the frames before.
    let mut running = entries.last().map_or(RunningMax::EMPTY, RunningMax::after);
    // Offsets below this are proven durable (a later frame's `durable_below`, or the last clean close).
    let mut proven_below = durable_end;
    let mut index_frame = |position: u64, frame: &record::Frame<'_>| {
        proven_below = proven_below.max(frame.durable_below);
        if cadence.take(position) {
            let rel_offset = (frame.offset - header.base_offset) as u32;
            entries.push(IndexEntry { rel_offset, position: position as u32, max_seconds_before: running.seconds() });
        }
        running.add(frame.timestamp_ms);
    };
    // The walk, the zero check and the scan behind damage read the file at different moments. Open holds the lock,
    // so nothing changes under it; the `walq` tool reads a live queue, where a frame can land at the stop position
    // between two of them. Such a frame is valid when read again: the walk goes on from there (a bounded number of
    // times), so that a write in progress is never judged a damaged durable frame.
    let (mut position, mut offset, mut retries) = (start.position, start.offset, 0);
    let (mut frames, stop) = loop {
        let mut frames = FrameReader::new(file.clone(), header.segment_id, Order::Contiguous, position, len, offset);
        let (stop_at, stop, _) = walk_run(&mut frames, &mut index_frame).map_err(read_error)?;
        let landed = frame_at_position(file.as_ref(), stop_at, header.segment_id)
            .map_err(read_error)?
            .is_some_and(|(found, _)| found == frames.next_offset());
        if landed && retries < LIVE_WRITE_RETRIES {
            (position, offset, retries) = (stop_at, frames.next_offset(), retries + 1);
            continue;
        }
        break (frames, stop);
    };
    let (mut end, mut next_offset) = (frames.position(), frames.next_offset());
    let mut plan = TailPlan {
        write_pos: 0,
        next_offset: 0,
        scanned_bytes: len - start.position,
        unproven_from: u64::MAX, // found below, once the walk's proof is known
        cut: None,
        skipped: Vec::new(),
        roll_needed: false,
        index_entries_before: entries_before,
        index_entries: Vec::new(),
        index_entries_on_disk: 0,
        running_max: running,
    };
    let unproven_from =
        first_at_or_above(file, &header, &entries, start.position, proven_below, end).map_err(read_error)?;
    // Frames below `durable_end` were durable: if they are missing, even behind zeros, that is damage.
    let durable_missing = next_offset < durable_end;
    if durable_missing && mode != RecoveryMode::SkipCorrupt {
        return Err(Error::Corrupt { file: path, position: end, kind: CorruptionKind::DamagedDurableFrame });
    }
    if !zeros_between(file.as_ref(), end, len).map_err(read_error)? {
        let damage_at = end;
        let offsets = walk::contiguous_offsets(header.base_offset, len);
        frames.forget_read_bytes(); // read behind the stop afresh, not from what the walk buffered
        let runs = runs_behind(&mut frames, next_offset..offsets.end).map_err(read_error)?;
        let mut proven_durable = runs.iter().any(|run| run.durable_below_max > next_offset);
        if proven_durable {
            // Under a live writer the frame at the stop may have landed after the loop above looked: then what
            // follows is its successors, not damage. (Open holds the lock: there, a valid frame at the stop would
            // have been walked, so this never changes its verdict.)
            let landed = frame_at_position(file.as_ref(), end, header.segment_id).map_err(read_error)?;
            proven_durable = landed.is_none_or(|(found, _)| found != next_offset);
        }
        let damaged = |kind| Error::Corrupt { file: path.clone(), position: damage_at, kind };
        match mode {
            RecoveryMode::AbsoluteConsistency if proven_durable => {
                return Err(damaged(CorruptionKind::DamagedDurableFrame))
            }
            RecoveryMode::AbsoluteConsistency => return Err(damaged(stop.kind())),
            RecoveryMode::TolerateTornTail if proven_durable => {
                return Err(damaged(CorruptionKind::DamagedDurableFrame))
            }
            RecoveryMode::SkipCorrupt if !runs.is_empty() => {
                for run in &runs {
                    plan.skipped.push(SkippedRange {
                        file: path.clone(),
                        position: end,
                        bytes: run.start - end,
                        first_missing_offset: next_offset,
                        resumes_at_offset: run.first_offset,
                    });
                    end = run.end;
                    next_offset = run.next_offset;
                }
                // The segment now has holes; new frames go to a fresh segment so the tail stays contiguous.
                plan.roll_needed = true;
                plan.running_max = RunningMax::Unknown; // the salvaged runs' frames were not counted
            }
            RecoveryMode::TolerateTornTail | RecoveryMode::SkipCorrupt => {}
        }
        let frames_dropped = runs.iter().filter(|r| r.start >= end).map(|r| r.next_offset - r.first_offset).sum();
        plan.cut = Some(Truncation { file: path, position: end, bytes: len - end, frames_dropped });
    }
    plan.write_pos = end;
    plan.next_offset = next_offset;
    plan.unproven_from = unproven_from;
    if let Some(first_skipped) = plan.skipped.first() {
        // Salvaged runs behind damage are not proven by the walk: written again too.
        plan.unproven_from = plan.unproven_from.min(first_skipped.position);
    }
    entries.retain(|e| u64::from(e.position) < plan.write_pos);
    plan.index_entries_on_disk = entries_on_disk.min(entries.len());
    if entries.is_empty() {
        plan.index_entries_before = 0; // nothing in memory to continue from: the index is written anew
    }
    plan.index_entries = entries;
    Ok(plan)
}

/// The position of the first frame in `from..end` whose offset is at least `offset`, or `u64::MAX` if there is none:
/// found from the nearest index entry at or below it, reading at most one index interval of frames. The walk kept no
/// positions (its memory must not grow with the tail); this reads a few KiB again instead.
fn first_at_or_above(
    file: &Arc<dyn StorageFile>,
    header: &SegmentHeader,
    entries: &[IndexEntry],
    from: u64,
    offset: u64,
    end: u64,
) -> std::io::Result<u64> {
    let rel = offset.saturating_sub(header.base_offset);
    let before = entries.partition_point(|e| u64::from(e.rel_offset) <= rel);
    let (position, first) = match before.checked_sub(1).map(|i| entries[i]) {
        Some(entry) if u64::from(entry.position) >= from => {
            (u64::from(entry.position), header.base_offset + u64::from(entry.rel_offset))
        }
        _ => (from, header.base_offset), // no index entry helps: walk from the scan's start
    };
    let mut frames = FrameReader::new(file.clone(), header.segment_id, Order::Increasing, position, end, first);
    loop {
        match frames.next()? {
            Next::Frame { position, frame } if frame.offset >= offset => return Ok(position),
            Next::Frame { .. } => {}
            Next::Stop { .. } => return Ok(u64::MAX),
        }
    }
}

/// Writes the file's bytes in `from..to` again, as they are (read a chunk at a time), so that pages the kernel
/// holds clean but never wrote (after a failed writeback) are dirty again and the next fsync writes them.
pub(crate) fn rewrite_range(file: &dyn StorageFile, from: u64, to: u64) -> std::io::Result<()> {
    const CHUNK_BYTES: u64 = 1 << 20;
    let mut position = from;
    while position < to {
        let chunk = read_range(file, position, CHUNK_BYTES.min(to - position) as usize)?;
        if chunk.is_empty() {
            break;
        }
        file.write_all_at(&chunk, position)?;
        position += chunk.len() as u64;
    }
    Ok(())
}

/// The last segment as open found it: its file, decoded header and length in bytes.
struct LastSegment {
    file: Arc<dyn StorageFile>,
    header: SegmentHeader,
    len: u64,
}

/// Finds the end of the last segment and repairs what follows it, as the recovery mode says.
fn recover_tail(
    storage: &dyn Storage,
    dir: &Path,
    last: LastSegment,
    durable_end: u64,
    report: &mut RecoveryReport,
) -> Result<(RecoveredTail, bool)> {
    let LastSegment { file, header, len } = last;
    let path = dir.join(segment_file_name(header.base_offset));
    let plan = plan_tail(storage, dir, &file, header, len, report.mode, durable_end)?;
    report.scanned_bytes = plan.scanned_bytes;
    for skipped in &plan.skipped {
        tracing::warn!(path = %path.display(), position = skipped.position, "skipping damaged region");
    }
    report.skipped.extend(plan.skipped);
    let cut_made = plan.cut.is_some();
    if let Some(cut) = plan.cut {
        tracing::warn!(path = %path.display(), position = cut.position, bytes = cut.bytes, "cutting torn tail");
        // Cut and fsync before writing anything new: stale frames past the cut must not resurface after a crash.
        file.set_len(cut.position).map_err(io_err("truncate torn tail", &path))?;
        report.truncations.push(cut);
    }
    // Frames read back may so far live only in the page cache (after a process crash): make them durable before
    // new frames claim, through durable_below, that they are. An fsync alone is not enough: if the previous owner's
    // fsync failed, Linux marked those pages clean without writing them (and the owner was poisoned), so a new
    // fsync would skip them. Writing the unproven frames again makes them dirty, and the fsync then covers them.
    // A failure here (a full copy-on-write file system needs new blocks even for the same bytes) is not fatal:
    // the fsync below still covers whatever the last owner's writeback did not lose.
    // After a clean close (every frame proven, nothing cut) there is nothing to make durable: no fsync, and open
    // writes nothing to the segment.
    let unproven_from = plan.unproven_from.min(plan.write_pos);
    if unproven_from < plan.write_pos || cut_made {
        if let Err(error) = rewrite_range(file.as_ref(), unproven_from, plan.write_pos) {
            tracing::warn!(path = %path.display(), %error, "cannot write the unproven tail again before its fsync");
        }
        file.sync_all().map_err(io_err("fsync segment", &path))?;
    }
    let entries = plan.index_entries;
    let cadence = IndexCadence::after(entries.last().map_or(SEGMENT_HEADER_BYTES as u64, |e| u64::from(e.position)));
    let tail = RecoveredTail {
        write_pos: plan.write_pos,
        next_offset: plan.next_offset,
        index_entries_before: plan.index_entries_before,
        index_entries: entries,
        index_entries_on_disk: plan.index_entries_on_disk,
        cadence,
        running_max: plan.running_max,
    };
    Ok((tail, plan.roll_needed))
}
