//! Making writes durable: fsync per write, group commit, and the interval flusher. Shared by the log and by the
//! consumer groups' journals, through the [`Syncable`] trait.
//!
//! Group commit is leader/follower on the owner's lock: a writer whose data is not yet durable and finds no fsync
//! under way starts one itself (so a lone writer never waits for company); writers that arrive while it runs wait
//! for it, and the first of them to wake with data still not durable starts the next one, covering everybody who
//! wrote in between. An fsync is never retried after a failure: the owner is poisoned instead (after a failed
//! fsync, Linux may have dropped the dirty pages, and a second fsync can report success for data that is gone).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::signal::Signal;
use crate::storage::StorageFile;

/// Whether an fsync is running, and whether one has failed.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    pub(crate) syncing: bool,
    pub(crate) poisoned: bool,
}

/// What a sync started now will have made durable, once it succeeds: everything below `upto` (in the owner's
/// units: offsets for the log, record sequence numbers for a journal), up to byte `position` of the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncToken {
    pub(crate) upto: u64,
    pub(crate) position: u64,
}

/// State behind a mutex that owns a file being appended to.
pub(crate) trait Syncable {
    /// The sync bookkeeping.
    fn sync_state(&mut self) -> &mut SyncState;
    /// Everything below this is durable.
    fn durable(&self) -> u64;
    /// The file to fsync now, and what that fsync covers.
    fn sync_start(&self) -> (Arc<dyn StorageFile>, SyncToken);
    /// Records that a sync covering `token` succeeded (only called when it moves `durable` forward).
    fn sync_done(&mut self, token: SyncToken);
}

/// What the sync helpers need besides the state: counters and whom to wake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncParts<'a> {
    pub(crate) fsyncs: &'a AtomicU64,
    pub(crate) durable_cv: &'a Condvar,
    pub(crate) signal: &'a Signal,
    pub(crate) path: &'a Path,
}

fn lock<S>(mutex: &Mutex<S>) -> MutexGuard<'_, S> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn finish_sync<S: Syncable>(parts: SyncParts<'_>, state: &mut S, token: SyncToken, result: std::io::Result<()>) {
    parts.fsyncs.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(()) if token.upto > state.durable() => state.sync_done(token),
        Ok(()) => {}
        Err(error) => {
            tracing::error!(path = %parts.path.display(), %error, "fsync failed; poisoned until reopened");
            state.sync_state().poisoned = true;
        }
    }
    parts.durable_cv.notify_all();
    parts.signal.notify();
}

/// One fsync, run without holding the lock; returns with the lock held again.
fn sync_round<'a, S: Syncable>(
    mutex: &'a Mutex<S>,
    parts: SyncParts<'_>,
    mut state: MutexGuard<'a, S>,
) -> MutexGuard<'a, S> {
    debug_assert!(!state.sync_state().syncing, "one sync at a time");
    state.sync_state().syncing = true;
    let (file, token) = state.sync_start();
    drop(state);
    let result = file.sync_data();
    let mut state = lock(mutex);
    state.sync_state().syncing = false;
    finish_sync(parts, &mut *state, token, result);
    state
}

/// Waits until everything below `target` is durable, syncing if no one else is (group commit).
pub(crate) fn wait_durable<'a, S: Syncable>(
    mutex: &'a Mutex<S>,
    parts: SyncParts<'_>,
    mut state: MutexGuard<'a, S>,
    target: u64,
) -> Result<()> {
    loop {
        if state.durable() >= target {
            return Ok(());
        }
        if state.sync_state().poisoned {
            return Err(Error::Poisoned);
        }
        state = if state.sync_state().syncing {
            parts.durable_cv.wait(state).unwrap_or_else(|p| p.into_inner())
        } else {
            sync_round(mutex, parts, state)
        };
    }
}

/// `Durability::Sync`: fsync while holding the lock, so that each write has an fsync of its own.
pub(crate) fn sync_holding_lock<S: Syncable>(parts: SyncParts<'_>, state: &mut S) -> Result<()> {
    let (file, token) = state.sync_start();
    let result = file.sync_data();
    finish_sync(parts, state, token, result);
    if state.sync_state().poisoned {
        Err(Error::Poisoned)
    } else {
        Ok(())
    }
}

/// A background thread that runs a task every interval until stopped: the flusher of
/// [`Durability::Interval`](crate::Durability::Interval), and background maintenance.
#[derive(Debug)]
pub(crate) struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts the thread.
    pub(crate) fn spawn(name: &str, interval: Duration, mut tick: impl FnMut() + Send + 'static) -> Ticker {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("walq-{name}"))
            .spawn(move || loop {
                let stopped = lock(&thread_stop.0);
                let (stopped, _) =
                    thread_stop.1.wait_timeout_while(stopped, interval, |s| !*s).unwrap_or_else(|p| p.into_inner());
                if *stopped {
                    return;
                }
                drop(stopped);
                tick();
            })
            .expect("spawning a background thread");
        Ticker { stop, handle: Some(handle) }
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop();
    }
}
