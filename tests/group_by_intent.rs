//! `Queue::existing_group` (#22 item 5): a consumer that opens a group by name must not create one by a typo. A
//! created group holds every segment under `DeleteConsumed` until it is deleted, so a mistyped name used to stop
//! cleanup silently. `existing_group` of a missing name is `GroupNotFound` and writes nothing.

mod common;

use common::*;
use walq::{Error, Queue};

#[test]
fn a_missing_group_is_an_error_and_nothing_is_created() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..3);
    let before = dir_snapshot(temp.path());
    match queue.existing_group("ordres") {
        Err(Error::GroupNotFound { name }) => assert_eq!(name, "ordres"),
        other => panic!("expected GroupNotFound, got {other:?}"),
    }
    assert!(queue.groups().is_empty());
    assert_eq!(dir_snapshot(temp.path()), before, "no journal file was written");
    // A bad name is still a bad name, not a missing group.
    assert!(matches!(queue.existing_group(".hidden"), Err(Error::InvalidGroupName { .. })));
}

#[test]
fn an_existing_group_opens_with_its_progress_also_after_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    {
        let queue = small(temp.path()).open().unwrap();
        append_range(&queue, 0..5);
        let consumer = queue.group("orders").unwrap().consumer();
        consumer.try_recv().unwrap().unwrap().ack().unwrap();
        // The same state as the creating handle's.
        let opened = queue.existing_group("orders").unwrap();
        assert_eq!(opened.ack_floor().value(), 1);
        queue.close().unwrap();
    }
    let queue = Queue::open(temp.path()).unwrap();
    let group = queue.existing_group("orders").unwrap();
    assert_eq!(group.ack_floor().value(), 1);
    let next = group.consumer().try_recv().unwrap().unwrap();
    assert_is_message(next.message(), 1);
    // A deleted group is missing again.
    next.ack().unwrap();
    assert!(queue.delete_group("orders").unwrap());
    assert!(matches!(queue.existing_group("orders"), Err(Error::GroupNotFound { .. })));
}
