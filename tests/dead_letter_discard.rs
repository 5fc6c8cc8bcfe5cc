//! Reading a dead letter by its offset and ending it for good (#22 item 3): `Queue::get` returns the record at
//! exactly that offset (not the next one after a gap); `Group::discard` ends a dead letter, which then no longer
//! holds its segment under `DeleteConsumed` (before, dead letters pinned their segments forever), and the discard
//! survives a restart.

mod common;

use common::*;
use walq::{CleanupPolicy, Maintenance, Offset, Queue};

/// Messages of about 2 KiB: a 64 KiB segment holds about 30.
fn big(i: u64) -> walq::Message {
    walq::Message::new(vec![(i % 251) as u8; 2000]).key(format!("k{i}"))
}

#[test]
fn get_reads_exactly_one_offset() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..200);
    for i in [0, 1, 57, 199] {
        assert_is_message(&queue.get(Offset(i)).unwrap().expect("stored"), i);
    }
    assert_eq!(queue.get(Offset(200)).unwrap(), None, "not appended yet");
    assert_eq!(queue.get(Offset::LATEST).unwrap(), None);
}

#[test]
fn get_of_a_compacted_offset_is_none_not_the_next_record() {
    let temp = tempfile::tempdir().unwrap();
    let open = || small(temp.path()).cleanup(CleanupPolicy::Compact).maintenance(Maintenance::Manual).open();
    let queue = open().unwrap();
    // Key "a" at 0 and again at 1: keyed compaction removes 0 once its segment is sealed.
    queue.append(walq::Message::new(b"old".to_vec()).key(b"a".to_vec())).unwrap();
    queue.append(walq::Message::new(b"new".to_vec()).key(b"a".to_vec())).unwrap();
    for i in 2..100 {
        queue.append(big(i)).unwrap();
    }
    queue.compact().unwrap();
    assert_eq!(queue.get(Offset(0)).unwrap(), None, "a gap, not offset 1");
    assert_eq!(queue.get(Offset(1)).unwrap().unwrap().value.as_deref(), Some(&b"new"[..]));
}

#[test]
fn discard_ends_a_dead_letter_for_good_and_frees_its_segment() {
    let temp = tempfile::tempdir().unwrap();
    let open = || small(temp.path()).cleanup(CleanupPolicy::DeleteConsumed).maintenance(Maintenance::Manual).open();
    let queue = open().unwrap();
    for i in 0..200 {
        queue.append(big(i)).unwrap();
    }
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    consumer.try_recv().unwrap().unwrap().dead_letter().unwrap(); // offset 0, in the oldest segment
    while let Some(delivery) = consumer.try_recv().unwrap() {
        delivery.ack().unwrap();
    }
    queue.compact().unwrap();
    let held = segment_files(temp.path());
    let dead = group.dead_letters();
    assert_eq!(dead.len(), 1);
    // The dead letter is readable by its offset, and its segment is kept for it.
    assert_eq!(queue.get(dead[0].offset).unwrap().unwrap().value, big(0).value_bytes().map(<[u8]>::to_vec));
    assert!(held.len() >= 2, "the oldest segment is held: {held:?}");
    assert!(!group.discard(Offset(1)).unwrap(), "an acked message is not a dead letter");
    assert!(group.discard(Offset(0)).unwrap());
    assert!(group.dead_letters().is_empty());
    queue.compact().unwrap();
    let after = segment_files(temp.path());
    assert_eq!(after.len(), 1, "everything consumed is deleted but the active segment: {after:?}");
    assert_eq!(queue.get(Offset(0)).unwrap(), None);
    drop((consumer, group));
    queue.close().unwrap();

    let queue = Queue::open(temp.path()).unwrap();
    let group = queue.existing_group("g").unwrap();
    assert!(group.dead_letters().is_empty(), "the discard was journaled");
    assert!(!group.redrive(Offset(0)).unwrap());
}
