//! The ordered segments of a queue: appending (with rolls to new segments), and finding where to read.
//!
//! Invariants, checked where relied on:
//! - `active.header.base_offset <= durable_offset <= active.next_offset`: everything in sealed segments is durable.
//! - every frame written carries `durable_below = durable_offset` at the time of writing, and `durable_offset` only
//!   grows after an fsync that covered it succeeded, so a frame never claims durability that did not exist.
//! - once `poisoned` is set (an fsync or write failed with an unknown outcome), nothing more is acknowledged.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::commit::{self, SyncParts, SyncState, SyncToken, Syncable};
use crate::dedup::{self, DedupWindow, Seen};
use crate::error::{is_disk_full, Error, Result};
use crate::message::{AsParts, Parts};
use crate::options::{Durability, Settings};
use crate::record;
use crate::segment::walk::Order;
use crate::segment::{ActiveSegment, FrameReader, OpenSealed, SealedFile, SealedSegment, SEGMENT_HEADER_BYTES};
use crate::signal::Signal;
use crate::storage::{Storage, StorageFile};

/// Counters for [`Stats`](crate::Stats) that are bumped outside the log's lock (appends are counted in
/// [`LogState`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fsyncs: AtomicU64,
    /// The longest fsync of the log so far, in microseconds.
    pub(crate) slowest_fsync_us: AtomicU64,
    pub(crate) rolls: AtomicU64,
    /// The buffer writer's warning that it cannot write.
    buffer_warning: crate::clock::WarningThrottle,
    /// Background threads that panicked (each poisoned the log).
    pub(crate) background_panics: AtomicU64,
}

/// The log of one queue.
#[derive(Debug)]
pub(crate) struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) settings: Settings,
    /// Bytes of appended frames held in memory before they are written (0: every append is written before it
    /// returns). Only in `None` and `Interval` modes; see `QueueBuilder::write_buffer_bytes`.
    pub(crate) write_buffer_bytes: usize,
    pub(crate) state: Mutex<LogState>,
    /// Signalled when `durable_offset` grows, a sync ends, or the log is poisoned or closed.
    pub(crate) durable_cv: Condvar,
    /// Bumped when more data becomes visible to readers, and on close.
    pub(crate) signal: Arc<Signal>,
    pub(crate) counters: Counters,
    /// Base offsets of sealed segments whose index a reader found unusable (see [`Log::take_stale_indexes`]).
    stale_indexes: Mutex<std::collections::BTreeSet<u64>>,
    /// Recently used sealed segments, open with their index loaded, most recent first (see `open_sealed`).
    open_segments: Mutex<std::collections::VecDeque<(u64, Arc<OpenSealed>)>>,
    /// Counts `forget_open_segment` calls: a segment opened while one ran is not cached (it may be the old file).
    segments_forgotten: AtomicU64,
    /// Set by `Queue::shutdown`: groups hand out no more messages; appends and answers go on until close.
    draining: std::sync::atomic::AtomicBool,
    /// Mirrors `LogState::closed` for checks that need not take the log's lock: every group operation asks,
    /// and the lock is the appenders'.
    closed: std::sync::atomic::AtomicBool,
    /// Every offset below this is purged (`Queue::purge_until`, recorded in the manifest first): readers skip it
    /// even where a segment still holds it. Only grows.
    purged_below: AtomicU64,
    fsync_histogram: crate::telemetry::FsyncHistogram,
    /// Waits for the log's durability on behalf of the async API's tasks (the groups' journals have their own,
    /// `GroupContext::syncer`), and runs their appends that start a segment.
    pub(crate) syncer: crate::nonblocking::Syncer,
}

/// What [`Log::visibility`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Visibility {
    Visible,
    /// Not yet appended, or not yet acknowledged: a bump of the log's signal may change that.
    NotYet,
    /// The log is closed: it never will be.
    Never,
    /// A failed fsync poisoned the log: nothing more becomes visible until it is reopened.
    Poisoned,
}

/// Whether an append may start a new segment (which seals the full one with an fsync) on the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rolls {
    Allowed,
    /// The async API: a roll's fsyncs must not run on an executor.
    Refused,
}

/// What [`Log::append_unsynced`] did.
#[derive(Debug)]
pub(crate) enum Written {
    Appended(Appended),
    /// Nothing: the messages need a new segment.
    NeedsRoll,
}

/// Appends written to the log, not yet acknowledged: what [`Log::append`] and the async append do next.
#[derive(Debug)]
pub(crate) struct Appended {
    pub(crate) first_offset: u64,
    /// Acknowledge everything below this.
    pub(crate) end_offset: u64,
    /// Why a batch stopped partway, and how many of its messages were appended before.
    stopped: Option<(usize, Error)>,
}

impl Appended {
    /// The append's answer, given the acknowledgement's.
    pub(crate) fn answer(self, acknowledged: Result<()>) -> Result<u64> {
        let acknowledged = acknowledged.map(|()| self.first_offset);
        match self.stopped {
            None => acknowledged,
            Some((appended, cause)) => acknowledged.and(Err(Error::BatchIncomplete {
                first_offset: crate::message::Offset(self.first_offset),
                appended,
                cause: Box::new(cause),
            })),
        }
    }
}

/// Sealed segments kept open by the log's cache: a bound on descriptors and index memory (an index is 16 bytes per
/// 4 KiB of segment: 256 KiB for a 64 MiB one).
const OPEN_SEGMENTS_MAX: usize = 16;

/// The mutable part of the log, behind its lock.
#[derive(Debug)]
pub(crate) struct LogState {
    pub(crate) sealed: Vec<Arc<SealedSegment>>,
    pub(crate) active: ActiveSegment,
    /// Every offset below this is on disk.
    pub(crate) durable_offset: u64,
    /// The byte position in the active segment up to which it is on disk.
    pub(crate) durable_pos: u64,
    pub(crate) sync: SyncState,
    pub(crate) closed: bool,
    /// Messages appended, and their frames' bytes (counted under the lock, which appends hold anyway).
    pub(crate) appends: u64,
    pub(crate) appended_bytes: u64,
    /// Reused by each append: where its frames start in the encode buffer, and their timestamps.
    frame_starts: (Vec<usize>, Vec<u64>),
    /// Producer deduplication's window (`None`: off).
    dedup: Option<DedupWindow>,
}

impl LogState {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        if self.sync.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    fn check_invariants(&self) {
        debug_assert!(self.active.header.base_offset <= self.durable_offset);
        debug_assert!(self.durable_offset <= self.active.written_offset);
        debug_assert!(self.active.written_offset <= self.active.next_offset);
        debug_assert!(self.durable_pos <= self.active.written_pos);
        debug_assert!(self.active.written_pos <= self.active.write_pos);
    }
}

/// A readable stretch of one segment: an open handle of its file (which a reader keeps, so that cleanup or
/// compaction replacing the name does not disturb it), where to start, and how far it may read.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) base_offset: u64,
    pub(crate) segment_id: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn StorageFile>,
    pub(crate) kind: WindowKind,
    /// Where reading starts: a frame boundary (found by the index).
    pub(crate) start_pos: u64,
    /// The offset of the frame at `start_pos` (with `WindowKind::Sealed`, at most that offset).
    pub(crate) start_offset: u64,
    /// The visible end: bytes past it are not read.
    pub(crate) end_pos: u64,
    /// The base offset of the next segment: no frame of this one has an offset at or past it.
    pub(crate) offsets_end: u64,
    /// Whether the segment before this one is lost: this segment's header names a predecessor (see
    /// `SegmentHeader::previous_base`) other than the segment listed before it. The oldest listed segment's
    /// predecessor was deleted by cleanup or a limit, never lost, so it is never flagged.
    pub(crate) predecessor_lost: bool,
}

/// Which kind of segment a window reads; it decides the offset order the reader checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    /// The segment being written: contiguous offsets, an end that grows.
    Active,
    /// A sealed segment: increasing offsets (compaction leaves gaps), a fixed end.
    Sealed,
}

impl Window {
    /// The frame order of this window's segment.
    pub(crate) fn order(&self) -> Order {
        match self.kind {
            WindowKind::Active => Order::Contiguous,
            WindowKind::Sealed => Order::Increasing,
        }
    }

    fn sealed(
        segment: &SealedSegment,
        sealed: SealedFile,
        start: (u64, u64),
        offsets_end: u64,
        expected_previous: Option<u64>,
    ) -> Window {
        Window {
            base_offset: segment.base_offset,
            segment_id: sealed.header.segment_id,
            path: segment.path.clone(),
            file: sealed.file,
            kind: WindowKind::Sealed,
            start_pos: start.0,
            start_offset: start.1,
            end_pos: sealed.len_bytes,
            offsets_end,
            predecessor_lost: predecessor_lost(sealed.header.previous_base, expected_previous),
        }
    }
}

/// What changed in the segment being written, for a reader that has read it to its visible end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// More of it is visible: up to this position.
    Grew(u64),
    /// Nothing new, and it is still the one being written.
    Unchanged,
    /// It is sealed now (whole and fsynced; the reader's handle gives its length), or gone.
    NotActive,
}

/// The durable frames of the segment being written (see [`Log::durable_active`]).
pub(crate) struct DurableActive {
    pub(crate) path: PathBuf,
    pub(crate) frames: FrameReader,
}

/// A lookup target in the list of segments.
enum Slot {
    /// `expected_previous`: the segment listed before this one (`None` for the oldest listed).
    Sealed {
        segment: Arc<SealedSegment>,
        offsets_end: u64,
        expected_previous: Option<u64>,
    },
    Active(Window),
}

/// Whether a segment naming `named` as its predecessor, listed after `expected`, follows a lost segment.
fn predecessor_lost(named: Option<u64>, expected: Option<u64>) -> bool {
    matches!((named, expected), (Some(named), Some(expected)) if named != expected)
}

/// How often a lookup retries when the segment it picked was unlinked by cleanup meanwhile.
const LOOKUP_ATTEMPTS_MAX: usize = 8;

impl Log {
    pub(crate) fn new(
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        settings: Settings,
        write_buffer_bytes: usize,
        signal: Arc<Signal>,
        sealed: Vec<Arc<SealedSegment>>,
        active: ActiveSegment,
    ) -> Log {
        debug_assert!(write_buffer_bytes == 0 || !settings.durability.acknowledges_durable());
        let state = LogState {
            sealed,
            durable_offset: active.next_offset,
            durable_pos: active.write_pos,
            active,
            sync: SyncState::default(),
            closed: false,
            appends: 0,
            appended_bytes: 0,
            frame_starts: (Vec::new(), Vec::new()),
            dedup: settings.dedup_window_ms.map(|window_ms| {
                let messages = settings.dedup_window_messages.unwrap_or(crate::limits::DEDUP_WINDOW_MESSAGES_DEFAULT);
                DedupWindow::new(window_ms, messages)
            }),
        };
        let fsync_histogram = crate::telemetry::FsyncHistogram::new(&dir, "segment");
        Log {
            dir,
            storage,
            settings,
            write_buffer_bytes,
            state: Mutex::new(state),
            durable_cv: Condvar::new(),
            signal,
            counters: Counters::default(),
            stale_indexes: Mutex::default(),
            open_segments: Mutex::default(),
            segments_forgotten: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            purged_below: AtomicU64::new(0),
            fsync_histogram,
            syncer: crate::nonblocking::Syncer::default(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LogState> {
        // The lock is never held across user code, so poisoning would mean a bug in walq: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a message against the limits, before anything is written.
    pub(crate) fn check_message(&self, message: Parts<'_>) -> Result<()> {
        let size = record::payload_len(message);
        if size > self.settings.message_bytes_max {
            return Err(Error::MessageTooLarge { size, max: self.settings.message_bytes_max });
        }
        if dedup::message_id(&message).is_some_and(|id| id.is_empty() || id.len() > crate::limits::DEDUP_ID_BYTES_MAX) {
            return Err(Error::InvalidHeader { reason: "a dedup id must be 1 to DEDUP_ID_BYTES_MAX (256) bytes" });
        }
        record::check_headers(message).map_err(|reason| Error::InvalidHeader { reason })
    }

    /// Appends messages; returns the first one's offset. Returns when the queue's durability mode says the
    /// messages are acknowledged. A batch is not atomic: after a crash a prefix of it may survive.
    pub(crate) fn append<M: AsParts>(&self, messages: &[M]) -> Result<u64> {
        let (state, written) = self.write_appends(messages, Rolls::Allowed)?;
        let Written::Appended(appended) = written else { unreachable!("rolls are allowed") };
        let acknowledged = self.acknowledge(state, appended.end_offset);
        appended.answer(acknowledged)
    }

    /// Appends messages without waiting for an fsync (the async API): in the modes that acknowledge durability,
    /// the caller then waits for [`Log::make_durable`] up to `end_offset`, off its own thread. Appends that need
    /// a new segment (a roll seals the full one with an fsync) are not made: [`Written::NeedsRoll`], for the
    /// caller to append them off its thread too.
    pub(crate) fn append_unsynced<M: AsParts>(&self, messages: &[M]) -> Result<Written> {
        let (state, written) = self.write_appends(messages, Rolls::Refused)?;
        drop(state);
        if matches!(written, Written::Appended(_)) && !self.settings.durability.acknowledges_durable() {
            self.signal.notify(); // visible now; in the other modes, once durable
        }
        Ok(written)
    }

    /// Returns once everything below `end_offset` is durable, leading or joining a group-commit round (also in
    /// `Durability::Sync`: one fsync after the writes covers them as one per write would).
    pub(crate) fn make_durable(&self, end_offset: u64) -> Result<()> {
        let state = self.lock();
        commit::wait_durable(&self.state, self.sync_parts(), state, end_offset)
    }

    /// Checks and writes (or buffers) messages; returns with the lock held, for the acknowledgement.
    fn write_appends<M: AsParts>(&self, messages: &[M], rolls: Rolls) -> Result<(MutexGuard<'_, LogState>, Written)> {
        for message in messages {
            self.check_message(message.parts())?;
        }
        let now_ms = crate::clock::now_ms();
        let mut state = self.lock();
        state.check_open()?;
        let mut ids = Vec::new();
        // Only with deduplication on: an append without it pays nothing for it.
        let kept_from = if state.dedup.is_some() { self.first_offset(&state) } else { 0 };
        if let Some(window) = state.dedup.as_mut() {
            ids = messages.iter().map(|m| dedup::message_id(&m.parts()).map(|id| window.hash(id))).collect();
            if let Seen::Appended { first_offset } = window.check(&ids, now_ms, kept_from)? {
                // Answered as the first append was: acknowledged as the mode says (in `GroupCommit`, once durable).
                let end_offset = (first_offset + messages.len() as u64).min(state.active.next_offset);
                return Ok((state, Written::Appended(Appended { first_offset, end_offset, stopped: None })));
            }
        }
        if rolls == Rolls::Refused && self.needs_roll(&state, messages) {
            return Ok((state, Written::NeedsRoll));
        }
        let first_offset = state.active.next_offset;
        let mut done = 0;
        let mut stopped = None;
        while done < messages.len() {
            let written = self.write_chunk(&mut state, &messages[done..], now_ms).and_then(|written| {
                if written == 0 {
                    self.roll(&mut state)?;
                }
                Ok(written)
            });
            match written {
                Ok(written) => done += written,
                Err(error) if done == 0 => return Err(error),
                Err(error) => {
                    // A prefix is in the log and visible to readers: say exactly how much, acknowledged as the mode
                    // says, so that a retry sends only the rest.
                    stopped = Some((done, error));
                    break;
                }
            }
        }
        if let Some(window) = state.dedup.as_mut() {
            for (offset, id) in (first_offset..).zip(&ids[..done]) {
                if let Some(id) = *id {
                    window.remember(id, offset, now_ms);
                }
            }
        }
        let end_offset = state.active.next_offset;
        Ok((state, Written::Appended(Appended { first_offset, end_offset, stopped })))
    }

    /// Whether appending `messages` would start a new segment (`write_chunk`'s rule for what fits).
    fn needs_roll<M: AsParts>(&self, state: &LogState, messages: &[M]) -> bool {
        let bytes: u64 = messages.iter().map(|m| record::frame_len(m.parts()) as u64).sum();
        let size_max = self.settings.segment_bytes_max;
        // An empty segment takes its first message whatever its size (the settings make the largest fit).
        let fits_empty = state.active.is_empty() && (bytes <= size_max || messages.len() == 1);
        !fits_empty && state.active.write_pos + bytes > size_max
    }

    /// Returns once appends up to `end_offset` are acknowledged as the durability mode says.
    fn acknowledge(&self, state: MutexGuard<'_, LogState>, end_offset: u64) -> Result<()> {
        match self.settings.durability {
            Durability::Sync => commit::sync_holding_lock(self.sync_parts(), state),
            Durability::GroupCommit => commit::wait_durable(&self.state, self.sync_parts(), state, end_offset),
            Durability::Interval(_) | Durability::None => {
                drop(state);
                self.signal.notify();
                Ok(())
            }
        }
    }

    /// Encodes and writes as many of `messages` as fit in the active segment; returns how many.
    fn write_chunk<M: AsParts>(&self, state: &mut LogState, messages: &[M], now_ms: u64) -> Result<usize> {
        let (mut starts, mut times) = std::mem::take(&mut state.frame_starts);
        starts.clear();
        times.clear();
        let crc = state.active.crc.clone();
        let (durable_below, empty, write_pos) = (state.durable_offset, state.active.is_empty(), state.active.write_pos);
        let (next_offset, size_max) = (state.active.next_offset, self.settings.segment_bytes_max);
        let buf = state.active.frame_buffer();
        let from = buf.len();
        for (offset, message) in (next_offset..).zip(messages) {
            let message = message.parts();
            let frame_bytes = record::frame_len(message);
            // The settings guarantee that the largest message fits an empty segment.
            let fits = (empty && starts.is_empty()) || write_pos + (buf.len() - from + frame_bytes) as u64 <= size_max;
            if !fits {
                break;
            }
            starts.push(buf.len() - from);
            let timestamp_ms = message.timestamp_ms.unwrap_or(now_ms);
            times.push(timestamp_ms);
            record::encode(buf, &crc, offset, durable_below, timestamp_ms, message);
        }
        let bytes = (buf.len() - from) as u64;
        let written = starts.len();
        let result = if written == 0 {
            Ok(())
        } else {
            state.active.commit_frames(from, (&starts, &times), self.write_buffer_bytes)
        };
        state.frame_starts = (starts, times);
        match result {
            Ok(()) => {
                state.appends += written as u64;
                state.appended_bytes += bytes;
                state.check_invariants();
                Ok(written)
            }
            // ENOSPC leaves the log as it was: the next write overwrites whatever part landed.
            Err(e) if is_disk_full(&e) => Err(Error::DiskFull),
            Err(e) => {
                self.poison(state, "write");
                Err(Error::io("append", &state.active.path, e))
            }
        }
    }

    /// Seals the active segment and starts the next: the old one is cut and fsynced, the new one created with its
    /// header fsynced, and the directory fsynced, before any record in the new segment can be acknowledged.
    fn roll(&self, state: &mut LogState) -> Result<()> {
        self.write_pending(state)?; // a full disk here is not fatal: the buffered frames stay, as does the segment
        if let Err(e) = state.active.seal() {
            self.poison(state, "seal");
            return Err(Error::io("seal segment", &state.active.path, e));
        }
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        let base_offset = state.active.next_offset;
        let previous = Some(state.active.header.base_offset);
        let reserve = self.settings.reserve_bytes();
        let new = ActiveSegment::create(self.storage.as_ref(), &self.dir, base_offset, previous, reserve)?;
        if let Err(e) = self.storage.sync_dir(&self.dir) {
            let _ = self.storage.remove_file(&new.path);
            self.poison(state, "directory fsync");
            return Err(Error::io("fsync directory", &self.dir, e));
        }
        self.counters.fsyncs.fetch_add(2, Ordering::Relaxed);
        self.counters.rolls.fetch_add(1, Ordering::Relaxed);
        let old = std::mem::replace(&mut state.active, new);
        tracing::debug!(sealed = %old.path.display(), next = base_offset, "rolled segment");
        if old.index_needs_rebuild() {
            self.note_stale_index(old.header.base_offset);
        }
        state.sealed.push(Arc::new(SealedSegment::new(self.storage.clone(), &self.dir, old.header.base_offset)));
        // The seal fsynced everything before the new segment.
        state.durable_offset = base_offset;
        state.durable_pos = SEGMENT_HEADER_BYTES as u64;
        state.check_invariants();
        self.durable_cv.notify_all();
        self.signal.notify();
        Ok(())
    }

    /// Seals a segment that recovery salvaged with holes, so that appends go to a contiguous new one.
    pub(crate) fn roll_after_salvage(&self) -> Result<()> {
        let mut state = self.lock();
        self.roll(&mut state)
    }

    /// A background thread's task panicked (a bug): counted, and the queue is poisoned so that it is loud.
    pub(crate) fn note_background_panic(&self) {
        self.counters.background_panics.fetch_add(1, Ordering::Relaxed);
        self.poison(&mut self.lock(), "background thread");
    }

    pub(crate) fn poison(&self, state: &mut LogState, operation: &'static str) {
        tracing::error!(operation, dir = %self.dir.display(), "I/O failed with unknown outcome; queue poisoned until reopened");
        state.sync.poisoned = true;
        self.durable_cv.notify_all();
        self.signal.notify();
    }

    pub(crate) fn sync_parts(&self) -> SyncParts<'_> {
        SyncParts {
            fsyncs: &self.counters.fsyncs,
            slowest_sync_us: &self.counters.slowest_fsync_us,
            fsync_histogram: &self.fsync_histogram,
            durable_cv: &self.durable_cv,
            signal: &self.signal,
            path: &self.dir,
        }
    }

    /// Writes the frames waiting in the write buffer to the file. A full disk leaves them buffered (and returns
    /// [`Error::DiskFull`]); any other failure poisons the log, since what reached the file is unknown.
    fn write_pending(&self, state: &mut LogState) -> Result<()> {
        if !state.active.has_pending() {
            return Ok(());
        }
        match state.active.write_pending() {
            Ok(()) => {
                state.check_invariants();
                self.signal.notify();
                Ok(())
            }
            Err(e) if is_disk_full(&e) => Err(Error::DiskFull),
            Err(e) => {
                self.poison(state, "write");
                Err(Error::io("append", &state.active.path, e))
            }
        }
    }

    /// For the write buffer's ticker: hands buffered frames to the OS, so that they do not wait for the buffer to
    /// fill (a process crash loses what is buffered).
    pub(crate) fn write_pending_now(&self) {
        let mut state = self.lock();
        if state.closed || state.sync.poisoned {
            return;
        }
        if let Err(error) = self.write_pending(&mut state) {
            // Tried every few milliseconds while the disk is full: said once per interval, not every time.
            if self.counters.buffer_warning.ready() {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot write buffered appends; they stay buffered");
            }
        }
    }

    /// Makes everything appended so far durable, whatever the durability mode.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut state = self.lock();
        state.check_open()?;
        self.write_pending(&mut state)?;
        let target = state.active.next_offset;
        commit::wait_durable(&self.state, self.sync_parts(), state, target)
    }

    /// For the interval flusher: syncs if anything is not yet durable. Failures poison the log.
    pub(crate) fn sync_if_behind(&self) {
        // A bug planted on purpose, compiled only with `--cfg walq_planted_no_interval_fsync`: CI checks that the
        // R12 loss-bound test fails when the interval flusher never fsyncs (a test that cannot fail proves nothing).
        if cfg!(walq_planted_no_interval_fsync) {
            return;
        }
        let mut state = self.lock();
        if state.closed || state.sync.poisoned || state.sync.syncing {
            return;
        }
        if let Err(error) = self.write_pending(&mut state) {
            // Tried every few milliseconds while the disk is full: said once per interval, not every time.
            if self.counters.buffer_warning.ready() {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot write buffered appends; they stay buffered");
            }
        }
        if state.durable_offset >= state.active.written_offset {
            return;
        }
        let target = state.active.written_offset;
        let _ = commit::wait_durable(&self.state, self.sync_parts(), state, target);
    }

    /// Flushes, trims the active segment's preallocated space, and refuses further work.
    ///
    /// Returns the offset below which everything is durable when this call closed the log (`None` when it was
    /// closed already), for the manifest's `durable_end_offset`.
    pub(crate) fn close(&self) -> Result<Option<u64>> {
        let mut state = self.lock();
        if state.closed {
            return Ok(None);
        }
        let synced = if state.sync.poisoned {
            drop(state);
            Err(Error::Poisoned)
        } else {
            // What cannot be written (a full disk) is not claimed durable: the target is what reached the file.
            let written = self.write_pending(&mut state);
            let target = state.active.written_offset;
            written.and(commit::wait_durable(&self.state, self.sync_parts(), state, target))
        };
        let mut state = self.lock();
        if state.closed {
            return synced.map(|()| None); // another clone closed it meanwhile
        }
        let trimmed = if state.sync.poisoned {
            Err(Error::Poisoned)
        } else {
            let (path, durable_pos) = (state.active.path.clone(), state.durable_pos);
            state.active.trim(durable_pos).map_err(|e| Error::io("close segment", path, e))
        };
        let durable_end = state.active.next_offset;
        state.closed = true;
        self.closed.store(true, Ordering::Release);
        self.durable_cv.notify_all();
        self.signal.notify();
        synced.and(trimmed).map(|()| Some(durable_end))
    }

    /// The end of what readers may see: durable data in the modes that acknowledge durability, written data in the
    /// others.
    pub(crate) fn visible_end(&self, state: &LogState) -> (u64, u64) {
        if self.settings.durability.acknowledges_durable() {
            (state.durable_offset, state.durable_pos)
        } else {
            (state.active.written_offset, state.active.written_pos)
        }
    }

    /// The offset after the last acknowledged append: durable ones in the modes that acknowledge durability,
    /// written or buffered ones in the others.
    pub(crate) fn acknowledged_end(&self, state: &LogState) -> u64 {
        if self.settings.durability.acknowledges_durable() {
            state.durable_offset
        } else {
            state.active.next_offset
        }
    }

    /// Where a time lookup (`Queue::offset_for_time`) starts reading: in the first segment whose greatest
    /// timestamp reaches `time_ms` (every frame of the segments before it is earlier), at the last indexed frame
    /// before which every frame is earlier. Reading on from there, the first record at or after `time_ms` is the
    /// answer, whatever the order of the timestamps. Costs the sealed segments' cached maxima (each found once per
    /// process: the index's last entry and the frames after it), then one segment's index.
    pub(crate) fn offset_for_time_start(&self, time_ms: u64) -> Result<u64> {
        // The sealed list and the active segment are taken together, and the active one checked again at the end: a
        // roll meanwhile would otherwise leave the segment it sealed out of the walk.
        for _ in 0..LOOKUP_ATTEMPTS_MAX {
            let (sealed, active_base) = {
                let state = self.lock();
                (state.sealed.clone(), state.active.header.base_offset)
            };
            let purged_below = self.purged_below();
            let ends = sealed.iter().skip(1).map(|s| s.base_offset).chain([active_base]);
            for (segment, end) in sealed.iter().zip(ends) {
                if end <= purged_below {
                    continue; // purged whole: its times do not count
                }
                let bound = match segment.max_timestamp_ms() {
                    Ok(bound) => bound,
                    Err(error) if error.is_not_found() && !self.is_listed(segment) => continue, // deleted meanwhile
                    Err(error) => return Err(error),
                };
                if !bound.index_usable {
                    self.note_stale_index(segment.base_offset);
                }
                if bound.max_ms.is_none_or(|max| max < time_ms) {
                    continue; // no frame, or every frame earlier
                }
                let start = match self.open_sealed(segment) {
                    Ok(open) => open.offset_for_time_start(time_ms),
                    Err(error) if error.is_not_found() && !self.is_listed(segment) => continue,
                    Err(error) => return Err(error),
                };
                return Ok(start.max(purged_below));
            }
            let state = self.lock();
            if state.active.header.base_offset == active_base {
                // Only entries of frames readers can see: one past the visible end sends a reader to the start.
                let visible_pos = self.visible_end(&state).1;
                return Ok(state.active.offset_for_time_start(time_ms, visible_pos).max(purged_below));
            }
        }
        // Rolling faster than a walk: start at the oldest segment not purged, which is always right.
        Ok(self.first_offset(&self.lock()))
    }

    /// Seeds producer deduplication's window with ids read back at open: `(id, offset, timestamp)`, oldest first.
    pub(crate) fn remember_dedup_ids(&self, ids: Vec<(Vec<u8>, u64, u64)>) {
        if let Some(window) = self.lock().dedup.as_mut() {
            for (id, offset, timestamp_ms) in ids {
                let id = window.hash(&id);
                window.remember(id, offset, timestamp_ms);
            }
        }
    }

    /// How many message ids deduplication remembers (`None`: off): what an open reads back to rebuild it.
    pub(crate) fn dedup_capacity(&self) -> Option<usize> {
        self.lock().dedup.as_ref().map(DedupWindow::capacity)
    }

    /// The first offset stored and not purged (the base of the oldest segment, or the purge point above it).
    pub(crate) fn first_offset(&self, state: &LogState) -> u64 {
        let base = state.sealed.first().map_or(state.active.header.base_offset, |s| s.base_offset);
        base.max(self.purged_below())
    }

    /// Every offset below this is purged: no read returns it.
    pub(crate) fn purged_below(&self) -> u64 {
        self.purged_below.load(Ordering::Acquire)
    }

    /// Purges every offset below `offset` for readers (the caller recorded it in the manifest first). Never moves
    /// the point back, and never past the appended messages: offsets not yet given out cannot be purged (at open,
    /// a purge recorded past a tail the crash lost ends at the recovered end).
    pub(crate) fn purge_below(&self, offset: u64) {
        let state = self.lock();
        self.purged_below.fetch_max(offset.min(state.active.next_offset), Ordering::AcqRel);
    }

    fn active_window(&self, state: &LogState, start: (u64, u64)) -> Window {
        let end_pos = self.visible_end(state).1;
        // An index entry can name a frame not visible yet (in the write buffer, or not durable): start at the
        // segment's first frame then, never past the visible end.
        let start =
            if start.0 > end_pos { (SEGMENT_HEADER_BYTES as u64, state.active.header.base_offset) } else { start };
        Window {
            base_offset: state.active.header.base_offset,
            segment_id: state.active.header.segment_id,
            path: state.active.path.clone(),
            file: state.active.file.clone(),
            kind: WindowKind::Active,
            start_pos: start.0,
            start_offset: start.1,
            end_pos,
            offsets_end: u64::MAX,
            predecessor_lost: predecessor_lost(
                state.active.header.previous_base,
                state.sealed.last().map(|s| s.base_offset),
            ),
        }
    }

    /// The sealed segment at `i` of the list, with the offset its successor starts at.
    fn sealed_slot(state: &LogState, i: usize) -> Slot {
        let offsets_end = state.sealed.get(i + 1).map_or(state.active.header.base_offset, |s| s.base_offset);
        let expected_previous = i.checked_sub(1).map(|previous| state.sealed[previous].base_offset);
        Slot::Sealed { segment: state.sealed[i].clone(), offsets_end, expected_previous }
    }

    /// The segment holding `offset` (or the first one after it), positioned near it by the index.
    pub(crate) fn window_for(&self, offset: u64) -> Result<Window> {
        self.look_up(|state| {
            let i = state.sealed.partition_point(|s| s.base_offset <= offset);
            let in_sealed =
                i > 0 && offset < state.sealed.get(i).map_or(state.active.header.base_offset, |s| s.base_offset);
            if in_sealed {
                Some((Log::sealed_slot(state, i - 1), offset))
            } else if i == 0 && !state.sealed.is_empty() {
                Some((Log::sealed_slot(state, 0), offset)) // before the oldest segment: start at its beginning
            } else {
                Some((Slot::Active(self.active_window(state, state.active.position_for(offset))), offset))
            }
        })
        .map(|window| window.expect("a lookup by offset always finds a segment"))
    }

    /// The first segment after the one based at `base_offset`, from its beginning.
    pub(crate) fn window_after(&self, base_offset: u64) -> Result<Option<Window>> {
        self.look_up(|state| {
            let i = state.sealed.partition_point(|s| s.base_offset <= base_offset);
            if i < state.sealed.len() {
                Some((Log::sealed_slot(state, i), state.sealed[i].base_offset))
            } else if state.active.header.base_offset > base_offset {
                let start = (SEGMENT_HEADER_BYTES as u64, state.active.header.base_offset);
                Some((Slot::Active(self.active_window(state, start)), start.1))
            } else {
                None
            }
        })
    }

    /// Picks a segment under the lock with `pick`, then opens it outside the lock. A sealed segment unlinked by
    /// cleanup between the two is looked up again (it is no longer listed then); one still listed but missing is
    /// an error: a lost file, not a consumed one.
    fn look_up(&self, pick: impl Fn(&LogState) -> Option<(Slot, u64)>) -> Result<Option<Window>> {
        for _ in 0..LOOKUP_ATTEMPTS_MAX {
            let Some((slot, offset)) = pick(&self.lock()) else { return Ok(None) };
            let (segment, offsets_end, expected_previous) = match slot {
                Slot::Active(window) => return Ok(Some(window)),
                Slot::Sealed { segment, offsets_end, expected_previous } => (segment, offsets_end, expected_previous),
            };
            match self.open_sealed(&segment) {
                Ok(open) => {
                    let start = open.start_for(offset);
                    if !start.index_usable {
                        self.note_stale_index(segment.base_offset);
                    }
                    let sealed = open.sealed.clone();
                    let start = (start.position, start.offset);
                    return Ok(Some(Window::sealed(&segment, sealed, start, offsets_end, expected_previous)));
                }
                Err(error) if error.is_not_found() && !self.is_listed(&segment) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(Error::Io {
            operation: "look up segment",
            path: self.dir.clone(),
            source: std::io::Error::other("segments kept vanishing under the lookup"),
        })
    }

    /// Records that the index of the sealed segment based at `base_offset` could not be used, for maintenance to
    /// rebuild (readers scan from the segment's start meanwhile).
    fn note_stale_index(&self, base_offset: u64) {
        let mut stale = self.stale_indexes.lock().unwrap_or_else(|p| p.into_inner());
        if stale.insert(base_offset) {
            tracing::info!(base_offset, "segment index is missing, stale or damaged; reads scan until it is rebuilt");
        }
    }

    /// The sealed segments whose index a reader found unusable since the last call.
    pub(crate) fn take_stale_indexes(&self) -> Vec<Arc<SealedSegment>> {
        let stale = std::mem::take(&mut *self.stale_indexes.lock().unwrap_or_else(|p| p.into_inner()));
        if stale.is_empty() {
            return Vec::new(); // the common case, every maintenance tick: no log lock taken
        }
        let state = self.lock();
        state.sealed.iter().filter(|s| stale.contains(&s.base_offset)).cloned().collect()
    }

    /// The segment, open with its index loaded: from the cache of open segments, or opened and cached (the least
    /// recently used one leaves when the cache is full, so descriptors stay bounded whatever the segment count).
    fn open_sealed(&self, segment: &SealedSegment) -> Result<Arc<OpenSealed>> {
        let base = segment.base_offset;
        let forgotten_before = {
            let mut cache = self.open_segments.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.iter().position(|(b, _)| *b == base) {
                let entry = cache.remove(i).expect("found above");
                let open = entry.1.clone();
                cache.push_front(entry);
                return Ok(open);
            }
            self.segments_forgotten.load(Ordering::Relaxed)
        };
        let open = Arc::new(segment.open_indexed()?);
        let mut cache = self.open_segments.lock().unwrap_or_else(|p| p.into_inner());
        if self.segments_forgotten.load(Ordering::Relaxed) != forgotten_before {
            // A segment was replaced or deleted while this one was opened: it may be this one, and caching the
            // old file would hand it to every later lookup. This caller reads what it opened, like a reader
            // that held the file before the swap.
            return Ok(open);
        }
        cache.retain(|(b, _)| *b != base);
        cache.push_front((base, open.clone()));
        cache.truncate(OPEN_SEGMENTS_MAX);
        Ok(open)
    }

    /// From now on, consumer groups hand out no more messages (`Queue::shutdown`).
    pub(crate) fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.signal.notify(); // consumers waiting in `recv` see it now
    }

    /// Whether the log is closed, without taking its lock (a check made before an operation: one that races the
    /// close still meets it under the lock).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether `Queue::shutdown` has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Drops the cached open file of the segment based at `base_offset`: it was deleted, or compaction replaced it
    /// (readers already holding the old file read it to its end; new lookups open the new one).
    pub(crate) fn forget_open_segment(&self, base_offset: u64) {
        let mut cache = self.open_segments.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(b, _)| *b != base_offset);
        self.segments_forgotten.fetch_add(1, Ordering::Relaxed); // under the cache lock: see `open_sealed`
    }

    /// Whether `segment` is still in the list of sealed segments.
    fn is_listed(&self, segment: &Arc<SealedSegment>) -> bool {
        self.lock().sealed.iter().any(|s| Arc::ptr_eq(s, segment))
    }

    /// What is new in the segment based at `base_offset`, for a reader that has read it up to `end_pos`.
    pub(crate) fn refresh(&self, base_offset: u64, end_pos: u64) -> Refresh {
        let mut state = self.lock();
        if state.active.header.base_offset != base_offset {
            return Refresh::NotActive;
        }
        if self.visible_end(&state).1 <= end_pos {
            // A reader has caught up with what was written: buffered frames go out now rather than wait.
            let _ = self.write_pending(&mut state);
        }
        let visible = self.visible_end(&state).1;
        if visible > end_pos {
            Refresh::Grew(visible)
        } else {
            Refresh::Unchanged
        }
    }

    /// The sealed segments, oldest first, and the creation time of the active segment (when the newest sealed one
    /// was sealed).
    pub(crate) fn sealed_snapshot(&self) -> (Vec<Arc<SealedSegment>>, u64) {
        let state = self.lock();
        (state.sealed.clone(), state.active.header.created_ms)
    }

    /// The durable part of the segment being written: its frames up to what is fsynced.
    pub(crate) fn durable_active(&self) -> DurableActive {
        let state = self.lock();
        let active = &state.active;
        let frames = FrameReader::new(
            active.file.clone(),
            active.header.segment_id,
            Order::Contiguous,
            SEGMENT_HEADER_BYTES as u64,
            state.durable_pos.max(SEGMENT_HEADER_BYTES as u64),
            active.header.base_offset,
        );
        DurableActive { path: active.path.clone(), frames }
    }

    /// The offset the next append gets.
    pub(crate) fn next_offset(&self) -> u64 {
        self.lock().active.next_offset
    }

    /// The base offset of the active segment.
    pub(crate) fn active_base(&self) -> u64 {
        self.lock().active.header.base_offset
    }

    /// Bytes of the segment files on disk (their lengths, preallocated space included): a `stat` each, outside
    /// the log's lock, so for metrics published now and then, not for a hot path.
    #[cfg(feature = "metrics")]
    pub(crate) fn disk_bytes(&self) -> u64 {
        let paths: Vec<PathBuf> = {
            let state = self.lock();
            state.sealed.iter().map(|s| s.path.clone()).chain([state.active.path.clone()]).collect()
        };
        paths.iter().filter_map(|path| self.storage.file_len(path).ok()).sum()
    }

    /// Bytes written to the active segment.
    pub(crate) fn active_bytes(&self) -> u64 {
        self.lock().active.write_pos
    }

    /// The end (exclusive) of the oldest sealed segment, if there is one.
    pub(crate) fn oldest_sealed_end(&self) -> Option<u64> {
        let state = self.lock();
        state.sealed.first()?;
        Some(state.sealed.get(1).map_or(state.active.header.base_offset, |s| s.base_offset))
    }

    /// The `(first, end)` offset ranges of the oldest sealed segments that end at or below `limit`.
    pub(crate) fn sealed_ranges_below(&self, limit: u64) -> Vec<(u64, u64)> {
        let state = self.lock();
        let ends = state.sealed.iter().skip(1).map(|s| s.base_offset).chain([state.active.header.base_offset]);
        state
            .sealed
            .iter()
            .zip(ends)
            .map(|(s, end)| (s.base_offset, end))
            .take_while(|&(_, end)| end <= limit)
            .collect()
    }

    /// Deletes the oldest sealed segments, whose base offsets are `bases` (in order): files unlinked, directory
    /// fsynced. Readers holding one keep reading it (unlinking does not disturb an open file).
    pub(crate) fn delete_oldest_segments(&self, bases: &[u64]) -> Result<usize> {
        let removed: Vec<Arc<SealedSegment>> = {
            let mut state = self.lock();
            let count = state.sealed.iter().zip(bases).take_while(|(s, &base)| s.base_offset == base).count();
            state.sealed.drain(..count).collect()
        };
        for segment in &removed {
            let removed = self.storage.remove_file(&segment.path);
            // After the unlink: a lookup that opened the file before it is dropped from the cache, or not cached.
            self.forget_open_segment(segment.base_offset);
            removed.map_err(|e| Error::io("delete segment", &segment.path, e))?;
            let _ = self.storage.remove_file(&segment.index_path); // a cache; may be missing
            tracing::info!(segment = %segment.path.display(), "deleted consumed segment");
        }
        if !removed.is_empty() {
            self.storage.sync_dir(&self.dir).map_err(|e| Error::io("fsync directory", &self.dir, e))?;
        }
        Ok(removed.len())
    }

    /// Blocks until the record at `offset` is visible, the timeout passes, or the log closes. Returns whether it
    /// is visible.
    pub(crate) fn wait_visible(&self, offset: u64, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let seen = self.signal.current();
            match self.visibility(offset) {
                Visibility::Visible => return true,
                Visibility::Never | Visibility::Poisoned => return false,
                Visibility::NotYet if std::time::Instant::now() >= deadline => return false,
                Visibility::NotYet => {}
            }
            self.signal.wait_past(seen, deadline);
        }
    }

    /// Whether the record at `offset` is visible, writing the write buffer if that is where it is.
    pub(crate) fn visibility(&self, offset: u64) -> Visibility {
        let mut state = self.lock();
        if self.visible_end(&state).0 <= offset && offset < state.active.next_offset {
            let _ = self.write_pending(&mut state); // it is in the write buffer
        }
        if self.visible_end(&state).0 > offset {
            Visibility::Visible
        } else if state.closed {
            Visibility::Never
        } else if state.sync.poisoned {
            Visibility::Poisoned
        } else {
            Visibility::NotYet
        }
    }
}

impl Syncable for LogState {
    fn sync_state(&mut self) -> &mut SyncState {
        &mut self.sync
    }

    fn durable(&self) -> u64 {
        self.durable_offset
    }

    fn sync_start(&self) -> (Arc<dyn StorageFile>, SyncToken) {
        // Frames still in the write buffer are not in the file: an fsync cannot cover them.
        (self.active.file.clone(), SyncToken { upto: self.active.written_offset, position: self.active.written_pos })
    }

    fn sync_done(&mut self, token: SyncToken) {
        // A roll in between would have moved durable_offset into the new segment, past the token.
        debug_assert!(token.upto >= self.active.header.base_offset);
        self.durable_offset = token.upto;
        self.durable_pos = token.position;
        self.check_invariants();
    }
}
