//! A group's cost grows with its work, not with its history (issue #13): with one message stuck in a lease (a slow
//! consumer) and a million acks above it, the journal bytes written per ack stay flat, the state a checkpoint
//! holds stays tiny, and reopening is quick. Counts bytes (`/proc/self/io`), never times.
//!
//! Before: acks above the floor were kept one offset at a time and a checkpoint (the whole state, 40 bytes an
//! offset) was rewritten on every journal write past 1 MiB: bytes per ack grew without bound (acks 30k-40k took
//! ~17 ms each, about 5,000x the first ones).

mod common;

use std::time::Duration;

use walq::{Durability, Message, Offset, Queue};

const MESSAGES: u64 = 1_000_000;
const BATCH: usize = 1_000;
/// Messages acked one by one at the end, more than the journal takes to reach its checkpoint size (40 B a record).
const EXTRA: u64 = 10_000 * 4;

/// Bytes this process has handed to `write(2)` and friends so far.
fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.trim().parse().ok()).expect("wchar")
}

#[test]
fn journal_bytes_per_ack_stay_flat_above_a_stuck_lease() {
    let dir = tempfile::tempdir().unwrap();
    let queue =
        Queue::builder(dir.path()).durability(Durability::None).ack_timeout(Duration::from_secs(3600)).open().unwrap();
    let batch: Vec<Message> = (0..10_000u64).map(|i| Message::new(i.to_le_bytes().to_vec())).collect();
    for _ in 0..MESSAGES / 10_000 {
        queue.append_batch(&batch).unwrap();
    }
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let stuck = consumer.try_recv().unwrap().unwrap(); // offset 0: leased for an hour, never answered
    assert_eq!(stuck.offset(), Offset(0));

    let mut per_phase = Vec::new();
    for _phase in 0..10 {
        let before = bytes_written();
        let mut acked = 0;
        while acked < MESSAGES / 10 - 1 {
            let deliveries = consumer.try_recv_batch(BATCH).unwrap();
            if deliveries.is_empty() {
                break;
            }
            acked += deliveries.len() as u64;
            consumer.ack_all(deliveries).unwrap();
        }
        per_phase.push((bytes_written() - before) as f64 / acked.max(1) as f64);
    }
    assert_eq!(group.ack_floor(), Offset(0), "the stuck lease holds the floor");
    println!("journal bytes written per ack, by tenth of the run: {per_phase:.2?}");
    let (first, last) = (per_phase[0], per_phase[per_phase.len() - 1]);
    assert!(per_phase.iter().all(|&b| b < 8.0), "more than 8 bytes written per ack: {per_phase:.2?}");
    assert!(last <= first * 1.5 + 0.5, "bytes per ack grew with the state: {per_phase:.2?}");

    // The state is one range and one lease: a checkpoint of it is tiny. Single acks (one journal record each)
    // until the journal is checkpointed: its size right after is the checkpoint's.
    let journal_path = dir.path().join("groups/g.journal");
    for _ in 0..EXTRA / 10_000 {
        queue.append_batch(&batch).unwrap();
    }
    let mut previous = std::fs::metadata(&journal_path).unwrap().len();
    let mut checkpoint_bytes = None;
    while let Some(delivery) = consumer.try_recv().unwrap() {
        delivery.ack().unwrap();
        let len = std::fs::metadata(&journal_path).unwrap().len();
        if len < previous && checkpoint_bytes.is_none() {
            checkpoint_bytes = Some(len);
        }
        previous = len;
    }
    let checkpoint_bytes = checkpoint_bytes.expect("single acks past the journal's limit make a checkpoint");
    println!("checkpoint of one stuck lease and {} acks above it: {checkpoint_bytes} bytes", MESSAGES + EXTRA - 1);
    assert!(checkpoint_bytes < 4096, "a checkpoint of one range and one lease: {checkpoint_bytes} bytes");
    drop((stuck, consumer, group, queue));
    let queue = Queue::open(dir.path()).unwrap();
    let group = queue.group("g").unwrap();
    assert_eq!(group.ack_floor(), Offset(0));
    let stats = group.stats();
    assert_eq!(stats.lag, 1, "everything but the stuck message is done");
    let delivery = group.consumer().try_recv().unwrap().unwrap();
    assert_eq!(delivery.offset(), Offset(0), "the stuck message comes back after the restart");
    delivery.ack().unwrap();
    assert_eq!(group.ack_floor(), Offset(MESSAGES + EXTRA), "one ack moves the floor over the whole range");
    let journal = std::fs::metadata(dir.path().join("groups/g.journal")).unwrap().len();
    assert!(journal < (1 << 20) + 4096, "the journal stays near its checkpoint size: {journal} bytes");
}
