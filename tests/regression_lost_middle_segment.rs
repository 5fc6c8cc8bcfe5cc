//! Regression: a lost middle segment looked like compaction (#12, item 7).
//!
//! The bug: readers and groups passed over a missing segment file as over a gap compaction left, and `verify`
//! stayed clean: a whole segment of acknowledged messages vanished without a word.
//!
//! The fix: every segment header (format version 2) names the segment written before it. Cleanup and limits only
//! ever delete the oldest segments, so a segment whose named predecessor is not the segment before it in the
//! directory follows a lost one: readers return `Corrupt { kind: MissingSegment }` (SkipCorrupt skips it, counted),
//! `walq verify` and `dump` exit 2. Segments deleted by cleanup stay silent.

mod common;

use std::process::Command;

use common::*;
use walq::{CorruptionKind, Error, Offset, Queue, RecoveryMode};

#[test]
fn a_missing_middle_segment_is_reported_and_a_deleted_oldest_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let queue = small(dir.path()).open().unwrap();
    queue.append_batch(&(0..3000).map(message).collect::<Vec<_>>()).unwrap();
    queue.close().unwrap();
    drop(queue);
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 4, "{} segments", segments.len());
    std::fs::remove_file(&segments[1]).unwrap();
    let _ = std::fs::remove_file(segments[1].with_extension("idx"));

    let queue = small(dir.path()).open().unwrap();
    let error = queue.read_from(Offset::EARLIEST).unwrap().find_map(Result::err).expect("the loss is reported");
    assert!(matches!(error, Error::Corrupt { kind: CorruptionKind::MissingSegment, .. }), "{error}");
    drop(queue);
    let path = dir.path().to_str().unwrap();
    for command in ["verify", "dump"] {
        let output = Command::new(env!("CARGO_BIN_EXE_walq")).args([command, path]).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "walq {command}");
    }
    let salvaging = small(dir.path()).recovery_mode(RecoveryMode::SkipCorrupt).open().unwrap();
    let mut reader = salvaging.read_from(Offset::EARLIEST).unwrap();
    let read = reader.by_ref().map(Result::unwrap).count();
    assert!(read > 0 && read < 3000);
    assert_eq!(reader.skipped_regions(), 1);
}

#[test]
fn segments_deleted_by_cleanup_are_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let queue = small(dir.path()).open().unwrap();
    queue.append_batch(&(0..3000).map(message).collect::<Vec<_>>()).unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    consumer.ack_all(consumer.try_recv_batch(2000).unwrap()).unwrap();
    eventually("cleanup deleted the oldest segments", || queue.stats().segments_deleted > 0);
    let records = read_all(&queue);
    assert_eq!(records.last().unwrap().offset, Offset(2999));
    queue.close().unwrap();
    drop((consumer, queue));
    let output =
        Command::new(env!("CARGO_BIN_EXE_walq")).args(["verify", dir.path().to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
    let _ = Queue::open(dir.path()).unwrap();
}

/// The second review's case: cleanup deletes several segments under a reader that is still in the oldest one.
/// The reader goes on from the oldest segment still listed (its predecessors were consumed, not lost): no
/// `MissingSegment`, and it reads to the end.
#[test]
fn cleanup_deleting_segments_under_a_reader_is_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let queue = small(dir.path()).open().unwrap();
    queue.append_batch(&(0..3000).map(message).collect::<Vec<_>>()).unwrap();
    let mut reader = queue.read_from(Offset::EARLIEST).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().offset, Offset(0)); // inside the oldest segment, holding it open
    let consumer = queue.group("g").unwrap().consumer();
    consumer.ack_all(consumer.try_recv_batch(2500).unwrap()).unwrap();
    eventually("cleanup deleted several segments under the reader", || queue.stats().segments_deleted >= 2);
    let rest: Vec<_> = reader.map(|r| r.expect("no error: deleted segments are consumed, not lost")).collect();
    assert_eq!(rest.last().unwrap().offset, Offset(2999));
}
