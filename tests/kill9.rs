//! R3 in small: `kill -9` of a real child process that appends from 4 threads with `GroupCommit` and reports each
//! acknowledgement through a pipe only after `append` returned. After every kill the parent reopens the queue and
//! checks: every acknowledged message is present, byte-exact, at its offset (D1); every record is a message some
//! child appended, unaltered (D2); each producer thread's messages are in FIFO order.
//!
//! `WALQ_SEED` fixes the kill timing; `WALQ_SOAK=<n>` runs n times the cycles.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{report_numbers, run_and_kill9};
use walq::storage::FaultRng;
use walq::{Durability, Message, Offset, Preallocation, Queue, QueueBuilder};

const CHILD_DIR: &str = "WALQ_KILL9_DIR";
const CHILD_CYCLE: &str = "WALQ_KILL9_CYCLE";
/// R3 asks for 1,000 kills across the suite: 600 here (appends), 300 in group_kill9.rs (acks), 100 in
/// compaction_kill9.rs (compaction).
const CYCLES: u64 = 600;
const THREADS: u64 = 4;

fn builder(dir: &str, cycle: u64) -> QueueBuilder {
    // Alternate preallocation so that both kinds of segment tail are killed into.
    let preallocation = if cycle % 2 == 0 { Preallocation::Reserve } else { Preallocation::Grow };
    Queue::builder(dir)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(Durability::GroupCommit)
        .preallocation(preallocation)
}

fn value(cycle: u64, thread: u64, n: u64) -> Vec<u8> {
    let padding = "p".repeat(((cycle * 7 + thread * 13 + n) % 300) as usize);
    format!("c{cycle}-t{thread}-n{n}-{padding}").into_bytes()
}

/// Parses a value back into (cycle, thread, n), checking its padding: anything else is a phantom or damage.
fn parse(bytes: &[u8]) -> Option<(u64, u64, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(4, '-');
    let cycle = parts.next()?.strip_prefix('c')?.parse().ok()?;
    let thread = parts.next()?.strip_prefix('t')?.parse().ok()?;
    let n = parts.next()?.strip_prefix('n')?.parse().ok()?;
    (value(cycle, thread, n) == bytes).then_some((cycle, thread, n))
}

/// The child's part: append forever from several threads, reporting each acknowledgement.
#[test]
fn kill9_child() {
    let (Ok(dir), Ok(cycle)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_CYCLE)) else { return };
    let cycle: u64 = cycle.parse().unwrap();
    let queue = builder(&dir, cycle).open().unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (queue, out) = (queue.clone(), out.clone());
            std::thread::spawn(move || {
                for n in 0.. {
                    let offset = queue.append(Message::new(value(cycle, thread, n))).unwrap();
                    let mut out = out.lock().unwrap();
                    writeln!(out, "\nACK {} {thread} {n}", offset.0).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

#[test]
fn kill_9_during_group_commit_appends_loses_nothing_acknowledged() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_string_lossy().into_owned();
    let soak: u64 = std::env::var("WALQ_SOAK").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let seed: u64 = std::env::var("WALQ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(9);
    let mut rng = FaultRng::new(seed);
    let mut acked: HashMap<u64, Vec<u8>> = HashMap::new();
    let (mut total_acks, mut working_kills) = (0, 0);
    for cycle in 0..CYCLES * soak {
        // Kill at a random moment after appends have started (or, sometimes, during open).
        let (wait, then_ms) = (rng.below(10) > 0, rng.below(40));
        let env = [(CHILD_DIR, dir.clone()), (CHILD_CYCLE, cycle.to_string())];
        let lines = run_and_kill9("kill9_child", &env, "ACK ", wait, Duration::from_millis(then_ms));
        let acks: Vec<(u64, u64, u64)> = lines
            .iter()
            .map(|line| report_numbers(line))
            .filter(|fields| fields.len() == 3)
            .map(|fields| (fields[0], fields[1], fields[2]))
            .collect();
        total_acks += acks.len();
        working_kills += u64::from(!acks.is_empty()); // a kill during open proves recovery, not the appends
        for (offset, thread, n) in acks {
            acked.insert(offset, value(cycle, thread, n));
        }

        let context = format!("WALQ_SEED={seed} cycle {cycle}");
        let queue = builder(&dir, cycle).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
        let mut last_n: HashMap<(u64, u64), u64> = HashMap::new();
        let mut found = 0;
        for record in queue.read_from(Offset::EARLIEST).unwrap() {
            let record = record.unwrap_or_else(|e| panic!("{context}: read failed: {e}"));
            let bytes = record.value.as_deref().unwrap();
            let (c, t, n) =
                parse(bytes).unwrap_or_else(|| panic!("{context}: D2: phantom record at {}", record.offset));
            if let Some(&previous) = last_n.get(&(c, t)) {
                assert!(n > previous, "{context}: FIFO of producer c{c}-t{t} broken at {}", record.offset);
            }
            last_n.insert((c, t), n);
            if let Some(expected) = acked.get(&record.offset.0) {
                assert_eq!(bytes, &expected[..], "{context}: D1: acknowledged offset {} altered", record.offset);
                found += 1;
            }
        }
        assert_eq!(found, acked.len(), "{context}: D1: acknowledged messages lost");
    }
    println!(
        "kill -9: {} cycles ({working_kills} after acknowledged appends), {total_acks} acknowledged appends, 0 lost",
        CYCLES * soak
    );
    assert!(working_kills * 2 > CYCLES * soak, "most kills must come after acknowledged appends");
    common::report(
        "R3 appends",
        &format!("kill -9 of a child appending from 4 threads (GroupCommit): no acknowledged append lost ({total_acks} acknowledged)"),
        working_kills,
        "kills after acknowledged appends",
        0,
    );
}
