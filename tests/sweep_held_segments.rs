//! One held message must not pin the log (#23, item 1). With `DeleteConsumed`, a segment is deleted only when every
//! group is done with all of it, so one message leased for hours (or a dead letter, or a nack waiting out a long
//! delay) kept every segment after it: the disk filled at the producers' rate. A sweep now rewrites such segments
//! with only the messages some group still needs, keeping their offsets; the space held is those messages plus a
//! header per segment. Readers and groups see the same offsets, contents and order, also after a reopen.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use walq::{Offset, Queue};

const MESSAGES: u64 = 6000;
const HELD: u64 = 0;
const DEAD: u64 = 3000;
const DELAYED: u64 = 4000;
/// Long enough that the sweep runs while the message waits; short enough to wait for at the end.
const NACK_DELAY: Duration = Duration::from_secs(2);

fn open(dir: &std::path::Path) -> Queue {
    // Deliveries are not the point: the delayed message may come back and be nacked again while the others are
    // acked, and must not become a dead letter for it.
    small(dir).ack_timeout(Duration::from_secs(3600)).max_deliveries(100).open().unwrap()
}

/// Bytes of the sealed segment files (every segment file but the newest).
fn sealed_bytes(dir: &std::path::Path) -> u64 {
    let files = segment_files(dir);
    files[..files.len() - 1].iter().map(|f| std::fs::metadata(f).unwrap().len()).sum()
}

#[test]
fn a_held_message_pins_its_own_bytes_not_the_segments_behind_it() {
    let temp = tempfile::tempdir().unwrap();
    let queue = open(temp.path());
    let (slow, fast) = (queue.group("slow").unwrap(), queue.group("fast").unwrap());
    append_range(&queue, 0..MESSAGES);

    // The slow group: one consumer holds the first message (a long job), another does the rest, nacking one
    // message with a long delay.
    let holder = slow.consumer();
    let held = holder.try_recv().unwrap().unwrap();
    assert_eq!(held.offset(), Offset(HELD));
    let worker = slow.consumer();
    while let Some(delivery) = worker.try_recv().unwrap() {
        match delivery.offset().0 {
            DELAYED => assert_eq!(delivery.nack(NACK_DELAY).unwrap(), walq::Nacked::Retry),
            _ => delivery.ack().unwrap(),
        }
    }
    // The fast group does everything but one dead letter.
    let fast_consumer = fast.consumer();
    while let Some(delivery) = fast_consumer.try_recv().unwrap() {
        match delivery.offset().0 {
            DEAD => assert_eq!(delivery.dead_letter().unwrap(), walq::Nacked::DeadLettered),
            _ => delivery.ack().unwrap(),
        }
    }
    let segments = segment_files(temp.path()).len() as u64;
    assert!(segments >= 8, "the workload must span many segments, got {segments}");
    let before = sealed_bytes(temp.path());
    // The background maintenance may sweep some segments first; what counts is what is left.
    let report = queue.compact().unwrap();
    let kept_frames: u64 = [HELD, DEAD, DELAYED].iter().map(|&i| frame_len(i)).sum();
    let after = sealed_bytes(temp.path());
    assert_eq!(after, (segments - 1) * SEGMENT_HEADER_BYTES + kept_frames, "before: {before} bytes; {report:?}");
    assert!(queue.stats().segments_swept >= segments - 1);
    assert_eq!(queue.compact().unwrap().segments_rewritten, 0, "a swept segment is not rewritten again");

    // Every reader sees the kept messages at their offsets, then the active segment as it was.
    let records = read_all(&queue);
    let active_base = records.iter().map(|r| r.offset.0).find(|&o| o > DELAYED).unwrap();
    let expected: Vec<u64> = [HELD, DEAD, DELAYED].into_iter().chain(active_base..MESSAGES).collect();
    assert_eq!(records.iter().map(|r| r.offset.0).collect::<Vec<_>>(), expected);
    for record in &records {
        assert_is_message(record, record.offset.0);
    }
    drop((held, holder, worker, fast_consumer, slow, fast, queue));

    // The tool finds nothing wrong with a swept queue.
    let verify = Command::new(env!("CARGO_BIN_EXE_walq")).arg("verify").arg(temp.path()).output().unwrap();
    assert!(verify.status.success(), "walq verify: {}", String::from_utf8_lossy(&verify.stdout));

    // After a reopen each group gets what it still needs, with its content.
    let queue = open(temp.path());
    let (slow, fast) = (queue.group("slow").unwrap(), queue.group("fast").unwrap());
    let again = slow.consumer().try_recv().unwrap().unwrap();
    assert_eq!(again.offset(), Offset(HELD), "the lease ended with the process: the held message comes back");
    assert_is_message(again.message(), HELD);
    let dead: Vec<(Offset, u32)> = fast.dead_letters().iter().map(|d| (d.offset, d.attempts)).collect();
    assert_eq!(dead, vec![(Offset(DEAD), 1)]);
    assert!(fast.redrive(Offset(DEAD)).unwrap());
    let redriven = fast.consumer().try_recv().unwrap().unwrap();
    assert_is_message(redriven.message(), DEAD);

    let delayed = slow.consumer().recv_timeout(Duration::from_secs(60)).unwrap().expect("the delayed message");
    assert_eq!(delayed.offset(), Offset(DELAYED));
    assert_is_message(delayed.message(), DELAYED);

    // Once the last needed messages are done, the segments go.
    for delivery in [again, redriven, delayed] {
        delivery.ack().unwrap();
    }
    queue.compact().unwrap();
    assert_eq!(segment_files(temp.path()).len(), 1, "every sealed segment is consumed and deleted");
}
