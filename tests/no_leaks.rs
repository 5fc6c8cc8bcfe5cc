//! Oracle D6: no leaked threads or file descriptors. Queues in every configuration that starts background work
//! (interval flusher, background compaction, size and age limits), with groups, consumers, readers, rolls,
//! compaction and recovery, are opened, used and closed (or dropped without `close`, or after a failed fsync)
//! many times; afterwards the process has as many open file descriptors and threads as before.

mod common;

use std::time::Duration;

use common::{message, small, threads_named};
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{CleanupPolicy, Durability, Offset, Queue, QueueBuilder};

const CYCLES: u64 = 30;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// Threads, not counting the process's maintenance thread: it is shared by every open queue and ends a while after
/// the last one closes (checked separately below).
fn threads_but_maintenance() -> usize {
    count("/proc/self/task") - threads_named("walq-maintenanc")
}

const CONFIGURATIONS: usize = 5;

/// Configuration `k`, each with its own directory under `root`.
fn configuration(root: &std::path::Path, k: usize) -> QueueBuilder {
    let dir = root.join(format!("c{k}"));
    match k {
        0 => small(&dir),
        1 => small(&dir).durability(Durability::Interval(Duration::from_millis(2))),
        2 => small(&dir).cleanup(CleanupPolicy::Compact).tombstone_retention(Duration::ZERO),
        3 => small(&dir).retention_max_bytes(256 * 1024).retention_max_age(Duration::from_secs(3600)),
        _ => small(&dir).durability(Durability::None).cleanup(CleanupPolicy::KeepAll),
    }
}

fn work(queue: &Queue, cycle: u64) {
    let base = queue.stats().next_offset.0;
    queue.append_batch(&(base..base + 700).map(message).collect::<Vec<_>>()).unwrap(); // rolls segments
    let consumer = queue.group("g").unwrap().consumer();
    for _ in 0..300 {
        let Some(delivery) = consumer.recv_timeout(Duration::from_millis(50)).unwrap() else { break };
        if cycle % 3 == 0 {
            drop(delivery); // redelivered
        } else {
            delivery.ack().unwrap();
        }
    }
    let _ = queue.read_from(Offset::EARLIEST).unwrap().take(50).count();
    let _ = queue.compact();
}

#[test]
fn open_use_close_cycles_leak_no_threads_or_descriptors() {
    let temp = tempfile::tempdir().unwrap();
    // Warm up once (lazy statics, the allocator's threads if any), then measure.
    configuration(&temp.path().join("warm"), 0).open().unwrap().close().unwrap();
    // The shared maintenance thread, which the warm-up started, names itself once it runs: until then it would
    // count as one of the threads below.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while threads_named("walq-maintenanc") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (fds, threads) = (count("/proc/self/fd"), threads_but_maintenance());
    for cycle in 0..CYCLES {
        for k in 0..CONFIGURATIONS {
            let queue = configuration(temp.path(), k).open().unwrap();
            work(&queue, cycle);
            if (cycle + k as u64) % 2 == 0 {
                queue.close().unwrap();
            } else {
                drop(queue); // closed by the last handle's drop
            }
        }
    }
    // A poisoned queue: its fsync failed; dropping it must still release everything.
    let storage = FaultyStorage::new();
    let queue = Queue::builder("/sim/q")
        .storage(std::sync::Arc::new(storage.clone()) as std::sync::Arc<dyn Storage>)
        .open()
        .unwrap();
    queue.append(message(0)).unwrap();
    storage.set_plan(Some(FaultPlan { at_op: storage.op_count(), kind: FaultKind::Eio, persistent: true }));
    assert!(queue.append(message(1)).is_err());
    drop(queue);

    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    // A queue's own background threads are joined on close and drop; give a detached one no chance to hide.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while threads_but_maintenance() != threads && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(threads_but_maintenance(), threads, "threads leaked");
    // The shared maintenance thread ends about 1 s after the last queue closed.
    while threads_named("walq-") != 0 && std::time::Instant::now() < deadline + Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(threads_named("walq-"), 0, "a walq thread outlived every queue");
    common::report(
        "D6",
        "open/use/close cycles in every background configuration: no leaked threads or descriptors",
        CYCLES * CONFIGURATIONS as u64,
        "queues",
        0,
    );
}
