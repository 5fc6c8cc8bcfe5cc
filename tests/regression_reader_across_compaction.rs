//! Regression: a reader (and so a consumer group) that had caught up with the segment being written read garbage
//! after that segment was sealed and rewritten by compaction, and failed with `Corrupt` (found by R10,
//! tests/concurrency_stress.rs: `BadLength` in a live queue). Cause: the reader held a byte position in the old
//! file; on refresh the log mapped the rewritten file, and when it was longer than the old visible end the reader
//! went on at its old position in the new file. Fix: a refresh compares segment ids, and a rewritten segment sends
//! the reader back to look up its next offset (`Refresh::Replaced`).

mod common;

use std::time::Duration;

use common::small;
use walq::{CleanupPolicy, Maintenance, Message, Offset};

#[test]
fn a_reader_at_the_end_of_a_segment_that_is_sealed_and_compacted_reads_on_correctly() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path())
        .cleanup(CleanupPolicy::Compact)
        .tombstone_retention(Duration::ZERO)
        .maintenance(Maintenance::Manual) // the compaction asserted on is the one `compact()` runs
        .open()
        .unwrap();
    // 100 values of one key: compaction keeps only the last.
    for i in 0..100u64 {
        queue.append(Message::new(format!("dup-{i}").into_bytes()).key(b"dup".to_vec())).unwrap();
    }
    let mut reader = queue.read_from(Offset::EARLIEST).unwrap();
    for i in 0..100 {
        assert_eq!(reader.next().unwrap().unwrap().offset, Offset(i));
    }
    assert!(reader.next().is_none(), "caught up with the segment being written");
    // Unique keys until the segment rolls: its compacted file is then longer than what the reader had seen.
    let mut n = 100u64;
    while queue.stats().segment_rolls == 0 {
        queue.append(Message::new(format!("unique-{n}").into_bytes()).key(format!("k{n}").into_bytes())).unwrap();
        n += 1;
    }
    let report = queue.compact().unwrap();
    assert_eq!(report.segments_rewritten, 1, "{report:?}");
    assert_eq!(report.messages_removed, 99);
    for i in 100..n {
        let record = reader.next().unwrap().unwrap_or_else(|e| panic!("offset {i}: {e}"));
        assert_eq!(record.offset, Offset(i));
        assert_eq!(record.value.unwrap(), format!("unique-{i}").into_bytes());
    }
}
