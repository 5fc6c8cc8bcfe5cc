//! Appends against baselines measured in the same run, on the same disk (a temporary directory; set `TMPDIR`
//! to measure another disk):
//!
//! - `append 100 B` / `append 1 KiB` (`Durability::None`): a raw `BufWriter` + crc32fast loop writing
//!   `[len][crc][payload]` frames, against `Queue::append`, `Queue::append_bytes` and `Queue::append_batch` (1,000 per call), without
//!   and with a write buffer of the raw loop's size (`write_buffer_bytes`, which gives up what the raw loop
//!   gives up: a process crash loses the buffer);
//! - `durable append`: the disk's fdatasync rate (a 100 B `pwrite` + `fdatasync` on a pre-sized file) against
//!   `Sync` and `GroupCommit` appends from one thread;
//! - `append threads`: every durability mode with 1, 4 and 16 threads appending 100 B messages.
//!
//! Run with `cargo bench --bench append`. Figures are reported as ratios to the baselines in the README.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use walq::{Durability, Message, Queue};

/// The raw loop's `BufWriter` capacity, and the write buffer walq gets when compared with it.
const BUFFER_BYTES: usize = 256 * 1024;

fn queue(durability: Durability) -> (tempfile::TempDir, Queue) {
    buffered_queue(durability, 0)
}

fn buffered_queue(durability: Durability, buffer_bytes: usize) -> (tempfile::TempDir, Queue) {
    let temp = tempfile::tempdir().unwrap();
    let queue =
        Queue::builder(temp.path().join("q")).durability(durability).write_buffer_bytes(buffer_bytes).open().unwrap();
    (temp, queue)
}

/// The baseline: frames of `[len u32][crc32 u32][payload]` through a `BufWriter`, flushed at the end.
fn raw_append(iters: u64, payload: &[u8]) -> Duration {
    let temp = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(temp.path().join("raw")).unwrap();
    let mut out = std::io::BufWriter::with_capacity(BUFFER_BYTES, file);
    let start = Instant::now();
    for _ in 0..iters {
        out.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
        out.write_all(&crc32fast::hash(payload).to_le_bytes()).unwrap();
        out.write_all(payload).unwrap();
    }
    out.flush().unwrap();
    start.elapsed()
}

/// Waits until the last append is visible to readers, which writes out what a write buffer holds: the end of a
/// timed run, as the raw loop's final flush is (no fsync in either).
fn wait_written(queue: &Queue) {
    let next = queue.stats().next_offset.0;
    assert!(queue.wait_for(walq::Offset(next - 1), Duration::ZERO), "the last append is visible");
}

/// `iters` appends; the timed part ends once everything reached the OS (as the raw loop's final flush).
fn walq_append(iters: u64, payload: &[u8], durability: Durability, buffer_bytes: usize) -> Duration {
    let (_temp, queue) = buffered_queue(durability, buffer_bytes);
    let start = Instant::now();
    for _ in 0..iters {
        queue.append(Message::new(payload.to_vec())).unwrap();
    }
    wait_written(&queue);
    start.elapsed()
}

/// As `walq_append`, through `append_bytes` (borrowed payload: no allocation per message).
fn walq_append_bytes(iters: u64, payload: &[u8], buffer_bytes: usize) -> Duration {
    let (_temp, queue) = buffered_queue(Durability::None, buffer_bytes);
    let start = Instant::now();
    for _ in 0..iters {
        queue.append_bytes(payload).unwrap();
    }
    wait_written(&queue);
    start.elapsed()
}

/// As `walq_append` with the write buffer, each message with its own dedup id under a 10-minute window (at most
/// 100,000 ids remembered): the cost of producer deduplication per append, ids made in the loop as a producer would.
fn walq_append_dedup(iters: u64, payload: &[u8]) -> Duration {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path().join("q"))
        .durability(Durability::None)
        .write_buffer_bytes(BUFFER_BYTES)
        .dedup_window(Duration::from_secs(600))
        .open()
        .unwrap();
    let start = Instant::now();
    for i in 0..iters {
        queue.append(Message::new(payload.to_vec()).dedup_id(i.to_le_bytes())).unwrap();
    }
    wait_written(&queue);
    start.elapsed()
}

fn walq_append_batch(iters: u64, payload: &[u8], buffer_bytes: usize) -> Duration {
    let (_temp, queue) = buffered_queue(Durability::None, buffer_bytes);
    let batch: Vec<Message> = (0..1000).map(|_| Message::new(payload.to_vec())).collect();
    let start = Instant::now();
    let mut left = iters;
    while left > 0 {
        let n = left.min(1000) as usize;
        queue.append_batch(&batch[..n]).unwrap();
        left -= n as u64;
    }
    wait_written(&queue);
    start.elapsed()
}

fn non_durable(c: &mut Criterion) {
    for (name, size) in [("append 100 B", 100usize), ("append 1 KiB", 1024)] {
        let payload = vec![0x5Au8; size];
        let mut group = c.benchmark_group(name);
        group.throughput(if size == 100 { Throughput::Elements(1) } else { Throughput::Bytes(size as u64) });
        group
            .bench_function("raw BufWriter + crc32 (baseline)", |b| b.iter_custom(|iters| raw_append(iters, &payload)));
        group.bench_function("walq append, None", |b| {
            b.iter_custom(|iters| walq_append(iters, &payload, Durability::None, 0))
        });
        group.bench_function("walq append_bytes, None", |b| {
            b.iter_custom(|iters| walq_append_bytes(iters, &payload, 0))
        });
        group.bench_function("walq append_batch x1000, None", |b| {
            b.iter_custom(|iters| walq_append_batch(iters, &payload, 0))
        });
        group.bench_function("walq append, None, write buffer", |b| {
            b.iter_custom(|iters| walq_append(iters, &payload, Durability::None, BUFFER_BYTES))
        });
        group.bench_function("walq append, None, write buffer, dedup id", |b| {
            b.iter_custom(|iters| walq_append_dedup(iters, &payload))
        });
        group.bench_function("walq append_bytes, None, write buffer", |b| {
            b.iter_custom(|iters| walq_append_bytes(iters, &payload, BUFFER_BYTES))
        });
        group.bench_function("walq append_batch x1000, None, write buffer", |b| {
            b.iter_custom(|iters| walq_append_batch(iters, &payload, BUFFER_BYTES))
        });
        group.finish();
    }
}

/// The baseline: one 100 B `pwrite` and one `fdatasync` per operation on a pre-sized file.
fn fdatasync_rate(iters: u64) -> Duration {
    let temp = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(temp.path().join("raw")).unwrap();
    file.set_len(64 << 20).unwrap();
    file.sync_all().unwrap();
    let payload = [0x5Au8; 100];
    let start = Instant::now();
    for i in 0..iters {
        file.write_all_at(&payload, (i * 100) % (64 << 20)).unwrap();
        file.sync_data().unwrap();
    }
    start.elapsed()
}

fn durable(c: &mut Criterion) {
    let payload = vec![0x5Au8; 100];
    let mut group = c.benchmark_group("durable append 100 B");
    group.throughput(Throughput::Elements(1)).sample_size(10).measurement_time(Duration::from_secs(5));
    group.bench_function("pwrite + fdatasync (baseline)", |b| b.iter_custom(fdatasync_rate));
    group.bench_function("walq append, Sync", |b| {
        b.iter_custom(|iters| walq_append(iters, &payload, Durability::Sync, 0))
    });
    group.bench_function("walq append, GroupCommit", |b| {
        b.iter_custom(|iters| walq_append(iters, &payload, Durability::GroupCommit, 0))
    });
    group.finish();
}

/// `iters` appends of 100 B spread over `threads` threads.
fn threaded(iters: u64, threads: u64, durability: Durability) -> Duration {
    let (_temp, queue) = queue(durability);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let queue = queue.clone();
            let n = iters / threads + u64::from(t < iters % threads);
            scope.spawn(move || {
                for _ in 0..n {
                    queue.append(Message::new(vec![0x5Au8; 100])).unwrap();
                }
            });
        }
    });
    start.elapsed()
}

fn threads(c: &mut Criterion) {
    let modes = [
        ("None", Durability::None),
        ("Interval 10 ms", Durability::Interval(Duration::from_millis(10))),
        ("GroupCommit", Durability::GroupCommit),
        ("Sync", Durability::Sync),
    ];
    let mut group = c.benchmark_group("append threads");
    group.throughput(Throughput::Elements(1)).sample_size(10).measurement_time(Duration::from_secs(4));
    for (name, durability) in modes {
        for threads in [1u64, 4, 16] {
            group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| threaded(iters, threads, durability))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, non_durable, durable, threads);
criterion_main!(benches);
