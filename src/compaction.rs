//! Reclaiming space: deleting consumed segments (`DeleteConsumed`), enforcing opt-in size and age limits, and keyed
//! compaction (`Compact`). All of it runs under one maintenance lock, off the append path.
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
//! 3. the log forgets its map of the old file; its stale index (another segment id) is rebuilt on first use.
//!
//! Leftover `.tmp` files are removed on open. Offsets never change; readers and groups skip the gaps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{io_err, CorruptionKind, Error, Result};
use crate::ids::new_file_id;
use crate::log::Log;
use crate::options::{CleanupPolicy, CompactionScope, Settings};
use crate::reader::Reader;
use crate::record::{self, CrcSeed, FrameError};
use crate::segment::{SealedSegment, SealedView, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::storage::{OpenMode, Storage};

/// A consumer of the log whose progress bounds what may be deleted or compacted.
pub(crate) trait RetentionSource: Send + Sync + std::fmt::Debug {
    /// The group's ack floor, made durable before it is returned.
    fn durable_floor(&self) -> Result<u64>;
    /// Whether the group still needs any offset in `start..end` below its floor.
    fn retains(&self, start: u64, end: u64) -> bool;
    /// Every offset the group keeps whatever its floor (dead letters, redriven messages).
    fn retained_offsets(&self) -> Vec<u64>;
    /// Offsets below `first` were deleted by a size or age limit: forget them.
    fn forget_below(&self, first: u64) -> Result<()>;
}

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
}

/// Cleanup, limits and compaction of one queue.
#[derive(Debug)]
pub(crate) struct Cleanup {
    log: Arc<Log>,
    settings: Settings,
    sources: Mutex<BTreeMap<String, Weak<dyn RetentionSource>>>,
    maintenance: Mutex<()>,
    pub(crate) counters: CleanupCounters,
    rolls_seen: AtomicU64,
}

/// One sealed segment as compaction sees it.
struct SealedInfo {
    segment: Arc<SealedSegment>,
    view: Arc<SealedView>,
    /// When it was sealed: the creation time of the next segment.
    sealed_ms: u64,
}

impl Cleanup {
    pub(crate) fn new(log: Arc<Log>) -> Cleanup {
        let settings = log.settings;
        Cleanup {
            log,
            settings,
            sources: Mutex::new(BTreeMap::new()),
            maintenance: Mutex::new(()),
            counters: CleanupCounters::default(),
            rolls_seen: AtomicU64::new(0),
        }
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

    /// Called when a group's floor moved to `floor`: deletes consumed segments if that might free one.
    pub(crate) fn after_floor_moved(&self, floor: u64) {
        if self.settings.cleanup == CleanupPolicy::DeleteConsumed
            && self.log.oldest_sealed_end().is_some_and(|end| end <= floor)
        {
            if let Err(error) = self.delete_consumed() {
                tracing::warn!(%error, "cleanup failed; it is retried after the next ack");
            }
        }
    }

    /// Deletes every oldest segment all groups are done with (`DeleteConsumed`); returns how many.
    pub(crate) fn delete_consumed(&self) -> Result<usize> {
        if self.settings.cleanup != CleanupPolicy::DeleteConsumed {
            return Ok(0);
        }
        let Ok(_maintenance) = self.maintenance.try_lock() else { return Ok(0) }; // another thread is at it
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

    /// The sealed segments, oldest first, with their maps and crc times.
    fn sealed_infos(&self) -> Result<Vec<SealedInfo>> {
        let (sealed, active_created_ms) = self.log.sealed_snapshot();
        let views: Vec<Arc<SealedView>> = sealed.iter().map(|s| s.view()).collect::<Result<_>>()?;
        let seal_times: Vec<u64> =
            views.iter().skip(1).map(|v| v.header.created_ms).chain([active_created_ms]).collect();
        Ok(sealed
            .into_iter()
            .zip(views)
            .zip(seal_times)
            .map(|((segment, view), sealed_ms)| SealedInfo { segment, view, sealed_ms })
            .collect())
    }

    /// Deletes the oldest sealed segments while the log breaks a size or age limit; returns how many.
    pub(crate) fn enforce_limits(&self, now_ms: u64) -> Result<usize> {
        let (max_bytes, max_age_ms) = (self.settings.retention_max_bytes, self.settings.retention_max_age_ms);
        if max_bytes.is_none() && max_age_ms.is_none() {
            return Ok(0);
        }
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let infos = self.sealed_infos()?;
        let mut total: u64 = infos.iter().map(|i| i.view.data.len() as u64).sum::<u64>() + self.log.active_bytes();
        let mut doomed = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            let too_big = max_bytes.is_some_and(|max| total > max);
            let too_old = max_age_ms.is_some_and(|max| now_ms.saturating_sub(info.sealed_ms) > max);
            if !too_big && !too_old {
                break;
            }
            total -= info.view.data.len() as u64;
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
            tracing::warn!(dropped, new_first, "size or age limit dropped messages not yet consumed by every group");
        }
        for source in &sources {
            source.forget_below(new_first)?;
        }
        self.counters.segments_deleted.fetch_add(deleted as u64, Ordering::Relaxed);
        self.counters.messages_dropped_by_limits.fetch_add(dropped, Ordering::Relaxed);
        Ok(deleted)
    }

    /// One keyed compaction pass over the sealed segments.
    pub(crate) fn compact(&self, now_ms: u64, trigger: Trigger) -> Result<CompactionReport> {
        if self.settings.cleanup != CleanupPolicy::Compact {
            return Ok(CompactionReport::default());
        }
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
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
        let total: u64 = infos.iter().map(|i| i.view.data.len() as u64).sum();
        let mut report = CompactionReport::default();
        if dirty == 0
            || (trigger == Trigger::IfDirty && dirty * 100 < total * u64::from(self.settings.compaction_dirty_percent))
        {
            return Ok(report);
        }
        // Oldest first: a tombstone is removed only after the older values it deletes are gone.
        for (info, plan) in infos.iter().zip(&plans).filter(|(_, plan)| plan.removed > 0) {
            let bytes_after = self.rewrite(info, plan)?;
            report.segments_rewritten += 1;
            report.bytes_before += info.view.data.len() as u64;
            report.bytes_after += bytes_after;
            report.messages_removed += plan.removed;
            report.tombstones_removed += plan.tombstones_removed;
        }
        self.counters.segments_compacted.fetch_add(report.segments_rewritten as u64, Ordering::Relaxed);
        self.counters.messages_compacted.fetch_add(report.messages_removed, Ordering::Relaxed);
        tracing::info!(?report, "compacted");
        Ok(report)
    }

    /// The latest offset of every key in the log: the sealed segments and what is visible of the active one.
    fn latest_offsets(&self, infos: &[SealedInfo]) -> Result<HashMap<Vec<u8>, u64>> {
        let mut latest = HashMap::new();
        for info in infos {
            for frame in frames(&info.segment.path, &info.view) {
                let (_, frame) = frame?;
                if let Some(key) = frame.key {
                    latest.insert(key.to_vec(), frame.offset);
                }
            }
        }
        for record in Reader::new(self.log.clone(), self.log.active_base(), false) {
            let record = record?;
            if let Some(key) = record.key {
                latest.insert(key, record.offset.0);
            }
        }
        Ok(latest)
    }

    fn rewrite(&self, info: &SealedInfo, plan: &Plan) -> Result<u64> {
        let storage = self.log.storage.as_ref();
        let temp = info.segment.path.with_extension("seg.tmp");
        let bytes_after = write_compacted(storage, &temp, &info.view, &plan.kept)?;
        install(storage, &temp, &info.segment.path, &self.log.dir)?;
        info.segment.forget_view();
        Ok(bytes_after)
    }

    /// Background work: limits, then compaction if enough is removable. Runs after segment rolls, and at least
    /// every `idle_ticks` calls.
    pub(crate) fn maintain(&self, now_ms: u64, idle_ticks: &mut u32) {
        let rolls = self.log.counters.rolls.load(Ordering::Relaxed);
        *idle_ticks += 1;
        if rolls == self.rolls_seen.swap(rolls, Ordering::Relaxed) && *idle_ticks < MAINTENANCE_IDLE_TICKS {
            return;
        }
        *idle_ticks = 0;
        if let Err(error) = self.enforce_limits(now_ms) {
            tracing::warn!(%error, "enforcing retention limits failed");
        }
        if let Err(error) = self.compact(now_ms, Trigger::IfDirty) {
            tracing::warn!(%error, "background compaction failed");
        }
    }
}

/// Maintenance ticks without a roll after which background maintenance runs anyway (for age limits and
/// tombstone retention, which depend on time alone).
const MAINTENANCE_IDLE_TICKS: u32 = 200;

/// The frames of a sealed segment; damage is an error, never skipped.
fn frames<'a>(path: &'a Path, view: &'a SealedView) -> impl Iterator<Item = Result<(usize, record::Frame<'a>)>> + 'a {
    let mut position = SEGMENT_HEADER_BYTES;
    let mut done = false;
    let crc = CrcSeed::new(view.header.segment_id);
    std::iter::from_fn(move || {
        if done || position >= view.data.len() {
            return None;
        }
        match record::decode(&view.data[position..], &crc) {
            Ok(frame) => {
                let at = position;
                position += frame.len_bytes;
                Some(Ok((at, frame)))
            }
            Err(error) => {
                done = true;
                let kind = match error {
                    FrameError::Truncated { .. } => CorruptionKind::Truncated,
                    FrameError::Invalid(kind) => kind,
                };
                Some(Err(Error::Corrupt { file: path.to_path_buf(), position: position as u64, kind }))
            }
        }
    })
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
    /// `(position, length)` of each kept frame.
    kept: Vec<(usize, usize)>,
    removed: u64,
    removed_bytes: u64,
    tombstones_removed: u64,
}

impl Rules<'_> {
    fn plan(&self, info: &SealedInfo) -> Result<Plan> {
        let tombstones_expired = self.now_ms.saturating_sub(info.sealed_ms) >= self.settings.tombstone_retention_ms;
        let mut plan = Plan::default();
        for frame in frames(&info.segment.path, &info.view) {
            let (position, frame) = frame?;
            let in_scope = frame.offset < self.removable_below && !self.retained.contains(&frame.offset);
            let superseded = frame.key.is_some_and(|key| self.latest.get(key).is_some_and(|&l| l > frame.offset));
            let expired_tombstone = frame.key.is_some() && frame.value.is_none() && tombstones_expired;
            if in_scope && (superseded || expired_tombstone) {
                plan.removed += 1;
                plan.removed_bytes += frame.len_bytes as u64;
                plan.tombstones_removed += u64::from(frame.value.is_none());
            } else {
                plan.kept.push((position, frame.len_bytes));
            }
        }
        Ok(plan)
    }
}

/// Step 1: writes the kept frames into a new segment file at `temp` (same base offset and creation time, new
/// segment id, frames re-sealed for it) and fsyncs it. Returns its size.
fn write_compacted(storage: &dyn Storage, temp: &Path, view: &SealedView, kept: &[(usize, usize)]) -> Result<u64> {
    let header = SegmentHeader { segment_id: new_file_id(), ..view.header };
    let mut bytes = Vec::with_capacity(SEGMENT_HEADER_BYTES + kept.iter().map(|k| k.1).sum::<usize>());
    bytes.extend_from_slice(&header.encode());
    let crc = CrcSeed::new(header.segment_id);
    for &(position, len) in kept {
        let start = bytes.len();
        bytes.extend_from_slice(&view.data[position..position + len]);
        record::reseal(&mut bytes[start..], &crc);
    }
    match storage.remove_file(temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove leftover", temp, e)),
        _ => {}
    }
    let file = storage.open_file(temp, OpenMode::CreateNew).map_err(io_err("create compacted segment", temp))?;
    if let Err(e) = file.write_all_at(&bytes, 0).and_then(|()| file.sync_all()) {
        let _ = storage.remove_file(temp);
        return Err(Error::io("write compacted segment", temp, e));
    }
    Ok(bytes.len() as u64)
}

/// Step 2: renames the compacted file over the segment and fsyncs the directory.
fn install(storage: &dyn Storage, temp: &Path, path: &Path, dir: &Path) -> Result<()> {
    if let Err(e) = storage.rename(temp, path) {
        let _ = storage.remove_file(temp);
        return Err(Error::io("install compacted segment", path, e));
    }
    storage.sync_dir(dir).map_err(io_err("fsync directory", dir))
}
