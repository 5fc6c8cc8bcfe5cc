//! Cleanup: deleting segments that every consumer group is done with (`CleanupPolicy::DeleteConsumed`).
//!
//! A sealed segment is deleted once every group's ack floor is past its last offset and no group keeps any offset
//! in it (a dead letter, or a redriven message). With no group, nothing is deleted. Only the oldest segments are
//! deleted, so the log stays one contiguous run of segments. The groups' floors are made durable before any
//! deletion, so that a crash cannot leave a group wanting messages that are gone.
//!
//! Crash safety: a deletion is one unlink of the segment (then its index) and a directory fsync. A crash before the
//! fsync may bring the segment back, which is harmless (it is deleted again); an index left without its segment is
//! removed on open.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::error::Result;
use crate::log::Log;
use crate::options::CleanupPolicy;

/// A consumer of the log whose progress bounds what cleanup may delete.
pub(crate) trait RetentionSource: Send + Sync + std::fmt::Debug {
    /// The group's ack floor, made durable before it is returned.
    fn durable_floor(&self) -> Result<u64>;
    /// Whether the group still needs any offset in `start..end` below its floor.
    fn retains(&self, start: u64, end: u64) -> bool;
}

/// Runs cleanup for one queue.
#[derive(Debug)]
pub(crate) struct Cleanup {
    log: Arc<Log>,
    policy: CleanupPolicy,
    sources: Mutex<BTreeMap<String, Weak<dyn RetentionSource>>>,
    running: Mutex<()>,
    pub(crate) segments_deleted: AtomicU64,
}

impl Cleanup {
    pub(crate) fn new(log: Arc<Log>, policy: CleanupPolicy) -> Cleanup {
        Cleanup {
            log,
            policy,
            sources: Mutex::new(BTreeMap::new()),
            running: Mutex::new(()),
            segments_deleted: AtomicU64::new(0),
        }
    }

    pub(crate) fn register(&self, name: &str, source: Weak<dyn RetentionSource>) {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), source);
    }

    pub(crate) fn unregister(&self, name: &str) {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// Called when a group's floor moved to `floor`: runs cleanup if that might free a segment.
    pub(crate) fn after_floor_moved(&self, floor: u64) {
        if self.policy == CleanupPolicy::DeleteConsumed && self.log.oldest_sealed_end().is_some_and(|end| end <= floor)
        {
            if let Err(error) = self.run() {
                tracing::warn!(%error, "cleanup failed; it is retried after the next ack");
            }
        }
    }

    /// Deletes every segment all groups are done with; returns how many.
    pub(crate) fn run(&self) -> Result<usize> {
        if self.policy != CleanupPolicy::DeleteConsumed {
            return Ok(0);
        }
        let Ok(_running) = self.running.try_lock() else { return Ok(0) }; // another thread is at it
        let sources: Vec<Arc<dyn RetentionSource>> =
            self.sources.lock().unwrap_or_else(|p| p.into_inner()).values().filter_map(Weak::upgrade).collect();
        if sources.is_empty() {
            return Ok(0);
        }
        let mut floor = u64::MAX;
        for source in &sources {
            floor = floor.min(source.durable_floor()?);
        }
        let candidates = self.log.sealed_ranges_below(floor);
        let deletable: Vec<u64> = candidates
            .iter()
            .take_while(|&&(start, end)| !sources.iter().any(|s| s.retains(start, end)))
            .map(|&(start, _)| start)
            .collect();
        let deleted = self.log.delete_oldest_segments(&deletable)?;
        self.segments_deleted.fetch_add(deleted as u64, Ordering::Relaxed);
        Ok(deleted)
    }
}
