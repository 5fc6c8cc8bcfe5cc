//! `max_ack_pending` (issue #13): a group never has more messages leased than the bound; `try_recv_batch` leases
//! no more, `recv` waits for an answer, and an answer makes room at once.

mod common;

use std::time::Duration;

use common::append_range;
use walq::{Error, Offset, Queue};

#[test]
fn no_more_than_max_ack_pending_are_leased_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::builder(dir.path()).max_ack_pending(3).open().unwrap();
    append_range(&queue, 0..10);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let held = consumer.try_recv_batch(10).unwrap();
    assert_eq!(held.len(), 3);
    assert!(consumer.try_recv_batch(10).unwrap().is_empty(), "the bound is reached");
    assert!(consumer.recv_timeout(Duration::from_millis(50)).unwrap().is_none(), "recv waits while it is");

    // An ack from another thread wakes a waiting consumer.
    let waiter = {
        let consumer = consumer.clone();
        std::thread::spawn(move || consumer.recv_timeout(Duration::from_secs(10)).unwrap())
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut held = held.into_iter();
    held.next().unwrap().ack().unwrap();
    let third = waiter.join().unwrap().expect("woken by the ack");
    assert_eq!(third.offset(), Offset(3));
    assert_eq!(group.stats().in_flight, 3);
    drop(held); // released: up for delivery again
    let again: Vec<u64> = consumer.try_recv_batch(10).unwrap().iter().map(|d| d.offset().0).collect();
    assert_eq!(again, vec![1, 2]);
}

#[test]
fn zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let error = Queue::builder(dir.path()).max_ack_pending(0).open().unwrap_err();
    assert!(matches!(error, Error::InvalidOption { option: "max_ack_pending", .. }), "{error}");
}
