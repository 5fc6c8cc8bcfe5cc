//! Peak memory (VmHWM, Linux) against queue size: one child process per queue size opens a cleanly closed queue,
//! replays every message, and consumes and acks 100,000 of them through a group; the child reports its peak
//! resident set. The design target: memory does not grow with the log (sealed segments are mapped, not read in,
//! and the kernel may drop their pages). Anonymous memory (heap, stacks) is what the process itself holds; mapped
//! file pages count in the resident set while cached but are clean and reclaimable.
//!
//! Run with `cargo run --release --example memory [DIR]`. Needs about 1.1 GiB free.

use std::time::Duration;

use walq::{Durability, Message, Offset, Queue};

const SIZES: [(&str, u64); 3] = [("1 MiB", 1 << 20), ("64 MiB", 64 << 20), ("1 GiB", 1 << 30)];

/// A `/proc/self/status` field in KiB: `VmHWM` (peak resident set), `RssAnon` (heap and stacks: what the process
/// itself holds), `RssFile` (mapped file pages: sealed segments, clean page cache the kernel can reclaim).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status.lines().find(|l| l.starts_with(field)).expect("a /proc/self/status field");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number")
}

/// The child's part: open, replay, consume; print the peak resident set.
fn measure(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::builder(dir).durability(Durability::None).open()?;
    let mut replayed = 0u64;
    for record in queue.read_from(Offset::EARLIEST)? {
        std::hint::black_box(record?);
        replayed += 1;
    }
    let consumer = queue.group("memory")?.consumer();
    for _ in 0..100_000 {
        match consumer.recv_timeout(Duration::from_millis(10))? {
            Some(delivery) => delivery.ack()?,
            None => break,
        }
    }
    println!("{replayed} {} {} {}", status_kib("VmHWM:"), status_kib("RssAnon:"), status_kib("RssFile:"));
    queue.close()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    if let Some("--child") = args.next().as_deref() {
        return measure(std::path::Path::new(&args.next().expect("a directory")));
    }
    let temp = tempfile::tempdir()?;
    let root = std::env::args().nth(1).map_or_else(|| temp.path().to_path_buf(), Into::into);
    println!("| queue size | messages replayed | peak resident set | anonymous (heap) | mapped file pages |");
    println!("|---|---|---|---|---|");
    for (name, bytes) in SIZES {
        let dir = root.join(name.replace(' ', ""));
        let queue = Queue::builder(&dir).durability(Durability::None).open()?;
        let batch: Vec<Message> = (0..1024).map(|i| Message::new(vec![i as u8; 1000])).collect();
        for _ in 0..bytes / (1024 * 1024) {
            queue.append_batch(&batch)?;
        }
        queue.close()?;
        let output = std::process::Command::new(std::env::current_exe()?).arg("--child").arg(&dir).output()?;
        let report = String::from_utf8(output.stdout)?;
        let mut fields = report.split_whitespace();
        let mut next = || fields.next().unwrap_or("?");
        let (replayed, peak, anon, file) = (next(), next(), next(), next());
        println!("| {name} | {replayed} | {peak} KiB | {anon} KiB | {file} KiB |");
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
