//! Cancel safety of the async API under random drops, over 100,000 messages (`WALQ_SOAK` multiplies them), on a
//! current-thread tokio runtime in `GroupCommit` (and 10,000 in `Sync`). Producers drop append futures before their first poll (nothing
//! appended: the message is sent again) or after it (appended all the same: it must be delivered); consumers drop
//! receives under short timeouts, and answer with acks awaited, acks polled once and dropped (they stand), acks
//! never polled (the delivery is released) and nacks. The oracle:
//! - every acknowledged append is stored at its offset, byte-exact, and delivered;
//! - no message whose ack was acknowledged (its future resolved) is delivered again;
//! - nothing is skipped: the group's floor reaches the log's end, the acks are durable across a reopen, and nothing
//!   is left leased.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use walq::storage::FaultRng;
use walq::{Durability, Message, Offset, Queue};

const MESSAGES: u64 = 100_000;
const PRODUCERS: u64 = 64;
const CONSUMERS: u64 = 16;

#[derive(Default)]
struct Oracle {
    /// Acknowledged appends: offset -> value.
    acknowledged: BTreeMap<u64, Vec<u8>>,
    /// Appends whose futures were dropped after their first poll: value, offset unknown.
    dropped_after_poll: BTreeSet<Vec<u8>>,
    /// Offsets whose ack future resolved.
    durably_acked: BTreeSet<u64>,
    /// Offsets delivered at least once, with their values.
    delivered: BTreeMap<u64, Vec<u8>>,
    violations: Vec<String>,
}

fn value(producer: u64, n: u64) -> Vec<u8> {
    format!("p{producer}-n{n}-{}", "v".repeat((n % 50) as usize)).into_bytes()
}

async fn produce(queue: Queue, oracle: Arc<Mutex<Oracle>>, producer: u64, count: u64, seed: u64) {
    let mut rng = FaultRng::new(seed ^ (producer * 0x9e37_79b9));
    let mut n = 0;
    while n < count {
        let value = value(producer, n);
        match rng.below(10) {
            0 => drop(queue.append_async(Message::new(value))), // never polled: not appended, sent again
            1 => {
                let mut append = Box::pin(queue.append_async(Message::new(value.clone())));
                if let Some(offset) = (&mut append).now_or_never() {
                    oracle.lock().unwrap().acknowledged.insert(offset.unwrap().0, value);
                } else {
                    oracle.lock().unwrap().dropped_after_poll.insert(value);
                }
                n += 1;
            }
            _ => {
                let offset = queue.append_async(Message::new(value.clone())).await.unwrap();
                oracle.lock().unwrap().acknowledged.insert(offset.0, value);
                n += 1;
            }
        }
    }
}

async fn consume(
    queue: Queue,
    oracle: Arc<Mutex<Oracle>>,
    consumer_id: u64,
    seed: u64,
    stop: Arc<tokio::sync::Notify>,
) {
    let consumer = queue.group("g").unwrap().consumer();
    let mut rng = FaultRng::new(seed ^ (consumer_id * 0x85eb_ca6b) ^ 0xc0ffee);
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let batch = tokio::select! {
            _ = &mut stopped => return,
            batch = async {
                if rng.chance(1, 4) {
                    // Dropped when the timeout passes first.
                    let wait = Duration::from_micros(rng.below(2_000));
                    tokio::time::timeout(wait, consumer.recv_async()).await.ok().map(|d| vec![d.unwrap()])
                } else {
                    Some(consumer.recv_batch_async(1 + rng.below(16) as usize).await.unwrap())
                }
            } => batch,
        };
        for delivery in batch.into_iter().flatten() {
            let offset = delivery.offset().0;
            let value = delivery.message().value.clone().unwrap_or_default();
            {
                let mut oracle = oracle.lock().unwrap();
                if oracle.durably_acked.contains(&offset) {
                    oracle.violations.push(format!("offset {offset} delivered again after its ack resolved"));
                }
                if let Some(before) = oracle.delivered.insert(offset, value.clone()) {
                    if before != value {
                        oracle.violations.push(format!("offset {offset} changed between deliveries"));
                    }
                }
            }
            match rng.below(10) {
                0 => drop(delivery.ack_async()), // never polled: released, delivered again
                1 => {
                    let mut ack = Box::pin(delivery.ack_async());
                    if let Some(acked) = (&mut ack).now_or_never() {
                        acked.unwrap();
                        oracle.lock().unwrap().durably_acked.insert(offset);
                    } // else dropped after its first poll: the ack stands
                }
                2 => {
                    delivery.nack_async(Duration::ZERO).await.unwrap();
                }
                _ => {
                    delivery.ack_async().await.unwrap();
                    oracle.lock().unwrap().durably_acked.insert(offset);
                }
            }
        }
    }
}

#[test]
fn random_drops_of_async_futures_lose_nothing_and_redeliver_nothing_acked() {
    run(Durability::GroupCommit, MESSAGES * common::soak());
}

#[test]
fn the_same_in_sync_mode() {
    // `Sync` serves async appends and answers with shared fsyncs on walq's sync thread: the same oracle holds.
    run(Durability::Sync, MESSAGES / 10 * common::soak());
}

fn run(durability: Durability, messages: u64) {
    let seed = common::env_u64("WALQ_SEED").unwrap_or(11);
    let temp = tempfile::tempdir().unwrap();
    let builder = || Queue::builder(temp.path()).durability(durability).max_deliveries(u32::MAX);
    let queue = builder().open().unwrap();
    let oracle = Arc::new(Mutex::new(Oracle::default()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let stop = Arc::new(tokio::sync::Notify::new());
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|c| tokio::spawn(consume(queue.clone(), oracle.clone(), c, seed, stop.clone())))
            .collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| tokio::spawn(produce(queue.clone(), oracle.clone(), p, messages / PRODUCERS, seed)))
            .collect();
        for producer in producers {
            producer.await.unwrap();
        }
        let group = queue.group("g").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while group.ack_floor() < queue.stats().next_offset {
            assert!(std::time::Instant::now() < deadline, "WALQ_SEED={seed}: the consumers stopped short");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.notify_waiters();
        for consumer in consumers {
            consumer.await.unwrap();
        }
    });
    let oracle = oracle.lock().unwrap();
    let context = format!("{durability:?}, WALQ_SEED={seed}");
    assert!(oracle.violations.is_empty(), "{context}: {:?}", &oracle.violations[..oracle.violations.len().min(5)]);
    let stats = queue.stats();
    assert_eq!(
        stats.next_offset.0,
        oracle.acknowledged.len() as u64 + oracle.dropped_after_poll.len() as u64,
        "{context}: every stored message is one appended once"
    );
    for (offset, value) in &oracle.acknowledged {
        assert_eq!(oracle.delivered.get(offset), Some(value), "{context}: acknowledged offset {offset} not delivered");
    }
    let delivered_values: BTreeSet<&Vec<u8>> = oracle.delivered.values().collect();
    for value in &oracle.dropped_after_poll {
        assert!(delivered_values.contains(value), "{context}: an append dropped after its first poll was lost");
    }
    assert_eq!(queue.group("g").unwrap().stats().in_flight, 0, "{context}: leases left behind");
    common::eventually("async waits end", || queue.stats().async_waits_pending == 0);
    drop(queue);
    let reopened = builder().open().unwrap();
    assert_eq!(reopened.group("g").unwrap().ack_floor(), stats.next_offset, "{context}: acks durable");
    for (offset, value) in oracle.acknowledged.iter().step_by(97) {
        let record = reopened.get(Offset(*offset)).unwrap().unwrap();
        assert_eq!(record.value.as_ref(), Some(value), "{context}: offset {offset} after reopen");
    }
    println!(
        "{} messages: {} acknowledged, {} appended by dropped futures, {} acks resolved, 0 violations",
        stats.next_offset.0,
        oracle.acknowledged.len(),
        oracle.dropped_after_poll.len(),
        oracle.durably_acked.len()
    );
}
