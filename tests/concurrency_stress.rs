//! R10: concurrency stress on a real directory. Four producers append keyed messages in batches while three
//! consumer groups, two competing consumers each, consume them (acking most, nacking or dropping a few so that
//! redelivery runs too), compaction runs on demand and in the background, and halfway the queue is closed and
//! reopened under load. 1,000,000 messages in all. Afterwards:
//!
//! - per-producer FIFO: each producer's messages have increasing offsets, in the order it appended them;
//! - at-least-once per group: every message was acked by every group;
//! - no phantoms: every value delivered or read back is a message a producer appended, byte-exact.
//!
//! `WALQ_SOAK=<n>` multiplies the message count.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{report, soak};
use walq::{CleanupPolicy, Durability, Message, Offset, Queue};

const PRODUCERS: u64 = 4;
const GROUPS: [&str; 3] = ["billing", "shipping", "audit"];
const CONSUMERS_PER_GROUP: usize = 2;
const BATCH: u64 = 100;
const MESSAGES: u64 = 1_000_000;

fn value(producer: u64, n: u64) -> Vec<u8> {
    let mut bytes = format!("p{producer}n{n}:").into_bytes();
    bytes.extend((0..(n % 23) as u8).map(|b| b.wrapping_mul(producer as u8 + 3)));
    bytes
}

/// (producer, n) of a value, checking every byte: anything else is a phantom.
fn parse(bytes: &[u8]) -> (u64, u64) {
    let text_end = bytes.iter().position(|&b| b == b':').expect("a phantom value");
    let text = std::str::from_utf8(&bytes[..text_end]).expect("a phantom value");
    let (producer, n) = text[1..].split_once('n').expect("a phantom value");
    let (producer, n) = (producer.parse().unwrap(), n.parse().unwrap());
    assert_eq!(value(producer, n), bytes, "a phantom or altered value");
    (producer, n)
}

fn message(producer: u64, n: u64) -> Message {
    // Keys repeat, so that compaction has something to remove once every group has acked.
    Message::new(value(producer, n)).key(format!("p{producer}k{}", n % 1000).into_bytes())
}

fn open(dir: &std::path::Path) -> Queue {
    Queue::builder(dir)
        .segment_bytes_max(4 << 20)
        .durability(Durability::Interval(Duration::from_millis(5)))
        .cleanup(CleanupPolicy::Compact)
        .compaction_dirty_percent(10)
        .ack_timeout(Duration::from_secs(5))
        .max_deliveries(1000)
        .open()
        .unwrap()
}

/// Per group: how many times each message was acked (index `producer * per_producer + n`).
type Acks = Arc<Vec<Vec<AtomicU64>>>;

fn spawn_producers(
    queue: &Queue,
    range: std::ops::Range<u64>,
    last_offset: &Arc<Mutex<Vec<Option<Offset>>>>,
) -> Vec<JoinHandle<()>> {
    (0..PRODUCERS)
        .map(|producer| {
            let (queue, range, last_offset) = (queue.clone(), range.clone(), last_offset.clone());
            std::thread::spawn(move || {
                for start in range.step_by(BATCH as usize) {
                    let batch: Vec<Message> = (start..start + BATCH).map(|n| message(producer, n)).collect();
                    let first = queue.append_batch(&batch).unwrap();
                    let mut last = last_offset.lock().unwrap();
                    let previous = last[producer as usize].replace(Offset(first.0 + BATCH - 1));
                    assert!(previous.is_none_or(|p| p < first), "producer {producer}: FIFO broken at batch {start}");
                }
            })
        })
        .collect()
}

fn spawn_consumers(queue: &Queue, acks: &Acks, per_producer: u64, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<u64>> {
    let mut handles = Vec::new();
    for (g, name) in GROUPS.iter().enumerate() {
        let group = queue.group(name).unwrap();
        for c in 0..CONSUMERS_PER_GROUP {
            let (consumer, acks, stop) = (group.consumer(), acks.clone(), stop.clone());
            handles.push(std::thread::spawn(move || {
                let mut handled = 0u64;
                loop {
                    let Some(delivery) = consumer.recv_timeout(Duration::from_millis(20)).unwrap() else {
                        if stop.load(Ordering::Relaxed) {
                            return handled;
                        }
                        continue;
                    };
                    let (producer, n) = parse(delivery.message().value.as_deref().expect("no tombstones appended"));
                    handled += 1;
                    match (handled + c as u64) % 97 {
                        0 => {
                            delivery.nack(Duration::ZERO).unwrap();
                        }
                        1 => drop(delivery),
                        _ => match delivery.ack() {
                            Ok(()) => {
                                acks[g][(producer * per_producer + n) as usize].fetch_add(1, Ordering::Relaxed);
                            }
                            // A thread stalled past the lease and the message went out again: that delivery acks.
                            Err(walq::Error::StaleLease { .. }) => {}
                            Err(error) => panic!("ack failed: {error}"),
                        },
                    }
                }
            }));
        }
    }
    handles
}

/// Waits until every group has acked everything appended so far.
fn drain(queue: &Queue, total: u64) {
    for name in GROUPS {
        let group = queue.group(name).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while group.ack_floor().0 < total {
            assert!(std::time::Instant::now() < deadline, "{name} stuck at {} of {total}", group.ack_floor());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn producers_groups_compaction_and_a_reopen_under_load() {
    let temp = tempfile::tempdir().unwrap();
    let total = MESSAGES * soak();
    let per_producer = total / PRODUCERS;
    let acks: Acks = Arc::new(GROUPS.iter().map(|_| (0..total).map(|_| AtomicU64::new(0)).collect()).collect());
    let last_offset = Arc::new(Mutex::new(vec![None; PRODUCERS as usize]));
    let (mut handled, mut compacted) = (0, 0);
    for (phase, range) in [(0, 0..per_producer / 2), (1, per_producer / 2..per_producer)] {
        let queue = open(temp.path());
        let stop = Arc::new(AtomicBool::new(false));
        let consumers = spawn_consumers(&queue, &acks, per_producer, &stop);
        let producers = spawn_producers(&queue, range, &last_offset);
        let compactor = {
            let (queue, stop) = (queue.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    queue.compact().unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        for producer in producers {
            producer.join().unwrap();
        }
        let appended = (phase + 1) * total / 2;
        drain(&queue, appended);
        stop.store(true, Ordering::Relaxed);
        for consumer in consumers {
            handled += consumer.join().unwrap();
        }
        compactor.join().unwrap();
        assert_eq!(queue.stats().next_offset, Offset(appended));
        compacted += queue.stats().messages_compacted; // counted per handle
        queue.close().unwrap(); // then reopened: the second phase runs on a recovered queue
    }

    for (g, name) in GROUPS.iter().enumerate() {
        let missing = acks[g].iter().filter(|count| count.load(Ordering::Relaxed) == 0).count();
        assert_eq!(missing, 0, "{name}: {missing} messages never acked (at-least-once)");
    }
    // What compaction kept reads back in order, byte-exact, each producer's messages in FIFO order.
    let queue = open(temp.path());
    let mut last_n: HashMap<u64, u64> = HashMap::new();
    let mut kept = 0;
    for record in queue.read_from(Offset::EARLIEST).unwrap() {
        let (producer, n) = parse(record.unwrap().value.as_deref().unwrap());
        assert!(last_n.insert(producer, n).is_none_or(|previous| previous < n), "producer {producer}: FIFO broken");
        kept += 1;
    }
    assert!(compacted > 0, "compaction ran under load");
    println!(
        "R10: {total} messages, {} groups x {CONSUMERS_PER_GROUP} consumers, {handled} deliveries, {} compacted, {kept} kept, 1 reopen",
        GROUPS.len(),
        compacted
    );
    report(
        "R10",
        "4 producers, 3 groups of competing consumers, compaction, a reopen under load",
        total,
        "messages",
        0,
    );
}
