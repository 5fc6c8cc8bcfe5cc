//! R2 for compaction: a crash after every storage operation of a compaction pass, each with many crash images
//! (every mix of the unsynced creates, renames and removals being applied or dropped, and torn unsynced writes).
//! After recovery each segment is in its old or its new state: the records are a superset of the compacted result
//! and a subset of the original, the latest value per key is unchanged, and no temporary file is left.
//!
//! Reproduce with `WALQ_CRASH_AT=<op>`.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{keyed_message, latest_values};
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{CleanupPolicy, Maintenance, Offset, Preallocation, Queue, QueueBuilder, Record};

const DIR: &str = "/sim/queue";
const IMAGES_PER_POINT: u64 = 64;

fn builder(storage: &FaultyStorage) -> QueueBuilder {
    Queue::builder(DIR)
        .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .preallocation(Preallocation::Grow)
        .cleanup(CleanupPolicy::Compact)
        .tombstone_retention(Duration::ZERO)
        .maintenance(Maintenance::Manual) // the compaction enumerated is the one `compact()` runs
}

fn records(storage: &FaultyStorage, context: &str) -> Vec<Record> {
    let queue = builder(storage).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
    let records = queue
        .read_from(Offset::EARLIEST)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{context}: read failed: {e}"));
    drop(queue);
    let leftovers: Vec<_> =
        storage.snapshot().into_keys().filter(|p| p.extension().is_some_and(|e| e == "tmp")).collect();
    assert!(leftovers.is_empty(), "{context}: temporary files left after open: {leftovers:?}");
    records
}

fn as_set(records: &[Record]) -> BTreeSet<(u64, Option<Vec<u8>>)> {
    records.iter().map(|r| (r.offset.0, r.value.clone())).collect()
}

#[test]
fn crash_at_every_operation_of_a_compaction_leaves_old_or_new() {
    let base = FaultyStorage::new();
    let queue = builder(&base).open().unwrap();
    let messages: Vec<_> = (0..5000).map(|i| keyed_message(i, 10)).collect();
    queue.append_batch(&messages).unwrap();
    drop(queue);
    let base = base.clean_image();
    let old = records(&base.clean_image(), "before");
    let model = latest_values(old.iter().map(|r| (r.key.as_deref(), r.value.as_deref())));

    let reference = base.clean_image();
    let queue = builder(&reference).open().unwrap();
    let start = reference.op_count();
    let report = queue.compact().unwrap();
    let ops = reference.op_count() - start;
    drop(queue);
    assert!(report.segments_rewritten >= 3, "{report:?}");
    let new = records(&reference, "after");
    let (old_set, new_set) = (as_set(&old), as_set(&new));
    assert!(new_set.len() < old_set.len());

    let points: Vec<u64> = match std::env::var("WALQ_CRASH_AT").ok().and_then(|v| v.parse().ok()) {
        Some(point) => vec![point],
        None => (0..=ops).collect(),
    };
    let mut states = 0;
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
            let recovered = records(&image, &context);
            let set = as_set(&recovered);
            assert!(set.is_superset(&new_set), "{context}: lost a record the compaction keeps");
            assert!(set.is_subset(&old_set), "{context}: a record that never existed");
            let latest = latest_values(recovered.iter().map(|r| (r.key.as_deref(), r.value.as_deref())));
            assert_eq!(latest, model, "{context}: latest values changed");
            states += 1;
        }
    }
    println!("compaction crash simulation: {ops} operations, {states} distinct crash images, 0 violations");
    common::report(
        "R1 compaction",
        "simulated power loss at every storage operation of a compaction pass",
        states,
        "distinct crash images",
        0,
    );
}
