//! A queue-wide wake-up: a sequence number under a mutex, and a condition variable.
//!
//! Consumers wait for several kinds of events at once (new appends, messages released by other consumers, the
//! queue closing); a single condition variable cannot be waited on together with others, so every event bumps this
//! one signal and waiters re-check their own condition. Lower layers only bump it; they never call upward.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    sequence: Mutex<u64>,
    changed: Condvar,
}

impl Signal {
    /// The current sequence number: pass it to [`Signal::wait_past`] after checking your condition.
    pub(crate) fn current(&self) -> u64 {
        *self.sequence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiter.
    pub(crate) fn notify(&self) {
        *self.sequence.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// Waits until something happened after `seen` was read, or until `deadline`.
    pub(crate) fn wait_past(&self, seen: u64, deadline: Instant) {
        let mut sequence = self.sequence.lock().unwrap_or_else(|p| p.into_inner());
        while *sequence == seen {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let timeout = (deadline - now).min(Duration::from_secs(3600));
            sequence = self.changed.wait_timeout(sequence, timeout).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}
