//! One rule for answers on an ended lease, and lease expiry decided by time (#22 item 7). Before, a lease past
//! its deadline still held until some take happened to expire it: `extend_lease` then revived it and a `nack`
//! counted as a nack, while after a take the same calls failed or changed nothing; and `dead_letter` on an ended
//! lease was an error where `nack` was `Ok`. Now every answer first expires what is due: `nack`, `retry` and
//! `dead_letter` say `Nacked::LeaseEnded`, `extend_lease` fails with `LeaseExpired`, `ack` still counts.

mod common;

use std::time::Duration;

use common::*;
use walq::{Error, Nacked, Offset};

const TIMEOUT: Duration = Duration::from_millis(100);

#[test]
fn a_lease_past_its_deadline_has_ended_for_every_answer_without_a_take() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).ack_timeout(TIMEOUT).max_deliveries(10).open().unwrap();
    append_range(&queue, 0..4);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let batch = consumer.try_recv_batch(4).unwrap();
    std::thread::sleep(TIMEOUT + Duration::from_millis(50)); // no take in between
    let mut batch = batch.into_iter();
    let (first, second, third, fourth) =
        (batch.next().unwrap(), batch.next().unwrap(), batch.next().unwrap(), batch.next().unwrap());
    assert!(matches!(first.extend_lease(), Err(Error::LeaseExpired { offset: Offset(0) })));
    assert_eq!(second.nack(Duration::from_secs(3600)).unwrap(), Nacked::LeaseEnded, "the nack's delay is not applied");
    assert_eq!(third.dead_letter().unwrap(), Nacked::LeaseEnded);
    fourth.ack().unwrap(); // the work was done: it counts
    drop(first);
    assert!(group.dead_letters().is_empty());
    let stats = group.stats();
    assert_eq!((stats.expired, stats.nacked, stats.dropped, stats.acked), (4, 0, 0, 1));
    // 0, 1 and 2 come back at once (no delay, no dead letter), each on its second attempt.
    let again = consumer.try_recv_batch(10).unwrap();
    let seen: Vec<(u64, u32)> = again.iter().map(|d| (d.offset().0, d.attempt())).collect();
    assert_eq!(seen, vec![(0, 2), (1, 2), (2, 2)]);
    consumer.ack_all(again).unwrap();
    assert_eq!(group.ack_floor(), Offset(4));
}

#[test]
fn a_current_lease_answers_as_before() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).ack_timeout(Duration::from_secs(30)).open().unwrap();
    append_range(&queue, 0..3);
    let consumer = queue.group("g").unwrap().consumer();
    let batch = consumer.try_recv_batch(3).unwrap();
    let mut batch = batch.into_iter();
    let (first, second, third) = (batch.next().unwrap(), batch.next().unwrap(), batch.next().unwrap());
    first.extend_lease().unwrap();
    assert_eq!(first.retry().unwrap(), Nacked::Retry);
    assert_eq!(second.dead_letter().unwrap(), Nacked::DeadLettered);
    third.ack().unwrap();
    let stats = queue.group("g").unwrap().stats();
    assert_eq!((stats.expired, stats.nacked, stats.dead_lettered, stats.acked), (0, 1, 1, 1));
}
