//! Delivery within and across groups: independent groups each see every message; competing consumers of one
//! group see each message once (without failures) and together all; offset order; redeliveries first; nack with
//! delay; dropped deliveries come back at once; expired leases go to another consumer; stale leases are refused.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use walq::{Error, Offset};

const SHORT: Duration = Duration::from_millis(200);

#[test]
fn independent_groups_each_see_every_message_in_order() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..500);
    for name in ["billing", "audit"] {
        let consumer = queue.group(name).unwrap().consumer();
        for i in 0..500 {
            let delivery = consumer.try_recv().unwrap().expect("a message");
            assert_is_message(delivery.message(), i);
            assert_eq!(delivery.attempt(), 1);
            delivery.ack().unwrap();
        }
        assert!(consumer.try_recv().unwrap().is_none());
    }
    assert_eq!(queue.groups(), vec!["audit".to_string(), "billing".to_string()]);
}

#[test]
fn competing_consumers_share_the_work_exactly_once_without_failures() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let group = queue.group("workers").unwrap();
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || append_range(&queue, 0..2000))
    };
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let consumer = group.consumer();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while let Some(delivery) = consumer.recv_timeout(Duration::from_secs(2)).unwrap() {
                    seen.push(delivery.offset().0);
                    delivery.ack().unwrap();
                }
                seen
            })
        })
        .collect();
    producer.join().unwrap();
    let per_worker: Vec<Vec<u64>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let all: Vec<u64> = per_worker.iter().flatten().copied().collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), 2000, "each message exactly once");
    assert_eq!(unique, (0..2000).collect());
    assert!(per_worker.iter().filter(|w| !w.is_empty()).count() >= 2, "the work is shared");
    for worker in &per_worker {
        assert!(worker.windows(2).all(|w| w[0] < w[1]), "each consumer sees increasing offsets");
    }
    assert_eq!(group.ack_floor(), Offset(2000));
}

#[test]
fn dropped_delivery_comes_back_first_with_its_attempt_counted() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..5);
    let consumer = queue.group("g").unwrap().consumer();
    let first = consumer.try_recv().unwrap().unwrap();
    let second = consumer.try_recv().unwrap().unwrap();
    assert_eq!((first.offset(), second.offset()), (Offset(0), Offset(1)));
    drop(second);
    let again = consumer.try_recv().unwrap().unwrap();
    assert_eq!(again.offset(), Offset(1), "redeliveries go before new messages");
    assert_eq!(again.attempt(), 2);
    assert_eq!(queue.stats().groups[0].redeliveries, 1);
    again.ack().unwrap();
    first.ack().unwrap();
    assert_eq!(consumer.try_recv().unwrap().unwrap().offset(), Offset(2));
}

#[test]
fn nack_with_delay_redelivers_after_the_delay() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..2);
    let consumer = queue.group("g").unwrap().consumer();
    let delivery = consumer.try_recv().unwrap().unwrap();
    delivery.nack(SHORT).unwrap();
    let next = consumer.try_recv().unwrap().unwrap();
    assert_eq!(next.offset(), Offset(1), "the nacked message waits out its delay");
    next.ack().unwrap();
    assert!(consumer.try_recv().unwrap().is_none());
    let again = consumer.recv_timeout(Duration::from_secs(5)).unwrap().expect("redelivered after the delay");
    assert_eq!((again.offset(), again.attempt()), (Offset(0), 2));
}

#[test]
fn expired_lease_goes_to_another_consumer_and_extension_keeps_it() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).ack_timeout(SHORT).open().unwrap();
    append_range(&queue, 0..2);
    let group = queue.group("g").unwrap();
    let (slow, other) = (group.consumer(), group.consumer());
    let stuck = slow.try_recv().unwrap().unwrap();
    let kept = slow.try_recv().unwrap().unwrap();
    for _ in 0..4 {
        std::thread::sleep(SHORT / 2);
        kept.extend_lease().unwrap();
    }
    let taken_over = other.recv_timeout(Duration::from_secs(5)).unwrap().expect("the expired lease is redelivered");
    assert_eq!(taken_over.offset(), stuck.offset());
    assert_eq!(taken_over.attempt(), 2);
    assert!(matches!(stuck.extend_lease(), Err(Error::LeaseExpired { offset: Offset(0) })));
    assert!(other.try_recv().unwrap().is_none(), "the extended lease was not taken over");
    // Delivered again meanwhile: the late ack is refused, the new delivery answers for the message (#18 item 6).
    assert!(matches!(stuck.ack(), Err(Error::StaleLease { offset: Offset(0) })));
    assert_eq!(group.ack_floor(), Offset(0));
    taken_over.ack().unwrap();
    kept.ack().unwrap();
    assert_eq!(group.ack_floor(), Offset(2));
}
