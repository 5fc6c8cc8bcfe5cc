//! R1 in small: simulated power loss at every storage operation of a seeded workload (appends, batches, segment
//! rolls, close and reopen), each crash image built from the fault model of `FaultyStorage` (unsynced writes
//! dropped or torn per 512-byte sector, unsynced creates/renames/removals applied or dropped). After each crash:
//!
//! - D1: every append acknowledged under `GroupCommit` is present, byte-exact, at its offset;
//! - D2: nothing else appears: records are exactly messages 0..n, in order, unaltered;
//! - D4: a recovery that is itself cut by a crash, then recovered again, ends in the same records; recovering
//!   twice gives the same files;
//! - D5: the queue takes and returns a new append after recovery.
//!
//! Reproduce one case with `WALQ_SEED=<seed> WALQ_CRASH_AT=<op> WALQ_IMAGE_SEED=<image seed>`; `WALQ_SOAK=<n>` runs n times the crash images.

mod common;

use common::{env_u64, report, soak};
use std::sync::Arc;

use walq::storage::{FaultKind, FaultPlan, FaultRng, FaultyStorage, Storage};
use walq::{Durability, Message, Offset, Preallocation, Queue, QueueBuilder, Record};

const DIR: &str = "/sim/queue";
const MESSAGES: u64 = 260;
/// Workloads (seeds) swept per test, and crash images built per crash point of each: with about 420 operations
/// per workload, the two tests build about 70,000 crash images, of which about 51,000 are distinct (a point with
/// little unsynced leaves few choices); duplicates are skipped and not counted.
const WORKLOAD_SEEDS: u64 = 4;
const IMAGES_PER_POINT: u64 = 20;

fn sim_message(i: u64) -> Message {
    let len = 200 + (i * 7919 % 1300) as usize;
    let value: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
    Message::new(value).key(format!("k{}", i % 13).into_bytes()).timestamp_ms(i).header("i", i.to_le_bytes().to_vec())
}

fn builder(storage: &FaultyStorage, preallocation: Preallocation) -> QueueBuilder {
    Queue::builder(DIR)
        .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(Durability::GroupCommit)
        .preallocation(preallocation)
}

/// The workload; returns (messages acknowledged, whether it ran to the end). Stops at the first error.
fn workload(storage: &FaultyStorage, preallocation: Preallocation, seed: u64) -> (u64, bool) {
    let mut rng = FaultRng::new(seed);
    let mut acked = 0u64;
    let mut run = || -> walq::Result<()> {
        let queue = builder(storage, preallocation).open()?;
        while acked < MESSAGES / 2 {
            queue.append(sim_message(acked))?;
            acked += 1;
        }
        queue.close()?;
        let queue = builder(storage, preallocation).open()?;
        while acked < MESSAGES {
            let n = (1 + rng.below(7)).min(MESSAGES - acked);
            let batch: Vec<Message> = (acked..acked + n).map(sim_message).collect();
            queue.append_batch(&batch)?;
            acked += n;
        }
        queue.close()
    };
    let finished = run().is_ok();
    (acked, finished)
}

fn check_records(records: &[Record], acked: u64, context: &str) {
    assert!(records.len() as u64 >= acked, "{context}: D1 violated: {} records, {acked} acknowledged", records.len());
    assert!(records.len() as u64 <= MESSAGES, "{context}: D2 violated: {} records", records.len());
    for (i, record) in records.iter().enumerate() {
        let expected = sim_message(i as u64);
        assert_eq!(record.offset, Offset(i as u64), "{context}: offsets must be dense from 0");
        assert_eq!(record.value.as_deref(), expected.value_bytes(), "{context}: D2 value of {i}");
        assert_eq!(record.key.as_deref(), expected.key_bytes(), "{context}: D2 key of {i}");
        assert_eq!(record.timestamp_ms, i as u64, "{context}: D2 timestamp of {i}");
    }
}

fn read_all(queue: &Queue, context: &str) -> Vec<Record> {
    queue
        .read_from(Offset::EARLIEST)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{context}: read failed: {e}"))
}

/// Recovers a crash image and checks D1, D2, D4, D5.
fn check_image(image: &FaultyStorage, preallocation: Preallocation, acked: u64, seed: u64, context: &str) {
    // D4, first part: a recovery cut short by a crash at a random operation, then a full recovery, must end in
    // the same records as a recovery of the untouched image.
    let interrupted = image.clean_image();
    let ops_before = interrupted.op_count();
    let mut rng = FaultRng::new(seed ^ 0xD4);
    interrupted.set_plan(Some(FaultPlan {
        at_op: ops_before + rng.below(40),
        kind: FaultKind::Crash,
        persistent: false,
    }));
    drop(builder(&interrupted, preallocation).open());
    let after_interrupt = interrupted.crash_image(seed ^ 0x5EED);

    let queue = builder(image, preallocation).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
    let records = read_all(&queue, context);
    check_records(&records, acked, context);
    drop(queue);
    let files_once = image.snapshot();
    let queue = builder(image, preallocation).open().unwrap();
    assert_eq!(read_all(&queue, context), records, "{context}: D4 second recovery differs");
    drop(queue);
    assert_eq!(image.snapshot(), files_once, "{context}: D4 files differ after a second recovery");

    let queue = builder(&after_interrupt, preallocation)
        .open()
        .unwrap_or_else(|e| panic!("{context}: open after interrupted recovery failed: {e}"));
    assert_eq!(read_all(&queue, context), records, "{context}: D4 interrupted recovery differs");

    // D5: the queue works on.
    let next = records.len() as u64;
    assert_eq!(queue.append(sim_message(next)).unwrap(), Offset(next), "{context}: D5");
    let last = queue.read_from(Offset(next)).unwrap().next().unwrap().unwrap();
    assert_eq!(last.value.as_deref(), sim_message(next).value_bytes(), "{context}: D5");
}

fn sweep(preallocation: Preallocation, base_seed: u64) {
    let seeds: Vec<u64> = match env_u64("WALQ_SEED") {
        Some(seed) => vec![seed],
        None => (0..WORKLOAD_SEEDS).map(|k| base_seed + 100 * k).collect(),
    };
    let (mut operations, mut states) = (0, 0);
    for seed in seeds {
        let (ops, checked) = sweep_seed(preallocation, seed);
        operations += ops;
        states += checked;
    }
    println!(
        "crash simulation {preallocation:?}: {operations} operations, {states} distinct crash images, 0 violations"
    );
    report(
        &format!("R1 log, {preallocation:?}"),
        "simulated power loss at every storage operation of appends, batches, rolls and reopens",
        states,
        "distinct crash images",
        0,
    );
}

/// One workload, crashed at every operation; returns (operations, crash states checked).
fn sweep_seed(preallocation: Preallocation, seed: u64) -> (u64, u64) {
    let soak = soak();
    let reference = FaultyStorage::new();
    let (acked, finished) = workload(&reference, preallocation, seed);
    assert!(finished && acked == MESSAGES, "the workload runs clean without faults");
    let total_ops = reference.op_count();
    let points: Vec<u64> = match env_u64("WALQ_CRASH_AT") {
        Some(point) => vec![point],
        None => (0..=total_ops).collect(),
    };
    let mut states = 0;
    for &crash_at in &points {
        let storage = FaultyStorage::new();
        storage.set_plan(Some(FaultPlan { at_op: crash_at, kind: FaultKind::Crash, persistent: false }));
        let (acked, _) = workload(&storage, preallocation, seed);
        let image_seeds: Vec<u64> = match env_u64("WALQ_IMAGE_SEED") {
            Some(image_seed) => vec![image_seed],
            None => (0..IMAGES_PER_POINT * soak)
                .map(|k| seed.wrapping_mul(1_000_003).wrapping_add(crash_at * 1024 + k))
                .collect(),
        };
        for (image_seed, image) in common::distinct_crash_images(&storage, image_seeds) {
            let context = format!(
                "WALQ_SEED={seed} WALQ_CRASH_AT={crash_at} image seed {image_seed} ({preallocation:?}, {acked} acked)"
            );
            check_image(&image, preallocation, acked, image_seed, &context);
            states += 1;
        }
    }
    (total_ops, states)
}

#[test]
fn power_loss_at_every_operation_with_preallocated_segments() {
    sweep(Preallocation::Reserve, 1);
}

#[test]
fn power_loss_at_every_operation_with_growing_segments() {
    sweep(Preallocation::Grow, 2);
}
