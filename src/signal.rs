//! A queue-wide wake-up: a sequence number, and a condition variable for those who wait on it.
//!
//! Consumers wait for several kinds of events at once (new appends, messages released by other consumers, the
//! queue closing); a single condition variable cannot be waited on together with others, so every event bumps this
//! one signal and waiters re-check their own condition. Lower layers only bump it; they never call upward.
//!
//! Every append bumps it, so bumping must be cheap when nobody waits: the sequence is an atomic, and the condition
//! variable (whose `notify_all` is a system call) is touched only when a waiter has registered.
//!
//! Tasks of the async API wait on it too, without a thread: a task registers its [`Waker`] ([`AsyncWait`]), and
//! a bump wakes every registered task as it wakes every waiting thread. The same ordering argument covers both.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    sequence: AtomicU64,
    /// Threads inside `wait_past` and registered tasks. Registered (under `lock`) before they check the sequence:
    /// with sequentially consistent operations on both, a bump either is seen by the waiter's check or sees the
    /// waiter registered.
    waiters: AtomicUsize,
    lock: Mutex<Tasks>,
    changed: Condvar,
}

/// The tasks waiting for the next bump, each under the id of its [`AsyncWait`]: registering, replacing and removing
/// one costs the same however many wait.
#[derive(Debug, Default)]
struct Tasks {
    next_id: u64,
    wakers: HashMap<u64, Waker>,
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
            let mut tasks = self.lock_tasks();
            self.changed.notify_all();
            let woken = std::mem::take(&mut tasks.wakers);
            self.waiters.fetch_sub(woken.len(), Ordering::SeqCst);
            drop(tasks);
            // Outside the lock: a waker may run the task's executor code.
            for waker in woken.into_values() {
                waker.wake();
            }
        }
    }

    fn lock_tasks(&self) -> MutexGuard<'_, Tasks> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until something happened after `seen` was read, or until `deadline`.
    pub(crate) fn wait_past(&self, seen: u64, deadline: Instant) {
        let mut guard = self.lock_tasks();
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

/// A task's registration with a [`Signal`]: at most one waker per task, replaced on each poll, removed on drop
/// (a dropped future leaves nothing behind to wake).
#[derive(Debug)]
pub(crate) struct AsyncWait {
    signal: Arc<Signal>,
    id: Option<u64>,
}

impl AsyncWait {
    pub(crate) fn new(signal: Arc<Signal>) -> AsyncWait {
        AsyncWait { signal, id: None }
    }

    /// The signal waited on.
    pub(crate) fn signal(&self) -> &Signal {
        &self.signal
    }

    /// Registers `waker` to be woken by the next bump after `seen`. Returns false, registering nothing, if there
    /// was one already: the caller checks its condition again instead of waiting.
    pub(crate) fn register(&mut self, seen: u64, waker: &Waker) -> bool {
        let mut tasks = self.signal.lock_tasks();
        let tasks = &mut *tasks;
        match self.id.and_then(|id| tasks.wakers.get_mut(&id)) {
            Some(registered) => registered.clone_from(waker),
            None => {
                let id = tasks.next_id;
                tasks.next_id += 1;
                self.id = Some(id);
                self.signal.waiters.fetch_add(1, Ordering::SeqCst);
                tasks.wakers.insert(id, waker.clone());
            }
        }
        if self.signal.sequence.load(Ordering::SeqCst) == seen {
            return true;
        }
        Self::remove(&self.signal, tasks, self.id);
        false
    }

    fn remove(signal: &Signal, tasks: &mut Tasks, id: Option<u64>) {
        if id.and_then(|id| tasks.wakers.remove(&id)).is_some() {
            signal.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for AsyncWait {
    fn drop(&mut self) {
        if self.id.is_some() {
            let mut tasks = self.signal.lock_tasks();
            Self::remove(&self.signal, &mut tasks, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Counts its wakes.
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_registered_task_is_woken_once_and_a_dropped_one_never() {
        let signal = Arc::new(Signal::default());
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut wait = AsyncWait::new(signal.clone());
        assert!(wait.register(signal.current(), &waker));
        assert!(wait.register(signal.current(), &waker), "polled again: replaced, not added");
        signal.notify();
        signal.notify();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(!wait.register(signal.current() - 1, &waker), "a bump since `seen`: nothing to wait for");
        assert!(wait.register(signal.current(), &waker));
        drop(wait);
        signal.notify();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "a dropped registration is gone");
        assert_eq!(signal.waiters.load(Ordering::SeqCst), 0);
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
