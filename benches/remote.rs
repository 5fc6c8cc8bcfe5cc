//! A queue used through its owner (`RemoteQueue` over the owner's Unix socket) against the owner's own calls, in
//! the same run (issue targets: remote `append_batch` of 1,000 x 100 B >= 0.5x local; remote single appends from
//! one client >= 100k msgs/s in `None`, pipelined (`append_nowait`, 64 in flight) or not; remote `try_recv_batch(1000)` + `ack_all` >= 1 M msgs/s).
//!
//! The owner and the client are threads of one process here: the socket, the framing, the owner's connection
//! thread and both copies of every message are the real ones; only the process boundary's scheduling is not.
//! `Durability::None` throughout, 100 B values.
//!
//! Run with `cargo bench --bench remote`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walq::remote::{RemoteQueue, Sharing};
use walq::{Durability, Message, Queue};

const BATCH: usize = 1_000;
const VALUE_BYTES: usize = 100;

fn owner() -> (tempfile::TempDir, Queue) {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::None).sharing(Sharing::Serve).open().unwrap();
    (temp, queue)
}

fn batch() -> Vec<Message> {
    (0..BATCH).map(|_| Message::new(vec![0x5Au8; VALUE_BYTES])).collect()
}

/// Appends `iters` messages in batches of 1,000 with `append_batch`.
fn append_batches(iters: u64, append_batch: impl Fn(&[Message])) -> Duration {
    let messages = batch();
    let start = Instant::now();
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(BATCH as u64) as usize;
        append_batch(&messages[..n]);
        done += n as u64;
    }
    start.elapsed()
}

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("remote_append_batch_1000x100B");
    group.throughput(Throughput::Elements(1)).sample_size(20).measurement_time(Duration::from_secs(5));
    group.bench_function("local", |b| {
        b.iter_custom(|iters| {
            let (_temp, queue) = owner();
            append_batches(iters, |m| {
                queue.append_batch(m).unwrap();
            })
        })
    });
    group.bench_function("remote", |b| {
        b.iter_custom(|iters| {
            let (temp, _queue) = owner();
            let remote = RemoteQueue::connect(temp.path()).unwrap();
            append_batches(iters, |m| {
                remote.append_batch(m).unwrap();
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("remote_append_single_100B");
    group.throughput(Throughput::Elements(1)).sample_size(20).measurement_time(Duration::from_secs(5));
    group.bench_function("local", |b| {
        b.iter_custom(|iters| {
            let (_temp, queue) = owner();
            let start = Instant::now();
            for _ in 0..iters {
                queue.append(Message::new(vec![0x5Au8; VALUE_BYTES])).unwrap();
            }
            start.elapsed()
        })
    });
    group.bench_function("remote", |b| {
        b.iter_custom(|iters| {
            let (temp, _queue) = owner();
            let remote = RemoteQueue::connect(temp.path()).unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                remote.append(Message::new(vec![0x5Au8; VALUE_BYTES])).unwrap();
            }
            start.elapsed()
        })
    });
    group.bench_function("remote_pipelined_64", |b| {
        b.iter_custom(|iters| {
            let (temp, _queue) = owner();
            let remote = RemoteQueue::connect(temp.path()).unwrap();
            let mut window = std::collections::VecDeque::new();
            let start = Instant::now();
            for _ in 0..iters {
                window.push_back(remote.append_nowait(&Message::new(vec![0x5Au8; VALUE_BYTES])).unwrap());
                if window.len() >= PIPELINE_WINDOW {
                    window.pop_front().unwrap().wait().unwrap();
                }
            }
            for pending in window {
                pending.wait().unwrap();
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// Appends in flight at once in the pipelined single-append measure.
const PIPELINE_WINDOW: usize = 64;

/// A served queue holding `iters` messages (appended outside the measure).
fn filled(iters: u64) -> (tempfile::TempDir, Queue) {
    let (temp, queue) = owner();
    let messages = batch();
    for _ in 0..iters.div_ceil(BATCH as u64) {
        queue.append_batch(&messages).unwrap();
    }
    queue.group("g").unwrap();
    (temp, queue)
}

fn consume(c: &mut Criterion) {
    let mut group = c.benchmark_group("remote_consume_1000_ack_all");
    group.throughput(Throughput::Elements(1)).sample_size(20).measurement_time(Duration::from_secs(5));
    group.bench_function("local", |b| {
        b.iter_custom(|iters| {
            let (_temp, queue) = filled(iters);
            let consumer = queue.existing_group("g").unwrap().consumer();
            let start = Instant::now();
            let mut taken = 0;
            while taken < iters {
                let batch = consumer.try_recv_batch(BATCH).unwrap();
                taken += batch.len() as u64;
                consumer.ack_all(batch).unwrap();
            }
            start.elapsed()
        })
    });
    group.bench_function("remote", |b| {
        b.iter_custom(|iters| {
            let (temp, _queue) = filled(iters);
            let consumer = RemoteQueue::connect(temp.path()).unwrap().group("g").unwrap().consumer().unwrap();
            let start = Instant::now();
            let mut taken = 0;
            while taken < iters {
                let batch = consumer.try_recv_batch(BATCH).unwrap();
                taken += batch.len() as u64;
                consumer.ack_all(batch).unwrap();
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, appends, consume);
criterion_main!(benches);
