//! `SharedQueue` in one process (tests/remote_takeover_kill9.rs crosses processes under `kill -9`): the first
//! open owns and serves, later ones connect; when the owner's handle goes, a connected handle takes the queue over,
//! and its readers and consumers carry on where they were.

mod common;

use std::time::Duration;

use walq::remote::SharedQueue;
use walq::{Message, Offset, Queue};

fn open(dir: &std::path::Path) -> SharedQueue {
    SharedQueue::open(Queue::builder(dir).ack_timeout(Duration::from_secs(3_600))).unwrap()
}

#[test]
fn the_first_open_owns_the_next_connect_and_take_over_when_it_goes() {
    let temp = tempfile::tempdir().unwrap();
    let first = open(temp.path());
    let second = open(temp.path());
    assert!(first.is_owner() && !second.is_owner());
    assert_eq!(second.owner_pid(), Some(std::process::id()));
    for i in 0..3_000 {
        let by = if i % 2 == 0 { &first } else { &second };
        assert_eq!(by.append(common::message(i)).unwrap(), Offset(i));
    }
    let stats = second.stats().unwrap();
    assert_eq!((stats.next_offset, stats.owner_pid), (Offset(3_000), std::process::id()));
    assert!(stats.clients_served >= 2, "the second handle's connection and its watch: {}", stats.clients_served);
    // A reader and a consumer of the second handle, part way through.
    let mut reader = second.read_from(Offset(0));
    for i in 0..1_500 {
        common::assert_is_message(&reader.next().unwrap().unwrap(), i);
    }
    let consumer = second.group("g").unwrap().consumer().unwrap();
    let taken = consumer.try_recv_batch(10).unwrap();
    assert_eq!(taken.len(), 10);
    consumer.ack_all(taken).unwrap();
    let held = consumer.try_recv().unwrap().unwrap(); // leased through the first, which now goes
    assert_eq!(held.offset(), Offset(10));
    drop(first);
    // The reader goes on where it was; the second handle now owns the queue.
    for i in 1_500..3_000 {
        common::assert_is_message(&reader.next().unwrap().unwrap(), i);
    }
    assert!(reader.next().is_none());
    assert!(second.is_owner());
    // The answer to a lease of the old owner fails (its lease died with it); the message comes again.
    assert!(matches!(held.ack(), Err(walq::Error::ConnectionLost { .. })));
    let again = consumer.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(again.offset(), Offset(10));
    again.ack().unwrap();
    assert_eq!(second.append(Message::new("after")).unwrap(), Offset(3_000));
    // A third open now connects to the second.
    let third = open(temp.path());
    assert!(!third.is_owner());
    assert_eq!(third.get(Offset(3_000)).unwrap().unwrap().value.as_deref(), Some(&b"after"[..]));
}

#[test]
fn a_consumer_waiting_through_a_takeover_gets_what_is_appended_after_it() {
    let temp = tempfile::tempdir().unwrap();
    let first = open(temp.path());
    let second = open(temp.path());
    let consumer = second.consumer("g").unwrap();
    let waiting = std::thread::spawn(move || {
        let delivery = consumer.recv_timeout(Duration::from_secs(30)).unwrap().expect("a message");
        let offset = delivery.offset();
        delivery.ack().unwrap();
        (offset, second)
    });
    std::thread::sleep(Duration::from_millis(200));
    drop(first); // the owner goes while the consumer waits through it
    let third = open(temp.path());
    third.append(Message::new("late")).unwrap();
    let (offset, second) = waiting.join().unwrap();
    assert_eq!(offset, Offset(0));
    assert!(second.is_owner() || third.is_owner());
}
