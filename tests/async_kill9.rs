//! R3 for the async API: `kill -9` of a real child process that appends with `append_async` from 8 tasks and
//! consumes with `recv_async` / `ack_async` from 4 tasks, all on one current-thread tokio runtime, in
//! `GroupCommit`; some receives are dropped under a short timeout. The child reports "APPENDED offset value" after
//! an append future resolved, "ACKING o" before an ack and "ACKED o" after its future resolved. After each kill
//! the parent reopens the queue: every acknowledged append is present, byte-exact, at its offset; no offset
//! reported ACKED is delivered again; every stored offset is acked, possibly acked, or delivered again (nothing
//! skipped).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use common::run_and_kill9;
use walq::storage::FaultRng;
use walq::{Durability, Message, Queue, QueueBuilder};

const CHILD_DIR: &str = "WALQ_ASYNC_KILL9_DIR";
const CHILD_CYCLE: &str = "WALQ_ASYNC_KILL9_CYCLE";
const CYCLES: u64 = 60;

fn builder(dir: &str) -> QueueBuilder {
    Queue::builder(dir)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(Durability::GroupCommit)
        .max_deliveries(u32::MAX)
}

fn value(cycle: u64, task: u64, n: u64) -> String {
    format!("c{cycle}-t{task}-n{n}-{}", "x".repeat(((cycle + task * 7 + n) % 200) as usize))
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{line}").unwrap();
    out.flush().unwrap();
}

/// The child's part: producers and consumers on one current-thread runtime, until killed.
#[test]
fn async_kill9_child() {
    let (Ok(dir), Ok(cycle)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_CYCLE)) else { return };
    let cycle: u64 = cycle.parse().unwrap();
    let queue = builder(&dir).open().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0u64.. {
                    let value = value(cycle, task, n);
                    let offset = queue.append_async(Message::new(value.clone())).await.unwrap();
                    say(format!("APPENDED {} {value}", offset.0));
                }
            }));
        }
        for c in 0..4u64 {
            let consumer = queue.group("g").unwrap().consumer();
            tasks.push(tokio::spawn(async move {
                for n in 0u64.. {
                    let delivery = if c == 0 && n % 5 == 0 {
                        match tokio::time::timeout(Duration::from_micros(300), consumer.recv_async()).await {
                            Ok(delivery) => delivery.unwrap(),
                            Err(_) => continue, // dropped: takes nothing
                        }
                    } else {
                        consumer.recv_async().await.unwrap()
                    };
                    let offset = delivery.offset().0;
                    say(format!("ACKING {offset}"));
                    delivery.ack_async().await.unwrap();
                    say(format!("ACKED {offset}"));
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
}

#[test]
fn kill_9_of_async_producers_and_consumers_loses_nothing_acknowledged() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_string_lossy().into_owned();
    let seed = common::env_u64("WALQ_SEED").unwrap_or(5);
    let mut rng = FaultRng::new(seed);
    let (mut appended, mut acked, mut acking) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new());
    let mut working_kills = 0;
    let cycles = CYCLES * common::soak();
    for cycle in 0..cycles {
        let then = Duration::from_millis(5 + rng.below(40));
        let env = [(CHILD_DIR, dir.clone()), (CHILD_CYCLE, cycle.to_string())];
        let lines = run_and_kill9("async_kill9_child", &env, "A", true, then);
        working_kills += u64::from(
            lines.iter().any(|l| l.starts_with("ACKED ")) && lines.iter().any(|l| l.starts_with("APPENDED ")),
        );
        for line in lines {
            let mut words = line.splitn(3, ' ');
            let (Some(word), Some(offset)) = (words.next(), words.next().and_then(|o| o.parse::<u64>().ok())) else {
                continue;
            };
            match (word, words.next()) {
                ("APPENDED", Some(value)) => drop(appended.insert(offset, value.to_string())),
                ("ACKED", _) => drop(acked.insert(offset)),
                ("ACKING", _) => drop(acking.insert(offset)),
                _ => {}
            }
        }
        let context = format!("WALQ_SEED={seed} cycle {cycle}");
        let queue = builder(&dir).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
        let stats = queue.stats();
        // Below the first stored offset, segments were deleted once every group was done with them.
        assert!(appended.keys().next_back().is_none_or(|last| *last < stats.next_offset.0), "{context}: tail lost");
        let stored: BTreeMap<u64, Vec<u8>> = queue
            .read_from(stats.first_offset)
            .unwrap()
            .map(|record| record.map(|r| (r.offset.0, r.value.unwrap_or_default())))
            .collect::<walq::Result<_>>()
            .unwrap_or_else(|e| panic!("{context}: reading the log: {e}"));
        for (offset, value) in appended.range(stats.first_offset.0..) {
            let record = stored.get(offset).unwrap_or_else(|| panic!("{context}: acknowledged offset {offset} lost"));
            assert_eq!(record.as_slice(), value.as_bytes(), "{context}: offset {offset} altered");
        }
        common::assert_group_accounts_for_everything(queue, &acked, &acking, &context);
    }
    assert!(working_kills * 2 > cycles, "most kills must come after acknowledged appends and acks ({working_kills})");
    common::report(
        "R3 async",
        &format!(
            "kill -9 of a child using the async API (appends, receives, acks on one runtime): nothing acknowledged \
             lost, no acknowledged ack redelivered, nothing skipped ({} appends, {} acks)",
            appended.len(),
            acked.len()
        ),
        working_kills,
        "kills after acknowledged appends and acks",
        0,
    );
}
