//! What one ack costs as a group's state grows (issue #13's targets):
//!
//! - `ack above a stuck lease`: `Delivery::ack` of single messages while one message stays leased (a slow
//!   consumer holds the floor), with 0, 100 k and 10 M acked offsets above it;
//! - `ack past a gap`: the same above a 10 M-offset gap keyed compaction left (`CompactionScope::AllSealed`);
//!
//! each in `Durability::None` and `Durability::GroupCommit`. Only the acks are timed: the messages are appended and
//! taken (`try_recv_batch`) outside the measure. The target is a flat cost: every size within 1.5x of the others.
//!
//! Also printed, for the 10 M state: the bytes of a checkpoint (the journal's size right after one) and the time
//! to reopen the queue and take the stuck message again.
//!
//! Run with `cargo bench --bench group_state` (about 6 minutes and 1 GB of temporary disk on 2 cores).

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use walq::{CleanupPolicy, CompactionScope, Consumer, Delivery, Durability, Maintenance, Message, Queue};

/// Messages appended per `append_batch` while building a state.
const BATCH: u64 = 10_000;
/// Deliveries taken per `try_recv_batch`, outside the measure.
const TAKE: usize = 1_000;
/// The widest state: acked offsets above the stuck lease, and the width of the gap.
const WIDE: u64 = 10_000_000;

/// A queue with one message leased for an hour (offset 0) and the consumer that took it.
struct Stuck {
    queue: Queue,
    consumer: Consumer,
    _stuck: Delivery,
}

fn builder(dir: &Path, durability: Durability) -> walq::QueueBuilder {
    Queue::builder(dir)
        .durability(durability)
        .ack_timeout(Duration::from_secs(3600))
        .maintenance(Maintenance::Manual)
        .segment_bytes_max(16 << 20)
}

fn append(queue: &Queue, count: u64, message: &Message) {
    let batch: Vec<Message> = (0..BATCH.min(count)).map(|_| message.clone()).collect();
    let mut left = count;
    while left > 0 {
        let n = left.min(BATCH);
        queue.append_batch(&batch[..n as usize]).unwrap();
        left -= n;
    }
}

/// Takes and acks everything available, in batches (building a state, not measured).
fn drain(consumer: &Consumer) {
    loop {
        let deliveries = consumer.try_recv_batch(TAKE).unwrap();
        if deliveries.is_empty() {
            return;
        }
        consumer.ack_all(deliveries).unwrap();
    }
}

/// Opens the queue in `dir` and leases its first message for an hour (after a reopen, the stuck message of the
/// state comes back first).
fn open_stuck(dir: &Path, durability: Durability) -> Stuck {
    let queue = builder(dir, durability).open().unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    let stuck = consumer.try_recv().unwrap().expect("the stuck message");
    assert_eq!(stuck.offset().value(), 0);
    Stuck { queue, consumer, _stuck: stuck }
}

/// One stuck lease with `acked` acked offsets above it, in `dir` (closed).
fn build_above_stuck(dir: &Path, acked: u64) {
    let queue = builder(dir, Durability::None).open().unwrap();
    append(&queue, acked + 1, &Message::new(7u64.to_le_bytes().to_vec()));
    let consumer = queue.group("g").unwrap().consumer();
    let stuck = consumer.try_recv().unwrap().unwrap();
    drain(&consumer);
    drop(stuck);
    queue.close().unwrap();
}

/// One stuck lease and a gap of `WIDE` offsets above it that keyed compaction left, in `dir` (closed).
fn build_gap(dir: &Path) {
    let queue = builder(dir, Durability::None)
        .cleanup(CleanupPolicy::Compact)
        .compaction_scope(CompactionScope::AllSealed)
        .open()
        .unwrap();
    queue.append(Message::new("held").key("stuck")).unwrap();
    let group = queue.group("g").unwrap();
    append(&queue, WIDE, &Message::new(7u64.to_le_bytes().to_vec()).key("k"));
    // Keyless messages after them, so that every message of key "k" but the last is in a sealed segment.
    append(&queue, 1_000_000, &Message::new(7u64.to_le_bytes().to_vec()));
    queue.compact().unwrap();
    let consumer = group.consumer();
    let stuck = consumer.try_recv().unwrap().unwrap();
    drain(&consumer); // reads across the gap: one `Gone` range above the stuck lease
    drop(stuck);
    queue.close().unwrap();
}

/// `iters` single acks above the stuck lease: appended and taken untimed, acked timed.
fn acks(state: &Stuck, iters: u64) -> Duration {
    append(&state.queue, iters, &Message::new(7u64.to_le_bytes().to_vec()));
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let deliveries = state.consumer.try_recv_batch(TAKE.min(left as usize)).unwrap();
        assert!(!deliveries.is_empty(), "the appended messages are there to take");
        left -= deliveries.len() as u64;
        let start = Instant::now();
        for delivery in deliveries {
            delivery.ack().unwrap();
        }
        total += start.elapsed();
    }
    total
}

/// The journal's size right after its next checkpoint: single acks until the file shrinks.
fn checkpoint_bytes(state: &Stuck, journal: &Path) -> u64 {
    let mut previous = std::fs::metadata(journal).unwrap().len();
    for _ in 0..10 {
        append(&state.queue, 100_000, &Message::new(7u64.to_le_bytes().to_vec()));
        loop {
            let deliveries = state.consumer.try_recv_batch(TAKE).unwrap();
            if deliveries.is_empty() {
                break;
            }
            for delivery in deliveries {
                delivery.ack().unwrap();
                let len = std::fs::metadata(journal).unwrap().len();
                if len < previous {
                    return len;
                }
                previous = len;
            }
        }
    }
    panic!("no checkpoint after a million acks")
}

fn ack_cost(c: &mut Criterion) {
    let cases: Vec<(String, tempfile::TempDir)> = [0, 100_000, WIDE]
        .into_iter()
        .map(|acked| {
            let temp = tempfile::tempdir().unwrap();
            build_above_stuck(temp.path(), acked);
            (format!("above a stuck lease, {acked} acked"), temp)
        })
        .chain(std::iter::once_with(|| {
            let temp = tempfile::tempdir().unwrap();
            build_gap(temp.path());
            (format!("past a {WIDE}-offset gap"), temp)
        }))
        .collect();
    for (mode, durability) in [("None", Durability::None), ("GroupCommit", Durability::GroupCommit)] {
        let mut group = c.benchmark_group(format!("ack, {mode}"));
        group
            .throughput(Throughput::Elements(1))
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
        for (name, temp) in &cases {
            let state = open_stuck(temp.path(), durability);
            group.bench_with_input(BenchmarkId::from_parameter(name), &state, |b, state| {
                b.iter_custom(|iters| acks(state, iters))
            });
            state.queue.close().unwrap();
        }
        group.finish();
    }

    // The widest state once more: what a checkpoint of it weighs, and what reopening it costs.
    let dir = cases[2].1.path();
    let start = Instant::now();
    let state = open_stuck(dir, Durability::None);
    let reopen = start.elapsed();
    let bytes = checkpoint_bytes(&state, &dir.join("groups/g.journal"));
    state.queue.close().unwrap();
    let start = Instant::now();
    let state = open_stuck(dir, Durability::None);
    let reopen_after_checkpoint = start.elapsed();
    state.queue.close().unwrap();
    println!(
        "state of one stuck lease and {WIDE}+ acks above it: checkpoint {bytes} bytes; reopen and take the stuck \
         message {:.2} ms (journal as the run left it), {:.2} ms (right after a checkpoint)",
        reopen.as_secs_f64() * 1e3,
        reopen_after_checkpoint.as_secs_f64() * 1e3
    );
}

criterion_group!(benches, ack_cost);
criterion_main!(benches);
