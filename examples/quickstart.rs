//! The README's first command: append to a queue in a temporary directory, read it back, reopen it (as after a
//! restart), append more, and print what was seen at each step.
//!
//! Run with `cargo run --release --example quickstart`. Pass a directory to keep the queue there instead.

use std::time::Instant;

use walq::{Durability, Message, Offset, Queue};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::args().nth(1).map_or_else(|| temp.path().join("orders"), Into::into);
    println!("queue directory: {}", dir.display());

    let queue = Queue::builder(&dir).durability(Durability::GroupCommit).segment_bytes_max(4 << 20).open()?;
    let started = Instant::now();
    let first = queue.append(Message::new(b"order 17 placed").key(b"order-17").header("source", b"web"))?;
    let batch: Vec<Message> = (0..10_000)
        .map(|i| Message::new(format!("event {i}").into_bytes()).key(format!("order-{}", i % 100)))
        .collect();
    queue.append_batch(&batch)?;
    println!("appended 10,001 messages durably in {:?}, first offset {first}", started.elapsed());

    let records: Vec<_> = queue.read_from(Offset::EARLIEST)?.collect::<Result<_, _>>()?;
    let first_record = &records[0];
    println!(
        "read back {} records; offset {} has key {:?}, value {:?}, headers {:?}",
        records.len(),
        first_record.offset,
        String::from_utf8_lossy(first_record.key.as_deref().unwrap_or_default()),
        String::from_utf8_lossy(first_record.value.as_deref().unwrap_or_default()),
        first_record.headers.iter().map(|h| &h.name).collect::<Vec<_>>(),
    );
    println!("stats before close: {:?}", queue.stats());
    queue.close()?;

    let reopened = Queue::open(&dir)?;
    let report = reopened.recovery_report();
    println!(
        "reopened: {} segments, scanned {} bytes of the last one, lost nothing: {}",
        report.segments,
        report.scanned_bytes,
        report.lost_nothing()
    );
    let next = reopened.append(Message::new(b"after restart"))?;
    let last = reopened.read_from(next)?.next().transpose()?.expect("the record just appended");
    println!(
        "appended after reopen at offset {next}: {:?}",
        String::from_utf8_lossy(last.value.as_deref().unwrap_or_default())
    );
    let total = reopened.read_from(Offset::EARLIEST)?.count();
    println!("{total} records in the queue");
    assert_eq!(total, 10_002);
    reopened.close()?;
    Ok(())
}
