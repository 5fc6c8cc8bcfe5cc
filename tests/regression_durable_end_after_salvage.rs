//! Regression (found by a review of the cold-open change, issue #15): the manifest's `durable_end_offset`, written
//! by a clean close, could stay above the log's end after a `SkipCorrupt` open resumed below it (frames the close
//! recorded as durable were lost to damage). Frames appended after that open, at offsets below the stale record,
//! were then "proven durable" by it: a later open after a kill -9 skipped their fsync (open fsyncs only frames it
//! cannot prove), and a power cut after that could lose appends that open had counted as durable.
//!
//! Cause: nothing lowered the record when recovery ended below it. Fix: open writes the manifest again with the
//! recovered end before anything is appended (every frame below it is durable: proven by the old record, or made
//! durable by recovery's cut and fsync), so the record never exceeds the log.

mod common;

use common::{append_range, assert_is_message, frame_len, read_all, SEGMENT_HEADER_BYTES};
use walq::{Durability, Error, Preallocation, Queue, QueueBuilder, RecoveryMode};

fn builder(dir: &std::path::Path) -> QueueBuilder {
    Queue::builder(dir).durability(Durability::None).preallocation(Preallocation::Grow)
}

fn manifest_durable_end(dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("MANIFEST.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["durable_end_offset"].as_u64()
}

#[test]
fn a_salvaging_open_lowers_the_recorded_durable_end_to_the_log_end() {
    let temp = tempfile::tempdir().unwrap();
    let queue = builder(temp.path()).open().unwrap();
    append_range(&queue, 0..1_000);
    queue.close().unwrap();
    assert_eq!(manifest_durable_end(temp.path()), Some(1_000));

    // Damage takes the last 100 durable frames: the default open refuses, SkipCorrupt resumes at 900.
    let cut_at = SEGMENT_HEADER_BYTES + (0..900).map(frame_len).sum::<u64>();
    let segment = temp.path().join("00000000000000000000.seg");
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(cut_at).unwrap();
    assert!(matches!(builder(temp.path()).open(), Err(Error::Corrupt { .. })));
    let queue = builder(temp.path()).recovery_mode(RecoveryMode::SkipCorrupt).open().unwrap();
    assert_eq!(queue.stats().next_offset.0, 900);
    assert_eq!(manifest_durable_end(temp.path()), Some(900), "lowered before any append");

    // Appends from 900 on are not covered by any record until they are synced; a clean close records them.
    append_range(&queue, 900..950);
    assert_eq!(manifest_durable_end(temp.path()), Some(900));
    queue.close().unwrap();
    assert_eq!(manifest_durable_end(temp.path()), Some(950));
    let queue = builder(temp.path()).open().unwrap();
    let records = read_all(&queue);
    assert_eq!(records.len(), 950);
    for (i, record) in records.iter().enumerate() {
        assert_is_message(record, i as u64);
    }
}
