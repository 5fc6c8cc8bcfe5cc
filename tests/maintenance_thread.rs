//! Background maintenance runs on one thread per process, shared by every open queue (#15: a thread per queue cost
//! each open a spawn and each close a join, more than the rest of a warm open). Checked here: several queues get
//! one thread, each queue is maintained by it (size limits applied after rolls, without any call of the caller's),
//! a closed queue is never touched again while the others stay maintained, the thread ends after the last queue
//! closes, and a later open starts it again. One test in this file: it counts the process's threads.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use walq::{Durability, Queue};

const LIMIT_BYTES: u64 = 200 * 1024;

fn maintenance_threads() -> usize {
    threads_named("walq-maintenanc")
}

fn open_limited(dir: &Path) -> Queue {
    small(dir).retention_max_bytes(LIMIT_BYTES).durability(Durability::None).open().unwrap()
}

/// Appends well past the size limit (several segment rolls).
fn fill(queue: &Queue) {
    let batch: Vec<_> = (0..20_000).map(message).collect();
    queue.append_batch(&batch).unwrap();
    assert!(queue.stats().appended_bytes > 2 * LIMIT_BYTES, "well past the limit");
}

/// Whether the background thread brought `dir` within its size limit (the limit plus the active segment).
fn within_limit(dir: &Path) -> bool {
    segment_bytes(dir) <= LIMIT_BYTES + 64 * 1024
}

#[test]
fn one_maintenance_thread_serves_every_open_queue_and_ends_after_the_last() {
    let temp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| temp.path().join(format!("q{i}"))).collect();
    let queues: Vec<Queue> = dirs.iter().map(|dir| open_limited(dir)).collect();
    // A new thread names itself once it runs: wait for the name, give any other time to name itself, then count.
    eventually("a maintenance thread starts", || maintenance_threads() > 0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(maintenance_threads(), 1, "three open queues, one maintenance thread");

    for queue in &queues {
        fill(queue);
    }
    // The thread unlinks the files first and counts them after: wait for both, so the count is not raced.
    for (queue, dir) in queues.iter().zip(&dirs) {
        eventually(&format!("{} maintained", dir.display()), || {
            within_limit(dir) && queue.stats().segments_deleted > 0
        });
    }

    // A queue closed over its limit is never touched again (the thread would cut it within a tick), while the
    // others stay in the thread's rounds. A tick may land between the fill and the close: then try again.
    let mut queues = queues;
    let mut closing = queues.remove(0);
    let mut closed_over_limit = false;
    for _ in 0..20 {
        fill(&closing);
        closing.close().unwrap();
        if !within_limit(&dirs[0]) {
            closed_over_limit = true;
            break;
        }
        closing = open_limited(&dirs[0]);
    }
    assert!(closed_over_limit, "a close came before the thread's next pass");
    let at_close = dir_snapshot(&dirs[0]);
    for queue in &queues {
        fill(queue);
    }
    for dir in &dirs[1..] {
        eventually(&format!("{} maintained after another queue closed", dir.display()), || within_limit(dir));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(dir_snapshot(&dirs[0]) == at_close, "the closed queue's files are as the close left them");
    assert_eq!(maintenance_threads(), 1);

    drop(queues);
    eventually("the thread ends once no queue is open", || maintenance_threads() == 0);

    // A later open starts it again, and it maintains.
    let queue = open_limited(&dirs[0]);
    eventually("a later open starts the thread again", || maintenance_threads() == 1);
    fill(&queue);
    eventually("maintained by the new thread", || within_limit(&dirs[0]));
    queue.close().unwrap();
}
