//! `Queue::reopen` (#22 item 8): after a failed fsync the handle is poisoned (its outcome is unknown, and a retried
//! fsync can falsely succeed). Before, every clone had to be found and dropped before the queue could be opened
//! again; `reopen` closes it for all clones and opens it again with the same options, once the cause is fixed.
//! Nothing acknowledged is lost, and the old handles answer `Closed` rather than write.

mod common;

use std::sync::Arc;

use common::*;
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{Durability, Error, Queue, QueueBuilder};

fn builder(storage: &FaultyStorage) -> QueueBuilder {
    Queue::builder("/sim/queue")
        .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(Durability::Sync)
}

/// Appends with an EIO planted ever later until one append poisons the queue; returns how many were appended.
fn poison(queue: &Queue, storage: &FaultyStorage, mut next: u64) -> u64 {
    for delay in 0..8 {
        storage.set_plan(Some(FaultPlan {
            at_op: storage.op_count() + delay,
            kind: FaultKind::Eio,
            persistent: false,
        }));
        match queue.append(message(next)) {
            Ok(_) => next += 1,
            Err(Error::Poisoned) => return next,
            Err(Error::Io { .. }) => {
                // A failed write (not an fsync): the queue goes on; the same message is tried again.
                if queue.stats().poisoned {
                    return next;
                }
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    panic!("no planted EIO poisoned the queue");
}

#[test]
fn a_poisoned_queue_reopens_in_place_and_loses_nothing_acknowledged() {
    let storage = FaultyStorage::new();
    let queue = builder(&storage).open().unwrap();
    append_range(&queue, 0..20);
    let old_consumer = queue.group("g").unwrap().consumer();
    old_consumer.try_recv().unwrap().unwrap().ack().unwrap();
    let clone = queue.clone();
    let acked = poison(&queue, &storage, 20);
    assert!(queue.stats().poisoned);
    assert!(matches!(clone.append(message(acked)), Err(Error::Poisoned)), "every clone is poisoned");
    storage.set_plan(None); // the cause is fixed

    let queue = queue.reopen().unwrap();
    assert!(!queue.stats().poisoned);
    // The old handles are closed, not writing beside the new owner.
    assert!(matches!(clone.append(message(999)), Err(Error::Closed)));
    assert!(matches!(old_consumer.try_recv(), Err(Error::Closed)));
    // Everything acknowledged is there, in order; the message whose fsync failed may or may not be.
    let records = read_all(&queue);
    assert!(records.len() as u64 >= acked, "{} of {acked}", records.len());
    for (i, record) in records.iter().enumerate().take(acked as usize) {
        assert_is_message(record, i as u64);
    }
    // The group resumes after its ack; the new queue appends and fsyncs.
    let next = queue.group("g").unwrap().consumer().try_recv().unwrap().unwrap();
    assert_eq!(next.offset().0, 1);
    next.ack().unwrap();
    queue.append(message(records.len() as u64)).unwrap();
    // The same options: durability is still Sync.
    assert_eq!(queue.durability(), Durability::Sync);
}

#[test]
fn reopen_while_the_cause_persists_fails_and_can_be_tried_again() {
    let storage = FaultyStorage::new();
    let queue = builder(&storage).open().unwrap();
    append_range(&queue, 0..5);
    poison(&queue, &storage, 5);
    // A dead disk: every operation fails from here.
    storage.set_plan(Some(FaultPlan { at_op: storage.op_count(), kind: FaultKind::Eio, persistent: true }));
    assert!(queue.reopen().is_err());
    assert!(matches!(queue.append(message(100)), Err(Error::Closed)), "the old queue stays closed");
    storage.set_plan(None);
    let queue = queue.reopen().unwrap();
    assert!(read_all(&queue).len() >= 5);
}
