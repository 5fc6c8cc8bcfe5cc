//! Fencing and acks by offset (#18 item 6): every delivery carries a lease token; `Group::ack(offset, token)`,
//! `Group::nack` and `Group::extend_lease` answer for a delivery away from its `Delivery` (another thread, another
//! process through `to_u128`), and an answer whose lease ended is refused (`Error::StaleLease`,
//! `Nacked::LeaseEnded`, `Error::LeaseExpired`) instead of answering for the message's next delivery. A
//! `Delivery`'s own late ack still counts unless the message was delivered again meanwhile.

mod common;

use std::time::Duration;

use common::*;
use walq::{Error, LeaseToken, Nacked, Offset};

const SHORT: Duration = Duration::from_millis(100);

#[test]
fn an_ack_by_offset_and_token_from_another_thread_acks() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..3);
    let group = queue.group("g").unwrap();
    let batch = group.consumer().try_recv_batch(3).unwrap();
    let work: Vec<(Offset, u128)> = batch.iter().map(|d| (d.offset(), d.token().to_u128())).collect();
    std::mem::forget(batch); // the deliveries' owner is gone; the tokens travel as numbers
    let acker = group.clone();
    std::thread::spawn(move || {
        for (offset, token) in work {
            acker.ack(offset, LeaseToken::from_u128(token)).unwrap();
        }
    })
    .join()
    .unwrap();
    assert_eq!(group.ack_floor(), Offset(3));
    assert_eq!(group.stats().in_flight, 0);
}

#[test]
fn a_stale_token_is_refused_and_the_new_delivery_answers() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).ack_timeout(SHORT).open().unwrap();
    append_range(&queue, 0..1);
    let group = queue.group("g").unwrap();
    let (a, b) = (group.consumer(), group.consumer());
    let first = a.try_recv().unwrap().unwrap();
    let stale = first.token();
    std::thread::sleep(SHORT + Duration::from_millis(50));
    // Ended but not yet delivered again: by token it is refused (nothing ties the token to the message any more).
    assert!(matches!(group.ack(Offset(0), stale), Err(Error::StaleLease { offset: Offset(0) })));
    assert!(matches!(group.extend_lease(Offset(0), stale), Err(Error::LeaseExpired { offset: Offset(0) })));
    let second = b.try_recv().unwrap().expect("delivered again");
    assert_eq!(second.attempt(), 2);
    assert_ne!(second.token(), stale);
    assert!(matches!(group.ack(Offset(0), stale), Err(Error::StaleLease { .. })));
    assert_eq!(group.nack(Offset(0), stale, Duration::ZERO).unwrap(), Nacked::LeaseEnded);
    assert!(matches!(first.ack(), Err(Error::StaleLease { offset: Offset(0) })), "the late delivery is refused too");
    assert_eq!(group.stats().in_flight, 1, "the new delivery still holds the message");
    group.extend_lease(Offset(0), second.token()).unwrap();
    group.ack(Offset(0), second.token()).unwrap();
    assert_eq!(group.ack_floor(), Offset(1));
    // Done: any later ack is Ok, nothing to do.
    group.ack(Offset(0), stale).unwrap();
    drop(second);
}

#[test]
fn a_late_delivery_ack_counts_when_nothing_took_the_message_since() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).ack_timeout(SHORT).open().unwrap();
    append_range(&queue, 0..1);
    let group = queue.group("g").unwrap();
    let delivery = group.consumer().try_recv().unwrap().unwrap();
    std::thread::sleep(SHORT + Duration::from_millis(50));
    delivery.ack().unwrap(); // the work was done and nobody else holds it
    assert_eq!(group.ack_floor(), Offset(1));
}

#[test]
fn nack_by_token_redelivers_and_tokens_of_an_earlier_open_are_stale() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..2);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let batch = consumer.try_recv_batch(2).unwrap();
    let tokens: Vec<LeaseToken> = batch.iter().map(|d| d.token()).collect();
    assert_eq!(tokens[0].to_string().len(), 32);
    assert_eq!(LeaseToken::from_u128(tokens[0].to_u128()), tokens[0]);
    std::mem::forget(batch);
    assert_eq!(group.nack(Offset(0), tokens[0], Duration::ZERO).unwrap(), Nacked::Retry);
    let again = consumer.try_recv().unwrap().unwrap();
    assert_eq!((again.offset(), again.attempt()), (Offset(0), 2));
    drop(again);
    drop(consumer);
    drop(group);
    queue.close().unwrap();

    let queue = small(temp.path()).open().unwrap();
    let group = queue.group("g").unwrap();
    let fresh = group.consumer().try_recv_batch(2).unwrap();
    assert_eq!(fresh.len(), 2);
    for (old, delivery) in tokens.iter().zip(&fresh) {
        assert!(
            matches!(group.ack(delivery.offset(), *old), Err(Error::StaleLease { .. })),
            "a token of the last open"
        );
    }
    group.consumer().ack_all(fresh).unwrap();
    assert_eq!(group.ack_floor(), Offset(2));
}

#[test]
fn ack_all_acks_the_current_ones_and_names_a_stale_one() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).ack_timeout(SHORT).open().unwrap();
    append_range(&queue, 0..3);
    let group = queue.group("g").unwrap();
    let (a, b) = (group.consumer(), group.consumer());
    let late = a.try_recv().unwrap().unwrap(); // offset 0
    std::thread::sleep(SHORT + Duration::from_millis(50));
    let current = b.try_recv().unwrap().unwrap(); // offset 0 again
    assert_eq!(current.offset(), Offset(0));
    let rest = a.try_recv_batch(2).unwrap(); // 1 and 2
    let mut answers = vec![late];
    answers.extend(rest);
    match a.ack_all(answers) {
        Err(Error::StaleLeases { offsets }) => assert_eq!(offsets, vec![Offset(0)]),
        other => panic!("expected StaleLeases, got {other:?}"),
    }
    let stats = group.stats();
    assert_eq!((stats.acked, stats.in_flight), (2, 1), "1 and 2 acked; 0 still with the other consumer");
    current.ack().unwrap();
    assert_eq!(group.ack_floor(), Offset(3));
}

#[test]
fn ack_all_with_both_deliveries_of_one_offset_acks_it_for_the_current_one() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).ack_timeout(SHORT).open().unwrap();
    append_range(&queue, 0..1);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let old = consumer.try_recv().unwrap().unwrap();
    std::thread::sleep(SHORT + Duration::from_millis(50));
    let new = consumer.try_recv().unwrap().expect("delivered again");
    consumer.ack_all([old, new]).unwrap(); // the old one is stale, the new one acks the message
    assert_eq!(group.ack_floor(), Offset(1));
    assert_eq!(group.stats().in_flight, 0);
}

#[test]
fn a_late_ack_on_the_last_attempt_leaves_the_dead_letter_it_became() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).ack_timeout(SHORT).max_deliveries(1).open().unwrap();
    append_range(&queue, 0..1);
    let group = queue.group("g").unwrap();
    let delivery = group.consumer().try_recv().unwrap().unwrap();
    std::thread::sleep(SHORT + Duration::from_millis(50));
    // The lease ended on the last attempt: the message is a dead letter whatever notices first, and the ack is Ok
    // with nothing to do (as after a take noticed it).
    delivery.ack().unwrap();
    assert_eq!(group.dead_letters().len(), 1);
    assert_eq!(group.stats().acked, 0);
}

#[test]
fn tokens_of_another_open_answer_done_offsets_and_a_deleted_group_first() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..1);
    let group = queue.group("g").unwrap();
    let delivery = group.consumer().try_recv().unwrap().unwrap();
    let token = delivery.token();
    delivery.ack().unwrap();
    drop(group);
    queue.close().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let group = queue.group("g").unwrap();
    group.ack(Offset(0), token).unwrap(); // done: Ok, whatever the token
    queue.delete_group("g").unwrap();
    assert!(matches!(group.ack(Offset(0), token), Err(Error::GroupDeleted { .. })));
}
