//! A nack's delay survives a restart (issue #13): the delay is journaled with its absolute not-before time, so a
//! reopened queue delivers the message no earlier than that time (before, every delayed message came back at once
//! after a restart: a retry storm against whatever made the consumer nack).

mod common;

use std::time::{Duration, Instant};

use common::{append_range, assert_is_message};
use walq::{Offset, Queue};

#[test]
fn a_delayed_message_is_not_delivered_before_its_time_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    append_range(&queue, 0..2);
    let consumer = queue.group("g").unwrap().consumer();
    let delivery = consumer.try_recv().unwrap().unwrap();
    assert_eq!(delivery.offset(), Offset(0));
    let nacked_at = Instant::now();
    delivery.nack(Duration::from_millis(1500)).unwrap();
    drop((consumer, queue));

    let queue = Queue::open(dir.path()).unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    let next = consumer.try_recv().unwrap().expect("message 1 is not delayed");
    assert_eq!(next.offset(), Offset(1), "the delayed message does not come first after the restart");
    next.ack().unwrap();
    assert!(consumer.try_recv().unwrap().is_none(), "nothing is due yet");
    let delivery = consumer.recv_timeout(Duration::from_secs(10)).unwrap().expect("delivered once due");
    assert!(nacked_at.elapsed() >= Duration::from_millis(1500), "delivered {:?} after the nack", nacked_at.elapsed());
    assert_is_message(delivery.message(), 0);
    assert_eq!(delivery.attempt(), 2);
    delivery.ack().unwrap();
}
