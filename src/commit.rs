//! Making writes durable: fsync per write, group commit, and the interval flusher. Shared by the log and by the
//! consumer groups' journals, through the [`Syncable`] trait.
//!
//! Group commit is leader/follower on the owner's lock: a writer whose data is not yet durable and finds no fsync
//! under way starts one itself (so a lone writer never waits for company); writers that arrive while it runs wait
//! for it, and the first of them to wake with data still not durable starts the next one, covering everybody who
//! wrote in between. Two refinements make rounds carry every writer rather than every other one:
//! - a leader that follows a round shared by several writers first waits, briefly, for that many writers to have
//!   written again ([`gather`]); without it, the writers a round releases miss the very next round, and rounds
//!   alternate between one writer and the rest;
//! - followers yield in a loop for the running fsync to end before they sleep ([`spin_until_sync_ends`]), and are
//!   woken with the lock free, so that they are back writing within microseconds of the fsync's end.
//!
//! An fsync is never retried after a failure: the owner is poisoned instead (after a failed fsync, Linux may have
//! dropped the dirty pages, and a second fsync can report success for data that is gone).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::signal::Signal;
use crate::storage::StorageFile;

/// The longest a follower yields in a loop for a running fsync to end, before it sleeps (see
/// [`spin_until_sync_ends`]); also bounded by the last fsync's duration.
const SPIN_WAIT_MAX: Duration = Duration::from_micros(200);
/// How many fsync rounds one wait may yield through before it sleeps.
const SPINS_PER_WAIT: u32 = 2;

/// The longest a leader waits for the writers of the previous round before it fsyncs (also bounded by half the
/// previous fsync's duration): a few microseconds is what a returning writer normally needs.
const GATHER_WAIT_MAX: Duration = Duration::from_millis(1);

/// Whether an fsync is running, whether one has failed, and what the group commit learnt from the last round.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    pub(crate) syncing: bool,
    pub(crate) poisoned: bool,
    /// Writers that came to wait for durability since the last round took its token: the next round covers
    /// exactly them (each wrote before it came).
    arrived: u32,
    /// How many writers to expect in the next round: those the last round covered, and those that arrived
    /// while it ran.
    expected_writers: u32,
    /// How long the last fsync took.
    last_sync: Duration,
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
    /// The longest fsync so far, in microseconds (failed ones included: one cut short by a dead device counts
    /// for as long as it ran).
    pub(crate) slowest_sync_us: &'a AtomicU64,
    /// Where each fsync's time goes as a metric (feature `metrics`).
    pub(crate) fsync_histogram: &'a crate::telemetry::FsyncHistogram,
    pub(crate) durable_cv: &'a Condvar,
    pub(crate) signal: &'a Signal,
    pub(crate) path: &'a Path,
}

fn lock<S>(mutex: &Mutex<S>) -> MutexGuard<'_, S> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records a finished fsync; the caller wakes the waiters (see [`wake_waiters`]).
fn record_sync<S: Syncable>(parts: SyncParts<'_>, state: &mut S, token: SyncToken, result: std::io::Result<()>) {
    parts.fsyncs.fetch_add(1, Ordering::Relaxed);
    match result {
        // Never once poisoned: after a failed fsync another one's success proves nothing (the error is reported to
        // one caller only, and the pages it lost are gone).
        Ok(()) if state.sync_state().poisoned => {}
        Ok(()) if token.upto > state.durable() => state.sync_done(token),
        Ok(()) => {}
        Err(error) => {
            tracing::error!(path = %parts.path.display(), %error, "fsync failed; poisoned until reopened");
            state.sync_state().poisoned = true;
        }
    }
}

fn wake_waiters(parts: SyncParts<'_>) {
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
    state = gather(mutex, state);
    if state.sync_state().poisoned {
        // A write failed while the leader gathered (the lock was free): nothing more is acknowledged.
        state.sync_state().syncing = false;
        drop(state);
        wake_waiters(parts);
        return lock(mutex);
    }
    let writers = std::mem::take(&mut state.sync_state().arrived);
    let (file, token) = state.sync_start();
    drop(state);
    let started = Instant::now();
    let result = file.sync_data();
    let took = started.elapsed();
    parts.slowest_sync_us.fetch_max(took.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    let mut state = lock(mutex);
    let sync = state.sync_state();
    sync.syncing = false;
    sync.expected_writers = writers + sync.arrived;
    sync.last_sync = took;
    record_sync(parts, &mut *state, token, result);
    // Woken with the lock free: each waiter only checks its target and leaves, instead of queueing on the lock
    // behind this thread (in a VM every hand-off of a contended lock costs a wake-up of tens of microseconds).
    drop(state);
    wake_waiters(parts);
    // After the round is over and with the lock free: the recorder is the embedder's code.
    parts.fsync_histogram.record(took);
    lock(mutex)
}

/// Before a round, waits until as many writers have arrived as the last round involved (covered, or arrived while
/// it ran), for at most half the last fsync's duration (and [`GATHER_WAIT_MAX`]). A lone writer never waits. With
/// several steady writers, the ones the last round released are writing again right now; fsyncing without them
/// would leave them for the round after, and every other round would carry one writer. Waiting costs little next
/// to the fsync it saves, and the bound keeps a writer that stopped from costing more than one short wait: the
/// next round then expects fewer.
fn gather<'a, S: Syncable>(mutex: &'a Mutex<S>, mut state: MutexGuard<'a, S>) -> MutexGuard<'a, S> {
    let sync = state.sync_state();
    let expected = sync.expected_writers;
    if expected <= 1 || sync.arrived >= expected {
        return state;
    }
    let deadline = Instant::now() + (sync.last_sync / 2).min(GATHER_WAIT_MAX);
    loop {
        let sync = state.sync_state();
        if sync.arrived >= expected || sync.poisoned || Instant::now() >= deadline {
            return state;
        }
        // Yield rather than sleep: the writers come back within microseconds, and a sleeper's wake-up costs more.
        drop(state);
        std::thread::yield_now();
        state = lock(mutex);
    }
}

/// Waits until everything below `target` is durable, syncing if no one else is (group commit).
pub(crate) fn wait_durable<'a, S: Syncable>(
    mutex: &'a Mutex<S>,
    parts: SyncParts<'_>,
    mut state: MutexGuard<'a, S>,
    target: u64,
) -> Result<()> {
    if state.durable() >= target {
        return Ok(());
    }
    // Counted, so that a gathering leader knows who has written (see `gather`).
    state.sync_state().arrived += 1;
    let mut spins_left = SPINS_PER_WAIT;
    loop {
        if state.durable() >= target {
            return Ok(());
        }
        if state.sync_state().poisoned {
            return Err(Error::Poisoned);
        }
        state = if !state.sync_state().syncing {
            sync_round(mutex, parts, state)
        } else if spins_left > 0 {
            spins_left -= 1;
            let bound = state.sync_state().last_sync.min(SPIN_WAIT_MAX);
            drop(state);
            spin_until_sync_ends(parts.fsyncs, bound);
            lock(mutex)
        } else {
            parts.durable_cv.wait(state).unwrap_or_else(|p| p.into_inner())
        };
    }
}

/// Yields until the fsync counter moves (a round ended) or `bound` passes. A follower that sleeps on the condition
/// variable instead is woken by a futex call and a scheduler hand-off that, in a virtual machine, can take longer
/// than the wait itself; the gathering leader of the next round then waits for it (RocksDB's write thread yields
/// in the same way, up to 100 µs, before it blocks).
fn spin_until_sync_ends(fsyncs: &AtomicU64, bound: Duration) {
    let seen = fsyncs.load(Ordering::Acquire);
    let deadline = Instant::now() + bound;
    while fsyncs.load(Ordering::Acquire) == seen && Instant::now() < deadline {
        std::thread::yield_now();
    }
}

/// `Durability::Sync`: fsync while holding the lock, so that each write has an fsync of its own. Waits first for
/// a group-commit round under way (the async API's, on walq's sync thread): two fsyncs of one file at once could
/// each take the other's error report, and one of them then acknowledge what a failed writeback lost.
pub(crate) fn sync_holding_lock<'a, S: Syncable>(parts: SyncParts<'_>, mut state: MutexGuard<'a, S>) -> Result<()> {
    while state.sync_state().syncing {
        state = parts.durable_cv.wait(state).unwrap_or_else(|p| p.into_inner());
    }
    if state.sync_state().poisoned {
        return Err(Error::Poisoned);
    }
    let state = &mut *state;
    let (file, token) = state.sync_start();
    let started = Instant::now();
    let result = file.sync_data();
    let took = started.elapsed();
    parts.slowest_sync_us.fetch_max(took.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    record_sync(parts, state, token, result);
    wake_waiters(parts);
    parts.fsync_histogram.record(took); // after the sync is recorded: the recorder is the embedder's code
    if state.sync_state().poisoned {
        Err(Error::Poisoned)
    } else {
        Ok(())
    }
}

/// A background thread of one queue that runs a task every interval until stopped: the flusher of
/// [`Durability::Interval`](crate::Durability::Interval), the write-buffer writer, the metrics publisher.
/// (Background maintenance is one thread for the whole process: `maintenance.rs`.)
#[derive(Debug)]
pub(crate) struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts the thread. If `tick` panics (a bug), the thread ends and `on_panic` runs: a background duty that
    /// silently stopped (the interval flusher: `Interval` would quietly become `None`) must be loud instead.
    pub(crate) fn spawn(
        name: &str,
        interval: Duration,
        mut tick: impl FnMut() + Send + 'static,
        on_panic: impl FnOnce() + Send + 'static,
    ) -> Ticker {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = stop.clone();
        let thread_name = format!("walq-{name}");
        let handle = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || loop {
                let stopped = lock(&thread_stop.0);
                let (stopped, _) =
                    thread_stop.1.wait_timeout_while(stopped, interval, |s| !*s).unwrap_or_else(|p| p.into_inner());
                if *stopped {
                    return;
                }
                drop(stopped);
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut tick)).is_err() {
                    tracing::error!(thread = %thread_name, "background thread panicked; the queue is poisoned");
                    on_panic();
                    return;
                }
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
