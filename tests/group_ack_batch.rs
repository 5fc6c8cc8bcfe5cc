//! `Consumer::ack_all`: a batch of acks costs one journal commit, moves the floor like single acks, and persists.

mod common;

use std::time::Duration;

use common::{append_range, small};
use walq::{Durability, Offset};

#[test]
fn a_batch_of_acks_is_one_fsync_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let queue = small(dir.path()).durability(Durability::Sync).open().unwrap();
    append_range(&queue, 0..1_000);
    let group = queue.group("batch").unwrap();
    let consumer = group.consumer();
    let deliveries: Vec<_> = (0..1_000).map(|_| consumer.try_recv().unwrap().unwrap()).collect();
    let fsyncs_before = group.stats().fsyncs;

    consumer.ack_all(deliveries).unwrap();

    assert_eq!(group.stats().fsyncs - fsyncs_before, 1, "one fsync for the whole batch");
    assert_eq!(group.ack_floor(), Offset(1_000));
    assert_eq!(group.stats().in_flight, 0);
    queue.close().unwrap();

    let queue = small(dir.path()).durability(Durability::Sync).open().unwrap();
    let group = queue.group("batch").unwrap();
    assert_eq!(group.ack_floor(), Offset(1_000), "the batch's acks were journaled");
    assert!(group.consumer().recv_timeout(Duration::from_millis(50)).unwrap().is_none(), "nothing redelivered");
}

#[test]
fn a_partial_batch_leaves_the_rest_to_be_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let queue = small(dir.path()).durability(Durability::Sync).open().unwrap();
    append_range(&queue, 0..10);
    let group = queue.group("partial").unwrap();
    let consumer = group.consumer();
    let mut deliveries: Vec<_> = (0..10).map(|_| consumer.try_recv().unwrap().unwrap()).collect();
    let odd: Vec<_> = deliveries.extract_if(.., |d| d.offset().0 % 2 == 1).collect();
    consumer.ack_all(odd).unwrap();
    drop(deliveries); // unanswered: up for delivery again at once

    assert_eq!(group.ack_floor(), Offset(0), "offset 0 was not acked");
    let again: Vec<_> = std::iter::from_fn(|| consumer.try_recv().unwrap()).collect();
    assert_eq!(again.iter().map(|d| d.offset().0).collect::<Vec<_>>(), vec![0, 2, 4, 6, 8]);
}

#[test]
fn deliveries_of_two_groups_are_each_acked_in_their_own_group() {
    let dir = tempfile::tempdir().unwrap();
    let queue = small(dir.path()).open().unwrap();
    append_range(&queue, 0..3);
    let (a, b) = (queue.group("a").unwrap(), queue.group("b").unwrap());
    let mut mixed: Vec<_> = (0..3).map(|_| a.consumer().try_recv().unwrap().unwrap()).collect();
    mixed.extend((0..3).map(|_| b.consumer().try_recv().unwrap().unwrap()));

    a.consumer().ack_all(mixed).unwrap();

    assert_eq!(a.ack_floor(), Offset(3));
    assert_eq!(b.ack_floor(), Offset(3));
}

#[test]
fn an_empty_batch_journals_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let queue = small(dir.path()).durability(Durability::Sync).open().unwrap();
    let group = queue.group("empty").unwrap();
    let fsyncs_before = group.stats().fsyncs;
    group.consumer().ack_all(Vec::new()).unwrap();
    assert_eq!(group.stats().fsyncs, fsyncs_before);
}
