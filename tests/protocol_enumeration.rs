//! R2: protocol enumeration. For the three file protocols that change directory entries (segment roll, group
//! state commits, compaction), crash after every storage operation of the protocol and build one crash image for
//! every subset of the directory operations (creations, renames, removals) not yet made durable, each with two
//! choices of torn unsynced file contents. Every image must recover to a state the protocol allows:
//!
//! - roll: every acknowledged append present, byte-exact, nothing else (D1, D2);
//! - group commits: no durable ack redelivered, nothing skipped, the floor within the log (D3);
//! - compaction: each segment old or new (a superset of the compacted records, a subset of the original ones),
//!   the latest value per key unchanged, no temporary file left.
//!
//! Reproduce one crash point with `WALQ_CRASH_AT=<op>` (operations counted from the start of the protocol).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{env_u64, keyed_message, latest_values, message, report, sim_builder};
use walq::storage::{FaultKind, FaultPlan, FaultyStorage};
use walq::{CleanupPolicy, Durability, Maintenance, Offset, QueueBuilder, Record};

/// File-content choices per subset of directory operations.
const CONTENT_SEEDS: u64 = 2;

/// Every crash image of `storage` after its crash: every subset of its pending directory operations, each with
/// `CONTENT_SEEDS` choices of torn contents. Calls `check` on each; returns how many there were.
fn every_image(storage: &FaultyStorage, context: &str, mut check: impl FnMut(FaultyStorage, &str)) -> u64 {
    let pending = storage.pending_dir_ops();
    assert!(pending <= 12, "{context}: {pending} pending directory operations: too many subsets to enumerate");
    let mut images = 0;
    for kept in 0..1u64 << pending {
        for seed in 0..CONTENT_SEEDS {
            let context = format!("{context}, directory operations kept {kept:#b} of {pending}, content seed {seed}");
            check(storage.crash_image_keeping(kept, seed), &context);
            images += 1;
        }
    }
    images
}

/// Crash points: one, from `WALQ_CRASH_AT`, or every operation in `range`.
fn crash_points(range: std::ops::Range<u64>) -> Vec<u64> {
    match env_u64("WALQ_CRASH_AT") {
        Some(point) => vec![point],
        None => range.collect(),
    }
}

fn read_records(builder: QueueBuilder, context: &str) -> Vec<Record> {
    let queue = builder.open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
    let records: Vec<Record> = queue
        .read_from(Offset::EARLIEST)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{context}: read failed: {e}"));
    records
}

fn roll_builder(storage: &FaultyStorage) -> QueueBuilder {
    sim_builder(storage).durability(Durability::GroupCommit)
}

/// Appends one at a time until `rolls` segment rolls happened; returns the acknowledged count and, for each roll,
/// the operation numbers of the append that rolled.
fn roll_workload(storage: &FaultyStorage, rolls: u64) -> (u64, Vec<std::ops::Range<u64>>) {
    let mut windows = Vec::new();
    let mut acked = 0;
    let Ok(queue) = roll_builder(storage).open() else { return (acked, windows) };
    while queue.stats().segment_rolls < rolls {
        let (before, rolls_before) = (storage.op_count(), queue.stats().segment_rolls);
        if queue.append(message(acked)).is_err() {
            break;
        }
        acked += 1;
        if queue.stats().segment_rolls > rolls_before {
            windows.push(before..storage.op_count());
        }
    }
    (acked, windows)
}

#[test]
fn segment_roll_recovers_at_every_operation_and_subset() {
    let reference = FaultyStorage::new();
    let (total, windows) = roll_workload(&reference, 2);
    assert_eq!(windows.len(), 2);
    let mut images = 0;
    for window in &windows {
        for crash_at in crash_points(window.start..window.end + 2) {
            let storage = FaultyStorage::new();
            storage.set_plan(Some(FaultPlan { at_op: crash_at, kind: FaultKind::Crash, persistent: true }));
            let (acked, _) = roll_workload(&storage, 2);
            let context = format!("roll: WALQ_CRASH_AT={crash_at} ({acked} acknowledged)");
            images += every_image(&storage, &context, |image, context| {
                let records = read_records(roll_builder(&image), context);
                assert!(
                    records.len() as u64 >= acked,
                    "{context}: D1: {} records, {acked} acknowledged",
                    records.len()
                );
                assert!(records.len() as u64 <= total, "{context}: D2: more records than appended");
                for (i, record) in records.iter().enumerate() {
                    common::assert_is_message(record, i as u64);
                }
            });
        }
    }
    println!("R2 roll: {images} crash images, 0 violations");
    report(
        "R2 roll",
        "segment roll: crash at every operation x every subset of unsynced directory operations",
        images,
        "images",
        0,
    );
}

fn group_builder(storage: &FaultyStorage) -> QueueBuilder {
    sim_builder(storage).durability(Durability::GroupCommit).cleanup(CleanupPolicy::KeepAll)
}

/// 30 messages; a group created, 20 acked, closed, reopened, 5 more acked. Returns the offsets whose ack returned.
fn group_workload(storage: &FaultyStorage) -> BTreeSet<u64> {
    let mut acked = BTreeSet::new();
    let _ = (|| -> walq::Result<()> {
        let queue = group_builder(storage).open()?;
        queue.append_batch(&(0..30).map(message).collect::<Vec<_>>())?;
        ack_some(&queue, 20, &mut acked)?;
        queue.close()?;
        let queue = group_builder(storage).open()?;
        ack_some(&queue, 5, &mut acked)?;
        queue.close()
    })();
    acked
}

fn ack_some(queue: &walq::Queue, count: usize, acked: &mut BTreeSet<u64>) -> walq::Result<()> {
    let consumer = queue.group("g")?.consumer();
    for _ in 0..count {
        let Some(delivery) = consumer.try_recv()? else { break };
        let offset = delivery.offset().0;
        delivery.ack()?;
        acked.insert(offset);
    }
    Ok(())
}

#[test]
fn group_state_commits_recover_at_every_operation_and_subset() {
    let reference = FaultyStorage::new();
    assert_eq!(group_workload(&reference).len(), 25);
    let total_ops = reference.op_count();
    let mut images = 0;
    for crash_at in crash_points(0..total_ops) {
        let storage = FaultyStorage::new();
        storage.set_plan(Some(FaultPlan { at_op: crash_at, kind: FaultKind::Crash, persistent: true }));
        let acked = group_workload(&storage);
        let context = format!("group: WALQ_CRASH_AT={crash_at} ({} acks returned)", acked.len());
        images += every_image(&storage, &context, |image, context| {
            let queue = group_builder(&image).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
            let end = queue.stats().next_offset.0;
            let Ok(group) = queue.group("g") else { panic!("{context}: the group cannot be opened") };
            let floor = group.ack_floor().0;
            assert!(floor <= end, "{context}: D3: floor {floor} past the log's end {end}");
            let consumer = group.consumer();
            let mut delivered = BTreeSet::new();
            let mut held = Vec::new();
            while let Some(delivery) = consumer.try_recv().unwrap() {
                assert!(
                    !acked.contains(&delivery.offset().0),
                    "{context}: acked {} delivered again",
                    delivery.offset()
                );
                delivered.insert(delivery.offset().0);
                held.push(delivery);
            }
            // From the first offset, not the floor: a floor that jumped past unacked offsets must fail here.
            for offset in 0..end {
                assert!(delivered.contains(&offset) || acked.contains(&offset), "{context}: offset {offset} skipped");
            }
        });
    }
    println!("R2 group commits: {images} crash images, 0 violations");
    report(
        "R2 group commits",
        "group journal creation, acks, reopen: crash at every operation x every subset",
        images,
        "images",
        0,
    );
}

fn compaction_builder(storage: &FaultyStorage) -> QueueBuilder {
    sim_builder(storage)
        .cleanup(CleanupPolicy::Compact)
        .tombstone_retention(Duration::ZERO)
        .maintenance(Maintenance::Manual)
}

fn as_set(records: &[Record]) -> BTreeSet<(u64, Option<Vec<u8>>)> {
    records.iter().map(|r| (r.offset.0, r.value.clone())).collect()
}

#[test]
fn compaction_recovers_at_every_operation_and_subset() {
    let base = FaultyStorage::new();
    let queue = compaction_builder(&base).open().unwrap();
    queue.append_batch(&(0..3000).map(|i| keyed_message(i, 10)).collect::<Vec<_>>()).unwrap();
    drop(queue);
    let base = base.clean_image();
    let old = read_records(compaction_builder(&base.clean_image()), "before");
    let model = latest_values(old.iter().map(|r| (r.key.as_deref(), r.value.as_deref())));
    let reference = base.clean_image();
    let queue = compaction_builder(&reference).open().unwrap();
    let start = reference.op_count();
    assert!(queue.compact().unwrap().segments_rewritten >= 2);
    let ops = reference.op_count() - start;
    drop(queue);
    let new_set = as_set(&read_records(compaction_builder(&reference), "after"));
    let old_set = as_set(&old);
    let mut images = 0;
    for crash_at in crash_points(0..ops + 1) {
        let storage = base.clean_image();
        let queue = compaction_builder(&storage).open().unwrap();
        let at_op = storage.op_count() + crash_at;
        storage.set_plan(Some(FaultPlan { at_op, kind: FaultKind::Crash, persistent: true }));
        let _ = queue.compact();
        drop(queue);
        let context = format!("compaction: WALQ_CRASH_AT={crash_at}");
        images += every_image(&storage, &context, |image, context| {
            let records = read_records(compaction_builder(&image), context);
            let set = as_set(&records);
            assert!(set.is_superset(&new_set), "{context}: lost a record the compaction keeps");
            assert!(set.is_subset(&old_set), "{context}: a record that never existed");
            let latest = latest_values(records.iter().map(|r| (r.key.as_deref(), r.value.as_deref())));
            assert_eq!(latest, model, "{context}: latest values changed");
            let leftovers = image.snapshot().into_keys().filter(|p| p.extension().is_some_and(|e| e == "tmp")).count();
            assert_eq!(leftovers, 0, "{context}: temporary files left after open");
        });
    }
    println!("R2 compaction: {images} crash images, 0 violations");
    report(
        "R2 compaction",
        "compaction: crash at every operation x every subset of unsynced directory operations",
        images,
        "images",
        0,
    );
}
