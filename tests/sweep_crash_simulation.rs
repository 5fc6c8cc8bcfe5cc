//! R1 for sweeps: a simulated power cut after every storage operation of a sweep pass (`DeleteConsumed`, one held
//! message per group pinning the log), each with many crash images (every mix of the unsynced creates, renames
//! and removals applied or dropped, and torn unsynced writes). After recovery every segment is in its old or its
//! new state: the stored records are a superset of the swept result and a subset of the original, each with its
//! content; each group is still delivered exactly what it had not acked; no temporary file is left.
//!
//! Reproduce with `WALQ_CRASH_AT=<op>`.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{assert_is_message, message};
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{Maintenance, Offset, Preallocation, Queue, QueueBuilder};

const DIR: &str = "/sim/queue";
const IMAGES_PER_POINT: u64 = 32;
const MESSAGES: u64 = 3000;
/// What each group leaves unacked (leased when the queue closes, so delivered again after a reopen).
const HELD: [(&str, &[u64]); 2] = [("a", &[5, 1500]), ("b", &[2200])];

fn builder(storage: &FaultyStorage) -> QueueBuilder {
    Queue::builder(DIR)
        .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .preallocation(Preallocation::Grow)
        .maintenance(Maintenance::Manual) // the sweep enumerated is the one `compact()` runs
}

/// The offsets stored, each checked against its message; and what each group is delivered after a reopen.
fn state(storage: &FaultyStorage, context: &str) -> (BTreeSet<u64>, Vec<Vec<u64>>) {
    let queue = builder(storage).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
    let mut stored = BTreeSet::new();
    for record in queue.read_from(Offset::EARLIEST).unwrap() {
        let record = record.unwrap_or_else(|e| panic!("{context}: read failed: {e}"));
        assert_is_message(&record, record.offset.0);
        stored.insert(record.offset.0);
    }
    let mut delivered = Vec::new();
    for (name, _) in HELD {
        let consumer = queue.group(name).unwrap().consumer();
        let deliveries = consumer.try_recv_batch(usize::MAX).unwrap();
        for delivery in &deliveries {
            assert_is_message(delivery.message(), delivery.offset().0);
        }
        delivered.push(deliveries.iter().map(|d| d.offset().0).collect());
    }
    drop(queue);
    let leftovers: Vec<_> =
        storage.snapshot().into_keys().filter(|p| p.extension().is_some_and(|e| e == "tmp")).collect();
    assert!(leftovers.is_empty(), "{context}: temporary files left after open: {leftovers:?}");
    (stored, delivered)
}

/// Each group's consumers take what they are given after the reopen (the held messages again), so that every
/// group has read past the log: a sweep leaves segments alone that a group has not read past since open.
fn take_everything(queue: &Queue) -> Vec<walq::Delivery> {
    HELD.iter()
        .flat_map(|(name, _)| queue.group(name).unwrap().consumer().try_recv_batch(usize::MAX).unwrap())
        .collect()
}

#[test]
fn crash_at_every_operation_of_a_sweep_leaves_old_or_new() {
    let base = FaultyStorage::new();
    let queue = builder(&base).open().unwrap();
    let messages: Vec<_> = (0..MESSAGES).map(message).collect();
    queue.append_batch(&messages).unwrap();
    for (name, held) in HELD {
        let consumer = queue.group(name).unwrap().consumer();
        let deliveries = consumer.try_recv_batch(usize::MAX).unwrap();
        let (keep, done): (Vec<_>, Vec<_>) = deliveries.into_iter().partition(|d| held.contains(&d.offset().0));
        consumer.ack_all(done).unwrap();
        std::mem::forget(keep); // leased when the process stops, as a crash leaves them
    }
    drop(queue);
    let base = base.clean_image();
    let (original, _) = state(&base.clean_image(), "before");
    let expected_deliveries: Vec<Vec<u64>> = HELD.iter().map(|(_, held)| held.to_vec()).collect();

    let reference = base.clean_image();
    let queue = builder(&reference).open().unwrap();
    let taken = take_everything(&queue);
    let start = reference.op_count();
    let report = queue.compact().unwrap();
    let ops = reference.op_count() - start;
    drop((taken, queue));
    assert!(report.segments_rewritten >= 3, "{report:?}");
    let (swept, delivered) = state(&reference, "after");
    assert!(swept.len() < original.len() / 2, "the sweep removed most messages: {} of {}", swept.len(), original.len());
    assert_eq!(delivered, expected_deliveries);

    let points: Vec<u64> = match common::env_u64("WALQ_CRASH_AT") {
        Some(point) => vec![point],
        None => (0..=ops).collect(),
    };
    let mut states = 0u64;
    for &crash_at in &points {
        let storage = base.clean_image();
        let queue = builder(&storage).open().unwrap();
        storage.set_plan(Some(FaultPlan {
            at_op: storage.op_count() + crash_at,
            kind: FaultKind::Crash,
            persistent: false,
        }));
        let _ = queue.compact();
        drop(queue);
        for (seed, image) in common::distinct_crash_images(&storage, 0..IMAGES_PER_POINT) {
            let context = format!("WALQ_CRASH_AT={crash_at} image seed {seed}");
            let (stored, delivered) = state(&image, &context);
            assert!(stored.is_superset(&swept), "{context}: lost a record the sweep keeps");
            assert!(stored.is_subset(&original), "{context}: a record that never existed");
            assert_eq!(delivered, expected_deliveries, "{context}: a group's deliveries changed");
            states += 1;
        }
    }
    println!("sweep crash simulation: {ops} operations, {states} distinct crash images, 0 violations");
    common::report(
        "R1 sweep",
        "simulated power loss at every storage operation of a sweep pass",
        states,
        "distinct crash images",
        0,
    );
}
