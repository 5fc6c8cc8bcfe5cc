//! Making appends durable: fsync per append, group commit, and the interval flusher.
//!
//! Group commit is leader/follower on the log's lock: an appender whose data is not yet durable and finds no fsync
//! under way starts one itself (so a lone appender never waits for company); appenders that arrive while it runs
//! wait for it, and the first of them to wake with data still not durable starts the next one, covering everybody
//! who wrote in between. An fsync is never retried after a failure: the queue is poisoned instead (after a failed
//! fsync, Linux may have dropped the dirty pages, and a second fsync can report success for data that is gone).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::log::{Log, LogState};

impl Log {
    /// One fsync of the active segment, run without holding the lock; returns with the lock held again.
    fn sync_round<'a>(&'a self, mut state: MutexGuard<'a, LogState>) -> MutexGuard<'a, LogState> {
        debug_assert!(!state.sync_in_progress, "one sync at a time");
        state.sync_in_progress = true;
        let file = state.active.file.clone();
        let target = (state.active.next_offset, state.active.write_pos);
        drop(state);
        let result = file.sync_data();
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.sync_in_progress = false;
        match result {
            Ok(()) if target.0 > state.durable_offset => {
                // A roll in between would have made durable_offset reach the new segment, past target.
                state.durable_offset = target.0;
                state.durable_pos = target.1;
                self.visible_cv.notify_all();
            }
            Ok(()) => {}
            Err(error) => {
                tracing::error!(%error, "fsync failed");
                self.poison(&mut state, "fsync");
            }
        }
        self.durable_cv.notify_all();
        state
    }

    /// Waits until every offset below `target_offset` is durable, syncing if no one else is.
    pub(crate) fn wait_durable<'a>(&'a self, mut state: MutexGuard<'a, LogState>, target_offset: u64) -> Result<()> {
        loop {
            if state.durable_offset >= target_offset {
                return Ok(());
            }
            if state.poisoned {
                return Err(Error::Poisoned);
            }
            state = if state.sync_in_progress {
                self.durable_cv.wait(state).unwrap_or_else(|p| p.into_inner())
            } else {
                self.sync_round(state)
            };
        }
    }

    /// `Durability::Sync`: fsync while holding the lock, so each append has an fsync of its own.
    pub(crate) fn sync_holding_lock(&self, state: &mut LogState) -> Result<()> {
        // A group-commit style sync may still be running from a flush(); its result does not cover this append.
        let result = state.active.file.sync_data();
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                state.durable_offset = state.active.next_offset;
                state.durable_pos = state.active.write_pos;
                self.durable_cv.notify_all();
                self.visible_cv.notify_all();
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "fsync failed");
                self.poison(state, "fsync");
                Err(Error::Poisoned)
            }
        }
    }

    /// Makes everything appended so far durable, whatever the durability mode.
    pub(crate) fn flush(&self) -> Result<()> {
        let state = self.lock();
        state.check_open()?;
        let target = state.active.next_offset;
        self.wait_durable(state, target)
    }

    /// Flushes, trims the active segment's preallocated space, and refuses further work.
    pub(crate) fn close(&self) -> Result<()> {
        let state = self.lock();
        if state.closed {
            return Ok(());
        }
        let target = state.active.next_offset;
        let synced = if state.poisoned {
            drop(state);
            Err(Error::Poisoned)
        } else {
            self.wait_durable(state, target)
        };
        let mut state = self.lock();
        if state.closed {
            return synced; // another clone closed it meanwhile
        }
        let trimmed = if state.poisoned {
            Err(Error::Poisoned)
        } else {
            let path = state.active.path.clone();
            state.active.trim().map_err(|e| Error::io("close segment", path, e))
        };
        state.closed = true;
        self.durable_cv.notify_all();
        self.visible_cv.notify_all();
        synced.and(trimmed)
    }
}

/// The background thread of [`Durability::Interval`](crate::Durability::Interval).
#[derive(Debug)]
pub(crate) struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts a thread that makes the log durable every `interval`.
    pub(crate) fn spawn(log: Arc<Log>, interval: Duration) -> Flusher {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("walq-flusher".into())
            .spawn(move || flusher_loop(&log, interval, &thread_stop))
            .expect("spawning the flusher thread");
        Flusher { stop, handle: Some(handle) }
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn flusher_loop(log: &Log, interval: Duration, stop: &(Mutex<bool>, Condvar)) {
    loop {
        let stopped = stop.0.lock().unwrap_or_else(|p| p.into_inner());
        let (stopped, _) = stop.1.wait_timeout_while(stopped, interval, |s| !*s).unwrap_or_else(|p| p.into_inner());
        if *stopped {
            return;
        }
        drop(stopped);
        let state = log.lock();
        if state.closed || state.poisoned || state.durable_offset >= state.active.next_offset {
            continue;
        }
        let target = state.active.next_offset;
        // Errors poison the log inside; appenders see them.
        let _ = log.wait_durable(state, target);
    }
}
