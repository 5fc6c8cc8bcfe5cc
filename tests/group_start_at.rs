//! Where a new group starts (#18 item 1, first part): `Queue::group_starting_at(name, StartAt)` creates a group at
//! the oldest message, at the end (only what is appended from now on), or at an offset clamped to what is stored;
//! the start is persisted like any group's progress (it survives a reopen), and an existing group keeps its own.

mod common;

use common::*;
use walq::{Offset, StartAt};

#[test]
fn a_group_started_at_the_end_gets_only_new_messages_and_keeps_that_across_a_reopen() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..100);
    let live = queue.group_starting_at("live", StartAt::Latest).unwrap();
    assert_eq!(live.ack_floor(), Offset(100));
    assert!(live.consumer().try_recv().unwrap().is_none());
    assert_eq!(live.stats().lag, 0);
    drop(live);
    queue.close().unwrap();

    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 100..103);
    let live = queue.existing_group("live").unwrap();
    let batch = live.consumer().try_recv_batch(10).unwrap();
    let offsets: Vec<u64> = batch.iter().map(|d| d.offset().0).collect();
    assert_eq!(offsets, vec![100, 101, 102]);
    assert_is_message(batch[0].message(), 100);
    live.consumer().ack_all(batch).unwrap();
}

#[test]
fn a_group_started_at_an_offset_is_clamped_to_what_is_stored() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..50);
    let middle = queue.group_starting_at("middle", StartAt::Offset(Offset(20))).unwrap();
    assert_eq!(middle.consumer().try_recv().unwrap().unwrap().offset(), Offset(20));
    let past = queue.group_starting_at("past", StartAt::Offset(Offset(1_000))).unwrap();
    assert_eq!(past.ack_floor(), Offset(50), "past the end: the end");
    let earliest = queue.group_starting_at("earliest", StartAt::Earliest).unwrap();
    assert_eq!(earliest.consumer().try_recv().unwrap().unwrap().offset(), Offset(0));
}

#[test]
fn an_existing_group_keeps_its_progress_whatever_start_is_asked() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..10);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    consumer.ack_all(consumer.try_recv_batch(3).unwrap()).unwrap();
    let again = queue.group_starting_at("g", StartAt::Latest).unwrap();
    assert_eq!(again.ack_floor(), Offset(3));
    assert_eq!(again.consumer().try_recv().unwrap().unwrap().offset(), Offset(3));
}
