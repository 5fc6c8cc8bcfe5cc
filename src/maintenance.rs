//! The maintenance thread: one per process, shared by every queue opened with
//! [`Maintenance::Background`](crate::Maintenance::Background).
//!
//! Why one and not one per queue: a thread of its own cost every open a spawn and every close a join, about
//! 70-130 us together on the project's machine, more than the rest of a warm open and its first read (about 50 us).
//! A process that opens and closes queues often (a tool, a request handler, a test) paid it each time, and a process
//! with a hundred queues kept a hundred threads that sleep almost always.
//!
//! What it costs: the queues' maintenance runs one after another, so a long compaction of one queue delays the next
//! queue's tick by its length. Nothing waits for maintenance on the append, read or ack path, so the delay shows
//! only as space reclaimed later.
//!
//! The thread starts with the first registration and ends once no queue has been registered for
//! [`LINGER_TICKS`] ticks, so that a process that closed its queues keeps no walq thread, while one that reopens a
//! queue at once does not start a new one. Closing a queue shuts its cleanup down (`Cleanup::shut_down`: a pass
//! that is running stops at its next step, every step takes the maintenance lock and does nothing once shut), then
//! drops the registration, which waits while the thread still holds the queue: when `close` returns, the thread
//! holds none of the queue's files or threads. A queue the thread has not served for
//! `compaction::MAINTENANCE_STALL_MS` (the thread busy with another queue's long compaction, or a stalled
//! disk) deletes consumed segments in its acks, as under `Maintenance::Manual`, so that one queue's slow work never
//! lets another's disk use grow.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::clock::now_ms;
use crate::compaction::Cleanup;

/// How often the thread looks at each queue (after a roll maintenance runs; otherwise every 200 ticks, 10 s).
const MAINTENANCE_TICK: Duration = Duration::from_millis(50);

/// Ticks without any registered queue after which the thread ends (1 s).
const LINGER_TICKS: u32 = 20;

/// The queues the thread serves, and whether it runs.
struct Scheduler {
    queues: Vec<Scheduled>,
    next_id: u64,
    /// The process that started the running thread, if one runs: the child of a `fork` inherits this state but not
    /// the thread, and must start its own (for its own queues only).
    running_in: Option<u32>,
    /// The queue the thread is serving now: its registration's drop waits for the thread to let go of it.
    serving: Option<u64>,
}

/// One registered queue. A weak reference: the thread never keeps a queue alive.
struct Scheduled {
    id: u64,
    /// The process that registered it (see `Scheduler::running_in`).
    process: u32,
    cleanup: Weak<Cleanup>,
}

static SCHEDULER: Mutex<Scheduler> =
    Mutex::new(Scheduler { queues: Vec::new(), next_id: 0, running_in: None, serving: None });

/// Signalled when the thread stops serving a queue.
static SERVED: Condvar = Condvar::new();

fn scheduler() -> MutexGuard<'static, Scheduler> {
    // The lock guards plain bookkeeping that every step leaves consistent, and no maintenance runs under it.
    SCHEDULER.lock().unwrap_or_else(|p| p.into_inner())
}

/// A queue's place in the maintenance thread's rounds. Dropping it shuts the queue's cleanup down (also when an
/// open fails after registering) and waits until the thread no longer holds the queue.
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
    cleanup: Weak<Cleanup>,
}

/// Adds a queue to the thread's rounds, starting the thread if none runs in this process.
pub(crate) fn register(cleanup: &Arc<Cleanup>) -> Registration {
    let mut scheduler = scheduler();
    let id = scheduler.next_id;
    scheduler.next_id += 1;
    let process = std::process::id();
    if scheduler.running_in != Some(process) {
        // After a fork, the parent's queues are not this process's to maintain (their files are the parent's).
        scheduler.queues.retain(|queue| queue.process == process);
        scheduler.serving = None;
        std::thread::Builder::new()
            .name("walq-maintenance".to_string())
            .spawn(run)
            .expect("spawning the maintenance thread");
        scheduler.running_in = Some(process);
    }
    scheduler.queues.push(Scheduled { id, process, cleanup: Arc::downgrade(cleanup) });
    Registration { id, cleanup: Arc::downgrade(cleanup) }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The thread never owns a queue (only its cleanup and log): it never drops a registration, which would wait
        // for itself.
        debug_assert_ne!(std::thread::current().name(), Some("walq-maintenance"));
        if let Some(cleanup) = self.cleanup.upgrade() {
            cleanup.shut_down();
        }
        let mut scheduler = scheduler();
        scheduler.queues.retain(|queue| queue.id != self.id);
        while scheduler.serving == Some(self.id) {
            scheduler = SERVED.wait(scheduler).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The thread: a round over every registered queue each tick, until none has been registered for a while. Nothing
/// outside `catch_unwind` can panic, so one queue's bug never ends maintenance for the others.
fn run() {
    let mut empty_ticks = 0;
    loop {
        std::thread::sleep(MAINTENANCE_TICK);
        let round: Vec<u64> = {
            let mut scheduler = scheduler();
            if scheduler.queues.is_empty() {
                empty_ticks += 1;
                if empty_ticks >= LINGER_TICKS {
                    // Decided under the lock: a registration from now on starts a new thread.
                    scheduler.running_in = None;
                    return;
                }
                continue;
            }
            empty_ticks = 0;
            scheduler.queues.iter().map(|queue| queue.id).collect()
        };
        for id in round {
            let Some(cleanup) = start_serving(id) else { continue };
            let kept = catch_unwind(AssertUnwindSafe(|| serve(&cleanup))).unwrap_or(false);
            finish_serving(id, kept);
        }
    }
}

/// Marks `id` as served, if it is still registered, and returns its cleanup.
fn start_serving(id: u64) -> Option<Weak<Cleanup>> {
    let mut scheduler = scheduler();
    let cleanup = scheduler.queues.iter().find(|queue| queue.id == id)?.cleanup.clone();
    scheduler.serving = Some(id);
    Some(cleanup)
}

/// Ends the service of `id`, dropping it from the rounds unless `kept`, and wakes a close waiting for it.
fn finish_serving(id: u64, kept: bool) {
    let mut scheduler = scheduler();
    scheduler.serving = None;
    if !kept {
        scheduler.queues.retain(|queue| queue.id != id);
    }
    SERVED.notify_all();
}

/// One queue's tick; says whether the queue stays in the rounds (it is gone, or its maintenance panicked: no).
fn serve(cleanup: &Weak<Cleanup>) -> bool {
    let Some(cleanup) = cleanup.upgrade() else { return false };
    let _span = tracing::info_span!("walq maintenance", dir = %cleanup.dir().display()).entered();
    if catch_unwind(AssertUnwindSafe(|| cleanup.maintain(now_ms()))).is_err() {
        // A bug: this queue's maintenance stops and the queue is poisoned, loudly; the others go on.
        tracing::error!("background maintenance panicked; the queue is poisoned");
        cleanup.note_background_panic();
        return false;
    }
    true
}
