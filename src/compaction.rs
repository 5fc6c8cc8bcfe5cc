//! Reclaiming space: deleting consumed segments (`DeleteConsumed`), sweeping held ones, enforcing opt-in size and age
//! limits, and keyed compaction (`Compact`). All of it runs under one maintenance lock, off the append path.
//!
//! **Deletion** (consumed segments and limits) removes only the oldest segments, so the log stays one contiguous
//! run: unlink the segment, then its index, then fsync the directory. The groups' floors are made durable first, so
//! a crash cannot leave a group wanting messages that are gone. A crash before the directory fsync may bring a
//! segment back, which is harmless (it is deleted again); an index without its segment is removed on open.
//!
//! **Keyed compaction** rewrites a sealed segment without the messages it may remove (a message whose key has a
//! later message in the log, or an expired tombstone that is the latest for its key), one function per step:
//! 1. [`write_compacted`]: the kept frames, byte for byte (re-sealed for the new file's id), go to `<base>.seg.tmp`,
//!    which is fsynced;
//! 2. [`install`]: the temporary file is renamed over `<base>.seg` and the directory fsynced: the old file is removed
//!    by that rename, last, and a crash leaves either the old or the new file under the name, never both, never
//!    neither;
//! 3. the new file's index is written (a cache, renamed into place): the old one names another segment id.
//!
//! Which values are the latest is decided on durable data only: sealed segments, and the segment being written up to
//! what is fsynced. A newer value that a power cut could still lose never removes an older, durable one.
//!
//! **Sweeping** (`DeleteConsumed`) rewrites, by the same three steps, a sealed segment that cannot be deleted because
//! a few of its messages are still needed (a message leased for hours, a dead letter, a nacked one waiting out its
//! delay) while every group is done with at least half of the others: only the needed messages are kept. What a
//! group still needs is read from its state and its journal is fsynced before any file changes, so a crash cannot
//! bring back a group that wants a swept message. One held message then pins its own bytes and a header per
//! segment, not the log behind it.
//!
//! Leftover `.tmp` files are removed on open. Offsets never change; readers and groups skip the gaps. Segments are
//! read a frame at a time (`segment::FrameReader`) and the new file is written in chunks: memory does not grow with
//! segment size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{io_err, CorruptionKind, Error, Result};
use crate::ids::new_file_id;
use crate::index::{IndexCadence, IndexEntry, RunningMax};
use crate::log::Log;
use crate::options::{CleanupPolicy, CompactionScope, Maintenance, Settings};
use crate::record::{self, CrcSeed};
use crate::retention::{merge_ranges, RetentionSource};
use crate::segment::{write_index, FrameReader, Next, SealedFile, SealedSegment, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::storage::{OpenMode, Storage, StorageFile};

/// Bytes of a compacted segment gathered before they are written out.
const COMPACTION_WRITE_CHUNK_BYTES: usize = 1024 * 1024;

/// What a compaction pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Sealed segments rewritten.
    pub segments_rewritten: usize,
    /// Bytes of those segments before.
    pub bytes_before: u64,
    /// Bytes of those segments after.
    pub bytes_after: u64,
    /// Messages removed (superseded values and expired tombstones).
    pub messages_removed: u64,
    /// Of those, tombstones.
    pub tombstones_removed: u64,
}

/// When a compaction pass rewrites what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// Always (`Queue::compact`).
    OnDemand,
    /// Only when the removable share of sealed bytes reaches the configured percentage.
    IfDirty,
}

/// Counters for stats.
#[derive(Debug, Default)]
pub(crate) struct CleanupCounters {
    pub(crate) segments_deleted: AtomicU64,
    pub(crate) messages_dropped_by_limits: AtomicU64,
    pub(crate) segments_compacted: AtomicU64,
    pub(crate) messages_compacted: AtomicU64,
    pub(crate) segments_swept: AtomicU64,
    pub(crate) messages_swept: AtomicU64,
}

/// Cleanup, limits and compaction of one queue.
#[derive(Debug)]
pub(crate) struct Cleanup {
    log: Arc<Log>,
    settings: Settings,
    /// Whether a maintenance thread runs: if so, acks leave deletion to it.
    mode: Maintenance,
    sources: Mutex<BTreeMap<String, Weak<dyn RetentionSource>>>,
    /// Held by whatever deletes, rewrites or renames files; taken for good by [`Cleanup::shut_down`].
    maintenance: Mutex<()>,
    /// Set by `shut_down`: no maintenance starts any more.
    shut: std::sync::atomic::AtomicBool,
    /// A floor moved past a segment's end and deletion is left to the maintenance thread (or, under
    /// `Maintenance::Manual`, an ack found maintenance busy): see `want_cleanup`.
    cleanup_wanted: std::sync::atomic::AtomicBool,
    /// A deletion that keeps failing is retried every tick; warned about once per interval.
    cleanup_warning: crate::clock::WarningThrottle,
    /// A purge whose groups did not all record it yet (`finish_purge_locked` failed): retried by maintenance.
    purge_pending: AtomicBool,
    /// Sealed segments whose index rebuild failed, and when: not tried again before `INDEX_REBUILD_RETRY`.
    rebuild_failed: Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    pub(crate) counters: CleanupCounters,
    rolls_seen: AtomicU64,
    /// Maintenance ticks since the last full pass (see `maintain`).
    idle_ticks: AtomicU32,
    /// When the maintenance thread last served this queue (or when it opened), ms since the epoch: see
    /// `after_floor_moved`.
    served_at_ms: AtomicU64,
    /// Frames left in each segment a sweep rewrote (by base offset): a segment is read again only when enough of
    /// what is left became removable, not on every pass. Unknown after a restart: the offset range is assumed.
    swept_frames: Mutex<HashMap<u64, u64>>,
    /// Counts group registrations; held while a group is created and registered, and by a sweep while it installs
    /// a rewritten segment. A new group starts at the log's first offset and needs everything from there: a sweep
    /// that chose what to keep before the group existed must not install, so it checks the count first.
    registrations: Mutex<u64>,
}

/// One sealed segment as compaction sees it. Only its header and length are kept between steps, not the open file:
/// a log of thousands of segments would otherwise hold thousands of descriptors.
struct SealedInfo {
    segment: Arc<SealedSegment>,
    header: SegmentHeader,
    len_bytes: u64,
    /// When it was sealed: the creation time of the next segment.
    sealed_ms: u64,
}

impl SealedInfo {
    /// Reads the header and length of `segment` (its seal time is not needed by the caller).
    fn of(segment: Arc<SealedSegment>) -> Result<SealedInfo> {
        let file = segment.open()?;
        Ok(SealedInfo { segment, header: file.header, len_bytes: file.len_bytes, sealed_ms: 0 })
    }

    /// Opens the file again; it is the one measured (only compaction replaces sealed files, under the maintenance
    /// lock held throughout).
    fn open(&self) -> Result<SealedFile> {
        let sealed = self.segment.open()?;
        if sealed.header.segment_id != self.header.segment_id {
            let file = self.segment.path.clone();
            return Err(Error::Corrupt { file, position: 24, kind: CorruptionKind::WrongSegment });
        }
        Ok(sealed)
    }
}

impl Cleanup {
    pub(crate) fn new(log: Arc<Log>, mode: Maintenance) -> Cleanup {
        let settings = log.settings;
        Cleanup {
            log,
            settings,
            mode,
            sources: Mutex::new(BTreeMap::new()),
            maintenance: Mutex::new(()),
            shut: std::sync::atomic::AtomicBool::new(false),
            cleanup_wanted: std::sync::atomic::AtomicBool::new(false),
            cleanup_warning: Default::default(),
            purge_pending: AtomicBool::new(false),
            rebuild_failed: Mutex::default(),
            counters: CleanupCounters::default(),
            rolls_seen: AtomicU64::new(0),
            idle_ticks: AtomicU32::new(0),
            served_at_ms: AtomicU64::new(crate::clock::now_ms()),
            swept_frames: Mutex::default(),
            registrations: Mutex::new(0),
        }
    }

    /// The queue's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.log.dir
    }

    /// Its maintenance panicked (a bug): the queue is poisoned (`Log::note_background_panic`).
    pub(crate) fn note_background_panic(&self) {
        self.log.note_background_panic();
    }

    /// Stops maintenance for good: waits for any that is running (a compaction between two segments stops there),
    /// and makes every later call a no-op or `Error::Closed`. `Queue::close` calls it before it releases the
    /// directory lock, so that no rename or unlink of this process races the next owner's recovery.
    pub(crate) fn shut_down(&self) {
        self.shut.store(true, Ordering::SeqCst);
        drop(self.maintenance.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Notes that a group's floor moved (and, under `Maintenance::Manual`, that the maintenance lock was busy):
    /// the next maintenance tick, or the next `Queue::compact`, deletes what became consumed.
    fn want_cleanup(&self) {
        self.cleanup_wanted.store(true, Ordering::Relaxed);
    }

    fn is_shut(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }

    /// The maintenance lock, unless maintenance was shut down.
    pub(crate) fn lock_maintenance(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        let guard = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_shut() {
            return Err(Error::Closed);
        }
        Ok(guard)
    }

    /// Held by `Queue::group` around a new group's creation and registration; see `registrations`.
    pub(crate) fn registering(&self) -> std::sync::MutexGuard<'_, u64> {
        self.registrations.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(&self, name: &str, source: Weak<dyn RetentionSource>) {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), source);
    }

    pub(crate) fn unregister(&self, name: &str) {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    fn sources(&self) -> Vec<Arc<dyn RetentionSource>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).values().filter_map(Weak::upgrade).collect()
    }

    /// The lowest durable floor over all groups; `None` without groups.
    fn min_durable_floor(sources: &[Arc<dyn RetentionSource>]) -> Result<Option<u64>> {
        let mut floor = None;
        for source in sources {
            let this = source.durable_floor()?;
            floor = Some(floor.map_or(this, |f: u64| f.min(this)));
        }
        Ok(floor)
    }

    /// Called when a group's floor moved to `floor`: deletes consumed segments if that might free one. With a
    /// maintenance thread, it does so (within a tick): deciding needs every group's floor durable, and an ack must
    /// not pay for fsyncing other groups' journals. Under `Maintenance::Manual` the ack does it, and so does it
    /// when the thread has not served this queue for `MAINTENANCE_STALL_MS` (one thread serves every queue of the
    /// process: another queue's long compaction, or a stalled disk, must not let this queue's disk use grow).
    pub(crate) fn after_floor_moved(&self, floor: u64) {
        if self.settings.cleanup == CleanupPolicy::DeleteConsumed
            && self.log.oldest_sealed_end().is_some_and(|end| end <= floor)
        {
            let stalled = || {
                let served_at_ms = self.served_at_ms.load(Ordering::Relaxed);
                crate::clock::now_ms().saturating_sub(served_at_ms) > MAINTENANCE_STALL_MS
            };
            if self.mode == Maintenance::Background && !stalled() {
                self.want_cleanup();
            } else if let Err(error) = self.delete_consumed() {
                tracing::warn!(%error, "cleanup failed; it is retried after the next ack");
            }
        }
    }

    /// Deletes every oldest segment all groups are done with (`DeleteConsumed`); returns how many.
    pub(crate) fn delete_consumed(&self) -> Result<usize> {
        if self.settings.cleanup != CleanupPolicy::DeleteConsumed {
            return Ok(0);
        }
        let Ok(_maintenance) = self.maintenance.try_lock() else {
            self.want_cleanup(); // another thread is at it: the maintenance thread comes back to this
            return Ok(0);
        };
        if self.is_shut() {
            return Ok(0);
        }
        self.delete_consumed_locked()
    }

    /// `DeleteConsumed` now, waiting for maintenance that is running (`Queue::compact`), then a sweep.
    pub(crate) fn reclaim(&self) -> Result<CompactionReport> {
        if self.settings.cleanup != CleanupPolicy::DeleteConsumed {
            return Ok(CompactionReport::default());
        }
        {
            let _maintenance = self.lock_maintenance()?;
            self.delete_consumed_locked()?;
        }
        self.sweep()
    }

    /// Deletes every oldest segment all groups are done with; the caller holds the maintenance lock.
    fn delete_consumed_locked(&self) -> Result<usize> {
        let sources = self.sources();
        let Some(floor) = Cleanup::min_durable_floor(&sources)? else { return Ok(0) };
        let deletable: Vec<u64> = self
            .log
            .sealed_ranges_below(floor)
            .iter()
            .take_while(|&&(start, end)| !sources.iter().any(|s| s.retains(start, end)))
            .map(|&(start, _)| start)
            .collect();
        let deleted = self.log.delete_oldest_segments(&deletable)?;
        self.counters.segments_deleted.fetch_add(deleted as u64, Ordering::Relaxed);
        Ok(deleted)
    }

    /// Finishes a purge (`Queue::purge_until`, recorded in the manifest and the log before this runs): every group
    /// forgets the purged offsets, and the segments wholly below the purge point are deleted, whatever the cleanup
    /// policy. Repeating it is harmless: the next open and maintenance call it again after a crash or a failure.
    /// The caller holds the maintenance lock. Returns how many segments were deleted.
    pub(crate) fn finish_purge_locked(&self) -> Result<usize> {
        let purged_below = self.log.purged_below();
        if purged_below == 0 {
            return Ok(0);
        }
        self.purge_pending.store(true, Ordering::Relaxed);
        let forgotten = forget_below_everywhere(&self.sources(), purged_below);
        let bases: Vec<u64> = self.log.sealed_ranges_below(purged_below).iter().map(|&(start, _)| start).collect();
        let deleted = self.log.delete_oldest_segments(&bases)?;
        self.counters.segments_deleted.fetch_add(deleted as u64, Ordering::Relaxed);
        forgotten?;
        self.purge_pending.store(false, Ordering::Relaxed);
        Ok(deleted)
    }

    /// [`Cleanup::finish_purge_locked`] when a sealed segment lies wholly below the purge point (one rolled since
    /// the purge, or left by a failed deletion) or a purge did not finish (a group could not record it), unless
    /// other maintenance holds the lock (the next tick comes back).
    pub(crate) fn delete_purged_if_any(&self) {
        let segment_below = self.log.oldest_sealed_end().is_some_and(|end| end <= self.log.purged_below());
        if !segment_below && !self.purge_pending.load(Ordering::Relaxed) {
            return;
        }
        let Ok(_maintenance) = self.maintenance.try_lock() else { return };
        if self.is_shut() {
            return;
        }
        if let Err(error) = self.finish_purge_locked() {
            if self.cleanup_warning.ready() {
                tracing::warn!(%error, "deleting purged segments failed; retried at every maintenance tick");
            }
        }
    }

    /// One sweep pass (`DeleteConsumed`; see the module documentation): rewrites every sealed segment that every
    /// group has read past and whose needed messages are at most half of those it holds, keeping only them. The
    /// maintenance lock is taken per segment, so deletion and limits are not held up by a long pass.
    pub(crate) fn sweep(&self) -> Result<CompactionReport> {
        let mut report = CompactionReport::default();
        if self.settings.cleanup != CleanupPolicy::DeleteConsumed {
            return Ok(report);
        }
        let (candidates, registrations) = {
            let _maintenance = self.lock_maintenance()?;
            // What can be deleted is deleted first, not swept first and deleted a moment later.
            self.cleanup_wanted.store(false, Ordering::Relaxed);
            self.delete_consumed_locked()?;
            let registrations = *self.registering();
            let sources = self.sources();
            if sources.is_empty() {
                return Ok(report); // with no group nothing is consumed
            }
            let candidates = self.sweep_candidates(&sources);
            if candidates.is_empty() {
                return Ok(report);
            }
            // What the candidates were chosen on is made durable before any of them changes.
            for source in &sources {
                source.sync()?;
            }
            (candidates, registrations)
        };
        for (segment, needed) in candidates {
            let _maintenance = self.lock_maintenance()?;
            let base = segment.base_offset;
            match self.sweep_one(segment, &needed, registrations) {
                Ok(Swept::Rewritten { bytes_before, bytes_after, plan }) => {
                    report.segments_rewritten += 1;
                    report.bytes_before += bytes_before;
                    report.bytes_after += bytes_after;
                    report.messages_removed += plan.removed;
                    report.tombstones_removed += plan.tombstones_removed;
                    self.note_swept(base, plan.kept.len() as u64);
                }
                Ok(Swept::NothingToRemove { kept }) => self.note_swept(base, kept),
                Ok(Swept::GroupCreated) => break, // the next pass decides with the new group
                Err(error) if error.is_not_found() => {} // deleted meanwhile (consumed, or a limit)
                Err(error) => {
                    // A damaged segment (kept under SkipCorrupt) or a failed write: the others are still swept,
                    // and this one is not tried again until more of it becomes removable.
                    tracing::warn!(segment = base, %error, "cannot sweep segment");
                    self.note_swept(base, needed.iter().map(|r| r.end - r.start).sum());
                }
            }
        }
        self.counters.segments_swept.fetch_add(report.segments_rewritten as u64, Ordering::Relaxed);
        self.counters.messages_swept.fetch_add(report.messages_removed, Ordering::Relaxed);
        if report.segments_rewritten > 0 {
            tracing::debug!(?report, "swept held segments");
        }
        Ok(report)
    }

    fn note_swept(&self, base: u64, frames: u64) {
        self.swept_frames.lock().unwrap_or_else(|p| p.into_inner()).insert(base, frames);
    }

    /// Rewrites one segment keeping `needed`, unless a group was registered since `registrations` was read.
    fn sweep_one(&self, segment: Arc<SealedSegment>, needed: &[Range<u64>], registrations: u64) -> Result<Swept> {
        let info = SealedInfo::of(segment)?;
        let plan = plan_keeping(&info, |frame| is_in(needed, frame.offset))?;
        if plan.removed == 0 {
            return Ok(Swept::NothingToRemove { kept: plan.kept.len() as u64 });
        }
        let no_new_group = || Some(self.registering()).filter(|registered| **registered == registrations);
        Ok(match self.rewrite_if(&info, &plan, no_new_group)? {
            Some(bytes_after) => Swept::Rewritten { bytes_before: info.len_bytes, bytes_after, plan },
            None => Swept::GroupCreated,
        })
    }

    /// The sealed segments worth sweeping, with the offsets to keep: those every group has read past (a segment
    /// being consumed now would be rewritten for messages acked a moment later) where every group together needs
    /// at most half of the frames the segment holds (so each rewrite at least halves it, and a segment is
    /// rewritten a logarithmic number of times at most).
    fn sweep_candidates(&self, sources: &[Arc<dyn RetentionSource>]) -> Vec<(Arc<SealedSegment>, Vec<Range<u64>>)> {
        let read_past = sources.iter().map(|s| s.read_below()).min().unwrap_or(0);
        let (sealed, _) = self.log.sealed_snapshot();
        let ends: Vec<u64> = sealed.iter().skip(1).map(|s| s.base_offset).chain([self.log.active_base()]).collect();
        let mut swept = self.swept_frames.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = sealed.first() {
            swept.retain(|&base, _| base >= first.base_offset); // deleted since
        }
        let mut candidates = Vec::new();
        for (segment, end) in sealed.into_iter().zip(ends).take_while(|(_, end)| *end <= read_past) {
            let start = segment.base_offset;
            let held = swept.get(&start).copied().unwrap_or(end - start);
            if held == 0 {
                continue; // swept to nothing: waits for deletion
            }
            let needed = merge_ranges(sources.iter().flat_map(|s| s.needed_in(start..end)).collect());
            let needed_count: u64 = needed.iter().map(|r| r.end - r.start).sum();
            if needed_count < held && needed_count * 2 <= held {
                candidates.push((segment, needed));
            }
        }
        candidates
    }

    /// The sealed segments, oldest first, with their headers, lengths and seal times.
    fn sealed_infos(&self) -> Result<Vec<SealedInfo>> {
        let (sealed, active_created_ms) = self.log.sealed_snapshot();
        let files: Vec<(SegmentHeader, u64)> =
            sealed.iter().map(|s| s.open().map(|f| (f.header, f.len_bytes))).collect::<Result<_>>()?;
        let seal_times: Vec<u64> = files.iter().skip(1).map(|(h, _)| h.created_ms).chain([active_created_ms]).collect();
        Ok(sealed
            .into_iter()
            .zip(files)
            .zip(seal_times)
            .map(|((segment, (header, len_bytes)), sealed_ms)| SealedInfo { segment, header, len_bytes, sealed_ms })
            .collect())
    }

    /// Deletes the oldest sealed segments while the log breaks a size or age limit; returns how many.
    pub(crate) fn enforce_limits(&self, now_ms: u64) -> Result<usize> {
        let (max_bytes, max_age_ms) = (self.settings.retention_max_bytes, self.settings.retention_max_age_ms);
        let max_messages = self.settings.retention_max_messages;
        if max_bytes.is_none() && max_age_ms.is_none() && max_messages.is_none() {
            return Ok(0);
        }
        let end = self.log.next_offset();
        let _maintenance = self.lock_maintenance()?;
        let infos = self.sealed_infos()?;
        let mut total: u64 = infos.iter().map(|i| i.len_bytes).sum::<u64>() + self.log.active_bytes();
        let mut doomed = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            let too_big = max_bytes.is_some_and(|max| total > max);
            let too_old = max_age_ms.is_some_and(|max| now_ms.saturating_sub(info.sealed_ms) > max);
            let too_many = max_messages.is_some_and(|max| end.saturating_sub(info.segment.base_offset) > max);
            if !too_big && !too_old && !too_many {
                break;
            }
            total -= info.len_bytes;
            let end = infos.get(i + 1).map_or_else(|| self.log.active_base(), |next| next.segment.base_offset);
            doomed.push((info.segment.base_offset, end));
        }
        let Some(&(_, new_first)) = doomed.last() else { return Ok(0) };
        let sources = self.sources();
        let floor = Cleanup::min_durable_floor(&sources)?.unwrap_or(new_first);
        let dropped: u64 = doomed.iter().map(|&(start, end)| end.saturating_sub(start.max(floor))).sum();
        let bases: Vec<u64> = doomed.iter().map(|&(start, _)| start).collect();
        let deleted = self.log.delete_oldest_segments(&bases)?;
        if dropped > 0 {
            tracing::warn!(dropped, new_first, "a retention limit dropped messages not yet consumed by every group");
        }
        // Counted before the groups forget: the segments are gone whether or not a group's journal takes it.
        self.counters.segments_deleted.fetch_add(deleted as u64, Ordering::Relaxed);
        self.counters.messages_dropped_by_limits.fetch_add(dropped, Ordering::Relaxed);
        forget_below_everywhere(&sources, new_first).map(|()| deleted)
    }

    /// One keyed compaction pass over the sealed segments.
    pub(crate) fn compact(&self, now_ms: u64, trigger: Trigger) -> Result<CompactionReport> {
        if self.settings.cleanup != CleanupPolicy::Compact {
            return Ok(CompactionReport::default());
        }
        let _maintenance = self.lock_maintenance()?;
        let sources = self.sources();
        let removable_below = match self.settings.compaction_scope {
            CompactionScope::Acked => Cleanup::min_durable_floor(&sources)?.unwrap_or(u64::MAX),
            CompactionScope::AllSealed => u64::MAX,
        };
        let retained: HashSet<u64> = sources.iter().flat_map(|s| s.retained_offsets()).collect();
        let infos = self.sealed_infos()?;
        let latest = self.latest_offsets(&infos)?;
        let rules = Rules { removable_below, retained: &retained, latest: &latest, now_ms, settings: &self.settings };
        let plans: Vec<Plan> = infos.iter().map(|info| rules.plan(info)).collect::<Result<_>>()?;
        let dirty: u64 = plans.iter().map(|p| p.removed_bytes).sum();
        let total: u64 = infos.iter().map(|i| i.len_bytes).sum();
        let mut report = CompactionReport::default();
        if dirty == 0
            || (trigger == Trigger::IfDirty && dirty * 100 < total * u64::from(self.settings.compaction_dirty_percent))
        {
            return Ok(report);
        }
        // Oldest first: a tombstone is removed only after the older values it deletes are gone.
        for (info, plan) in infos.iter().zip(&plans).filter(|(_, plan)| plan.removed > 0) {
            if self.is_shut() {
                break; // the queue is closing: what is rewritten so far stands, the rest waits for the next open
            }
            let bytes_after = self.rewrite(info, plan)?;
            report.segments_rewritten += 1;
            report.bytes_before += info.len_bytes;
            report.bytes_after += bytes_after;
            report.messages_removed += plan.removed;
            report.tombstones_removed += plan.tombstones_removed;
        }
        self.counters.segments_compacted.fetch_add(report.segments_rewritten as u64, Ordering::Relaxed);
        self.counters.messages_compacted.fetch_add(report.messages_removed, Ordering::Relaxed);
        tracing::info!(?report, "compacted");
        Ok(report)
    }

    /// The latest offset of every key in the durable log: the sealed segments, and the segment being written up to
    /// what is fsynced. A value written but not yet durable does not count: a power cut could take it, and the
    /// older value it would have replaced must still be there then.
    fn latest_offsets(&self, infos: &[SealedInfo]) -> Result<HashMap<Vec<u8>, u64>> {
        let mut latest = HashMap::new();
        let mut note = |frame: &record::Frame<'_>| {
            if let Some(key) = frame.key {
                latest.insert(key.to_vec(), frame.offset);
            }
        };
        for info in infos {
            for_each_frame(&info.segment.path, info.open()?.frames(), |_, frame| note(frame))?;
        }
        let active = self.log.durable_active();
        for_each_frame(&active.path, active.frames, |_, frame| note(frame))?;
        Ok(latest)
    }

    fn rewrite(&self, info: &SealedInfo, plan: &Plan) -> Result<u64> {
        let installed = self.rewrite_if(info, plan, || Some(()))?;
        Ok(installed.expect("nothing vetoes a compaction's install"))
    }

    /// The three steps of a rewrite (see the module documentation). Between writing the new file and installing
    /// it, `may_install` decides: `None` drops the new file; `Some(guard)` is held while the file is renamed into
    /// place (a sweep holds the registration count, so that no group is created meanwhile). Returns the new size if
    /// installed.
    fn rewrite_if<G>(
        &self,
        info: &SealedInfo,
        plan: &Plan,
        may_install: impl FnOnce() -> Option<G>,
    ) -> Result<Option<u64>> {
        let storage = self.log.storage.as_ref();
        let temp = info.segment.path.with_extension("seg.tmp");
        let (bytes_after, header, entries) = write_compacted(storage, &temp, &info.segment.path, &info.open()?, plan)?;
        {
            let Some(_guard) = may_install() else {
                let _ = storage.remove_file(&temp);
                return Ok(None);
            };
            install(storage, &temp, &info.segment.path, &self.log.dir)?;
        }
        self.installed(info, &header, &entries);
        Ok(Some(bytes_after))
    }

    /// Step 3, after a rewritten segment is installed: the next lookup opens the new file, with its new index.
    fn installed(&self, info: &SealedInfo, header: &SegmentHeader, entries: &[IndexEntry]) {
        self.log.forget_open_segment(info.segment.base_offset);
        if let Err(error) = write_index(self.log.storage.as_ref(), &info.segment.index_path, header, entries) {
            // Readers scan meanwhile and note it; maintenance rebuilds it.
            tracing::warn!(path = %info.segment.index_path.display(), %error, "cannot write compacted segment's index");
        }
    }

    /// Rebuilds the indexes readers found unusable. Under the maintenance lock: compaction, which replaces segment
    /// files and writes their indexes, does not run meanwhile.
    pub(crate) fn rebuild_stale_indexes(&self) {
        let stale = self.log.take_stale_indexes();
        if stale.is_empty() {
            return;
        }
        let Ok(_maintenance) = self.lock_maintenance() else { return };
        let mut failed = self.rebuild_failed.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        failed.retain(|_, at| now.duration_since(*at) < INDEX_REBUILD_RETRY);
        for segment in stale {
            if self.is_shut() {
                return;
            }
            if failed.contains_key(&segment.base_offset) {
                continue; // a full disk, say: reads scan meanwhile, and the rebuild is not tried 20 times a second
            }
            match segment.rebuild_index() {
                Ok(()) => self.log.forget_open_segment(segment.base_offset), // the next lookup loads the new index
                Err(error) if !error.is_not_found() => {
                    tracing::warn!(path = %segment.index_path.display(), %error, "cannot rebuild segment index");
                    failed.insert(segment.base_offset, now);
                }
                Err(_) => {} // deleted meanwhile
            }
        }
    }

    /// Background work: limits, then compaction if enough is removable. Runs after segment rolls, and at least
    /// every `MAINTENANCE_IDLE_TICKS` calls. Only the maintenance thread calls it.
    pub(crate) fn maintain(&self, now_ms: u64) {
        if self.is_shut() {
            return; // a closed queue the thread had already picked for this round
        }
        self.served_at_ms.store(now_ms, Ordering::Relaxed);
        self.rebuild_stale_indexes();
        self.delete_if_wanted();
        self.delete_purged_if_any();
        let rolls = self.log.counters.rolls.load(Ordering::Relaxed);
        let idle_ticks = self.idle_ticks.fetch_add(1, Ordering::Relaxed) + 1;
        if rolls == self.rolls_seen.swap(rolls, Ordering::Relaxed) && idle_ticks < MAINTENANCE_IDLE_TICKS {
            return;
        }
        self.idle_ticks.store(0, Ordering::Relaxed);
        if let Err(error) = self.enforce_limits(now_ms) {
            tracing::warn!(%error, "enforcing retention limits failed");
        }
        if let Err(error) = self.compact(now_ms, Trigger::IfDirty) {
            tracing::warn!(%error, "background compaction failed");
        }
        if let Err(error) = self.sweep() {
            tracing::warn!(%error, "sweeping held segments failed");
        }
        // An ack that moved a floor while the sweep held the maintenance lock left its deletion to this thread.
        self.delete_if_wanted();
    }

    /// Deletes consumed segments if an ack left it for later (`want_cleanup`). A failure leaves it wanted: the
    /// next tick (or `Queue::compact`) tries again.
    pub(crate) fn delete_if_wanted(&self) {
        if self.cleanup_wanted.swap(false, Ordering::Relaxed) {
            if let Err(error) = self.delete_consumed() {
                self.want_cleanup();
                if self.cleanup_warning.ready() {
                    tracing::warn!(%error, "deleting consumed segments failed; retried at every maintenance tick");
                }
            }
        }
    }
}

/// How long a failed index rebuild waits before it is tried again.
const INDEX_REBUILD_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// How long the maintenance thread may leave a queue unserved before its acks delete consumed segments themselves
/// (see `Cleanup::after_floor_moved`).
const MAINTENANCE_STALL_MS: u64 = 1_000;

/// Maintenance ticks without a roll after which background maintenance runs anyway (for age limits and
/// tombstone retention, which depend on time alone).
const MAINTENANCE_IDLE_TICKS: u32 = 200;

/// Calls `visit(position, frame)` for every frame `frames` reads; damage is an error, never skipped.
fn for_each_frame(path: &Path, mut frames: FrameReader, visit: impl FnMut(u64, &record::Frame<'_>)) -> Result<()> {
    let end = frames.end();
    let (position, stop) = frames.walk_to_stop(visit).map_err(io_err("read segment", path))?;
    if position < end {
        return Err(Error::Corrupt { file: path.to_path_buf(), position, kind: stop.kind() });
    }
    Ok(())
}

/// What a sweep did with one segment.
enum Swept {
    Rewritten {
        bytes_before: u64,
        bytes_after: u64,
        plan: Plan,
    },
    NothingToRemove {
        kept: u64,
    },
    /// A group was created while the segment was being rewritten: not installed.
    GroupCreated,
}

/// What compaction may remove, and why.
struct Rules<'a> {
    removable_below: u64,
    retained: &'a HashSet<u64>,
    latest: &'a HashMap<Vec<u8>, u64>,
    now_ms: u64,
    settings: &'a Settings,
}

/// What to keep of one segment.
#[derive(Debug, Default)]
struct Plan {
    /// The position of each kept frame, in order.
    kept: Vec<u64>,
    kept_bytes: u64,
    removed: u64,
    removed_bytes: u64,
    tombstones_removed: u64,
}

impl Rules<'_> {
    fn plan(&self, info: &SealedInfo) -> Result<Plan> {
        let tombstones_expired = self.now_ms.saturating_sub(info.sealed_ms) >= self.settings.tombstone_retention_ms;
        plan_keeping(info, |frame| {
            let in_scope = frame.offset < self.removable_below && !self.retained.contains(&frame.offset);
            let superseded = frame.key.is_some_and(|key| self.latest.get(key).is_some_and(|&l| l > frame.offset));
            let expired_tombstone = frame.key.is_some() && frame.value.is_none() && tombstones_expired;
            !(in_scope && (superseded || expired_tombstone))
        })
    }
}

/// Whether `offset` is in one of `ranges` (sorted and disjoint).
fn is_in(ranges: &[Range<u64>], offset: u64) -> bool {
    let i = ranges.partition_point(|r| r.end <= offset);
    ranges.get(i).is_some_and(|r| r.contains(&offset))
}

/// The plan that keeps the frames of `info` for which `keep` says so.
fn plan_keeping(info: &SealedInfo, keep: impl Fn(&record::Frame<'_>) -> bool) -> Result<Plan> {
    let mut plan = Plan::default();
    for_each_frame(&info.segment.path, info.open()?.frames(), |position, frame| {
        if keep(frame) {
            plan.kept.push(position);
            plan.kept_bytes += frame.len_bytes as u64;
        } else {
            plan.removed += 1;
            plan.removed_bytes += frame.len_bytes as u64;
            plan.tombstones_removed += u64::from(frame.value.is_none());
        }
    })?;
    Ok(plan)
}

/// Step 1: writes the kept frames of `sealed` (read from the file at `path`) into a new segment file at `temp`
/// (same base offset and creation time, new segment id, frames re-sealed for it) and fsyncs it. Returns its size,
/// its header and its index entries.
fn write_compacted(
    storage: &dyn Storage,
    temp: &Path,
    path: &Path,
    sealed: &SealedFile,
    plan: &Plan,
) -> Result<(u64, SegmentHeader, Vec<IndexEntry>)> {
    let header = SegmentHeader { segment_id: new_file_id(), ..sealed.header };
    match storage.remove_file(temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove leftover", temp, e)),
        _ => {}
    }
    let file = storage.open_file(temp, OpenMode::CreateNew).map_err(io_err("create compacted segment", temp))?;
    let copied = copy_kept(file.as_ref(), &header, path, sealed, plan)
        .and_then(|copied| file.sync_all().map(|()| copied).map_err(io_err("fsync compacted segment", temp)));
    let (len_bytes, entries) = match copied {
        Ok(copied) => copied,
        Err(error) => {
            let _ = storage.remove_file(temp);
            return Err(error);
        }
    };
    debug_assert_eq!(len_bytes, SEGMENT_HEADER_BYTES as u64 + plan.kept_bytes);
    Ok((len_bytes, header, entries))
}

/// Copies the frames `plan` keeps into `out`, after `header`, in chunks. Returns the bytes written and the index
/// entries of the new file.
fn copy_kept(
    out: &dyn StorageFile,
    header: &SegmentHeader,
    path: &Path,
    sealed: &SealedFile,
    plan: &Plan,
) -> Result<(u64, Vec<IndexEntry>)> {
    let crc = CrcSeed::new(header.segment_id);
    let write_error = |e| Error::io("write compacted segment", path.with_extension("seg.tmp"), e);
    let mut chunk = Vec::with_capacity(COMPACTION_WRITE_CHUNK_BYTES);
    chunk.extend_from_slice(&header.encode());
    let mut written = 0u64;
    let mut entries = Vec::new();
    let mut cadence = IndexCadence::after(SEGMENT_HEADER_BYTES as u64);
    let mut running = RunningMax::EMPTY;
    let mut kept = plan.kept.iter().peekable();
    let mut frames = sealed.frames();
    while kept.peek().is_some() {
        let (position, frame) = match frames.next().map_err(io_err("read segment", path))? {
            Next::Frame { position, frame } => (position, frame),
            Next::Stop { position, stop } => {
                return Err(Error::Corrupt { file: path.to_path_buf(), position, kind: stop.kind() });
            }
        };
        if kept.next_if_eq(&&position).is_none() {
            continue;
        }
        let new_position = written + chunk.len() as u64;
        if cadence.take(new_position) {
            let rel_offset = (frame.offset - header.base_offset) as u32;
            entries.push(IndexEntry {
                rel_offset,
                position: new_position as u32,
                max_seconds_before: running.seconds(),
            });
        }
        running.add(frame.timestamp_ms);
        let start = chunk.len();
        chunk.extend_from_slice(frame.bytes);
        record::reseal(&mut chunk[start..], &crc);
        if chunk.len() >= COMPACTION_WRITE_CHUNK_BYTES {
            out.write_all_at(&chunk, written).map_err(write_error)?;
            written += chunk.len() as u64;
            chunk.clear();
        }
    }
    out.write_all_at(&chunk, written).map_err(write_error)?;
    Ok((written + chunk.len() as u64, entries))
}

/// Step 2: renames the compacted file over the segment and fsyncs the directory.
fn install(storage: &dyn Storage, temp: &Path, path: &Path, dir: &Path) -> Result<()> {
    if let Err(e) = storage.rename(temp, path) {
        let _ = storage.remove_file(temp);
        return Err(Error::io("install compacted segment", path, e));
    }
    storage.sync_dir(dir).map_err(io_err("fsync directory", dir))
}

/// Has every group forget the offsets below `first`, even after one failed (a full disk for its journal: the
/// others need not wait for it); returns the first failure.
fn forget_below_everywhere(sources: &[Arc<dyn RetentionSource>], first: u64) -> Result<()> {
    let mut forgotten = Ok(());
    for source in sources {
        let result = source.forget_below(first);
        if forgotten.is_ok() {
            forgotten = result;
        }
    }
    forgotten
}
