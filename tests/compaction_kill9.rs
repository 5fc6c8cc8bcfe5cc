//! `kill -9` of a child process appending keyed messages while background compaction rewrites segments after every
//! roll. After each kill: every acknowledged message is present, or superseded by a present later message with the
//! same key; every record is byte-exact; no temporary file survives open.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{report_numbers, run_and_kill9};
use walq::storage::FaultRng;
use walq::{CleanupPolicy, Durability, Message, Offset, Queue, QueueBuilder};

const CHILD_DIR: &str = "WALQ_COMPACTION_KILL9_DIR";
const CHILD_CYCLE: &str = "WALQ_COMPACTION_KILL9_CYCLE";
const CYCLES: u64 = 100;
const KEYS: u64 = 10;

fn builder(dir: &str) -> QueueBuilder {
    Queue::builder(dir)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(Durability::GroupCommit)
        .cleanup(CleanupPolicy::Compact)
        .compaction_dirty_percent(5)
        .tombstone_retention(Duration::ZERO)
}

fn value(cycle: u64, thread: u64, n: u64) -> Vec<u8> {
    format!("c{cycle}-t{thread}-n{n}-{}", "p".repeat(1000 + (n % 500) as usize)).into_bytes()
}

fn key(thread: u64, n: u64) -> Vec<u8> {
    format!("k{}", (thread * 7 + n) % KEYS).into_bytes()
}

#[test]
fn compaction_kill9_child() {
    let (Ok(dir), Ok(cycle)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_CYCLE)) else { return };
    let cycle: u64 = cycle.parse().unwrap();
    let queue = builder(&dir).open().unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..2)
        .map(|thread| {
            let (queue, out) = (queue.clone(), out.clone());
            std::thread::spawn(move || {
                for n in 0.. {
                    let offset = queue.append(Message::new(value(cycle, thread, n)).key(key(thread, n))).unwrap();
                    let mut out = out.lock().unwrap();
                    writeln!(out, "\nACK {} {thread} {n}", offset.0).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| drop(t.join()));
}

#[test]
fn kill_9_during_background_compaction_keeps_every_acknowledged_latest_value() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_string_lossy().into_owned();
    let mut rng = FaultRng::new(std::env::var("WALQ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(11));
    let mut acked: BTreeMap<u64, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    let mut compacted_somewhere = false;
    for cycle in 0..CYCLES {
        let env = [(CHILD_DIR, dir.clone()), (CHILD_CYCLE, cycle.to_string())];
        let then = Duration::from_millis(30 + rng.below(200));
        for line in run_and_kill9("compaction_kill9_child", &env, "ACK ", false, then) {
            if let [offset, thread, n] = report_numbers(&line)[..] {
                acked.insert(offset, (key(thread, n), value(cycle, thread, n)));
            }
        }

        let context = format!("cycle {cycle}");
        let queue = builder(&dir).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{context}: leftovers {leftovers:?}");
        let mut present: BTreeMap<u64, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
        let mut latest_by_key: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for record in queue.read_from(Offset::EARLIEST).unwrap() {
            let record = record.unwrap_or_else(|e| panic!("{context}: read failed: {e}"));
            let (key, value) = (record.key.clone().unwrap(), record.value.clone().unwrap());
            latest_by_key.insert(key.clone(), record.offset.0);
            present.insert(record.offset.0, (key, value));
        }
        for (offset, (key, value)) in &acked {
            match present.get(offset) {
                Some(stored) => assert_eq!(stored, &(key.clone(), value.clone()), "{context}: offset {offset} altered"),
                None => {
                    compacted_somewhere = true;
                    assert!(
                        latest_by_key.get(key).is_some_and(|&latest| latest > *offset),
                        "{context}: acknowledged offset {offset} lost without a later value for its key"
                    );
                }
            }
        }
        drop(queue);
    }
    assert!(compacted_somewhere, "background compaction never removed anything: the test did not test it");
    println!("compaction kill -9: {CYCLES} cycles, {} acknowledged appends, 0 lost", acked.len());
    common::report(
        "R3 compaction",
        "kill -9 during background compaction: every acknowledged latest value kept",
        CYCLES,
        "kills",
        0,
    );
}
