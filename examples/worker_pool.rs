//! A pool of workers sharing one consumer group. One worker is broken: it fails every message it takes (half by
//! nacking, half by simply dropping the delivery, as a crashing handler would). Its messages are taken over by the
//! healthy workers; a message that fails too often is dead-lettered, and redriven once the bug is "fixed".
//!
//! Run with `cargo run --release --example worker_pool`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use walq::{Durability, Message, Queue};

const MESSAGES: u64 = 2_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let queue = Queue::builder(temp.path().join("jobs"))
        .durability(Durability::GroupCommit)
        .ack_timeout(Duration::from_secs(5))
        .max_deliveries(3)
        .open()?;
    let jobs: Vec<Message> = (0..MESSAGES).map(|i| Message::new(format!("job {i}").into_bytes())).collect();
    queue.append_batch(&jobs)?;
    let group = queue.group("workers")?;

    let done_by: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let workers: Vec<_> = ["healthy-1", "healthy-2", "healthy-3", "broken"]
        .into_iter()
        .map(|name| {
            let (consumer, done_by) = (group.consumer(), done_by.clone());
            std::thread::spawn(move || -> walq::Result<u64> {
                let mut failures = 0;
                while let Some(delivery) = consumer.recv_timeout(Duration::from_millis(300))? {
                    if name == "broken" {
                        failures += 1;
                        if delivery.offset().0 % 2 == 0 {
                            delivery.nack(Duration::ZERO)?;
                        } else {
                            drop(delivery); // as if the handler panicked: redelivered at once
                        }
                        continue;
                    }
                    delivery.ack()?;
                    *done_by.lock().expect("no panics").entry(name.to_string()).or_default() += 1;
                }
                Ok(failures)
            })
        })
        .collect();
    let mut failures = 0;
    for worker in workers {
        failures += worker.join().expect("workers do not panic")?;
    }
    let done = done_by.lock().expect("no panics").clone();
    println!("acked by worker: {done:?}");
    println!("the broken worker failed {failures} deliveries; the others took them over");
    let dead = group.dead_letters();
    println!("dead letters (failed {} times each): {}", 3, dead.len());

    // The bug is fixed: put the dead letters back and let a healthy consumer finish them.
    for letter in &dead {
        group.redrive(letter.offset)?;
    }
    let consumer = group.consumer();
    let mut redriven = 0;
    while let Some(delivery) = consumer.try_recv()? {
        delivery.ack()?;
        redriven += 1;
    }
    let stats = group.stats();
    println!("redriven and acked: {redriven}; ack floor {}, lag {}", stats.ack_floor, stats.lag);
    assert_eq!(done.values().sum::<u64>() + redriven, MESSAGES, "every job done exactly once by a healthy worker");
    assert_eq!(stats.ack_floor.0, MESSAGES);
    // How a service stops: no more deliveries (waiting `recv`s return `Error::Closed`, `Consumer::iter` ends),
    // the jobs out get up to 5 s to be answered, those still out are given back without using up an attempt.
    let report = queue.shutdown(Duration::from_secs(5))?;
    println!("shut down after {} ms; {} deliveries interrupted", report.waited_ms, report.interrupted);
    Ok(())
}
