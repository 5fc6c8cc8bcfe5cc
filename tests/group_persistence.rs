//! Group progress survives reopen: the ack floor, acks above it, attempt counts; no acked message comes back and
//! none is skipped. Groups are listed, deleted, and their names validated.

mod common;

use std::time::Duration;

use common::*;
use walq::{Error, Offset};

#[test]
fn progress_survives_reopen() {
    let temp = tempfile::tempdir().unwrap();
    let open = || small(temp.path()).open().unwrap();
    let queue = open();
    append_range(&queue, 0..10);
    let consumer = queue.group("g").unwrap().consumer();
    let deliveries: Vec<_> = (0..6).map(|_| consumer.try_recv().unwrap().unwrap()).collect();
    let mut deliveries = deliveries.into_iter();
    for (i, delivery) in deliveries.by_ref().enumerate() {
        match i {
            0 | 1 | 3 | 5 => delivery.ack().unwrap(), // floor 2, acks above it at 3 and 5
            2 => {
                delivery.nack(Duration::ZERO).unwrap();
            }
            _ => std::mem::forget(delivery), // 4: in flight when the process "stops"
        }
    }
    queue.close().unwrap();
    drop((consumer, queue));

    let queue = open();
    let group = queue.group("g").unwrap();
    assert_eq!(group.ack_floor(), Offset(2));
    let consumer = group.consumer();
    let mut again = Vec::new();
    while let Some(delivery) = consumer.try_recv().unwrap() {
        again.push((delivery.offset().0, delivery.attempt()));
        delivery.ack().unwrap();
    }
    // 2 was nacked once, 4 was in flight: both come back with their attempt counted; 3 and 5 never come back.
    assert_eq!(again, vec![(2, 2), (4, 2), (6, 1), (7, 1), (8, 1), (9, 1)]);
    assert_eq!(group.ack_floor(), Offset(10));
    assert_eq!(group.stats().lag, 0);
}

#[test]
fn new_group_starts_at_the_oldest_stored_message_and_new_appends_reach_it() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..3);
    let consumer = queue.group("late").unwrap().consumer();
    assert_eq!(consumer.try_recv().unwrap().unwrap().offset(), Offset(0));
    let stats = queue.stats();
    assert_eq!(stats.groups[0].lag, 3);
    assert_eq!(stats.groups[0].in_flight, 0, "the dropped delivery is back");
    assert!(stats.groups[0].oldest_unacked_age_ms.is_some());
}

#[test]
fn groups_are_listed_and_deleted() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..3);
    let doomed = queue.group("doomed").unwrap();
    queue.group("kept").unwrap();
    assert!(queue.delete_group("doomed").unwrap());
    assert!(!queue.delete_group("doomed").unwrap());
    assert!(matches!(doomed.consumer().try_recv(), Err(Error::GroupDeleted { .. })));
    queue.close().unwrap();
    let queue = small(temp.path()).open().unwrap();
    assert_eq!(queue.groups(), vec!["kept".to_string()]);
    let recreated = queue.group("doomed").unwrap();
    assert_eq!(recreated.ack_floor(), Offset(0), "a deleted group's progress is gone");
}

#[test]
fn invalid_group_names_create_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let long = "x".repeat(65);
    for name in ["", ".", "..", ".hidden", "a/b", "a\\b", "a b", "é", long.as_str(), "nul\0"] {
        assert!(matches!(queue.group(name), Err(Error::InvalidGroupName { .. })), "{name:?}");
    }
    assert!(queue.groups().is_empty());
    assert!(!temp.path().join("groups").exists());
    queue.group(&"x".repeat(64)).unwrap();
    queue.group("a-b_c.d9").unwrap();
}

#[test]
fn journal_checkpoints_keep_progress() {
    let temp = tempfile::tempdir().unwrap();
    let open = || small(temp.path()).durability(walq::Durability::None).open().unwrap();
    let queue = open();
    let batch: Vec<_> = (0..20_000).map(message).collect();
    queue.append_batch(&batch).unwrap();
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    for i in 0..20_000 {
        let delivery = consumer.try_recv().unwrap().unwrap();
        if i == 17 {
            delivery.dead_letter().unwrap();
        } else if i != 18 {
            delivery.ack().unwrap();
        } else {
            std::mem::forget(delivery); // in flight
        }
    }
    let journal = temp.path().join("groups").join("g.journal");
    let journal_bytes = std::fs::metadata(&journal).unwrap().len();
    assert!(
        journal_bytes < 1 << 20,
        "40,000 records would be 1.6 MB: the journal was checkpointed ({journal_bytes} B)"
    );
    queue.close().unwrap();
    drop((consumer, group, queue));
    let queue = open();
    let group = queue.group("g").unwrap();
    assert_eq!(group.ack_floor(), Offset(18));
    assert_eq!(group.dead_letters().iter().map(|d| d.offset).collect::<Vec<_>>(), vec![Offset(17)]);
    let again = group.consumer().try_recv().unwrap().unwrap();
    assert_eq!((again.offset(), again.attempt()), (Offset(18), 2));
    assert!(group.consumer().try_recv().unwrap().is_none(), "nothing above 18 comes back");
}
