//! Regression: a full disk during a journal checkpoint poisoned the group (#12, item 10).
//!
//! The bug: a checkpoint writes the group's whole state to a new file and renames it over the journal. Any failure
//! on the way poisoned the journal, so every later ack returned `Poisoned` until a restart, although a failure
//! before the rename leaves the old journal whole and in use.
//!
//! The fix: only a failed directory fsync after the rename (which leaves unknown which file the name holds after a
//! crash) poisons; a failure before it leaves the group working, and the checkpoint is tried again after the journal
//! has grown by another checkpoint's worth (so a full disk does not make every write rewrite the whole state).
//!
//! The test: a full disk at each operation of the acks that make the journal cross the checkpoint size; the group
//! answers `DiskFull` at worst, never `Poisoned`, goes on once space is freed, and reopens with the right floor.
//! Acks are of every other offset (one record each, and a state of many ranges) so that the journal grows.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::small;
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{Delivery, Durability, Error, Message, Offset, Queue};

/// Journal size at which a checkpoint is due (`group::journal::JOURNAL_CHECKPOINT_BYTES`).
const CHECKPOINT_BYTES: usize = 1 << 20;
const BATCH: usize = 1_000;
const MESSAGES: u64 = 120_000;
/// Bytes one round (a batch taken, half of it acked one record each) adds to the journal, about.
const ROUND_BYTES: usize = 40 * (BATCH / 2 + 1);

fn open(storage: &FaultyStorage) -> Queue {
    small(Path::new("/sim/queue"))
        .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .durability(Durability::Sync)
        .segment_bytes_max(1 << 20)
        .open()
        .unwrap()
}

fn journal_len(storage: &FaultyStorage) -> usize {
    storage.snapshot()[Path::new("/sim/queue/groups/g.journal")].len()
}

/// The journal's id (header bytes 12..20): a checkpoint writes a new file with a new id.
fn journal_id(storage: &FaultyStorage) -> Vec<u8> {
    storage.snapshot()[Path::new("/sim/queue/groups/g.journal")][12..20].to_vec()
}

/// Takes a batch and acks its even offsets; the odd ones stay leased (returned, so that they stay so).
fn round(queue: &Queue) -> (Result<(), Error>, Vec<Delivery>) {
    let consumer = queue.group("g").unwrap().consumer();
    let taken = match consumer.try_recv_batch(BATCH) {
        Ok(taken) => taken,
        Err(error) => return (Err(error), Vec::new()), // the take's own record met the full disk
    };
    let (even, odd): (Vec<Delivery>, Vec<Delivery>) = taken.into_iter().partition(|d| d.offset().0 % 2 == 0);
    (consumer.ack_all(even), odd)
}

/// A queue whose group journal is a few rounds short of its checkpoint.
fn near_checkpoint() -> FaultyStorage {
    let storage = FaultyStorage::new();
    let queue = open(&storage);
    let messages: Vec<Message> = (0..MESSAGES).map(|i| Message::new(i.to_le_bytes().to_vec())).collect();
    for chunk in messages.chunks(10_000) {
        queue.append_batch(chunk).unwrap();
    }
    queue.group("g").unwrap();
    let mut held = Vec::new();
    while journal_len(&storage) + 4 * ROUND_BYTES < CHECKPOINT_BYTES {
        let (acked, odd) = round(&queue);
        acked.unwrap();
        assert!(!odd.is_empty(), "ran out of messages before the journal grew");
        held.extend(odd);
    }
    queue.close().unwrap();
    drop(held);
    storage.clean_image()
}

/// Which round (from a reopen of `base`) makes the journal cross its checkpoint size (a new journal id then),
/// and how many storage operations that round takes.
fn crossing_round(base: &FaultyStorage) -> (usize, u64) {
    let storage = base.clean_image();
    let queue = open(&storage);
    let mut held = Vec::new();
    for round_number in 0..16 {
        let (id, ops) = (journal_id(&storage), storage.op_count());
        let (acked, odd) = round(&queue);
        acked.unwrap();
        held.extend(odd);
        if journal_id(&storage) != id {
            return (round_number, storage.op_count() - ops);
        }
    }
    panic!("no round crossed the checkpoint size");
}

#[test]
fn a_full_disk_during_a_checkpoint_leaves_the_group_working() {
    let base = near_checkpoint();
    let (crossing, ops) = crossing_round(&base);
    let mut faults = 0;
    for n in 0..ops {
        let storage = base.clean_image();
        let queue = open(&storage);
        let mut held = Vec::new();
        for round_number in 0..=crossing {
            if round_number == crossing {
                let at_op = storage.op_count() + n;
                storage.set_plan(Some(FaultPlan { at_op, kind: FaultKind::Enospc, persistent: false }));
            }
            let (acked, odd) = round(&queue);
            held.extend(odd);
            match acked {
                Ok(()) | Err(Error::DiskFull) => {} // an ack's own record failed: delivered again, later
                Err(other) => panic!("ENOSPC at operation {n} of the crossing round: {other}"),
            }
        }
        faults += storage.faults_injected();
        storage.set_plan(None); // space freed
        drop(held);
        // The group goes on: everything is delivered and acked, without a restart.
        let consumer = queue.group("g").unwrap().consumer();
        loop {
            let batch = consumer.try_recv_batch(10 * BATCH).unwrap();
            if batch.is_empty() {
                break;
            }
            consumer.ack_all(batch).unwrap_or_else(|e| panic!("ENOSPC at operation {n}: after space came back: {e}"));
        }
        assert_eq!(queue.group("g").unwrap().ack_floor(), Offset(MESSAGES), "ENOSPC at operation {n}");
        queue.close().unwrap();
        drop((consumer, queue));
        let reopened = open(&storage);
        assert_eq!(reopened.group("g").unwrap().ack_floor(), Offset(MESSAGES), "ENOSPC at operation {n}");
    }
    assert!(faults > 0, "no fault was injected");
    println!("ENOSPC at each of the {ops} operations of the round that checkpoints: the group never poisoned");
}
