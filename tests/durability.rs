//! The durability modes do what they say: how many fsyncs each makes, when appends become durable, and that a
//! failed fsync poisons the handle until reopen.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{Durability, Error, Offset, Queue};

fn appenders(queue: &Queue, threads: u64, per_thread: u64) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let queue = queue.clone();
            std::thread::spawn(move || {
                for n in 0..per_thread {
                    queue.append(message(t * per_thread + n)).unwrap();
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
}

#[test]
fn group_commit_shares_fsyncs_between_concurrent_appenders() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::GroupCommit).open().unwrap();
    appenders(&queue, 8, 200);
    let stats = queue.stats();
    assert_eq!(stats.appends, 1600);
    assert_eq!(stats.durable_offset, Offset(1600), "every acknowledged append is durable");
    assert!(stats.fsyncs < 1600, "8 concurrent appenders must share fsyncs: {} fsyncs", stats.fsyncs);
}

#[test]
fn lone_group_commit_appender_syncs_each_append_itself() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::GroupCommit).open().unwrap();
    append_range(&queue, 0..50);
    assert_eq!(queue.stats().fsyncs, 50, "no waiting for company: one fsync per lone append");
    assert_eq!(queue.stats().durable_offset, Offset(50));
}

#[test]
fn sync_mode_fsyncs_every_append_even_when_concurrent() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::Sync).open().unwrap();
    appenders(&queue, 4, 50);
    assert_eq!(queue.stats().fsyncs, 200);
}

#[test]
fn none_mode_syncs_only_on_flush_and_close() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::None).open().unwrap();
    append_range(&queue, 0..100);
    assert_eq!(queue.stats().fsyncs, 0);
    assert_eq!(queue.stats().durable_offset, Offset(0));
    assert_eq!(read_all(&queue).len(), 100, "written appends are readable at once");
    queue.flush().unwrap();
    assert_eq!(queue.stats().durable_offset, Offset(100));
    assert_eq!(queue.stats().fsyncs, 1);
}

#[test]
fn interval_mode_flushes_in_the_background() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::Interval(Duration::from_millis(5))).open().unwrap();
    append_range(&queue, 0..100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.stats().durable_offset < Offset(100) {
        assert!(Instant::now() < deadline, "the flusher never made the appends durable");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(queue.stats().fsyncs >= 1);
    queue.close().unwrap();
}

#[test]
fn readers_in_durable_modes_see_only_durable_appends() {
    let temp = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let queue = small(temp.path()).storage(Arc::new(storage.clone()) as Arc<dyn Storage>).open().unwrap();
    append_range(&queue, 0..3);
    // The next fsync fails: the append is written but never acknowledged, and never shown to readers.
    storage.set_plan(Some(FaultPlan { at_op: storage.op_count() + 1, kind: FaultKind::Eio, persistent: false }));
    assert!(matches!(queue.append(message(3)), Err(Error::Poisoned)));
    assert_eq!(read_all(&queue).len(), 3);
}

#[test]
fn failed_fsync_poisons_until_reopen() {
    let temp = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let open = || small(temp.path()).storage(Arc::new(storage.clone()) as Arc<dyn Storage>).open();
    let queue = open().unwrap();
    append_range(&queue, 0..10);
    storage.set_plan(Some(FaultPlan { at_op: storage.op_count() + 1, kind: FaultKind::Eio, persistent: false }));
    assert!(matches!(queue.append(message(10)), Err(Error::Poisoned)));
    // The fault was transient, but the outcome of the failed fsync is unknown: nothing more is acknowledged.
    assert!(matches!(queue.append(message(11)), Err(Error::Poisoned)));
    assert!(matches!(queue.flush(), Err(Error::Poisoned)));
    assert!(queue.stats().poisoned);
    assert_eq!(read_all(&queue).len(), 10, "reads still work");
    drop(queue);
    let queue = open().unwrap();
    let records = read_all(&queue);
    assert!(records.len() == 10 || records.len() == 11, "message 10 may or may not have reached the disk");
    records.iter().enumerate().for_each(|(i, r)| assert_is_message(r, i as u64));
    let next = records.len() as u64;
    assert_eq!(queue.append(message(next)).unwrap(), Offset(next));
}

#[test]
fn full_disk_is_reported_and_appends_resume_when_space_returns() {
    let temp = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let queue = small(temp.path()).storage(Arc::new(storage.clone()) as Arc<dyn Storage>).open().unwrap();
    append_range(&queue, 0..5);
    for kind in [FaultKind::Enospc, FaultKind::ShortWrite] {
        storage.set_plan(Some(FaultPlan { at_op: storage.op_count(), kind, persistent: true }));
        assert!(matches!(queue.append(message(5)), Err(Error::DiskFull)));
        assert!(matches!(queue.append(message(5)), Err(Error::DiskFull)));
        assert_eq!(read_all(&queue).len(), 5, "reads work on a full disk");
        storage.set_plan(None);
    }
    append_range(&queue, 5..2000); // rolls segments again
    let records = read_all(&queue);
    assert_eq!(records.len(), 2000);
    records.iter().enumerate().for_each(|(i, r)| assert_is_message(r, i as u64));
}

#[test]
fn full_disk_when_a_segment_rolls_keeps_the_log_intact() {
    let temp = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let open = || {
        small(temp.path())
            .preallocation(walq::Preallocation::Reserve)
            .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
            .open()
    };
    let queue = open().unwrap();
    let mut i = 0;
    while queue.stats().segments == 1 {
        queue.append(message(i)).unwrap();
        i += 1;
    }
    // Every allocation fails from now on: the roll to a third segment cannot reserve its space.
    storage.set_plan(Some(FaultPlan { at_op: 0, kind: FaultKind::EnospcOnAllocate, persistent: true }));
    let full_at = loop {
        match queue.append(message(i)) {
            Ok(_) => i += 1,
            Err(Error::DiskFull) => break i,
            Err(other) => panic!("{other}"),
        }
    };
    assert_eq!(queue.stats().segments, 2, "the failed roll left no third segment");
    assert!(storage.faults_injected() >= 1);
    assert!(matches!(queue.append(message(full_at)), Err(Error::DiskFull)));
    assert_eq!(read_all(&queue).len() as u64, full_at, "reads work on a full disk");
    storage.set_plan(None);
    append_range(&queue, i..i + 10);
    drop(queue);
    let queue = open().unwrap();
    let records = read_all(&queue);
    assert_eq!(records.len() as u64, i + 10);
    records.iter().enumerate().for_each(|(n, r)| assert_is_message(r, n as u64));
}
