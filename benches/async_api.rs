//! The async API against the blocking one, in the same run (issue targets: async consume >= 0.9x of blocking;
//! async durable appends from 64 tasks on one current-thread runtime >= 0.9x the group-commit rate of 64 blocking
//! threads).
//!
//! - consume 100 B: `try_recv_batch(1000)` + `ack_all` on a thread, against `recv_batch_async(1000)` +
//!   `ack_all_async` on a current-thread tokio runtime; `Durability::None`, messages appended outside the measure.
//! - durable appends 100 B, `GroupCommit`: 64 threads calling `append`, against 64 tasks calling `append_async` on a
//!   current-thread runtime (one thread for all of them; walq's sync thread runs the fsyncs).
//!
//! Run with `cargo bench --bench async_api`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walq::{Consumer, Durability, Message, Queue};

const BATCH: usize = 1_000;
const WRITERS: u64 = 64;

fn filled(iters: u64) -> (tempfile::TempDir, Queue, Consumer) {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::None).open().unwrap();
    let payload = [0x5Au8; 100];
    let messages: Vec<Message> = (0..BATCH).map(|_| Message::new(payload.to_vec())).collect();
    for _ in 0..iters.div_ceil(BATCH as u64) {
        queue.append_batch(&messages).unwrap();
    }
    let consumer = queue.group("g").unwrap().consumer();
    (temp, queue, consumer)
}

fn consume_blocking(iters: u64) -> Duration {
    let (_temp, _queue, consumer) = filled(iters);
    let start = Instant::now();
    let mut taken = 0;
    while taken < iters {
        let batch = consumer.try_recv_batch(BATCH).unwrap();
        taken += batch.len() as u64;
        consumer.ack_all(batch).unwrap();
    }
    start.elapsed()
}

fn consume_async(iters: u64) -> Duration {
    let (_temp, _queue, consumer) = filled(iters);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let start = Instant::now();
    runtime.block_on(async {
        let mut taken = 0;
        while taken < iters {
            let batch = consumer.recv_batch_async(BATCH).await.unwrap();
            taken += batch.len() as u64;
            consumer.ack_all_async(batch).await.unwrap();
        }
    });
    start.elapsed()
}

fn durable_queue() -> (tempfile::TempDir, Queue) {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::GroupCommit).open().unwrap();
    (temp, queue)
}

fn appends_threads(iters: u64) -> Duration {
    let (_temp, queue) = durable_queue();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..WRITERS {
            let queue = queue.clone();
            let n = iters / WRITERS + u64::from(t < iters % WRITERS);
            scope.spawn(move || {
                for _ in 0..n {
                    queue.append(Message::new(vec![0x5Au8; 100])).unwrap();
                }
            });
        }
    });
    start.elapsed()
}

fn appends_tasks(iters: u64) -> Duration {
    let (_temp, queue) = durable_queue();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let start = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|t| {
                let queue = queue.clone();
                let n = iters / WRITERS + u64::from(t < iters % WRITERS);
                tokio::spawn(async move {
                    for _ in 0..n {
                        queue.append_async(Message::new(vec![0x5Au8; 100])).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    start.elapsed()
}

fn consume(c: &mut Criterion) {
    let mut group = c.benchmark_group("consume 100 B, batches of 1000, None");
    group.throughput(Throughput::Elements(1)).sample_size(10).measurement_time(Duration::from_secs(4));
    group.bench_function("blocking try_recv_batch + ack_all (baseline)", |b| b.iter_custom(consume_blocking));
    group.bench_function("async recv_batch_async + ack_all_async", |b| b.iter_custom(consume_async));
    group.finish();
}

fn durable_appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable appends 100 B, GroupCommit, 64 writers");
    group.throughput(Throughput::Elements(1)).sample_size(10).measurement_time(Duration::from_secs(5));
    group.bench_function("64 threads, append (baseline)", |b| b.iter_custom(appends_threads));
    group.bench_function("64 tasks on a current-thread runtime, append_async", |b| b.iter_custom(appends_tasks));
    group.finish();
}

criterion_group!(benches, consume, durable_appends);
criterion_main!(benches);
