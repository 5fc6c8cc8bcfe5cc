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
//! queue at once does not start a new one. Closing a queue does not wait for the thread: `Cleanup::shut_down` (taken
//! by every maintenance step, under the maintenance lock) already makes a pass that is running stop at its next step
//! and every later one do nothing; the registration's removal only stops the ticks.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::clock::now_ms;
use crate::compaction::Cleanup;
use crate::log::Log;

/// How often the thread looks at each queue (after a roll maintenance runs; otherwise every 200 ticks, 10 s).
pub(crate) const MAINTENANCE_TICK: Duration = Duration::from_millis(50);

/// Ticks without any registered queue after which the thread ends (1 s).
const LINGER_TICKS: u32 = 20;

/// The queues the thread serves, and whether it runs.
struct Scheduler {
    queues: Vec<Scheduled>,
    next_id: u64,
    /// The process that started the running thread, if one runs: the child of a `fork` inherits this state but not
    /// the thread, and must start its own.
    running_in: Option<u32>,
}

/// One registered queue. Weak references: the thread never keeps a queue alive.
struct Scheduled {
    id: u64,
    cleanup: Weak<Cleanup>,
    log: Weak<Log>,
}

static SCHEDULER: Mutex<Scheduler> = Mutex::new(Scheduler { queues: Vec::new(), next_id: 0, running_in: None });

fn scheduler() -> MutexGuard<'static, Scheduler> {
    // The lock guards plain bookkeeping that every step leaves consistent, and no maintenance runs under it.
    SCHEDULER.lock().unwrap_or_else(|p| p.into_inner())
}

/// A queue's place in the maintenance thread's rounds; dropping it ends them (see the module's documentation for
/// why that need not wait).
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
}

/// Adds a queue to the thread's rounds, starting the thread if none runs in this process.
pub(crate) fn register(cleanup: &Arc<Cleanup>, log: &Arc<Log>) -> Registration {
    let mut scheduler = scheduler();
    let id = scheduler.next_id;
    scheduler.next_id += 1;
    scheduler.queues.push(Scheduled { id, cleanup: Arc::downgrade(cleanup), log: Arc::downgrade(log) });
    let process = std::process::id();
    if scheduler.running_in != Some(process) {
        std::thread::Builder::new()
            .name("walq-maintenance".to_string())
            .spawn(run)
            .expect("spawning the maintenance thread");
        scheduler.running_in = Some(process);
    }
    Registration { id }
}

impl Drop for Registration {
    fn drop(&mut self) {
        scheduler().queues.retain(|queue| queue.id != self.id);
    }
}

/// The thread: a round over every registered queue each tick, until none has been registered for a while.
fn run() {
    let mut empty_ticks = 0;
    loop {
        std::thread::sleep(MAINTENANCE_TICK);
        let round: Vec<(u64, Weak<Cleanup>, Weak<Log>)> = {
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
            scheduler.queues.iter().map(|q| (q.id, q.cleanup.clone(), q.log.clone())).collect()
        };
        for (id, cleanup, log) in round {
            let Some(cleanup) = cleanup.upgrade() else {
                scheduler().queues.retain(|queue| queue.id != id);
                continue;
            };
            if std::panic::catch_unwind(AssertUnwindSafe(|| cleanup.maintain(now_ms()))).is_err() {
                // A bug: that queue's maintenance stops and the queue is poisoned, loudly; the others go on.
                tracing::error!("background maintenance panicked; the queue is poisoned");
                scheduler().queues.retain(|queue| queue.id != id);
                if let Some(log) = log.upgrade() {
                    log.note_background_panic();
                }
            }
        }
    }
}
