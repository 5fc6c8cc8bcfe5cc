//! A queue-wide wake-up: a sequence number, and a condition variable for those who wait on it.
//!
//! Consumers wait for several kinds of events at once (new appends, messages released by other consumers, the
//! queue closing); a single condition variable cannot be waited on together with others, so every event bumps this
//! one signal and waiters re-check their own condition. Lower layers only bump it; they never call upward.
//!
//! Every append bumps it, so bumping must be cheap when nobody waits: the sequence is an atomic, and the condition
//! variable (whose `notify_all` is a system call) is touched only when a waiter has registered.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    sequence: AtomicU64,
    /// Threads inside `wait_past`. Registered (under `lock`) before they check the sequence: with sequentially
    /// consistent operations on both, a bump either is seen by the waiter's check or sees the waiter registered.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Signal {
    /// The current sequence number: pass it to [`Signal::wait_past`] after checking your condition.
    pub(crate) fn current(&self) -> u64 {
        self.sequence.load(Ordering::SeqCst)
    }

    /// Wakes every waiter.
    pub(crate) fn notify(&self) {
        self.sequence.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this after a waiter's check: it is either waiting already, or not yet
            // checked and will see the new sequence.
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.changed.notify_all();
        }
    }

    /// Waits until something happened after `seen` was read, or until `deadline`.
    pub(crate) fn wait_past(&self, seen: u64, deadline: Instant) {
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.waiters.fetch_add(1, Ordering::SeqCst);
        while self.sequence.load(Ordering::SeqCst) == seen {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let timeout = (deadline - now).min(Duration::from_secs(3600));
            guard = self.changed.wait_timeout(guard, timeout).unwrap_or_else(|p| p.into_inner()).0;
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_waiter_wakes_on_a_bump_and_not_before() {
        let signal = Arc::new(Signal::default());
        let seen = signal.current();
        let waiter = {
            let signal = signal.clone();
            std::thread::spawn(move || {
                signal.wait_past(seen, Instant::now() + Duration::from_secs(60));
                signal.current()
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "nothing happened yet");
        signal.notify();
        assert_eq!(waiter.join().unwrap(), seen + 1);
    }

    #[test]
    fn no_bump_is_missed_between_check_and_wait() {
        let signal = Arc::new(Signal::default());
        for _ in 0..2_000 {
            let seen = signal.current();
            let bumper = {
                let signal = signal.clone();
                std::thread::spawn(move || signal.notify())
            };
            // A missed wake-up would hang here for the whole minute.
            let start = Instant::now();
            signal.wait_past(seen, Instant::now() + Duration::from_secs(60));
            assert!(start.elapsed() < Duration::from_secs(30), "a bump was missed");
            bumper.join().unwrap();
        }
    }
}
