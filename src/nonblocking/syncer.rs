//! walq's own thread for the waits of the async API: a task's append or ack is written on the task, and what is
//! left, waiting for an fsync (or leading one, in group commit), runs here, never on the executor.
//!
//! Jobs run one at a time in the order they came. That costs no throughput: a job waits for durability up to its
//! own target, and the fsync it leads covers everything written before it started, so the jobs queued behind it
//! mostly find their target durable already and return at once (one fsync for all the tasks that wrote meanwhile,
//! as group commit does for threads).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// A job runs, then hands back what resolves its future: run once the job no longer counts as pending, so that a
/// task woken by its result finds [`Syncer::pending`] without it.
type Job = Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>;

/// See the module documentation. One for a queue's log and one for its groups' journals; the thread starts with
/// the first job.
#[derive(Debug, Default)]
pub(crate) struct Syncer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Shared {
    jobs: Mutex<Jobs>,
    arrived: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let jobs = lock(&self.jobs);
        f.debug_struct("Shared").field("queued", &jobs.queue.len()).field("stopping", &jobs.stopping).finish()
    }
}

#[derive(Default)]
struct Jobs {
    queue: VecDeque<Job>,
    /// Jobs queued or running.
    pending: u64,
    stopping: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Syncer {
    /// Runs `job` on the syncer's thread; the returned future resolves with its result. The job runs whether or
    /// not the future is still awaited. After [`Syncer::stop`] (the log is gone) it resolves to `Error::Closed`.
    pub(crate) fn run<T: Send + 'static>(&self, job: impl FnOnce() -> Result<T> + Send + 'static) -> Completion<T> {
        let slot = Arc::new(Slot::default());
        let sender = Sender(Some(slot.clone()));
        let mut jobs = lock(&self.shared.jobs);
        if jobs.stopping {
            drop(jobs);
            drop(sender); // resolves the completion with `Error::Closed`
            return Completion(slot);
        }
        jobs.pending += 1;
        jobs.queue.push_back(Box::new(move || {
            let result = job();
            Box::new(move || sender.send(result))
        }));
        drop(jobs);
        self.shared.arrived.notify_one();
        let mut thread = lock(&self.thread);
        if thread.is_none() {
            let shared = self.shared.clone();
            *thread = Some(
                std::thread::Builder::new()
                    .name("walq-sync".into())
                    .spawn(move || shared.serve())
                    .expect("spawning walq's sync thread"),
            );
        }
        Completion(slot)
    }

    /// Jobs queued or running: the waits of async appends and answers not yet over (whether or not their futures
    /// are still awaited).
    pub(crate) fn pending(&self) -> u64 {
        lock(&self.shared.jobs).pending
    }

    /// Runs the jobs already queued, refuses new ones, and ends the thread.
    pub(crate) fn stop(&self) {
        lock(&self.shared.jobs).stopping = true;
        self.shared.arrived.notify_all();
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            // A job may hold the last reference to the log: then this runs on the syncer's own thread, which ends
            // by itself once the job returns.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn serve(&self) {
        loop {
            let mut jobs = lock(&self.jobs);
            let job = loop {
                if let Some(job) = jobs.queue.pop_front() {
                    break job;
                }
                if jobs.stopping {
                    return;
                }
                jobs = self.arrived.wait(jobs).unwrap_or_else(|p| p.into_inner());
            };
            drop(jobs);
            // A panicking job (a bug) resolves its future with an error (`Sender`'s drop) and the thread goes on.
            let resolve = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            lock(&self.jobs).pending -= 1;
            if let Ok(resolve) = resolve {
                // A waker is the executor's code: one that panics must not end the thread every later job needs.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(resolve));
            }
        }
    }
}

/// Where a job's result goes, and the task to wake for it.
struct Slot<T> {
    state: Mutex<(Option<Result<T>>, Option<Waker>)>,
}

impl<T> Default for Slot<T> {
    fn default() -> Slot<T> {
        Slot { state: Mutex::new((None, None)) }
    }
}

/// The job's end of a [`Slot`]: dropped without a result (the job panicked, or never ran), it resolves the
/// future with `Error::Closed`, so that no task waits forever.
struct Sender<T>(Option<Arc<Slot<T>>>);

impl<T> Sender<T> {
    fn send(mut self, result: Result<T>) {
        if let Some(slot) = self.0.take() {
            Self::fill(&slot, result);
        }
    }

    fn fill(slot: &Slot<T>, result: Result<T>) {
        let waker = {
            let mut state = lock(&slot.state);
            state.0 = Some(result);
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            Self::fill(&slot, Err(Error::Closed));
        }
    }
}

/// A job's result, to await. Dropping it does not cancel the job.
pub(crate) struct Completion<T>(Arc<Slot<T>>);

impl<T> std::fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let done = lock(&self.0.state).0.is_some();
        f.debug_struct("Completion").field("done", &done).finish()
    }
}

impl<T> Completion<T> {
    /// A completion resolved already: for work that had nothing to wait for.
    pub(crate) fn ready(result: Result<T>) -> Completion<T> {
        Completion(Arc::new(Slot { state: Mutex::new((Some(result), None)) }))
    }
}

impl<T> Future for Completion<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut state = lock(&self.0.state);
        match state.0.take() {
            Some(result) => Poll::Ready(result),
            None => {
                match &mut state.1 {
                    Some(waker) => waker.clone_from(cx.waker()),
                    none => *none = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_in_order_off_the_caller_and_resolve_their_futures() {
        let syncer = Syncer::default();
        let caller = std::thread::current().id();
        let order = Arc::new(Mutex::new(Vec::new()));
        let completions: Vec<_> = (0..10)
            .map(|i| {
                let order = order.clone();
                syncer.run(move || {
                    assert_ne!(std::thread::current().id(), caller);
                    order.lock().unwrap().push(i);
                    Ok(i)
                })
            })
            .collect();
        for (i, completion) in completions.into_iter().enumerate() {
            assert_eq!(futures_executor::block_on(completion).unwrap(), i);
        }
        assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
        assert_eq!(syncer.pending(), 0);
    }

    #[test]
    fn a_panicking_job_resolves_to_an_error_and_the_thread_goes_on() {
        let syncer = Syncer::default();
        let failed = syncer.run::<()>(|| panic!("a bug"));
        let next = syncer.run(|| Ok(7));
        assert!(matches!(futures_executor::block_on(failed), Err(Error::Closed)));
        assert_eq!(futures_executor::block_on(next).unwrap(), 7);
    }

    #[test]
    fn after_stop_a_job_is_refused_and_queued_ones_still_run() {
        let syncer = Syncer::default();
        let queued = syncer.run(|| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(1)
        });
        syncer.stop();
        assert_eq!(futures_executor::block_on(queued).unwrap(), 1);
        assert!(matches!(futures_executor::block_on(syncer.run(|| Ok(2))), Err(Error::Closed)));
    }
}
