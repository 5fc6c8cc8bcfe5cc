//! `kill -9` of a real child process whose consumers are acking (R3 for groups), 100 cycles. The child reports
//! "ACKING o" before an ack and "ACKED o" after it returned (group commit: durable). After each kill the parent
//! reopens the queue and drains the group without acking: no offset reported ACKED is delivered again, and every
//! stored offset is accounted for (acked, possibly acked, or delivered again): nothing lost or skipped.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::run_and_kill9;
use walq::storage::FaultRng;
use walq::{Durability, Message, Queue, QueueBuilder};

const CHILD_DIR: &str = "WALQ_GROUP_KILL9_DIR";
const CYCLES: u64 = 300;

fn builder(dir: &str) -> QueueBuilder {
    Queue::builder(dir)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(Durability::GroupCommit)
        .max_deliveries(u32::MAX)
}

/// The child's part: a producer and three consumers, one of which drops every seventh delivery.
#[test]
fn group_kill9_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let queue = builder(&dir).open().unwrap();
    let group = queue.group("g").unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = move |out: &Mutex<std::io::Stdout>, line: String| {
        let mut out = out.lock().unwrap();
        writeln!(out, "\n{line}").unwrap();
        out.flush().unwrap();
    };
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            for n in 0u64.. {
                queue.append(Message::new(format!("m{n}-{}", "x".repeat((n % 200) as usize)).into_bytes())).unwrap();
            }
        })
    };
    let consumers: Vec<_> = (0..3)
        .map(|c| {
            let (consumer, out) = (group.consumer(), out.clone());
            std::thread::spawn(move || {
                for n in 0u64.. {
                    let Some(delivery) = consumer.recv_timeout(Duration::from_millis(100)).unwrap() else { continue };
                    let offset = delivery.offset().0;
                    if c == 0 && n % 7 == 0 {
                        drop(delivery);
                        continue;
                    }
                    say(&out, format!("ACKING {offset}"));
                    delivery.ack().unwrap();
                    say(&out, format!("ACKED {offset}"));
                }
            })
        })
        .collect();
    let _ = producer.join();
    consumers.into_iter().for_each(|c| drop(c.join()));
}

#[test]
fn kill_9_while_acking_redelivers_nothing_acked_and_skips_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_string_lossy().into_owned();
    let soak: u64 = std::env::var("WALQ_SOAK").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let seed: u64 = std::env::var("WALQ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut rng = FaultRng::new(seed);
    let (mut acked, mut acking) = (BTreeSet::new(), BTreeSet::new());
    let mut working_kills = 0;
    for cycle in 0..CYCLES * soak {
        let then = Duration::from_millis(rng.below(30));
        let lines = run_and_kill9("group_kill9_child", &[(CHILD_DIR, dir.clone())], "ACK", true, then);
        working_kills += u64::from(lines.iter().any(|l| l.starts_with("ACKED ")));
        for line in lines {
            let mut words = line.split(' ');
            let (Some(word), Some(offset)) = (words.next(), words.next().and_then(|o| o.parse::<u64>().ok())) else {
                continue;
            };
            match word {
                "ACKED" => acked.insert(offset),
                "ACKING" => acking.insert(offset),
                _ => false,
            };
        }

        let context = format!("WALQ_SEED={seed} cycle {cycle}");
        let queue = builder(&dir).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
        common::assert_group_accounts_for_everything(queue, &acked, &acking, &context);
    }
    assert!(working_kills * 2 > CYCLES * soak, "most kills must come after acknowledged acks ({working_kills})");
    println!("group kill -9: {} cycles, {} acks reported, 0 redelivered, 0 skipped", CYCLES * soak, acked.len());
    common::report(
        "R3 acks",
        &format!(
            "kill -9 of a child whose consumers ack: nothing durably acked redelivered, nothing skipped ({} acks)",
            acked.len()
        ),
        working_kills,
        "kills after acknowledged acks",
        0,
    );
}
