//! Replaying the log in offset order: [`Reader`], returned by [`Queue::read_from`](crate::Queue::read_from).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::{Error, Result};
use crate::log::{Log, Refresh, Visibility, Window, WindowKind};
use crate::message::{Offset, Record};
use crate::nonblocking::SignalOrTime;
use crate::segment::{FrameReader, Next};

/// An iterator over stored records from some offset on, independent of consumer groups.
///
/// Every frame's checksum is verified; a damaged frame is returned as [`Error::Corrupt`] and ends the iteration
/// (unless the queue was opened with [`RecoveryMode::SkipCorrupt`](crate::RecoveryMode::SkipCorrupt), which skips
/// it). Offsets only increase, with gaps where messages were removed. When the reader has caught up it returns
/// `None`; calling `next` again later returns records appended since.
///
/// A reader holds one segment file open at a time and reads it with `pread` into a reused buffer: a file that
/// shrinks or fails under it gives `Error::Corrupt` or `Error::Io`, never a crash.
/// ///
/// ```
/// use walq::{Message, Offset, Queue};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// let queue = Queue::open(temp.path())?;
/// let mut reader = queue.read_from(Offset::EARLIEST)?;
/// assert!(reader.next().is_none()); // caught up
/// queue.append(Message::new("late"))?;
/// assert_eq!(reader.next().transpose()?.unwrap().offset, Offset(0)); // sees what came since
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Reader {
    log: Arc<Log>,
    /// Keeps the queue open while this reader lives (readers of the public API; a group's own readers need not).
    _queue: Option<KeepOpen>,
    next_offset: u64,
    cursor: Option<Cursor>,
    skip_corrupt: bool,
    failed: bool,
    skipped_regions: u64,
}

/// A strong reference to a queue's shared state, held by every public handle (readers, groups, consumers,
/// deliveries) so that the queue stays open while any of them lives: it closes when the last one is dropped.
/// Opaque here, so that the layers below the queue need not know its type.
pub(crate) type KeepOpen = Arc<dyn std::any::Any + Send + Sync>;

/// The segment being read, and the frames of it read so far.
#[derive(Debug)]
struct Cursor {
    window: Window,
    frames: FrameReader,
}

impl Cursor {
    fn new(window: Window) -> Cursor {
        let frames = FrameReader::new(
            window.file.clone(),
            window.segment_id,
            window.order(),
            window.start_pos,
            window.end_pos,
            window.start_offset,
        );
        Cursor { window, frames }
    }
}

impl Reader {
    pub(crate) fn new(log: Arc<Log>, next_offset: u64, skip_corrupt: bool) -> Reader {
        Reader { log, _queue: None, next_offset, cursor: None, skip_corrupt, failed: false, skipped_regions: 0 }
    }

    /// This reader, keeping the queue open while it lives.
    pub(crate) fn keeping_open(self, queue: KeepOpen) -> Reader {
        Reader { _queue: Some(queue), ..self }
    }

    /// This reader as a [`Follow`]: the async reader that waits for new appends once it has caught up.
    pub fn follow(self) -> Follow {
        let waiting = SignalOrTime::new(self.log.signal.clone());
        Follow { reader: self, waiting }
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
        // A purge since the last record moves this reader past the purged offsets, also inside the segment it reads:
        // it looks the purge point up (by the index) instead of reading every purged frame.
        let purged_below = self.log.purged_below();
        if purged_below > self.next_offset {
            self.next_offset = purged_below;
            self.cursor = None;
        }
        loop {
            let Some(cursor) = &mut self.cursor else {
                self.cursor = Some(Cursor::new(self.log.window_for(self.next_offset)?));
                continue;
            };
            let path = &cursor.window.path;
            if cursor.frames.position() < cursor.frames.end() {
                match cursor.frames.next().map_err(|e| Error::io("read segment", path, e))? {
                    Next::Frame { position, frame } if frame.offset >= cursor.window.offsets_end => {
                        // A frame at or past where the next segment starts is misplaced, whatever its checksum
                        // says (only sealed windows end at an offset: the next segment exists).
                        tracing::warn!(path = %path.display(), position, "frame past the next segment's base offset");
                        if self.skip_corrupt {
                            self.skipped_regions += 1;
                            let at = cursor.frames.position();
                            cursor.frames.set_end(at); // the rest of this segment is misplaced too
                            continue;
                        }
                        let kind = crate::error::CorruptionKind::BadOffset;
                        return Err(Error::Corrupt { file: path.clone(), position, kind });
                    }
                    Next::Frame { frame, .. } if frame.offset < self.next_offset => continue,
                    Next::Frame { frame, .. } => {
                        self.next_offset = frame.offset + 1;
                        return Ok(Some(frame.to_record()));
                    }
                    Next::Stop { position, stop } if self.skip_corrupt => {
                        tracing::warn!(path = %path.display(), position, kind = %stop.kind(), "skipping damaged frame");
                        self.skipped_regions += 1;
                        let offsets = cursor.frames.next_offset()..cursor.window.offsets_end;
                        cursor.frames.skip_damage(offsets).map_err(|e| Error::io("read segment", path, e))?;
                        continue;
                    }
                    Next::Stop { position, stop } => {
                        return Err(Error::Corrupt { file: path.clone(), position, kind: stop.kind() });
                    }
                }
            }
            if cursor.window.kind == WindowKind::Active {
                match self.log.refresh(cursor.window.base_offset, cursor.frames.end()) {
                    Refresh::Grew(end_pos) => {
                        cursor.frames.set_end(end_pos);
                        continue;
                    }
                    Refresh::Unchanged => return Ok(None),
                    Refresh::NotActive => {
                        // Sealed since: the whole file is fsynced and final, and this handle still reads it (a
                        // compaction or cleanup since replaced or removed the name, not the file).
                        let len = cursor.window.file.len_bytes().map_err(|e| Error::io("read segment", path, e))?;
                        cursor.window.kind = WindowKind::Sealed;
                        if len > cursor.frames.end() {
                            cursor.frames.set_end(len);
                            continue;
                        }
                    }
                }
            }
            match self.log.window_after(cursor.window.base_offset)? {
                Some(window) => {
                    // The next segment names another predecessor than the segment listed before it: one in between
                    // is lost (only the oldest segments are ever deleted), not a gap compaction left.
                    if window.predecessor_lost {
                        let kind = crate::error::CorruptionKind::MissingSegment;
                        if !self.skip_corrupt {
                            return Err(Error::Corrupt { file: window.path.clone(), position: 40, kind });
                        }
                        tracing::warn!(path = %window.path.display(), "skipping over a missing segment");
                        self.skipped_regions += 1;
                    }
                    *cursor = Cursor::new(window);
                }
                None => return Ok(None),
            }
        }
    }
}

/// The first offset whose record's timestamp is at or after `time_ms` (`Queue::offset_for_time`): from where the
/// log's time index says every record before is earlier, the first such record read (`Ok`), or where the reading
/// ended without one (`Err`: the visible end). Damage is an error unless `skip_corrupt` (the queue's recovery mode).
pub(crate) fn offset_for_time(log: &Arc<Log>, time_ms: u64, skip_corrupt: bool) -> Result<Result<Offset, u64>> {
    let start = log.offset_for_time_start(time_ms)?;
    let mut reader = Reader::new(log.clone(), start, skip_corrupt);
    for record in reader.by_ref() {
        let record = record?;
        if record.timestamp_ms >= time_ms {
            return Ok(Ok(record.offset));
        }
    }
    Ok(Err(reader.next_offset().0))
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

/// Follows the log without blocking a thread ([`Queue::follow`](crate::Queue::follow), [`Reader::follow`]): the
/// records from some offset on, and then each record as it is appended (acknowledged: in `Sync` and
/// `GroupCommit`, once durable), independent of consumer groups. A [`Stream`](futures_core::Stream), and
/// [`next_record`](Follow::next_record) for code without stream combinators. It ends when the queue closes, or
/// after an error (as [`Reader`]'s iteration does; a poisoned queue is [`Error::Poisoned`]). Runs on any executor.
///
/// Cancel safety: dropping a pending `next_record` (or a stream poll) loses nothing: a record is consumed only by
/// the poll that returns it.
///
/// ```
/// use walq::{Message, Offset, Queue};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// let queue = Queue::open(temp.path())?;
/// let mut follow = queue.follow(Offset::EARLIEST)?;
/// let producer = {
///     let queue = queue.clone();
///     std::thread::spawn(move || queue.append(Message::new("later")))
/// };
/// let record = futures_executor::block_on(follow.next_record()).unwrap()?; // waits for it
/// assert_eq!(record.value.as_deref(), Some(&b"later"[..]));
/// producer.join().unwrap()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Follow {
    reader: Reader,
    waiting: SignalOrTime,
}

impl Follow {
    /// The next record, waiting for it if the follow has caught up; `None` once the queue is closed (or after an
    /// error was returned).
    pub async fn next_record(&mut self) -> Option<Result<Record>> {
        std::future::poll_fn(|cx| self.poll_record(cx)).await
    }

    /// The offset this follow looks for next (one past the last record returned).
    pub fn next_offset(&self) -> Offset {
        self.reader.next_offset()
    }

    fn poll_record(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Record>>> {
        let mut read_again = true;
        for _ in 0..crate::nonblocking::TRIES_PER_POLL {
            if self.reader.failed {
                return Poll::Ready(None);
            }
            let seen = self.waiting.current();
            if let Some(record) = self.reader.next() {
                return Poll::Ready(Some(record));
            }
            match self.reader.log.visibility(self.reader.next_offset) {
                // It came since the read (or was in the write buffer): read once more. Only once: an offset
                // below the visible end that no frame holds (removed) must not spin the task.
                Visibility::Visible if std::mem::take(&mut read_again) => continue,
                Visibility::Never => return Poll::Ready(None),
                Visibility::Poisoned => {
                    self.reader.failed = true; // said once, then the follow ends
                    return Poll::Ready(Some(Err(Error::Poisoned)));
                }
                Visibility::Visible | Visibility::NotYet => {}
            }
            if self.waiting.poll_wait(cx, seen, None).is_pending() {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref(); // the signal keeps moving: yield to the executor's other tasks (see TRIES_PER_POLL)
        Poll::Pending
    }
}

impl futures_core::Stream for Follow {
    type Item = Result<Record>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Record>>> {
        self.get_mut().poll_record(cx)
    }
}
