//! `DeleteConsumed`: a segment is deleted exactly when every group is past it and it holds no dead letter; with no
//! group nothing is deleted; the disk space is really freed; `KeepAll` keeps everything.

mod common;

use common::*;
use walq::{CleanupPolicy, Maintenance, Offset, Queue};

fn consume(queue: &Queue, group: &str, count: u64) {
    let consumer = queue.group(group).unwrap().consumer();
    for _ in 0..count {
        consumer.try_recv().unwrap().expect("a message").ack().unwrap();
    }
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    segment_bytes(dir)
}

#[test]
fn segments_are_deleted_once_every_group_is_past_them() {
    let temp = tempfile::tempdir().unwrap();
    // Manual: acks delete at once, so "not deleted" is seen at the moment it must hold, not before a tick.
    let queue = small(temp.path()).maintenance(Maintenance::Manual).open().unwrap();
    append_range(&queue, 0..3000);
    let segments = segment_files(temp.path()).len();
    assert!(segments >= 5);
    let before = disk_bytes(temp.path());
    queue.group("a").unwrap();
    queue.group("b").unwrap();
    consume(&queue, "a", 3000);
    assert_eq!(segment_files(temp.path()).len(), segments, "b still needs everything");
    consume(&queue, "b", 1000);
    eventually("segments wholly below both floors are gone", || segment_files(temp.path()).len() < segments);
    let first = queue.read_from(Offset::EARLIEST).unwrap().next().unwrap().unwrap();
    assert!(
        first.offset.0 > 0 && first.offset.0 <= 1000,
        "nothing b still needs is deleted: first stored {}",
        first.offset
    );
    consume(&queue, "b", 2000);
    // Files are unlinked before they are counted: wait for the count too.
    eventually("only the segment being written is left, and counted", || {
        segment_files(temp.path()).len() == 1 && queue.stats().segments_deleted == segments as u64 - 1
    });
    assert!(disk_bytes(temp.path()) < before / 4, "the space is freed");
    assert_eq!(queue.stats().segments_deleted, segments as u64 - 1);
}

#[test]
fn a_single_group_frees_what_it_consumed_and_resumes_after_reopen() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    queue.group("only").unwrap();
    append_range(&queue, 0..3000);
    assert!(segment_files(temp.path()).len() > 1);
    consume(&queue, "only", 3000);
    eventually("only the segment being written is left", || segment_files(temp.path()).len() == 1);
    drop(queue);
    let queue = small(temp.path()).open().unwrap();
    let first = queue.stats().first_offset;
    assert!(first > Offset(0), "the deleted segments stay deleted");
    assert_eq!(queue.read_from(Offset::EARLIEST).unwrap().next().unwrap().unwrap().offset, first);
    append_range(&queue, 3000..3010);
    let consumer = queue.group("only").unwrap().consumer();
    assert_eq!(consumer.try_recv().unwrap().unwrap().offset(), Offset(3000));
}

#[test]
fn no_group_means_nothing_is_deleted_and_keep_all_keeps_everything() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..3000);
    let segments = segment_files(temp.path()).len();
    drop(queue);
    let queue = small(temp.path()).open().unwrap();
    assert_eq!(segment_files(temp.path()).len(), segments);
    drop(queue);

    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).cleanup(CleanupPolicy::KeepAll).open().unwrap();
    append_range(&queue, 0..3000);
    consume(&queue, "g", 3000);
    assert_eq!(segment_files(temp.path()).len(), segments);
    assert_eq!(read_all(&queue).len(), 3000);
}

#[test]
fn a_dead_letter_keeps_its_segment() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).maintenance(Maintenance::Manual).open().unwrap(); // acks delete at once
    append_range(&queue, 0..3000);
    let segments = segment_files(temp.path()).len();
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    consumer.try_recv().unwrap().unwrap().dead_letter().unwrap(); // offset 0, in the first segment
    consume(&queue, "g", 2999);
    assert_eq!(group.ack_floor(), Offset(3000));
    assert_eq!(
        segment_files(temp.path()).len(),
        segments,
        "the first segment holds a dead letter, and only the oldest go"
    );
    group.redrive(Offset(0)).unwrap();
    consumer.try_recv().unwrap().unwrap().ack().unwrap();
    eventually("the dead letter's segment goes once it is acked", || segment_files(temp.path()).len() == 1);
}
