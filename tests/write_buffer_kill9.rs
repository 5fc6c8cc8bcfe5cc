//! R3 for the write buffer: `kill -9` of a real child that appends through an 8 KiB write buffer in
//! `Durability::None` and reports each acknowledgement through a pipe after `append` returned. What the buffer
//! trades away is bounded, and nothing else is lost or damaged. After every kill the parent reopens the queue and
//! checks:
//!
//! - every record is a message the child appended, unaltered, and the messages of a run come in order with no hole
//!   (what a crash loses is the newest part only);
//! - the acknowledged messages that are missing are the last ones, and together fit the buffer (8 KiB of frames);
//! - everything an earlier check found is still there (the OS kept what the buffer had handed it).
//!
//! `WALQ_SEED` fixes the kill timing; `WALQ_SOAK=<n>` runs n times the cycles.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use common::{report_numbers, run_and_kill9, FRAME_HEADER_BYTES};
use walq::storage::FaultRng;
use walq::{Durability, Message, Offset, Preallocation, Queue, QueueBuilder};

const CHILD_DIR: &str = "WALQ_BUFFER_KILL9_DIR";
const CHILD_CYCLE: &str = "WALQ_BUFFER_KILL9_CYCLE";
const CYCLES: u64 = 100;
const BUFFER_BYTES: usize = 8 * 1024;

fn builder(dir: &str, cycle: u64) -> QueueBuilder {
    let preallocation = if cycle % 2 == 0 { Preallocation::Reserve } else { Preallocation::Grow };
    Queue::builder(dir)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(Durability::None)
        .preallocation(preallocation)
}

fn value(cycle: u64, n: u64) -> Vec<u8> {
    let padding = "p".repeat(((cycle * 7 + n) % 200) as usize);
    format!("c{cycle}-n{n}-{padding}").into_bytes()
}

/// Parses a value back into (cycle, n), checking its padding: anything else is a phantom or damage.
fn parse(bytes: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, '-');
    let cycle = parts.next()?.strip_prefix('c')?.parse().ok()?;
    let n = parts.next()?.strip_prefix('n')?.parse().ok()?;
    (value(cycle, n) == bytes).then_some((cycle, n))
}

/// The child's part: append forever through the write buffer, reporting each acknowledgement.
#[test]
fn write_buffer_kill9_child() {
    let (Ok(dir), Ok(cycle)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_CYCLE)) else { return };
    let cycle: u64 = cycle.parse().unwrap();
    let queue = builder(&dir, cycle).write_buffer_bytes(BUFFER_BYTES).open().unwrap();
    let mut out = std::io::stdout();
    for n in 0.. {
        let offset = queue.append(Message::new(value(cycle, n))).unwrap();
        writeln!(out, "\nACK {} {n}", offset.0).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_loses_at_most_the_write_buffer_and_only_the_newest_appends() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_string_lossy().into_owned();
    let seed: u64 = common::env_u64("WALQ_SEED").unwrap_or(11);
    let mut rng = FaultRng::new(seed);
    let mut seen: HashMap<u64, Vec<u8>> = HashMap::new();
    let (mut total_acks, mut total_lost) = (0, 0);
    let cycles = CYCLES * common::soak();
    for cycle in 0..cycles {
        let env = [(CHILD_DIR, dir.clone()), (CHILD_CYCLE, cycle.to_string())];
        let then = Duration::from_millis(rng.below(30));
        let lines = run_and_kill9("write_buffer_kill9_child", &env, "ACK ", true, then);
        let acks: Vec<(u64, u64)> = lines
            .iter()
            .map(|line| report_numbers(line))
            .filter(|fields| fields.len() == 2)
            .map(|fields| (fields[0], fields[1]))
            .collect();
        total_acks += acks.len();

        let context = format!("WALQ_SEED={seed} cycle {cycle}");
        let queue = builder(&dir, cycle).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
        let mut found_this_cycle = Vec::new();
        let mut last_of_cycle: HashMap<u64, u64> = HashMap::new();
        for record in queue.read_from(Offset::EARLIEST).unwrap() {
            let record = record.unwrap_or_else(|e| panic!("{context}: read failed: {e}"));
            let bytes = record.value.as_deref().unwrap();
            let (c, n) = parse(bytes).unwrap_or_else(|| panic!("{context}: phantom record at {}", record.offset));
            let expected_n = last_of_cycle.get(&c).map_or(0, |last| last + 1);
            assert_eq!(n, expected_n, "{context}: a hole in run c{c} at {}", record.offset);
            last_of_cycle.insert(c, n);
            if let Some(earlier) = seen.get(&record.offset.0) {
                assert_eq!(&earlier[..], bytes, "{context}: a record found earlier changed at {}", record.offset);
            }
            seen.insert(record.offset.0, bytes.to_vec());
            if c == cycle {
                found_this_cycle.push(n);
            }
        }
        assert!(
            seen.len() as u64 == queue.stats().next_offset.0 - queue.stats().first_offset.0,
            "{context}: a record found earlier is gone"
        );
        // The acknowledged messages that are missing are the newest, and they fit the buffer.
        let found = found_this_cycle.len() as u64;
        let lost: Vec<u64> = acks.iter().map(|&(_, n)| n).filter(|&n| n >= found).collect();
        let lost_bytes: u64 = lost.iter().map(|&n| FRAME_HEADER_BYTES + value(cycle, n).len() as u64).sum();
        assert!(
            lost_bytes <= BUFFER_BYTES as u64,
            "{context}: {} acknowledged appends ({lost_bytes} B of frames) lost; the buffer holds {BUFFER_BYTES} B",
            lost.len()
        );
        total_lost += lost.len();
        queue.close().unwrap();
    }
    println!("write buffer kill -9: {cycles} cycles, {total_acks} acknowledged, {total_lost} lost from the buffer");
    common::report(
        "R3 write buffer",
        &format!(
            "kill -9 of a child appending through an 8 KiB write buffer: only the newest appends lost, at most the \
             buffer ({total_lost} of {total_acks} acknowledged), no hole, nothing altered"
        ),
        cycles,
        "kills",
        0,
    );
}
