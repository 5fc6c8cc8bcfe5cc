//! Background maintenance runs on one thread per process, shared by every open queue (#15: a thread per queue cost
//! each open a spawn and each close a join, more than the rest of a warm open). Checked here: several queues get
//! one thread, each queue is maintained by it (size limits applied after rolls, without any call of the caller's),
//! closing one queue leaves the others maintained, the thread ends after the last queue closes, and a later open
//! starts it again. One test in this file: it counts the process's threads.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use walq::{Durability, Queue};

const LIMIT_BYTES: u64 = 200 * 1024;

/// The process's threads whose name starts with `prefix` (the kernel cuts names at 15 bytes).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|task| {
            let comm = std::fs::read_to_string(task.as_ref().unwrap().path().join("comm")).unwrap_or_default();
            comm.starts_with(prefix)
        })
        .count()
}

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

/// Waits (up to 10 s) for `done`; says whether it came.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Whether the background thread brought `dir` within its size limit (the limit plus the active segment).
fn within_limit(dir: &Path) -> bool {
    segment_bytes(dir) <= LIMIT_BYTES + 64 * 1024
}

#[test]
fn one_maintenance_thread_serves_every_open_queue_and_ends_after_the_last() {
    let temp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| temp.path().join(format!("q{i}"))).collect();
    let mut queues: Vec<Queue> = dirs.iter().map(|dir| open_limited(dir)).collect();
    // A new thread names itself once it runs: wait for the name, then count.
    assert!(eventually(|| maintenance_threads() > 0), "a maintenance thread starts");
    std::thread::sleep(Duration::from_millis(100)); // time for any other to name itself
    assert_eq!(maintenance_threads(), 1, "three open queues, one maintenance thread");

    for queue in &queues {
        fill(queue);
    }
    for dir in &dirs {
        assert!(eventually(|| within_limit(dir)), "{} was maintained", dir.display());
    }
    assert!(queues.iter().all(|q| q.stats().segments_deleted > 0));

    // Closing one queue leaves the others in the thread's rounds.
    queues.remove(0).close().unwrap();
    for queue in &queues {
        fill(queue);
    }
    for dir in &dirs[1..] {
        assert!(eventually(|| within_limit(dir)), "{} was maintained after another queue closed", dir.display());
    }
    assert_eq!(maintenance_threads(), 1);

    // The closed queue is no longer touched: its files stay as they were at close.
    let closed_files = segment_files(&dirs[0]);
    drop(queues);
    assert!(eventually(|| maintenance_threads() == 0), "the thread ends once no queue is open");
    assert_eq!(segment_files(&dirs[0]), closed_files);

    // A later open starts it again, and it maintains.
    let queue = open_limited(&dirs[0]);
    assert!(eventually(|| maintenance_threads() == 1), "a later open starts the thread again");
    fill(&queue);
    assert!(eventually(|| within_limit(&dirs[0])), "maintained by the new thread");
    queue.close().unwrap();
}
