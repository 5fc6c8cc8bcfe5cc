//! R1 for consumer groups: simulated power loss at every storage operation of a workload that consumes with acks,
//! batches (`try_recv_batch` + `ack_all`: runs of first deliveries and acked ranges in the journal), nacks and
//! drops (group journal writes, group commits, reopen with replay; checkpoints are not reached here).
//! After each crash:
//! - no ack that returned `Ok` (durable under `GroupCommit`) is delivered again;
//! - nothing is skipped: every stored offset is acked, dead-lettered, possibly acked (an ack that failed with the
//!   crash), or delivered again;
//! - D3: the ack floor is never past the log's end;
//! - D4: recovering the same image twice gives the same floor, dead letters and deliveries.
//!
//! Reproduce with `WALQ_SEED=<seed> WALQ_CRASH_AT=<op>`.

mod common;

use common::{env_u64, report, soak};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use walq::storage::{FaultKind, FaultPlan, FaultRng, FaultyStorage, Storage};
use walq::{DeadLetter, Durability, Message, Offset, Preallocation, Queue, QueueBuilder};

const DIR: &str = "/sim/queue";
const MESSAGES: u64 = 40;
const STEPS: u64 = 90;
/// Workloads (seeds) swept, and crash images per crash point of each: about 34,000 built, about 14,000 distinct
/// (duplicates are skipped and not counted).
const WORKLOAD_SEEDS: u64 = 4;
const IMAGES_PER_POINT: u64 = 36;

fn builder(storage: &FaultyStorage) -> QueueBuilder {
    Queue::builder(DIR)
        .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(Durability::GroupCommit)
        .preallocation(Preallocation::Grow)
        .max_deliveries(3)
}

#[derive(Debug, Default)]
struct Outcome {
    acked: BTreeSet<u64>,
    maybe_acked: BTreeSet<u64>,
}

fn workload(storage: &FaultyStorage, seed: u64) -> Outcome {
    let mut rng = FaultRng::new(seed);
    let mut outcome = Outcome::default();
    let mut run = |outcome: &mut Outcome| -> walq::Result<()> {
        let queue = builder(storage).open()?;
        let batch: Vec<Message> = (0..MESSAGES).map(|i| Message::new(vec![i as u8; 100 + i as usize])).collect();
        queue.append_batch(&batch)?;
        let mut consumer = queue.group("g")?.consumer();
        let mut queue = Some(queue);
        for step in 0..STEPS {
            if step == STEPS / 2 {
                queue.take().expect("open").close()?;
                let reopened = builder(storage).open()?;
                consumer = reopened.group("g")?.consumer();
                queue = Some(reopened);
            }
            let Some(delivery) = consumer.try_recv()? else { break };
            let offset = delivery.offset().0;
            match rng.below(10) {
                0..=4 => {
                    outcome.maybe_acked.insert(offset);
                    delivery.ack()?;
                    outcome.acked.insert(offset);
                }
                5 | 6 => {
                    // A batch: the take journals a run of first deliveries (`DeliveredFirst`), the ack of consecutive
                    // offsets one `AckedRange` (with redeliveries mixed in when the batch holds any).
                    let mut batch = consumer.try_recv_batch(1 + rng.below(3) as usize)?;
                    batch.push(delivery);
                    let offsets: Vec<u64> = batch.iter().map(|d| d.offset().0).collect();
                    outcome.maybe_acked.extend(&offsets);
                    consumer.ack_all(batch)?;
                    outcome.acked.extend(&offsets);
                }
                7 | 8 => drop(delivery.nack(Duration::ZERO)?),
                _ => drop(delivery),
            }
        }
        queue.expect("open").close()
    };
    let _ = run(&mut outcome);
    outcome
}

/// Opens the image and drains the group without acking: (floor, dead letters, offsets delivered).
fn recover(image: &FaultyStorage, context: &str) -> (Offset, Vec<DeadLetter>, BTreeSet<u64>, Offset, Offset) {
    let queue = builder(image).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
    let group = queue.group("g").unwrap();
    let stats = queue.stats();
    let consumer = group.consumer();
    let mut held = Vec::new();
    while let Some(delivery) = consumer.try_recv().unwrap_or_else(|e| panic!("{context}: {e}")) {
        held.push(delivery);
    }
    let drained = held.iter().map(|d| d.offset().0).collect();
    (group.ack_floor(), group.dead_letters(), drained, stats.first_offset, stats.next_offset)
}

#[test]
fn power_loss_at_every_operation_of_a_consuming_workload() {
    let seeds: Vec<u64> = match env_u64("WALQ_SEED") {
        Some(seed) => vec![seed],
        None => (0..WORKLOAD_SEEDS).map(|k| 5 + 100 * k).collect(),
    };
    let (mut operations, mut states) = (0, 0);
    for seed in seeds {
        let (ops, checked) = sweep_seed(seed);
        operations += ops;
        states += checked;
    }
    println!("group crash simulation: {operations} operations, {states} distinct crash images, 0 violations");
    report(
        "R1 groups",
        "simulated power loss at every storage operation of acks, batches (delivered runs, acked ranges), nacks, drops and reopens",
        states,
        "distinct crash images",
        0,
    );
}

/// One consuming workload, crashed at every operation; returns (operations, crash states checked).
fn sweep_seed(seed: u64) -> (u64, u64) {
    let reference = FaultyStorage::new();
    let full = workload(&reference, seed);
    assert!(full.acked.len() > 20, "the workload acks: {full:?}");
    let total_ops = reference.op_count();
    let points: Vec<u64> = match env_u64("WALQ_CRASH_AT") {
        Some(point) => vec![point],
        None => (0..=total_ops).collect(),
    };
    let mut states = 0;
    for &crash_at in &points {
        let storage = FaultyStorage::new();
        storage.set_plan(Some(FaultPlan { at_op: crash_at, kind: FaultKind::Crash, persistent: false }));
        let outcome = workload(&storage, seed);
        let image_seeds =
            (0..IMAGES_PER_POINT * soak()).map(|k| seed.wrapping_mul(7919).wrapping_add(crash_at * 1024 + k));
        for (image_seed, image) in common::distinct_crash_images(&storage, image_seeds) {
            let context = format!("WALQ_SEED={seed} WALQ_CRASH_AT={crash_at} image seed {image_seed}");
            let twin = image.clean_image(); // the same image, for D4 (draining changes state: dropping is a failure)
            let (floor, dead, drained, first, end) = recover(&image, &context);
            assert!(floor <= end, "{context}: D3: floor {floor} past the log's end {end}");
            for offset in &drained {
                assert!(!outcome.acked.contains(offset), "{context}: acked offset {offset} delivered again");
            }
            let dead: BTreeSet<u64> = dead.iter().map(|d| d.offset.0).collect();
            for offset in first.0..end.0 {
                let accounted =
                    outcome.maybe_acked.contains(&offset) || drained.contains(&offset) || dead.contains(&offset);
                assert!(accounted, "{context}: offset {offset} skipped");
            }
            let again = recover(&twin, &context);
            let dead_again: BTreeSet<u64> = again.1.iter().map(|d| d.offset.0).collect();
            assert_eq!((again.0, &dead_again, &again.2), (floor, &dead, &drained), "{context}: D4: recoveries differ");
            states += 1;
        }
    }
    (total_ops, states)
}
