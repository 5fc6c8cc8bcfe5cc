//! After `max_deliveries` failed attempts a message is dead-lettered: kept, listed with its attempt count,
//! redrivable, and all of it survives a reopen.

mod common;

use std::time::Duration;

use common::*;
use walq::{DeadLetter, Error, Offset};

fn offsets_and_attempts(dead: &[DeadLetter]) -> Vec<(Offset, u32)> {
    dead.iter().map(|d| (d.offset, d.attempts)).collect()
}

#[test]
fn repeated_failure_dead_letters_and_redrive_brings_it_back() {
    let temp = tempfile::tempdir().unwrap();
    let open = || small(temp.path()).max_deliveries(3).open().unwrap();
    let queue = open();
    append_range(&queue, 0..3);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    for attempt in 1..=3 {
        let delivery = consumer.try_recv().unwrap().unwrap();
        assert_eq!((delivery.offset(), delivery.attempt()), (Offset(0), attempt));
        delivery.nack(Duration::ZERO).unwrap();
    }
    assert_eq!(offsets_and_attempts(&group.dead_letters()), vec![(Offset(0), 3)]);
    assert_eq!(group.dead_letters()[0].reason.as_deref(), Some("3 failed attempts; the last was nacked"));
    let next = consumer.try_recv().unwrap().unwrap();
    assert_eq!(next.offset(), Offset(1), "a dead letter is not delivered again");
    next.ack().unwrap();
    assert_eq!(group.ack_floor(), Offset(2), "a dead letter does not hold the floor back");
    assert_eq!(queue.stats().groups[0].dead_letters, 1);
    drop((consumer, group, queue));

    let queue = open();
    let group = queue.group("g").unwrap();
    assert_eq!(offsets_and_attempts(&group.dead_letters()), vec![(Offset(0), 3)], "dead letters persist");
    assert_eq!(group.dead_letters()[0].reason.as_deref(), Some("3 failed attempts; the last was nacked"));
    assert!(!group.redrive(Offset(1)).unwrap(), "not a dead letter");
    assert!(group.redrive(Offset(0)).unwrap());
    assert!(group.dead_letters().is_empty());
    drop((group, queue));

    let queue = open();
    let consumer = queue.group("g").unwrap().consumer();
    let redriven = consumer.try_recv().unwrap().unwrap();
    assert_eq!(
        (redriven.offset(), redriven.attempt()),
        (Offset(0), 1),
        "a redrive survives reopen and resets attempts"
    );
    redriven.ack().unwrap();
    assert_eq!(consumer.try_recv().unwrap().unwrap().offset(), Offset(2));
}

#[test]
fn explicit_dead_letter_and_dropped_last_attempt() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).max_deliveries(2).open().unwrap();
    append_range(&queue, 0..3);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    consumer.try_recv().unwrap().unwrap().dead_letter().unwrap();
    drop(consumer.try_recv().unwrap().unwrap()); // offset 1, attempt 1
    drop(consumer.try_recv().unwrap().unwrap()); // offset 1, attempt 2: dropped on its last attempt
    let offsets: Vec<Offset> = group.dead_letters().iter().map(|d| d.offset).collect();
    assert_eq!(offsets, vec![Offset(0), Offset(1)]);
    let last = consumer.try_recv().unwrap().unwrap();
    assert_eq!(last.offset(), Offset(2));
    let stale_answer = last.extend_lease();
    assert!(stale_answer.is_ok());
    last.ack().unwrap();
    assert!(matches!(queue.group("bad/name"), Err(Error::InvalidGroupName { .. })));
}
