//! [`Queue`]: the public handle. Opens (lock, manifest, recovery), appends, reads, reports, closes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::builder::{LockWait, QueueBuilder};
use crate::clock::now_ms;
use crate::commit::Ticker;
use crate::compaction::{Cleanup, CompactionReport, Trigger};
use crate::error::{not_a_queue, Error, Result};
use crate::group::{self, Group, GroupConfig, GroupContext, GroupInner, GroupStats, StartAt};
use crate::log::{Log, Written};
use crate::maintenance;
use crate::manifest::{self, Manifest, LOCK_FILE, MANIFEST_FILE};
use crate::message::{Message, Offset, Parts, Record};
use crate::options::{CleanupPolicy, Durability, Maintenance, RecoveryMode, SettingChange, Settings};
use crate::reader::{KeepOpen, Reader};
use crate::recovery::{self, RecoveryReport};
use crate::retention::{FloorListener, RetentionSource};
use crate::segment::SealedSegment;
use crate::signal::Signal;
use crate::storage::{LockGuard, Storage};

/// A durable, segmented write-ahead-log queue in one directory.
///
/// `Queue` is a cheap handle: clone it to share the queue between threads. The queue closes when the last handle
/// is dropped (its clones and every [`Reader`], [`Group`](crate::Group), [`Consumer`](crate::Consumer) and
/// [`Delivery`](crate::Delivery) it gave out: `Queue::open(dir)?.group("g")?.consumer()` is a working consumer),
/// or explicitly with [`Queue::close`], which closes it for every handle. One process at a time may hold a queue
/// open.
/// ///
/// ```
/// use walq::{Message, Offset, Queue};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// let queue = Queue::open(temp.path().join("orders"))?; // created if missing
/// let first = queue.append(Message::new("order 1").key("customer-7"))?;
/// queue.append_batch(&[Message::new("order 2"), Message::new("order 3")])?; // one fsync for both
/// let values: Vec<_> = queue.read_from(first)?.map(|r| r.map(|r| r.value)).collect::<walq::Result<_>>()?;
/// assert_eq!(values.len(), 3);
/// assert_eq!(queue.get(Offset(2))?.unwrap().value.as_deref(), Some(&b"order 3"[..]));
/// queue.close()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Queue {
    inner: Arc<QueueInner>,
}

/// The open groups of a queue, by name.
type Groups = Arc<Mutex<BTreeMap<String, Arc<GroupInner>>>>;

#[derive(Debug)]
struct QueueInner {
    /// The options this queue was opened with, for [`Queue::reopen`].
    opened_with: QueueBuilder,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    log: Arc<Log>,
    groups: Groups,
    /// Groups whose journal was damaged at open: where, and what holds back cleanup for them.
    damaged: Mutex<BTreeMap<String, DamagedEntry>>,
    group_context: GroupContext,
    cleanup: Arc<Cleanup>,
    /// The manifest as this open left it, for the queue's id and settings; its purge point and durable end move
    /// on in `manifest_on_disk`.
    manifest: Manifest,
    /// The manifest as it is on disk (as last written). Held while the manifest is rewritten (a purge, the close):
    /// one writer of its temporary file at a time, and a write of the same manifest again writes nothing.
    manifest_on_disk: Mutex<ManifestOnDisk>,
    /// What the metrics publisher last published (feature `metrics`).
    #[cfg(feature = "metrics")]
    publisher: SharedPublisher,
    recovery_mode: RecoveryMode,
    report: RecoveryReport,
    /// Stored settings this open replaced.
    settings_changed: Vec<SettingChange>,
    /// Background threads of this queue's own: the interval flusher, the write-buffer writer, the metrics
    /// publisher. Stopped first on close.
    tickers: Mutex<Vec<Ticker>>,
    /// This queue's place in the process's maintenance thread (`Maintenance::Background`); removed on close.
    maintenance: Mutex<Option<maintenance::Registration>>,
    lock: Mutex<Option<QueueLock>>,
    /// The server of other processes ([`crate::remote::Sharing`]); stopped first on close.
    server: Mutex<Option<crate::remote::server::Server>>,
}

/// A reference to a queue that does not keep it open: the owner's server holds one.
#[derive(Debug, Clone)]
pub(crate) struct WeakQueue(Weak<QueueInner>);

impl WeakQueue {
    /// The queue, unless every handle of it is gone.
    pub(crate) fn upgrade(&self) -> Option<Queue> {
        self.0.upgrade().map(|inner| Queue { inner })
    }
}

/// What [`Queue::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Deliveries still out (leased, not expired) when the grace period ended: given back to their groups without
    /// counting as an attempt, and delivered again after the next open.
    pub interrupted: usize,
    /// How long the shutdown waited for deliveries to be answered, in milliseconds.
    pub waited_ms: u64,
}

/// How often `Queue::shutdown` checks whether every delivery was answered (answers do not wake it).
const SHUTDOWN_POLL: Duration = Duration::from_millis(5);

/// Counters and positions of an open queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Messages appended since open.
    pub appends: u64,
    /// Bytes of frames appended since open.
    pub appended_bytes: u64,
    /// fsyncs (of segments and of the directory) since open.
    pub fsyncs: u64,
    /// The longest fsync of an append's data since open, in microseconds: with `Durability::Interval(d)` a power
    /// cut loses at most the appends of about `d` plus two such fsyncs.
    pub slowest_fsync_us: u64,
    /// Segments started since open.
    pub segment_rolls: u64,
    /// Segment files in the log.
    pub segments: usize,
    /// The oldest stored offset.
    pub first_offset: Offset,
    /// The offset the next append gets.
    pub next_offset: Offset,
    /// Every offset below this is on disk.
    pub durable_offset: Offset,
    /// Whether a failed fsync (or a panicking background thread) has poisoned the handle.
    pub poisoned: bool,
    /// Whether [`Queue::shutdown`] has begun: no more deliveries; answers go on until the grace period ends.
    pub shutting_down: bool,
    /// Background threads (interval flusher, write-buffer writer, maintenance) that panicked since open. Each
    /// poisons the queue: reopen it.
    pub background_panics: u64,
    /// Segments deleted since open (consumed, or over a size or age limit).
    pub segments_deleted: u64,
    /// Messages not yet consumed by every group that size or age limits deleted since open.
    pub messages_dropped_by_limits: u64,
    /// Segments rewritten by compaction since open.
    pub segments_compacted: u64,
    /// Messages removed by compaction since open.
    pub messages_compacted: u64,
    /// Segments rewritten by a sweep since open (`DeleteConsumed`: a segment kept for a few messages some group
    /// still needs is rewritten without the others).
    pub segments_swept: u64,
    /// Messages removed by sweeps since open (every group was done with them).
    pub messages_swept: u64,
    /// Work of the async API (waits for durability, appends that start a segment) that walq's sync thread has not
    /// finished, whether or not their futures are still awaited. In `Sync` and `GroupCommit`, an async append
    /// whose future was dropped after its first poll is durable once this is back to 0 (and nothing is
    /// [`poisoned`](Stats::poisoned)); in `None` and `Interval` nothing waits there, and durability is as those
    /// modes give it.
    pub async_waits_pending: u64,
    /// The process that owns the queue (holds its lock) and made these figures: this one for a [`Queue`]; for a
    /// handle through another process ([`crate::remote`]) that one. Compare with `std::process::id()` to know
    /// whether a handle owns the queue or connects to its owner.
    pub owner_pid: u32,
    /// Processes the owner serves now ([`crate::remote::Sharing`]): its connections (each remote consumer has one).
    pub clients_served: usize,
    /// Every consumer group, by name.
    pub groups: Vec<GroupStats>,
}

impl Queue {
    /// A builder for the queue in `dir`.
    pub fn builder(dir: impl AsRef<Path>) -> QueueBuilder {
        QueueBuilder::new(dir.as_ref().to_path_buf())
    }

    /// Opens (or creates) the queue in `dir` with its stored settings, or the defaults for a new queue.
    pub fn open(dir: impl AsRef<Path>) -> Result<Queue> {
        Queue::builder(dir).open()
    }

    pub(crate) fn open_with(builder: QueueBuilder) -> Result<Queue> {
        let opened_with = builder.clone();
        let storage = builder.storage.clone();
        let dir = builder.dir.clone();
        // Look before touching anything: a directory that is not a queue, or invalid settings, change nothing.
        let (existed, stored) = match manifest::read(storage.as_ref(), &dir) {
            Ok(Some(stored)) => (true, Some(stored)), // a queue: its directory need not be listed twice
            Ok(None) | Err(_) => {
                let existed = check_is_queue_or_empty(storage.as_ref(), &dir)?;
                (existed, if existed { manifest::read(storage.as_ref(), &dir)? } else { None })
            }
        };
        let settings = builder.settings_over(stored.map_or_else(Settings::default, |m| m.settings));
        settings.validate()?;
        builder.validate_runtime(&settings)?;
        if !existed {
            create_dir_durably(storage.as_ref(), &dir)?;
        }
        let lock = match builder.lock_wait {
            LockWait::Briefly => lock_queue(storage.as_ref(), &dir)?,
            LockWait::No => try_lock_queue(storage.as_ref(), &dir)?,
        };
        // Read again under the lock: another process may have created or changed the queue meanwhile.
        let mut settings_changed = Vec::new();
        let mut manifest = match manifest::read(storage.as_ref(), &dir)? {
            Some(mut stored) => {
                let settings = builder.settings_over(stored.settings);
                settings.validate()?;
                builder.validate_runtime(&settings)?;
                if settings != stored.settings {
                    settings_changed = settings.changes_from(&stored.settings);
                    stored.settings = settings;
                    manifest::write(storage.as_ref(), &dir, &stored)?;
                    for change in &settings_changed {
                        let (name, from, to) = (&change.name, &change.stored, &change.now);
                        tracing::warn!(dir = %dir.display(), name, from, to, "stored setting replaced by this open");
                    }
                }
                stored
            }
            None => {
                let created = Manifest::new(builder.settings_over(Settings::default()));
                manifest::write(storage.as_ref(), &dir, &created)?;
                created
            }
        };
        let recovered = recovery::recover(
            &storage,
            &dir,
            &manifest.settings,
            builder.recovery_mode,
            manifest.durable_end_offset.unwrap_or(0),
        )?;
        if manifest.durable_end_offset.is_some_and(|end| recovered.report.next_offset < end) {
            // `SkipCorrupt` resumed below the end the last clean close recorded (only that mode opens then). That
            // record would prove frames appended from here on durable before they are (recovery skips the fsync
            // of frames it proves): it is lowered to this end, which recovery just made durable, before any append.
            manifest = manifest.with_durable_end(recovered.report.next_offset);
            manifest::write(storage.as_ref(), &dir, &manifest)?;
        }
        let sealed = recovered
            .sealed_bases
            .iter()
            .map(|&base| Arc::new(SealedSegment::new(storage.clone(), &dir, base)))
            .collect();
        let signal = Arc::new(Signal::default());
        let settings = manifest.settings;
        let log = Arc::new(Log::new(
            dir.clone(),
            storage.clone(),
            settings,
            builder.write_buffer_bytes,
            signal.clone(),
            sealed,
            recovered.active,
        ));
        if recovered.roll_needed {
            log.roll_after_salvage()?;
        }
        log.purge_below(manifest.purged_below());
        if log.purged_below() < manifest.purged_below() {
            // The purge point lay past a tail this recovery cut (not durable when the crash came): lowered to the
            // recovered end before any append, or the offsets given out again from here on would be purged.
            manifest = manifest.with_purged_below(log.purged_below());
            manifest::write(storage.as_ref(), &dir, &manifest)?;
        }
        rebuild_dedup_window(&log);
        let cleanup = Arc::new(Cleanup::new(log.clone(), builder.maintenance));
        let group_context = GroupContext {
            queue_dir: dir.clone(),
            storage: storage.clone(),
            log: log.clone(),
            signal,
            floor_moved: floor_listener(&cleanup),
            config: GroupConfig {
                ack_timeout: Duration::from_millis(settings.ack_timeout_ms),
                max_deliveries: settings.max_deliveries,
                skip_corrupt: builder.recovery_mode == RecoveryMode::SkipCorrupt,
                max_ack_pending: builder.max_ack_pending.unwrap_or(usize::MAX),
                retry_backoff: builder.retry_backoff,
            },
            ordered_by_key: Arc::new(builder.ordered_by_key.clone()),
            syncer: Arc::default(),
        };
        let mut groups = BTreeMap::new();
        let mut damaged = BTreeMap::new();
        for name in group::stored_names(storage.as_ref(), &dir)? {
            match GroupInner::open(&group_context, &name) {
                Ok(group) => {
                    let source: Weak<dyn RetentionSource> = Arc::downgrade(&group) as Weak<dyn RetentionSource>;
                    cleanup.register(&name, source);
                    groups.insert(name, group);
                }
                // One group's damaged journal does not stop the queue: producers and the other groups go on,
                // this group answers `Corrupt` until it is deleted, and it holds back cleanup meanwhile.
                Err(Error::Corrupt { file, position, kind }) => {
                    tracing::error!(group = %name, file = %file.display(), position, %kind, "group journal is damaged; the group is unusable until deleted");
                    let held = Arc::new(DamagedGroup);
                    cleanup.register(&name, Arc::downgrade(&held) as Weak<dyn RetentionSource>);
                    damaged.insert(name, (file, position, kind, held));
                }
                Err(error) => return Err(error),
            }
        }
        let groups: Groups = Arc::new(Mutex::new(groups));
        // A purge a crash interrupted is finished first: the groups forget it, its segments go.
        if let Err(error) = cleanup.lock_maintenance().and_then(|_maintenance| cleanup.finish_purge_locked()) {
            tracing::warn!(%error, "finishing a purge on open failed; it is retried later");
        }
        if let Err(error) = cleanup.delete_consumed().and_then(|_| cleanup.enforce_limits(now_ms())) {
            tracing::warn!(%error, "cleanup on open failed; it is retried later");
        }
        tracing::info!(dir = %dir.display(), next_offset = recovered.report.next_offset, "queue opened");
        let mut tickers = Vec::new();
        if let Durability::Interval(interval) = settings.durability {
            tickers.push(spawn_flusher(interval, &log, &groups));
        }
        if builder.write_buffer_bytes > 0 {
            tickers.push(spawn_buffer_writer(&log, &groups));
        }
        #[cfg(feature = "metrics")]
        let publisher = SharedPublisher::default();
        #[cfg(feature = "metrics")]
        tickers.push(spawn_metrics_publisher(&publisher, &dir, &log, &cleanup, &groups));
        // Last: nothing after it can fail or panic, so an open that fails never leaves a registration behind.
        let maintenance = (builder.maintenance == Maintenance::Background).then(|| maintenance::register(&cleanup));
        let queue = Queue {
            inner: Arc::new(QueueInner {
                opened_with,
                dir,
                storage,
                log,
                groups,
                damaged: Mutex::new(damaged),
                group_context,
                cleanup,
                manifest_on_disk: Mutex::new(ManifestOnDisk { manifest: manifest.clone(), uncertain: false }),
                manifest,
                #[cfg(feature = "metrics")]
                publisher,
                recovery_mode: builder.recovery_mode,
                report: recovered.report,
                settings_changed,
                tickers: Mutex::new(tickers),
                maintenance: Mutex::new(maintenance),
                lock: Mutex::new(Some(lock)),
                server: Mutex::new(None),
            }),
        };
        if builder.sharing != crate::remote::Sharing::Private {
            // After the queue is whole (the server reaches it through a weak reference); a failure here drops the
            // queue, which closes it.
            let weak = WeakQueue(Arc::downgrade(&queue.inner));
            let server =
                crate::remote::server::Server::start(&queue.inner.dir, builder.sharing, weak, queue.queue_id())?;
            *queue.inner.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        }
        Ok(queue)
    }

    /// Appends one message and returns its offset, once the queue's [`Durability`] says it is acknowledged.
    ///
    /// Errors: [`Error::MessageTooLarge`] or [`Error::InvalidHeader`] (nothing written), [`Error::DiskFull`]
    /// (nothing acknowledged; retry after freeing space), [`Error::Poisoned`], [`Error::Closed`].
    pub fn append(&self, message: Message) -> Result<Offset> {
        self.inner.log.append(std::slice::from_ref(&message)).map(Offset)
    }

    /// Appends one message of `value` alone (no key, no headers, timestamped now), as [`append`](Self::append)
    /// does, from borrowed bytes: no copy is made but the frame's, and nothing is allocated per message. For the
    /// hot path of a producer whose messages are plain payloads.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let queue = walq::Queue::open(dir.path())?;
    /// let offset = queue.append_bytes(b"reading 42")?;
    /// let record = queue.read_from(offset)?.next().unwrap()?;
    /// assert_eq!(record.value.as_deref(), Some(&b"reading 42"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_bytes(&self, value: &[u8]) -> Result<Offset> {
        self.inner.log.append(&[Parts::value(value)]).map(Offset)
    }

    /// As [`append_batch`](Self::append_batch), of borrowed messages (what the owner's server appends for a
    /// client, from the request's frame).
    pub(crate) fn append_parts(&self, messages: &[Parts<'_>]) -> Result<Offset> {
        self.inner.log.append(messages).map(Offset)
    }

    /// Appends messages with consecutive offsets, written together and covered by one fsync where the durability
    /// mode syncs; returns the first offset. Every message is checked before any is written. A batch is not
    /// atomic: a crash before it is acknowledged may keep a prefix of it, and a failure partway (a full disk when
    /// the batch needs a new segment) returns [`Error::BatchIncomplete`], which says how many of its messages were
    /// appended (and acknowledged): retry only the rest. [`Error::Poisoned`] leaves unknown how much of the batch is
    /// stored (reopen: recovery says); any other error means none of it was appended.
    pub fn append_batch(&self, messages: &[Message]) -> Result<Offset> {
        self.inner.log.append(messages).map(Offset)
    }

    /// As [`append`](Self::append), without blocking a thread: resolves with the offset once the queue's
    /// [`Durability`] acknowledges the message. The message is written to the file (the page cache) when the future
    /// is first polled, on the polling task; in `Sync` and `GroupCommit` the fsync runs on walq's sync thread,
    /// which covers with one fsync every append written meanwhile (also in `Sync`: the promise, durable when
    /// acknowledged, is the same). An append that needs a new segment (starting one seals the full one, with
    /// fsyncs) runs whole on that thread. Runs on any executor; what may still wait on the polling task is listed
    /// in the README (async services).
    ///
    /// Cancel safety: dropped before its first poll, the future appends nothing. Dropped after, the message is
    /// appended whatever happens to the future, and made durable without it
    /// ([`Stats::async_waits_pending`] says when); only its offset and any error are lost to the caller. A
    /// producer that retries after dropping one can give its messages a
    /// [`dedup_id`](crate::Message::dedup_id), so that the retry does not store them twice.
    ///
    /// ```
    /// # fn main() -> walq::Result<()> {
    /// # let temp = tempfile::tempdir().unwrap();
    /// let queue = walq::Queue::builder(temp.path()).durability(walq::Durability::GroupCommit).open()?;
    /// let offset = futures_executor::block_on(queue.append_async(walq::Message::new("paid")))?;
    /// assert!(queue.stats().durable_offset > offset);
    /// # Ok(()) }
    /// ```
    pub async fn append_async(&self, message: Message) -> Result<Offset> {
        self.append_batch_async(std::slice::from_ref(&message)).await
    }

    /// As [`append_batch`](Self::append_batch), without blocking a thread; as [`append_async`](Self::append_async)
    /// for when it is written, where it waits, and cancel safety.
    pub async fn append_batch_async(&self, messages: &[Message]) -> Result<Offset> {
        let log = &self.inner.log;
        let appended = match log.append_unsynced(messages)? {
            Written::Appended(appended) => appended,
            Written::NeedsRoll => {
                // Starting a segment seals the full one (fsyncs): the whole append runs on walq's sync thread.
                let (appending_log, messages) = (log.clone(), messages.to_vec());
                return log.syncer.run(move || appending_log.append(&messages)).await.map(Offset);
            }
        };
        let acknowledged = if log.settings.durability.acknowledges_durable() {
            let (waiting_log, end_offset) = (log.clone(), appended.end_offset);
            log.syncer.run(move || waiting_log.make_durable(end_offset)).await
        } else {
            Ok(())
        };
        appended.answer(acknowledged).map(Offset)
    }

    /// Follows the log from `offset` without blocking a thread: a [`Follow`](crate::Follow), the async
    /// [`Reader`] that waits for new appends when it has caught up, as a stream of records.
    pub fn follow(&self, offset: Offset) -> Result<crate::Follow> {
        Ok(self.read_from(offset)?.follow())
    }

    /// Reads stored records from `offset` on ([`Offset::EARLIEST`] for everything, [`Offset::LATEST`] for only
    /// what is appended from now on). Readers see only acknowledged appends: in `Sync` and `GroupCommit` modes,
    /// only durable ones.
    pub fn read_from(&self, offset: Offset) -> Result<Reader> {
        let start = {
            let state = self.inner.log.lock();
            if state.closed {
                return Err(Error::Closed); // a poisoned queue still reads what it has
            }
            if offset == Offset::LATEST {
                self.inner.log.acknowledged_end(&state)
            } else {
                offset.0.max(self.inner.log.first_offset(&state))
            }
        };
        let skip_corrupt = self.inner.recovery_mode == RecoveryMode::SkipCorrupt;
        Ok(Reader::new(self.inner.log.clone(), start, skip_corrupt).keeping_open(self.keep_open()))
    }

    /// The first offset whose message's timestamp is at or after `time_ms` (milliseconds since the Unix epoch;
    /// Kafka's `offsetsForTimes`), among the stored messages; `None` if no stored message is that late (the next
    /// append may be). Timestamps need not grow along the log (producers set their own): the answer is exactly
    /// the lowest such offset all the same, so a message earlier than `time_ms` may follow it.
    ///
    /// Found without reading the log from its start: each segment's index holds the greatest timestamp before
    /// each of its entries, in whole seconds (a sparse time index, FORMAT.md), so a lookup reads a few kilobytes
    /// of the segments before the answer the first time (then only memory) and one index, and scans the frames
    /// of the second before `time_ms` (at least the ~4 KiB between two entries), plus those whose time is out of
    /// order. A damaged segment on the way is an error ([`Error::Corrupt`]), or skipped under
    /// [`RecoveryMode::SkipCorrupt`](crate::RecoveryMode::SkipCorrupt).
    ///
    /// ```
    /// use walq::{Message, Offset, Queue};
    /// # fn main() -> walq::Result<()> {
    /// # let temp = tempfile::tempdir().unwrap();
    /// let queue = Queue::open(temp.path())?;
    /// for t in [1_000, 2_000, 3_000] {
    ///     queue.append(Message::new("tick").timestamp_ms(t))?;
    /// }
    /// assert_eq!(queue.offset_for_time(1_500)?, Some(Offset(1)));
    /// assert_eq!(queue.offset_for_time(3_001)?, None);
    /// # Ok(()) }
    /// ```
    pub fn offset_for_time(&self, time_ms: u64) -> Result<Option<Offset>> {
        if self.inner.log.is_closed() {
            return Err(Error::Closed); // a poisoned queue still reads what it has
        }
        let skip_corrupt = self.inner.recovery_mode == RecoveryMode::SkipCorrupt;
        Ok(crate::reader::offset_for_time(&self.inner.log, time_ms, skip_corrupt)?.ok())
    }

    /// The record stored at exactly `offset`; `None` if there is none: not yet appended (or not yet acknowledged),
    /// deleted by cleanup or limits, or removed by compaction (a gap: the next record is not returned in its
    /// place). Finds the segment through the sparse index, so the cost is one index lookup and a scan of at most
    /// one index interval, whatever the queue's size. Dead letters are read this way, by their offset.
    pub fn get(&self, offset: Offset) -> Result<Option<Record>> {
        if offset == Offset::LATEST {
            return Ok(None);
        }
        match self.read_from(offset)?.next() {
            Some(Ok(record)) if record.offset == offset => Ok(Some(record)),
            Some(Err(error)) => Err(error),
            Some(Ok(_)) | None => Ok(None),
        }
    }

    /// The signal appends bump (and releases in any group): for a wait that must not hold the queue open, as the
    /// owner's waiting reads.
    pub(crate) fn append_signal(&self) -> Arc<crate::signal::Signal> {
        self.inner.log.signal.clone()
    }

    /// Blocks until a record at or after `offset` is visible or `timeout` passes; returns whether one is.
    /// Waits on a condition variable signalled by appends, not by polling the disk.
    pub fn wait_for(&self, offset: Offset, timeout: std::time::Duration) -> bool {
        self.inner.log.wait_visible(offset.0, timeout)
    }

    /// The consumer group `name`, created (and persisted) on first use, starting at the oldest stored message.
    /// Every handle of one name shares one state. Names: 1 to 64 bytes of ASCII letters, digits, `-`, `_`, `.`,
    /// not starting with `.`, and not equal to an existing group's name but for case (`Orders` next to `orders`
    /// would share one journal file on a case-insensitive file system); anything else is
    /// [`Error::InvalidGroupName`] and creates nothing.
    ///
    /// A mistyped name creates a group too, which then holds back cleanup under `DeleteConsumed` until deleted:
    /// a consumer of a group that something else creates should open it with [`Queue::existing_group`].
    pub fn group(&self, name: &str) -> Result<Group> {
        self.group_or(name, IfMissing::Create(StartAt::Earliest))
    }

    /// As [`group`](Queue::group), a new group starting at `start` instead of the oldest stored message (Kafka's
    /// `auto.offset.reset` for a group without committed offsets): [`StartAt::Latest`] delivers only what is
    /// appended from now on, [`StartAt::Offset`] starts there (clamped to the stored messages). An existing group
    /// is returned as it is: its progress is kept.
    ///
    /// ```
    /// # fn main() -> walq::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use walq::{Message, Offset, Queue, StartAt};
    /// let queue = Queue::open(dir.path())?;
    /// queue.append(Message::new("history"))?;
    /// let live = queue.group_starting_at("live", StartAt::Latest)?;
    /// assert!(live.consumer().try_recv()?.is_none());
    /// queue.append(Message::new("news"))?;
    /// assert_eq!(live.consumer().try_recv()?.unwrap().offset(), Offset(1));
    /// # Ok(()) }
    /// ```
    pub fn group_starting_at(&self, name: &str, start: StartAt) -> Result<Group> {
        self.group_or(name, IfMissing::Create(start))
    }

    /// The existing consumer group `name`; [`Error::GroupNotFound`] (and nothing created) if there is none. For
    /// consumers and tools that must not create a group by a typo.
    pub fn existing_group(&self, name: &str) -> Result<Group> {
        self.group_or(name, IfMissing::Fail)
    }

    /// The error a group whose journal was found damaged at open answers with (`None`: not a damaged group).
    fn damaged_group_error(&self, name: &str) -> Option<Error> {
        let damaged = self.inner.lock_damaged();
        let (file, position, kind, _) = damaged.get(name)?;
        Some(Error::Corrupt { file: file.clone(), position: *position, kind: *kind })
    }

    fn group_or(&self, name: &str, if_missing: IfMissing) -> Result<Group> {
        group::validate_name(name)?;
        let mut groups = self.inner.lock_groups();
        self.inner.log.lock().check_open()?;
        if let Some(inner) = groups.get(name) {
            return Ok(Group { inner: inner.clone(), queue: self.keep_open() });
        }
        if let Some(damaged) = self.damaged_group_error(name) {
            return Err(damaged);
        }
        let start = match if_missing {
            IfMissing::Fail => return Err(Error::GroupNotFound { name: name.to_string() }),
            IfMissing::Create(start) => start,
        };
        if groups.keys().any(|existing| existing.eq_ignore_ascii_case(name)) {
            let reason = "differs from an existing group's name only in case: on a case-insensitive file system \
                          both would use one journal file";
            return Err(Error::InvalidGroupName { name: name.to_string(), reason });
        }
        // A sweep that chose what to keep before this group existed must not install its rewrite meanwhile.
        let mut registrations = self.inner.cleanup.registering();
        let inner = GroupInner::create(&self.inner.group_context, name, start)?;
        let source: Weak<dyn RetentionSource> = Arc::downgrade(&inner) as Weak<dyn RetentionSource>;
        self.inner.cleanup.register(name, source);
        *registrations += 1;
        drop(registrations);
        groups.insert(name.to_string(), inner.clone());
        Ok(Group { inner, queue: self.keep_open() })
    }

    /// Moves the consumer group `name` to `to` (Kafka's `--reset-offsets`): every message below it counts as done,
    /// every message from it on is delivered again as new; attempt counts, delays, dead letters and their reasons
    /// are forgotten. Refused with [`Error::GroupBusy`] while deliveries are in flight (answer or drop them first);
    /// [`Error::GroupNotFound`] if there is no such group. Crash-safe: the new position replaces the group's journal
    /// at once (a new file, fsynced, renamed over the old one), so a crash leaves the old position or the new one.
    /// Messages that cleanup or compaction removed stay removed: a reset to before them skips the gaps. Returns the
    /// group's new position. Deliveries taken before the reset are stale after it: their answers change nothing
    /// (`ack` is [`Error::StaleLease`]). An I/O error after the new journal was renamed into place (a failed
    /// directory fsync) poisons the group: which position a reopen finds is then unknown, either one whole.
    ///
    /// ```
    /// # fn main() -> walq::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use walq::{Message, Offset, Queue, StartAt};
    /// let queue = Queue::builder(dir.path()).cleanup(walq::CleanupPolicy::KeepAll).open()?;
    /// queue.append_batch(&[Message::new("a"), Message::new("b")])?;
    /// let group = queue.group("replay")?;
    /// let consumer = group.consumer();
    /// consumer.ack_all(consumer.try_recv_batch(2)?)?;
    /// queue.reset_group("replay", StartAt::Earliest)?; // deliver everything again
    /// assert_eq!(consumer.try_recv()?.unwrap().offset(), Offset(0));
    /// # Ok(()) }
    /// ```
    pub fn reset_group(&self, name: &str, to: StartAt) -> Result<Offset> {
        self.inner.log.lock().check_open()?;
        let Some(inner) = self.inner.lock_groups().get(name).cloned() else {
            return Err(self.damaged_group_error(name).unwrap_or(Error::GroupNotFound { name: name.to_string() }));
        };
        // No cleanup pass runs meanwhile (one that read the old floor must not delete or compact by it), and a
        // sweep that chose what to keep by the old position does not install its rewrite after (as for a new
        // group: see `Queue::group`): counted even if the reset fails, whose outcome may then be either.
        let _maintenance = self.inner.cleanup.lock_maintenance()?;
        let mut registrations = self.inner.cleanup.registering();
        *registrations += 1;
        inner.reset(to).map(Offset)
    }

    /// The names of the queue's consumer groups, sorted (damaged ones included; see [`Queue::damaged_groups`]).
    pub fn groups(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.lock_groups().keys().cloned().collect();
        names.extend(self.inner.lock_damaged().keys().cloned());
        names.sort();
        names
    }

    /// The groups whose journal was found damaged when the queue was opened. Each answers
    /// [`Error::Corrupt`] and holds back cleanup until it is deleted ([`Queue::delete_group`], or
    /// `walq groups DIR --delete NAME`); the queue and its other groups work meanwhile.
    pub fn damaged_groups(&self) -> Vec<String> {
        self.inner.lock_damaged().keys().cloned().collect()
    }

    /// Deletes a consumer group and its stored progress; returns `false` if there was none. Its handles then
    /// fail with [`Error::GroupDeleted`]. Segments only it was holding back become deletable.
    pub fn delete_group(&self, name: &str) -> Result<bool> {
        group::validate_name(name)?;
        let groups = self.inner.lock_groups(); // first, as `group()` takes it: no group of this name appears
        let mut damaged = self.inner.lock_damaged();
        let Some((file, ..)) = damaged.get(name) else {
            drop((damaged, groups));
            return self.delete_healthy_group(name);
        };
        // A damaged group: its journal is removed, and whatever it held back is free. The entry goes only once the
        // journal is gone.
        let file = file.clone();
        self.inner.storage.remove_file(&file).map_err(|e| Error::io("remove group journal", &file, e))?;
        // Its dead-letter notes too, if any (a leftover would also be removed when a group of this name is created).
        let _ = self.inner.storage.remove_file(&group::dead_letter_notes_path(&self.inner.dir, name));
        let dir = file.parent().expect("journals live in a directory");
        self.inner.storage.sync_dir(dir).map_err(|e| Error::io("fsync directory", dir, e))?;
        damaged.remove(name);
        self.inner.cleanup.unregister(name);
        drop((damaged, groups));
        self.inner.cleanup.delete_consumed()?;
        Ok(true)
    }

    fn delete_healthy_group(&self, name: &str) -> Result<bool> {
        let Some(inner) = self.inner.lock_groups().remove(name) else { return Ok(false) };
        self.inner.cleanup.unregister(name);
        inner.delete(self.inner.storage.as_ref())?;
        self.inner.cleanup.delete_consumed()?;
        Ok(true)
    }

    /// Reclaims space now, as the background maintenance does after segment rolls, and says what it rewrote. With
    /// [`CleanupPolicy::Compact`](crate::CleanupPolicy::Compact): keyed compaction of every sealed segment holding
    /// messages it may remove. With [`CleanupPolicy::DeleteConsumed`](crate::CleanupPolicy::DeleteConsumed): deletes
    /// consumed segments, then sweeps the ones kept for a few messages some group still needs (rewritten without
    /// the messages every group is done with, when that removes at least half of them). With `KeepAll`: nothing.
    /// Crash-safe; appends and consumers go on meanwhile; each rewritten segment is swapped in by a rename. Also
    /// rebuilds the segment indexes readers found unusable. Under [`Maintenance::Manual`] this (with
    /// [`Queue::enforce_retention_limits`]) is the only way these run.
    pub fn compact(&self) -> Result<CompactionReport> {
        self.inner.log.lock().check_open()?;
        let cleanup = &self.inner.cleanup;
        cleanup.rebuild_stale_indexes();
        let report = match self.inner.log.settings.cleanup {
            CleanupPolicy::DeleteConsumed => cleanup.reclaim(),
            _ => cleanup.compact(now_ms(), Trigger::OnDemand),
        };
        // An ack that moved a floor while this held the maintenance lock left its deletion to the maintenance
        // thread, which may not exist (`Maintenance::Manual`); so may a purge that did not finish.
        cleanup.delete_if_wanted();
        cleanup.delete_purged_if_any();
        report
    }

    /// Applies the size and age limits now (the maintenance thread also does, unless
    /// [`Maintenance::Manual`]); returns how many segments were deleted. Also deletes consumed segments an ack
    /// left for later (it found maintenance busy).
    pub fn enforce_retention_limits(&self) -> Result<usize> {
        self.inner.log.lock().check_open()?;
        let deleted = self.inner.cleanup.enforce_limits(now_ms());
        self.inner.cleanup.delete_if_wanted();
        deleted
    }

    /// Deletes every message below `offset` (clamped to the messages appended), for every reader and group:
    /// reads start at `offset` from then on, [`Queue::get`] of a purged offset is `None`, every group's floor moves
    /// up to it (leases of purged messages end; a late ack of one is `Ok` and changes nothing), and the segment
    /// files wholly below it are
    /// deleted (the rest of a segment it cuts through stays on disk until that segment is), whatever the
    /// cleanup policy. Returns the first offset kept. Never moves back: a lower `offset` than an earlier purge's
    /// purges nothing more.
    ///
    /// Crash-safe: the purge point is written to the manifest (an atomic replace) before anything else, so a
    /// crash leaves either no purge or the whole of it (the next open finishes what the crash interrupted). Under
    /// [`Durability::None`] or [`Durability::Interval`], a crash that loses appended messages also lowers the
    /// purge point to the recovered end, so the offsets appended after it are not purged.
    ///
    /// ```
    /// use walq::{Message, Offset, Queue};
    /// # fn main() -> walq::Result<()> {
    /// # let temp = tempfile::tempdir().unwrap();
    /// let queue = Queue::open(temp.path())?;
    /// for i in 0..10 {
    ///     queue.append(Message::new(format!("m{i}")))?;
    /// }
    /// assert_eq!(queue.purge_until(Offset(4))?, Offset(4));
    /// assert!(queue.get(Offset(3))?.is_none());
    /// assert_eq!(queue.read_from(Offset::EARLIEST)?.next().transpose()?.unwrap().offset, Offset(4));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Io`] (the manifest could not be written: nothing was purged; or a group
    /// could not record the purge or a segment could not be deleted: the purge holds for every reader and the
    /// rest is retried by the maintenance thread and the next open).
    pub fn purge_until(&self, offset: Offset) -> Result<Offset> {
        let inner = &self.inner;
        inner.log.lock().check_open()?;
        let cleanup = &inner.cleanup;
        let _maintenance = cleanup.lock_maintenance()?;
        let target = offset.0.min(inner.log.next_offset());
        if target > inner.log.purged_below() {
            // Written with the purge point before the log reads it: a write that fails purges nothing.
            inner.replace_manifest(|on_disk| on_disk.with_purged_below(target))?;
            inner.log.purge_below(target);
            tracing::info!(dir = %inner.dir.display(), purged_below = target, "purged");
        }
        cleanup.finish_purge_locked()?;
        Ok(Offset(inner.log.first_offset(&inner.log.lock())))
    }

    /// Makes every append so far durable, whatever the durability mode.
    pub fn flush(&self) -> Result<()> {
        self.inner.log.flush()
    }

    /// A reference that keeps this queue open, for the handles it gives out.
    fn keep_open(&self) -> KeepOpen {
        self.inner.clone()
    }

    /// Counters and positions.
    pub fn stats(&self) -> Stats {
        let mut stats = collect_stats(&self.inner.log, &self.inner.cleanup, &self.inner.groups);
        stats.async_waits_pending += self.inner.group_context.syncer.pending();
        stats.clients_served =
            self.inner.server.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |s| s.clients());
        stats
    }

    /// Publishes this queue's metrics now through the `metrics` facade (feature `metrics`; see
    /// [`telemetry`](crate::telemetry) for what is published). A background thread also does, every
    /// [`PUBLISH_INTERVAL`](crate::telemetry::PUBLISH_INTERVAL); call this from a scrape handler for fresher
    /// figures.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        let inner = &self.inner;
        publish_metrics(&inner.publisher, &inner.dir, &inner.log, &inner.cleanup, &inner.groups);
    }
}

/// Fills producer deduplication's window (if on) from the newest records, as many as it holds ids: a read of at
/// most that many records (when not every message carries an id, the rebuilt window covers fewer ids than it did).
/// Damaged records are skipped, whatever the recovery mode: reading them is reported elsewhere, and the ids after
/// them are the ones a retry most likely repeats.
fn rebuild_dedup_window(log: &Arc<Log>) {
    let Some(capacity) = log.dedup_capacity() else { return };
    let (first, end) = {
        let state = log.lock();
        (log.first_offset(&state), state.active.next_offset)
    };
    let start = end.saturating_sub(capacity as u64).max(first);
    let mut ids = Vec::new();
    for record in Reader::new(log.clone(), start, true) {
        match record {
            Ok(record) => {
                if let Some(id) = record.dedup_id() {
                    ids.push((id.to_vec(), record.offset.0, record.timestamp_ms));
                }
            }
            Err(error) => {
                tracing::warn!(%error, "rebuilding the dedup window stopped at a damaged record");
                break;
            }
        }
    }
    log.remember_dedup_ids(ids);
}

/// The counters and positions of the queue whose log, cleanup and groups these are ([`Queue::stats`]).
fn collect_stats(log: &Log, cleanup: &Cleanup, groups: &Groups) -> Stats {
    let cleanup = &cleanup.counters;
    let state = log.lock();
    let counters = &log.counters;
    let mut stats = Stats {
        appends: state.appends,
        appended_bytes: state.appended_bytes,
        fsyncs: counters.fsyncs.load(Ordering::Relaxed),
        slowest_fsync_us: counters.slowest_fsync_us.load(Ordering::Relaxed),
        segment_rolls: counters.rolls.load(Ordering::Relaxed),
        segments: state.sealed.len() + 1,
        first_offset: Offset(log.first_offset(&state)),
        next_offset: Offset(state.active.next_offset),
        durable_offset: Offset(state.durable_offset),
        poisoned: state.sync.poisoned,
        shutting_down: log.is_draining(),
        background_panics: counters.background_panics.load(Ordering::Relaxed),
        segments_deleted: cleanup.segments_deleted.load(Ordering::Relaxed),
        messages_dropped_by_limits: cleanup.messages_dropped_by_limits.load(Ordering::Relaxed),
        segments_compacted: cleanup.segments_compacted.load(Ordering::Relaxed),
        segments_swept: cleanup.segments_swept.load(Ordering::Relaxed),
        messages_swept: cleanup.messages_swept.load(Ordering::Relaxed),
        messages_compacted: cleanup.messages_compacted.load(Ordering::Relaxed),
        async_waits_pending: log.syncer.pending(), // the groups' are added by `Queue::stats`
        owner_pid: std::process::id(),
        clients_served: 0, // added by `Queue::stats`
        groups: Vec::new(),
    };
    drop(state);
    let groups: Vec<Arc<GroupInner>> = groups.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    stats.groups = groups.iter().map(|g| g.stats()).collect();
    stats
}

/// One queue's publisher, shared by the background thread and [`Queue::publish_metrics`].
#[cfg(feature = "metrics")]
type SharedPublisher = Arc<Mutex<crate::telemetry::Publisher>>;

#[cfg(feature = "metrics")]
fn publish_metrics(publisher: &SharedPublisher, dir: &Path, log: &Log, cleanup: &Cleanup, groups: &Groups) {
    let stats = collect_stats(log, cleanup, groups);
    let disk_bytes = log.disk_bytes();
    publisher.lock().unwrap_or_else(|p| p.into_inner()).publish(dir, &stats, disk_bytes);
}

/// Publishes the metrics every [`PUBLISH_INTERVAL`](crate::telemetry::PUBLISH_INTERVAL) (feature `metrics`). A
/// panic (a recorder's) ends this thread and is logged; it does not poison the queue: figures are not data.
#[cfg(feature = "metrics")]
fn spawn_metrics_publisher(
    publisher: &SharedPublisher,
    dir: &Path,
    log: &Arc<Log>,
    cleanup: &Arc<Cleanup>,
    groups: &Groups,
) -> Ticker {
    let (publisher, dir) = (publisher.clone(), dir.to_path_buf());
    let (log, cleanup, groups) = (Arc::downgrade(log), Arc::downgrade(cleanup), Arc::downgrade(groups));
    Ticker::spawn(
        "metrics",
        crate::telemetry::PUBLISH_INTERVAL,
        move || {
            if let (Some(log), Some(cleanup), Some(groups)) = (log.upgrade(), cleanup.upgrade(), groups.upgrade()) {
                publish_metrics(&publisher, &dir, &log, &cleanup, &groups);
            }
        },
        || tracing::error!("the metrics publisher panicked; metrics are no longer published"),
    )
}

impl Queue {
    /// What recovery found and did when this queue was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The stored settings this open replaced with the builder's, empty if none: builder settings are stored,
    /// so an admin program that opens a service's queue with other options changes them for the service too.
    /// Each change is also logged (`tracing`, warn). A program that must not change them opens with
    /// [`Queue::open`], or a builder that sets only options not stored (`maintenance`, `retry_backoff`,
    /// `max_ack_pending`, `write_buffer_bytes`, `recovery_mode`, `storage`).
    pub fn settings_changed(&self) -> &[SettingChange] {
        &self.inner.settings_changed
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The queue's identity: random, fixed when the queue was created.
    pub fn queue_id(&self) -> &str {
        &self.inner.manifest.queue_id
    }

    /// The durability mode in force.
    pub fn durability(&self) -> Durability {
        self.inner.manifest.settings.durability
    }

    /// Flushes everything, trims preallocated space, and releases the lock. Every clone of this handle is closed:
    /// later calls return [`Error::Closed`]. Closing twice is fine. Deliveries still out can no longer be
    /// answered (their messages are delivered again after the next open, the attempt counted); a service that
    /// stops lets them finish first with [`Queue::shutdown`].
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }

    /// Closes this queue for every clone, then opens it again with the options it was opened with: the way back
    /// from [`Error::Poisoned`] (a failed fsync) or an I/O error, in place, once the cause is fixed (space freed,
    /// the device back). Recovery then establishes what is on disk, as after a crash: nothing acknowledged is
    /// lost; deliveries out are delivered again, their attempt counted. Every handle of the old queue (clones,
    /// groups, consumers, deliveries, readers) answers [`Error::Closed`] from then on: take new ones from the
    /// returned queue. If the open fails (the cause persists), call `reopen` again later; the old queue stays
    /// closed.
    ///
    /// A supervisor: `Err(Error::Poisoned) => queue = queue.reopen()?`, then rebuild the consumers.
    pub fn reopen(&self) -> Result<Queue> {
        if let Err(error) = self.close() {
            // A poisoned queue cannot close cleanly: it must not claim durable what a failed fsync left unknown.
            tracing::info!(dir = %self.inner.dir.display(), %error, "closing before reopen");
        }
        Queue::open_with(self.inner.opened_with.clone())
    }

    /// Stops a service's consumers gracefully, then closes. At once, no group hands out another message: `recv`
    /// (also one waiting now), `try_recv` and their batch forms return [`Error::Closed`], so worker loops end
    /// (`Consumer::iter` ends). Deliveries already out can still be acked, nacked, extended and dead-lettered,
    /// and appends go on, for up to `grace`: until every delivery is answered or that time has passed. Those
    /// still out then (not expired) were interrupted, not failed: each is given back to its group without
    /// counting the attempt (journaled, so the next open delivers it again with the count it had before); once
    /// the queue has closed, answering it fails with [`Error::Closed`]. Then [`Queue::close`].
    ///
    /// A crash during the grace period (`kill -9`) loses nothing acknowledged; the deliveries it interrupts count
    /// as attempts, as after any crash. The grace period bounds the wait for answers; the give-back and close
    /// after it take a journal rewrite per group with deliveries out, and the flushes of any close.
    pub fn shutdown(&self, grace: Duration) -> Result<ShutdownReport> {
        self.inner.log.lock().check_open()?;
        self.inner.log.begin_draining();
        let started = std::time::Instant::now();
        let deadline = started.checked_add(grace); // `None`: too far to represent, so no deadline
        let groups: Vec<Arc<GroupInner>> = self.inner.lock_groups().values().cloned().collect();
        while groups.iter().any(|group| group.leased_now() > 0) {
            let left = deadline.map_or(SHUTDOWN_POLL, |d| d.saturating_duration_since(std::time::Instant::now()));
            if left.is_zero() {
                break;
            }
            std::thread::sleep(SHUTDOWN_POLL.min(left));
        }
        let waited_ms = started.elapsed().as_millis() as u64;
        // Every group is given back its interrupted deliveries, even if one fails; the first failure is returned
        // (after closing: the queue closes whatever happens here).
        let mut interrupted = 0;
        let mut first_error = None;
        for group in &groups {
            match group.give_back_interrupted() {
                Ok(count) => interrupted += count,
                Err(error) => {
                    tracing::warn!(group = group.name(), %error, "cannot give back interrupted deliveries; they count as attempts");
                    first_error.get_or_insert(error);
                }
            }
        }
        let closed = self.close();
        if let Some(error) = first_error {
            return Err(error);
        }
        closed.map(|()| ShutdownReport { interrupted, waited_ms })
    }
}

impl QueueBuilder {
    /// Opens (or creates) the queue: takes the lock, recovers, and starts background work.
    pub fn open(self) -> Result<Queue> {
        Queue::open_with(self)
    }
}

impl QueueInner {
    fn lock_damaged(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DamagedEntry>> {
        self.damaged.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<GroupInner>>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) -> Result<()> {
        // Other processes first: their connections are shut down (a call being served finishes on its thread; no
        // other starts), and what they held is released by their threads.
        if let Some(server) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            server.stop();
        }
        // Maintenance stops first: a pass running on any thread (`Queue::compact`, cleanup after an ack, the
        // maintenance thread) ends at its next segment, and none starts again; the registration's drop waits until
        // the process's maintenance thread no longer holds this queue; then this queue's own threads are joined.
        self.cleanup.shut_down();
        drop(self.maintenance.lock().unwrap_or_else(|p| p.into_inner()).take());
        for mut ticker in std::mem::take(&mut *self.tickers.lock().unwrap_or_else(|p| p.into_inner())) {
            ticker.stop();
        }
        let groups: Vec<Arc<GroupInner>> = self.lock_groups().values().cloned().collect();
        // Close every group even if one fails; report the first failure.
        let mut groups_closed = Ok(());
        for group in &groups {
            let closed = group.close();
            if groups_closed.is_ok() {
                groups_closed = closed;
            }
        }
        let result = match self.log.close() {
            // Recorded before the lock is released: the next open may then trust everything below it.
            Ok(Some(durable_end)) => self.record_durable_end(durable_end).and(groups_closed),
            Ok(None) => groups_closed,
            Err(error) => Err(error),
        };
        // Release the lock only after the last write, so that the next owner sees a finished state.
        drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()).take());
        result
    }

    /// Records `durable_end_offset` in the manifest (atomic replace) after a clean close of the log; nothing is
    /// written if the manifest already records it.
    fn record_durable_end(&self, durable_end: u64) -> Result<()> {
        self.replace_manifest(|on_disk| on_disk.with_durable_end(durable_end))
    }

    /// Replaces the manifest on disk with `edit` of it (atomic replace: temporary file, fsync, rename, directory
    /// fsync). An edit that changes nothing writes nothing: closing a queue that was only read costs no fsync.
    fn replace_manifest(&self, edit: impl FnOnce(&Manifest) -> Manifest) -> Result<()> {
        let mut on_disk = self.manifest_on_disk.lock().unwrap_or_else(|p| p.into_inner());
        let edited = edit(&on_disk.manifest);
        if on_disk.uncertain || edited != on_disk.manifest {
            // A write that fails may have replaced the file anyway (the rename landed, the directory fsync failed):
            // until one succeeds, every edit writes, even one that changes nothing: a failed purge's point is
            // written over by the next purge or the close.
            on_disk.uncertain = true;
            manifest::write(self.storage.as_ref(), &self.dir, &edited)?;
            *on_disk = ManifestOnDisk { manifest: edited, uncertain: false };
        }
        Ok(())
    }
}

impl Drop for QueueInner {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::warn!(dir = %self.dir.display(), %error, "closing queue on drop failed");
        }
    }
}

/// The interval flusher: syncs the log and every group journal that is behind. Holds only weak references, so
/// that it never keeps the queue alive.
fn spawn_flusher(interval: Duration, log: &Arc<Log>, groups: &Groups) -> Ticker {
    let (log, groups) = (Arc::downgrade(log), Arc::downgrade(groups));
    let on_panic = poison_on_panic(&log);
    Ticker::spawn(
        "flusher",
        interval,
        move || {
            if let Some(log) = log.upgrade() {
                log.sync_if_behind();
            }
            for_each_group(&groups, GroupInner::sync_if_behind);
        },
        on_panic,
    )
}

/// What a background thread does when its task panics: it poisons the log (nothing more is acknowledged, so the
/// lost duty cannot go unnoticed) and is counted in [`Stats::background_panics`].
fn poison_on_panic(log: &Weak<Log>) -> impl FnOnce() + Send + 'static {
    let log = log.clone();
    move || {
        if let Some(log) = log.upgrade() {
            log.note_background_panic();
        }
    }
}

/// Hands the write buffers (the log's and the group journals') to the OS every
/// [`WRITE_BUFFER_LINGER`](crate::WRITE_BUFFER_LINGER).
fn spawn_buffer_writer(log: &Arc<Log>, groups: &Groups) -> Ticker {
    let (log, groups) = (Arc::downgrade(log), Arc::downgrade(groups));
    let on_panic = poison_on_panic(&log);
    Ticker::spawn(
        "buffer-writer",
        crate::limits::WRITE_BUFFER_LINGER,
        move || {
            if let Some(log) = log.upgrade() {
                log.write_pending_now();
            }
            for_each_group(&groups, GroupInner::write_buffered);
        },
        on_panic,
    )
}

/// Runs `task` on every group of a queue that is still alive, without holding the groups' lock meanwhile.
fn for_each_group(groups: &Weak<Mutex<BTreeMap<String, Arc<GroupInner>>>>, task: fn(&GroupInner)) {
    if let Some(groups) = groups.upgrade() {
        let groups: Vec<Arc<GroupInner>> = groups.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        groups.iter().for_each(|group| task(group));
    }
}

/// What a group's moving floor sets off: deleting consumed segments (through a weak reference: groups never keep the
/// queue's cleanup alive).
fn floor_listener(cleanup: &Arc<Cleanup>) -> FloorListener {
    let cleanup = Arc::downgrade(cleanup);
    FloorListener::new(move |floor| {
        if let Some(cleanup) = cleanup.upgrade() {
            cleanup.after_floor_moved(floor);
        }
    })
}

/// The manifest as this open last wrote it, and whether a failed write left the file's content unknown.
#[derive(Debug)]
struct ManifestOnDisk {
    manifest: Manifest,
    uncertain: bool,
}

/// A group whose journal is damaged: where, what, and its stand-in for cleanup.
type DamagedEntry = (PathBuf, u64, crate::error::CorruptionKind, Arc<DamagedGroup>);

/// Stands in for a damaged group in cleanup: its progress is unknown, so it holds back every deletion of consumed
/// segments (size and age limits, an explicit opt-in to lose data, still apply).
#[derive(Debug)]
struct DamagedGroup;

impl RetentionSource for DamagedGroup {
    fn durable_floor(&self) -> Result<u64> {
        Ok(0)
    }

    fn retains(&self, _start: u64, _end: u64) -> bool {
        true
    }

    fn retained_offsets(&self) -> Vec<u64> {
        Vec::new()
    }

    fn forget_below(&self, _first: u64) -> Result<()> {
        Ok(())
    }

    fn needed_in(&self, window: std::ops::Range<u64>) -> Vec<std::ops::Range<u64>> {
        vec![window] // nothing is known of what the group read: keep everything
    }

    fn read_below(&self) -> u64 {
        0
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// The locks that make a process a queue's only owner, held from before its first write until after its last.
#[derive(Debug)]
struct QueueLock {
    _file: Box<dyn LockGuard>,
    _dir: Option<Box<dyn LockGuard>>,
}

/// Takes both locks of a queue, or fails with [`Error::Locked`]. The `LOCK` file's lock is what other builds and
/// tools look for; the directory's own lock holds when `LOCK` is unlinked under a running owner (a second owner
/// would otherwise create a new `LOCK`, lock it, and append at the same offsets as the first).
///
/// A lock that looks taken is tried again for a short while ([`LOCK_CONTENDED_RETRY`]): a lock is held by an
/// open file description, and a process that forks (to spawn a child) lends its descriptors to the child until
/// the child's `exec` closes them. A queue closed and reopened while another thread of the process spawns a child
/// can meet its own lock, still referenced by the child for those microseconds.
fn lock_queue(storage: &dyn Storage, dir: &Path) -> Result<QueueLock> {
    let deadline = std::time::Instant::now() + LOCK_CONTENDED_RETRY;
    loop {
        match try_lock_queue(storage, dir) {
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

/// How long a queue lock that looks taken is tried again before `Error::Locked` (see `lock_queue`).
const LOCK_CONTENDED_RETRY: Duration = Duration::from_millis(100);

fn try_lock_queue(storage: &dyn Storage, dir: &Path) -> Result<QueueLock> {
    let file_path = dir.join(LOCK_FILE);
    let file = storage.try_lock(&file_path).map_err(|e| Error::io("lock queue", &file_path, e))?;
    let file = file.ok_or_else(|| Error::Locked { dir: dir.to_path_buf() })?;
    let dir_lock = match storage.try_lock_dir(dir) {
        Ok(Some(lock)) => Some(lock),
        Ok(None) => return Err(Error::Locked { dir: dir.to_path_buf() }),
        // Some file systems (NFS, some FUSE) refuse flock on a directory handle: the LOCK file's lock still holds,
        // without the protection against its unlinking.
        Err(error)
            if error.kind() == std::io::ErrorKind::Unsupported
                || DIR_LOCK_UNSUPPORTED.contains(&error.raw_os_error().unwrap_or(0)) =>
        {
            tracing::warn!(dir = %dir.display(), %error, "this file system cannot lock a directory; only LOCK is locked");
            None
        }
        Err(error) => return Err(Error::io("lock queue directory", dir, error)),
    };
    Ok(QueueLock { _file: file, _dir: dir_lock })
}

/// The errors of a file system that cannot `flock` a directory, as Linux numbers them: EBADF, EINVAL, ENOLCK,
/// EOPNOTSUPP (other systems: `ErrorKind::Unsupported`).
const DIR_LOCK_UNSUPPORTED: [i32; 4] = [9, 22, 37, 95];

/// Returns whether `dir` exists; fails with [`Error::NotAQueue`] if it holds anything but a queue (or the start of
/// one).
fn check_is_queue_or_empty(storage: &dyn Storage, dir: &Path) -> Result<bool> {
    let names = match storage.list_dir(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(Error::NotAQueue { dir: dir.to_path_buf(), found: not_a_queue::FILE })
        }
        Err(e) => return Err(Error::io("list directory", dir, e)),
    };
    let has_manifest = names.iter().any(|n| n == MANIFEST_FILE);
    if !has_manifest && names.iter().any(|n| !manifest::is_pre_manifest_file(n)) {
        return Err(Error::NotAQueue { dir: dir.to_path_buf(), found: not_a_queue::FOREIGN });
    }
    Ok(true)
}

/// Creates the queue directory and any missing ancestors, and makes each new entry durable: every directory created
/// has its parent fsynced, outermost first, so that a power cut cannot leave the queue under a path that is gone.
fn create_dir_durably(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(dir).filter(|d| !d.as_os_str().is_empty());
    while let Some(candidate) = current {
        match storage.list_dir(candidate) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(candidate),
            _ => break,
        }
        current = candidate.parent().filter(|p| !p.as_os_str().is_empty());
    }
    storage.create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    if missing.is_empty() {
        missing.push(dir); // it existed (empty): its entry may still be new
    }
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            storage.sync_dir(parent).map_err(|e| Error::io("fsync directory", parent, e))?;
        }
    }
    Ok(())
}

/// What [`Queue::group`] and [`Queue::existing_group`] do when the group is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfMissing {
    Create(StartAt),
    Fail,
}
