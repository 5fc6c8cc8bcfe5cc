//! One group's journal work never holds up another group, nor `stats()` (#23, item 2).
//!
//! The bugs: an ack that moved its group's floor past a segment's end deleted consumed segments in the acking
//! thread, and deciding that needs every group's floor durable: the ack fsynced every other group's journal
//! first, so one group's slow disk work stalled another group's consumers. And a group's journal checkpoint (its
//! state rewritten to a new file, fsynced, renamed, directory fsynced) holds the group's lock, which `stats()`
//! waited for. The fixes: acks leave deletion to the maintenance thread; a checkpoint publishes the counts
//! `stats()` reads for as long as it holds the lock. Proved with a file system whose chosen fsyncs and renames
//! the test holds (`common::gated`): the held call is reached (so the test exercises the path), and the other
//! party finishes while it is held.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::gated::{Gate, GatedStorage};
use common::*;
use walq::storage::Storage;
use walq::{CleanupPolicy, Durability, Message, Offset, Queue, QueueBuilder};

/// Long enough that a thread that is not blocked has finished; a blocked one never finishes while the gate holds.
const FINISH_TIMEOUT: Duration = Duration::from_secs(20);

fn ack_all(queue: &Queue, group: &str) -> u64 {
    let consumer = queue.group(group).unwrap().consumer();
    let mut acked = 0;
    while let Some(delivery) = consumer.try_recv().unwrap() {
        delivery.ack().unwrap();
        acked += 1;
    }
    acked
}

/// A small-segment queue on a gated file system, in `Durability::None`: an ack fsyncs nothing itself, so every
/// journal fsync the test holds is one some other work needed.
fn gated_queue(dir: &std::path::Path) -> (QueueBuilder, Arc<Gate>) {
    let storage = GatedStorage::default();
    let gate = storage.gate.clone();
    (small(dir).storage(Arc::new(storage) as Arc<dyn Storage>).durability(Durability::None), gate)
}

#[test]
fn an_ack_never_waits_for_another_groups_journal_fsync() {
    let temp = tempfile::tempdir().unwrap();
    let (builder, gate) = gated_queue(temp.path());
    let queue = builder.cleanup(CleanupPolicy::DeleteConsumed).open().unwrap();
    queue.group("fast").unwrap();
    queue.group("slow").unwrap();
    append_range(&queue, 0..3000);
    let segments = segment_files(temp.path()).len();
    assert!(segments >= 4, "the workload spans segments: {segments}");
    // The slow group is done with everything; then its disk stalls, and it takes one more message (a journal
    // record written, not fsynced): its floor is past the sealed segments, but not yet durable.
    assert_eq!(ack_all(&queue, "slow"), 3000);
    gate.close("slow.journal");
    queue.append(message(3000)).unwrap();
    let _long_job = queue.group("slow").unwrap().consumer().try_recv().unwrap().unwrap();
    // The fast group's acks move the lowest floor past segment ends: deletion becomes possible.
    let (done_tx, done_rx) = mpsc::channel();
    let fast = {
        let queue = queue.clone();
        std::thread::spawn(move || done_tx.send(ack_all(&queue, "fast")).unwrap())
    };
    let acked = done_rx.recv_timeout(FINISH_TIMEOUT);
    // Deleting needs the slow group's floor durable: someone (the maintenance thread) is held in that fsync.
    eventually("the deletion reached the slow group's journal fsync", || gate.waiting() >= 1);
    assert_eq!(segment_files(temp.path()).len(), segments, "nothing deleted while the slow floor is not durable");
    gate.open();
    assert_eq!(acked, Ok(3001), "the fast group's acks waited for the slow group's journal fsync");
    fast.join().unwrap();
    // Files are unlinked before they are counted: wait for the count too.
    eventually("consumed segments deleted once the fsync went through", || {
        segment_files(temp.path()).len() == 1 && queue.stats().segments_deleted >= segments as u64 - 1
    });
    queue.close().unwrap();
}

#[test]
fn stats_never_waits_for_a_journal_checkpoint() {
    let temp = tempfile::tempdir().unwrap();
    let (builder, gate) = gated_queue(temp.path());
    let queue = builder.cleanup(CleanupPolicy::KeepAll).segment_bytes_max(8 << 20).open().unwrap();
    let group = queue.group("g").unwrap(); // its journal is created (by a rename) before the gate closes
    const MESSAGES: u64 = 60_000;
    for chunk in 0..MESSAGES / 1000 {
        let batch: Vec<Message> = (0..1000).map(|i| Message::new(format!("{}", chunk * 1000 + i))).collect();
        queue.append_batch(&batch).unwrap();
    }
    // Checkpoints write `g.journal.tmp`, fsync it and rename it over the journal: hold them.
    gate.close("g.journal.tmp");
    let acker = {
        let queue = queue.clone();
        std::thread::spawn(move || ack_all(&queue, "g"))
    };
    eventually("the journal grew to a checkpoint, held mid-rewrite", || gate.waiting() == 1);
    let (stats_tx, stats_rx) = mpsc::channel();
    let reader = {
        let (queue, group) = (queue.clone(), group.clone());
        std::thread::spawn(move || stats_tx.send((group.stats(), queue.stats())).unwrap())
    };
    let stats = stats_rx.recv_timeout(FINISH_TIMEOUT);
    assert_eq!(gate.waiting(), 1, "the checkpoint was held throughout");
    gate.open();
    let (group_stats, queue_stats) = stats.expect("stats() waited for the group's journal checkpoint");
    reader.join().unwrap();
    // Acked in order, one at a time: everything below the floor is done, nothing above it.
    let floor = group_stats.ack_floor.0;
    assert!(floor > 1000 && floor < MESSAGES, "the checkpoint came after many acks: floor {floor}");
    assert_eq!(group_stats.lag, MESSAGES - floor);
    assert_eq!(queue_stats.groups.iter().find(|g| g.name == "g").unwrap().ack_floor, Offset(floor));
    assert_eq!(acker.join().unwrap(), MESSAGES);
    assert_eq!(group.stats().lag, 0);
    queue.close().unwrap();
}
