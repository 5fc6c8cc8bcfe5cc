//! `QueueBuilder::retry_backoff` (#22, item 2): a failed delivery (`Delivery::retry`, a dropped delivery, an
//! expired lease) waits the policy's exponential backoff before it is delivered again, and the wait survives a
//! restart; `nack` says what became of the message; `is_last_attempt` says when a failure dead-letters.
//! Waits are checked from below only (never "before its time"): how late a wake-up comes is the scheduler's.

mod common;

use std::time::{Duration, Instant};

use common::*;
use walq::{Consumer, Delivery, Nacked, Offset, QueueBuilder, RetryBackoff};

const MS: Duration = Duration::from_millis(1);

/// 150 ms, then 300 ms, then 600 ms; no jitter, so the waits are exact lower bounds.
fn backing_off(dir: &std::path::Path) -> QueueBuilder {
    small(dir).retry_backoff(RetryBackoff::exponential(150 * MS, 600 * MS).jitter_percent(0)).max_deliveries(4)
}

/// Waits for the next delivery; returns it and the time since `failed` (taken before the failing call, so that
/// the wait the queue chose is a lower bound of it).
fn next(consumer: &Consumer, failed: Instant) -> (Delivery, Duration) {
    let delivery = consumer.recv_timeout(Duration::from_secs(10)).unwrap().expect("delivered again");
    (delivery, failed.elapsed())
}

#[test]
fn failures_wait_longer_each_time_then_dead_letter() {
    let temp = tempfile::tempdir().unwrap();
    let queue = backing_off(temp.path()).open().unwrap();
    append_range(&queue, 0..1);
    let consumer = queue.group("jobs").unwrap().consumer();
    let first = consumer.try_recv().unwrap().unwrap();
    assert!(!first.is_last_attempt());
    let failed = Instant::now();
    assert_eq!(first.retry().unwrap(), Nacked::Retry);
    assert!(consumer.try_recv().unwrap().is_none(), "not delivered again at once");
    let (second, waited) = next(&consumer, failed);
    assert!(waited >= 150 * MS, "waited {waited:?}");
    let failed = Instant::now();
    drop(second); // a dropped delivery (a panicking handler) waits too, longer
    let (third, waited) = next(&consumer, failed);
    assert!(waited >= 300 * MS, "waited {waited:?}");
    let failed = Instant::now();
    assert_eq!(third.retry().unwrap(), Nacked::Retry);
    let (fourth, waited) = next(&consumer, failed);
    assert!(waited >= 600 * MS, "waited {waited:?}");
    assert_eq!(fourth.attempt(), 4);
    assert!(fourth.is_last_attempt());
    assert_eq!(fourth.retry().unwrap(), Nacked::DeadLettered);
    assert_eq!(queue.group("jobs").unwrap().dead_letters()[0].offset, Offset(0));
}

#[test]
fn an_expired_lease_waits_the_backoff() {
    let temp = tempfile::tempdir().unwrap();
    let queue = backing_off(temp.path()).ack_timeout(50 * MS).open().unwrap();
    append_range(&queue, 0..1);
    let consumer = queue.group("jobs").unwrap().consumer();
    let taken = Instant::now();
    let held = consumer.try_recv().unwrap().unwrap();
    let (again, waited) = next(&consumer, taken);
    assert!(waited >= (50 + 150) * MS, "redelivered after {waited:?}");
    assert_eq!(again.attempt(), 2);
    assert_eq!(held.nack(Duration::ZERO).unwrap(), Nacked::LeaseEnded, "the expired lease's nack changes nothing");
    again.ack().unwrap();
}

#[test]
fn an_explicit_nack_delay_is_kept_and_zero_means_at_once() {
    let temp = tempfile::tempdir().unwrap();
    let queue = backing_off(temp.path()).open().unwrap();
    append_range(&queue, 0..1);
    let consumer = queue.group("jobs").unwrap().consumer();
    assert_eq!(consumer.try_recv().unwrap().unwrap().nack(Duration::ZERO).unwrap(), Nacked::Retry);
    let again = consumer.try_recv().unwrap().expect("a zero delay redelivers at once, backoff or not");
    assert_eq!(again.attempt(), 2);
    again.ack().unwrap();
}

#[test]
fn the_wait_survives_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let backoff = RetryBackoff::exponential(Duration::from_secs(2), Duration::from_secs(2)).jitter_percent(0);
    let queue = small(temp.path()).retry_backoff(backoff).open().unwrap();
    append_range(&queue, 0..2);
    let consumer = queue.group("jobs").unwrap().consumer();
    let failed_at = Instant::now();
    consumer.try_recv().unwrap().unwrap().retry().unwrap();
    drop(consumer.try_recv().unwrap().unwrap()); // a drop's wait is journaled too (made durable by the close)
    drop(consumer);
    queue.close().unwrap();
    // Reopened without a policy: the journaled waits still hold.
    let queue = small(temp.path()).open().unwrap();
    let consumer = queue.group("jobs").unwrap().consumer();
    assert!(consumer.try_recv().unwrap().is_none(), "delivered before its wait after a restart");
    let mut offsets = Vec::new();
    for _ in 0..2 {
        let (again, waited) = next(&consumer, failed_at);
        assert!(waited >= Duration::from_secs(2), "offset {} after {waited:?}", again.offset());
        assert_eq!(again.attempt(), 2);
        offsets.push(again.offset().0);
        again.ack().unwrap();
    }
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1]);
}

#[test]
fn a_bad_policy_is_refused_at_open() {
    let temp = tempfile::tempdir().unwrap();
    let bad = RetryBackoff::exponential(Duration::from_secs(2), Duration::from_secs(1));
    let error = small(temp.path()).retry_backoff(bad).open().unwrap_err();
    assert!(matches!(error, walq::Error::InvalidOption { option: "retry_backoff", .. }), "{error}");
}
