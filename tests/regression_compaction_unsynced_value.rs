//! Regression: compaction trusted unsynced data (#12, item 2).
//!
//! The bug: in `None` and `Interval` modes compaction read the active segment up to what was written. With
//! K = v1 durable in a sealed segment and K = v2 written but not yet fsynced, compaction removed v1; a power cut then
//! took v2, and K had no value at all.
//!
//! The fix: the latest value per key is decided on durable data only: sealed segments, and the active segment up
//! to what is fsynced. An unsynced newer value does not remove an older durable one.
//!
//! The test: that exact sequence, then every power-cut image of a set of seeds: K always has a value, v1 or v2.

mod common;

use std::sync::Arc;

use walq::storage::{FaultyStorage, Storage};
use walq::{
    CleanupPolicy, CompactionScope, Durability, Maintenance, Message, Offset, Preallocation, Queue, QueueBuilder,
};

fn builder(storage: &FaultyStorage) -> QueueBuilder {
    Queue::builder("/sim/queue")
        .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .preallocation(Preallocation::Grow)
        .durability(Durability::None)
        .cleanup(CleanupPolicy::Compact)
        .compaction_scope(CompactionScope::AllSealed)
        .maintenance(Maintenance::Manual) // the compactions asserted on are the test's own
}

fn value_of_k(storage: &FaultyStorage) -> Option<Vec<u8>> {
    let queue = builder(storage).open().unwrap();
    let records: Vec<_> = queue.read_from(Offset::EARLIEST).unwrap().collect::<Result<_, _>>().unwrap();
    common::latest_values(records.iter().map(|r| (r.key.as_deref(), r.value.as_deref()))).remove(&b"K"[..])
}

#[test]
fn an_unsynced_newer_value_does_not_remove_the_durable_older_one() {
    let storage = FaultyStorage::new();
    let queue = builder(&storage).open().unwrap();
    queue.append(Message::new("v1").key("K")).unwrap();
    // Fill the segment so that it rolls: the roll seals (and fsyncs) the segment holding v1.
    while queue.stats().segment_rolls == 0 {
        queue.append(Message::new(vec![0u8; 1000])).unwrap();
    }
    queue.append(Message::new("v2").key("K")).unwrap(); // written, not fsynced (Durability::None)
    queue.compact().unwrap();
    let mut lost_v2 = 0;
    for seed in 0..32 {
        let value = value_of_k(&storage.crash_image(seed));
        assert!(value.is_some(), "power-cut image {seed}: K lost its value");
        lost_v2 += u64::from(value.as_deref() == Some(&b"v1"[..]));
    }
    assert!(lost_v2 > 0, "no image dropped the unsynced v2: the test proves nothing");
    // Once v2 is durable, compaction may remove v1.
    queue.flush().unwrap();
    let report = queue.compact().unwrap();
    assert_eq!(report.messages_removed, 1);
    assert_eq!(value_of_k(&storage.crash_image(0)).as_deref(), Some(&b"v2"[..]));
}
