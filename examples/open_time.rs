//! Measures how long `Queue::open` takes for queues of 1 MiB and 1 GiB (1 KiB messages, 64 MiB segments), after a
//! clean close and after a process that never closed (a preallocated tail to look behind), page cache warm.
//!
//! Run with `cargo run --release --example open_time [DIR]` (DIR on the disk to measure; a temporary directory by
//! default). Needs about 2.2 GiB free.

use std::time::{Duration, Instant};

use walq::{Durability, Message, Queue};

const OPENS: usize = 20;

fn build(
    dir: &std::path::Path,
    crash_copy: &std::path::Path,
    total_bytes: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::builder(dir).durability(Durability::None).segment_bytes_max(64 << 20).open()?;
    let batch: Vec<Message> = (0..1024).map(|i| Message::new(vec![i as u8; 1024])).collect();
    let mut written = 0;
    while written < total_bytes {
        queue.append_batch(&batch)?;
        written += 1024 * 1024;
    }
    queue.flush()?;
    // What a process that dies now leaves: the last segment still has its preallocated zero tail.
    std::fs::create_dir_all(crash_copy)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), crash_copy.join(entry.file_name()))?;
        }
    }
    queue.close()?;
    Ok(())
}

fn timed_open(dir: &std::path::Path) -> Result<(Duration, u64), walq::Error> {
    let started = Instant::now();
    let queue = Queue::open(dir)?;
    let elapsed = started.elapsed();
    Ok((elapsed, queue.recovery_report().scanned_bytes))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let root = std::env::args().nth(1).map_or_else(|| temp.path().to_path_buf(), Into::into);
    for (label, bytes) in [("1 MiB", 1u64 << 20), ("1 GiB", 1u64 << 30)] {
        let dir = root.join(format!("queue-{bytes}"));
        let crash_copy = root.join(format!("crashed-{bytes}"));
        build(&dir, &crash_copy, bytes)?;
        let (after_crash, crash_scanned) = timed_open(&crash_copy)?;
        let mut times = Vec::new();
        let mut scanned = 0;
        for _ in 0..OPENS {
            let (elapsed, bytes) = timed_open(&dir)?;
            times.push(elapsed);
            scanned = bytes;
        }
        times.sort();
        println!(
            "{label} queue: open after close median {:?} (min {:?}, {OPENS} opens, tail scan {scanned} B); \
             first open after a crash {after_crash:?} (tail scan {crash_scanned} B)",
            times[times.len() / 2],
            times[0],
        );
        std::fs::remove_dir_all(&dir)?;
        std::fs::remove_dir_all(&crash_copy)?;
    }
    Ok(())
}
