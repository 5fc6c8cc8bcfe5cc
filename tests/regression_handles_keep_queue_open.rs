//! Regression: the last `Queue` handle closed the queue under live handles (#12, item 16).
//!
//! The bug: only `Queue` clones held the queue's shared state, so `Queue::open(d)?.group("g")?.consumer()` returned
//! a consumer whose every call failed with `Closed`: the temporary `Queue` closed the queue when it was dropped.
//!
//! The fix: every handle the queue gives out (`Reader`, `Group`, `Consumer`, `Delivery`) holds the queue open; it
//! closes, and releases its lock, when the last of them is dropped (or at once with `Queue::close`).

mod common;

use common::{append_range, assert_is_message};
use walq::{Error, Offset, Queue};

#[test]
fn a_consumer_from_a_temporary_queue_handle_works() {
    let dir = tempfile::tempdir().unwrap();
    append_range(&Queue::open(dir.path()).unwrap(), 0..3);
    let consumer = Queue::open(dir.path()).unwrap().group("g").unwrap().consumer();
    let delivery = consumer.try_recv().unwrap().expect("a message");
    assert_is_message(delivery.message(), 0);
    delivery.ack().unwrap();
    // The queue is still open (and locked) while the consumer lives.
    assert!(matches!(Queue::open(dir.path()), Err(Error::Locked { .. })));
    drop(consumer);
    let queue = Queue::open(dir.path()).expect("closed with its last handle");
    assert_eq!(queue.group("g").unwrap().ack_floor(), Offset(1));
}

#[test]
fn a_reader_and_a_delivery_keep_the_queue_open_and_close_closes_it_for_all() {
    let dir = tempfile::tempdir().unwrap();
    append_range(&Queue::open(dir.path()).unwrap(), 0..3);
    let mut reader = Queue::open(dir.path()).unwrap().read_from(Offset::EARLIEST).unwrap();
    assert_is_message(&reader.next().unwrap().unwrap(), 0);
    drop(reader);

    let queue = Queue::open(dir.path()).unwrap();
    let delivery = queue.group("g").unwrap().consumer().try_recv().unwrap().unwrap();
    drop(queue);
    delivery.ack().expect("a delivery keeps its queue open");

    let queue = Queue::open(dir.path()).unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    queue.close().unwrap();
    assert!(matches!(consumer.try_recv(), Err(Error::Closed)), "close closes the queue for every handle");
    Queue::open(dir.path()).expect("close released the lock although a consumer lives");
}
