//! R1 for the async API: power cuts while tasks append with `append_async` and answer with `ack_async` on one
//! current-thread runtime, in `GroupCommit` and in `Sync`, on the simulated file system (`FaultyStorage`: a crash
//! image drops or tears whatever was not fsynced). `kill -9` cannot check this (the page cache survives a killed
//! process): only a power cut tells an append acknowledged before its fsync from one acknowledged after it.
//!
//! A task takes crash images while the others run; with each, it records what was acknowledged before the image
//! was taken. Each image is then opened: every append acknowledged before it is present, byte-exact, at its offset;
//! no message whose ack was acknowledged before it is delivered again; nothing else appears.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use walq::storage::FaultyStorage;
use walq::{Durability, Message, Offset};

const PRODUCERS: u64 = 8;
const MESSAGES_PER_PRODUCER: u64 = 60;
const IMAGES: usize = 40;

#[derive(Default)]
struct Acknowledged {
    appends: BTreeMap<u64, Vec<u8>>,
    acks: BTreeSet<u64>,
}

fn value(producer: u64, n: u64) -> Vec<u8> {
    format!("p{producer}-n{n}-{}", "z".repeat(((producer * 31 + n * 7) % 900) as usize)).into_bytes()
}

fn run(durability: Durability, seed: u64) -> (u64, u64) {
    let storage = FaultyStorage::new();
    let builder = || common::sim_builder(&storage).durability(durability).max_deliveries(u32::MAX);
    let queue = builder().open().unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    let known = Arc::new(Mutex::new(Acknowledged::default()));
    let mut images = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (queue, known) = (queue.clone(), known.clone());
                tokio::spawn(async move {
                    for n in 0..MESSAGES_PER_PRODUCER {
                        let value = value(p, n);
                        let offset = queue.append_async(Message::new(value.clone())).await.unwrap();
                        known.lock().unwrap().appends.insert(offset.0, value);
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let (consumer, known) = (consumer.clone(), known.clone());
                tokio::spawn(async move {
                    while let Ok(Ok(delivery)) =
                        tokio::time::timeout(Duration::from_millis(200), consumer.recv_async()).await
                    {
                        let offset = delivery.offset().0;
                        delivery.ack_async().await.unwrap();
                        known.lock().unwrap().acks.insert(offset);
                    }
                })
            })
            .collect();
        for i in 0..IMAGES {
            tokio::time::sleep(Duration::from_micros(500 + (i as u64 * 379 % 3_000))).await;
            // What was acknowledged before the image: all of it must be in the image.
            let (appends, acks) = {
                let known = known.lock().unwrap();
                (known.appends.clone(), known.acks.clone())
            };
            images.push((storage.crash_image(seed * 1_000 + i as u64), appends, acks));
        }
        for task in producers.into_iter().chain(consumers) {
            task.await.unwrap();
        }
    });
    let mut checked_appends = 0;
    for (i, (image, appends, acks)) in images.into_iter().enumerate() {
        let context = format!("{durability:?}, seed {seed}, image {i}");
        let queue = common::sim_builder(&image)
            .durability(durability)
            .max_deliveries(u32::MAX)
            .open()
            .unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
        let stored: BTreeMap<u64, Vec<u8>> = queue
            .read_from(Offset::EARLIEST)
            .unwrap()
            .map(|r| r.map(|r| (r.offset.0, r.value.unwrap_or_default())))
            .collect::<walq::Result<_>>()
            .unwrap_or_else(|e| panic!("{context}: reading: {e}"));
        for (offset, value) in &appends {
            assert_eq!(stored.get(offset), Some(value), "{context}: acknowledged append {offset} lost or altered");
        }
        for (offset, value) in &stored {
            let text = String::from_utf8_lossy(value);
            let (p, n) = text
                .split_once("-n")
                .and_then(|(p, rest)| Some((p.strip_prefix('p')?, rest.split('-').next()?)))
                .unwrap();
            assert_eq!(
                value,
                &self::value(p.parse().unwrap(), n.parse().unwrap()),
                "{context}: {offset} is no message"
            );
        }
        let consumer = queue.group("g").unwrap().consumer();
        let redelivered = consumer.try_recv_batch(100_000).unwrap();
        for delivery in &redelivered {
            assert!(
                !acks.contains(&delivery.offset().0),
                "{context}: acknowledged ack {} redelivered",
                delivery.offset()
            );
        }
        checked_appends += appends.len() as u64;
        queue.close().unwrap();
        drop(redelivered);
    }
    (IMAGES as u64, checked_appends)
}

#[test]
fn power_cuts_under_the_async_api_lose_nothing_acknowledged() {
    let seed = common::env_u64("WALQ_SEED").unwrap_or(1);
    let mut images = 0;
    let mut appends = 0;
    for round in 0..common::soak() {
        for durability in [Durability::GroupCommit, Durability::Sync] {
            let (i, a) = run(durability, seed + round);
            images += i;
            appends += a;
        }
    }
    common::report(
        "R1 async",
        &format!(
            "power cuts while tasks append and ack with the async API (GroupCommit and Sync): every acknowledged \
             append present, no acknowledged ack redelivered ({appends} acknowledged appends checked)"
        ),
        images,
        "crash images",
        0,
    );
}
