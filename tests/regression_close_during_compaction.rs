//! Regression: `close()` did not stop maintenance already running (#12, item 4).
//!
//! The bug: a thread inside `Queue::compact()` (or inside cleanup after an ack) went on renaming and unlinking after
//! `close()` had released the directory lock, racing the next owner's recovery.
//!
//! The fix: `close()` shuts maintenance down before it releases the lock: it waits for the maintenance lock, and a
//! compaction pass stops between two segments once the queue is closing.
//!
//! The test: `close()` while another thread compacts hundreds of segments; from the moment `close()` returns, the
//! directory does not change, no temporary file is left, and a reopened queue holds the latest value of every key.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use walq::{CleanupPolicy, CompactionScope, Offset, Queue, QueueBuilder};

const MESSAGES: u64 = 60_000;

fn compacting(dir: &Path) -> QueueBuilder {
    small(dir).cleanup(CleanupPolicy::Compact).compaction_scope(CompactionScope::AllSealed)
}

/// Every file's length and modification time.
fn listing(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let meta = e.metadata().unwrap();
            (e.file_name().to_string_lossy().into_owned(), (meta.len(), meta.modified().unwrap()))
        })
        .collect()
}

#[test]
fn nothing_changes_in_the_directory_after_close_returns() {
    let dir = tempfile::tempdir().unwrap();
    let messages: Vec<_> = (0..MESSAGES).map(|i| keyed_message(i, 50)).collect();
    let queue = compacting(dir.path()).open().unwrap();
    queue.append_batch(&messages).unwrap();
    let compacting_queue = queue.clone();
    let compactor = std::thread::spawn(move || compacting_queue.compact());
    std::thread::sleep(Duration::from_millis(30)); // the pass is under way: it reads, then rewrites segment by segment
    queue.close().unwrap();
    let after_close = listing(dir.path());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(listing(dir.path()), after_close, "files changed after close() returned");
    assert!(after_close.keys().all(|name| !name.ends_with(".tmp")), "{after_close:?}");
    let _ = compactor.join().unwrap(); // Ok (a partial pass) or Closed

    let queue = Queue::open(dir.path()).unwrap();
    let records: Vec<_> = queue.read_from(Offset::EARLIEST).unwrap().collect::<Result<_, _>>().unwrap();
    let stored = latest_values(records.iter().map(|r| (r.key.as_deref(), r.value.as_deref())));
    let expected = latest_values(messages.iter().map(|m| (m.key_bytes(), m.value_bytes())));
    assert_eq!(stored, expected, "the latest value of every key survives an interrupted pass");
}
