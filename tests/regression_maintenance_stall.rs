//! Regression (review of the shared maintenance thread, #15): one thread maintains every queue of the process, so
//! a queue whose maintenance stalls (here: a journal fsync the disk holds; in life also a long compaction) kept the
//! thread from every other queue, and under `DeleteConsumed` those queues' acks only leave deletion to that thread:
//! their consumed segments stayed on disk for as long as the stall lasted. The fix: a queue the thread has not
//! served for a second deletes in its acks, as under `Maintenance::Manual`. A stall inside the queue's own
//! maintenance holds that queue's maintenance lock, so its acks still never wait for it (tests/group_isolation.rs).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::gated::{Gate, GatedStorage};
use common::*;
use walq::storage::Storage;
use walq::{CleanupPolicy, Durability};

struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[test]
fn a_queue_whose_maintenance_stalls_does_not_stop_another_queues_deletions() {
    let temp = tempfile::tempdir().unwrap();
    // Queue A: its maintenance thread pass blocks in a journal fsync the gate holds.
    let storage = GatedStorage::default();
    let gate = storage.gate.clone();
    let stalled = small(&temp.path().join("a"))
        .storage(Arc::new(storage) as Arc<dyn Storage>)
        .durability(Durability::None)
        .cleanup(CleanupPolicy::DeleteConsumed)
        .open()
        .unwrap();
    // Opened again however the test ends (dropped before queue A): a failed assertion must fail, not hang in the close of queue A.
    let _open_at_end = OpenOnDrop(gate.clone());
    stalled.group("fast").unwrap();
    stalled.group("slow").unwrap();
    append_range(&stalled, 0..3000);
    let consumer = stalled.group("slow").unwrap().consumer();
    consumer.ack_all(consumer.try_recv_batch(3000).unwrap()).unwrap();
    gate.close("slow.journal");
    stalled.append(message(3000)).unwrap();
    let _held = consumer.try_recv().unwrap().unwrap(); // a journal record, not fsynced: its floor is not durable
    let fast = stalled.group("fast").unwrap().consumer();
    fast.ack_all(fast.try_recv_batch(3001).unwrap()).unwrap();
    eventually("the maintenance thread is held in queue A's journal fsync", || gate.waiting() >= 1);

    // Queue B, on a healthy disk: consumed, after the thread has not served it for longer than a second.
    let healthy_dir = temp.path().join("b");
    let healthy =
        small(&healthy_dir).durability(Durability::None).cleanup(CleanupPolicy::DeleteConsumed).open().unwrap();
    let group = healthy.group("only").unwrap();
    append_range(&healthy, 0..3000);
    let segments = segment_files(&healthy_dir).len();
    assert!(segments >= 4, "the workload spans segments: {segments}");
    std::thread::sleep(Duration::from_millis(1_200));
    let consumer = group.consumer();
    consumer.ack_all(consumer.try_recv_batch(3000).unwrap()).unwrap();
    assert_eq!(segment_files(&healthy_dir).len(), 1, "the ack deleted what was consumed; the thread is held elsewhere");
    assert_eq!(gate.waiting(), 1, "the thread was held throughout");

    gate.open();
    healthy.close().unwrap();
    stalled.close().unwrap();
}
