//! Per-key order (#18 item 4, `QueueBuilder::order_by_key`): with competing consumers, at most one message per key
//! is out at a time, each key's messages are delivered in offset order (redeliveries included), different keys flow
//! in parallel, unkeyed messages are unordered, and a restart rebuilds the order. A property test drives competing
//! consumers with random takes, acks, nacks, drops and lease expiries against a model of those two promises.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use walq::storage::FaultRng;
use walq::{CleanupPolicy, Delivery, Message, Offset, QueueBuilder};

fn ordered(dir: &std::path::Path) -> QueueBuilder {
    small(dir).cleanup(CleanupPolicy::KeepAll).order_by_key("g")
}

fn keyed(i: u64, key: Option<&str>) -> Message {
    let message = Message::new(format!("m{i}"));
    match key {
        Some(key) => message.key(key),
        None => message,
    }
}

fn offsets(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.offset().0).collect()
}

#[test]
fn one_message_per_key_is_out_and_keys_flow_in_parallel() {
    let temp = tempfile::tempdir().unwrap();
    let queue = ordered(temp.path()).open().unwrap();
    // a0 b1 a2 c3 b4 -5 a6 -7
    let keys = [Some("a"), Some("b"), Some("a"), Some("c"), Some("b"), None, Some("a"), None];
    for (i, key) in keys.iter().enumerate() {
        queue.append(keyed(i as u64, *key)).unwrap();
    }
    let group = queue.group("g").unwrap();
    let (one, two) = (group.consumer(), group.consumer());
    let first = one.try_recv_batch(100).unwrap();
    assert_eq!(offsets(&first), vec![0, 1, 3, 5, 7], "the first of each key, and every unkeyed message");
    assert!(two.try_recv_batch(100).unwrap().is_empty(), "the rest wait behind their keys");

    let mut first = first.into_iter();
    let a0 = first.next().unwrap();
    a0.nack(Duration::ZERO).unwrap(); // a's owner comes back before a2
    let again = two.try_recv_batch(100).unwrap();
    assert_eq!(offsets(&again), vec![0], "a redelivery keeps its key's place");
    assert_eq!(again[0].attempt(), 2);
    again.into_iter().next().unwrap().ack().unwrap();
    assert_eq!(offsets(&two.try_recv_batch(100).unwrap()), vec![2], "then a2 (given back when dropped)");
    let b1 = first.next().unwrap();
    b1.ack().unwrap();
    let next = one.try_recv_batch(100).unwrap();
    assert_eq!(offsets(&next), vec![2, 4], "a2 (dropped above, due again) and b4 after b1");
    for delivery in next {
        delivery.ack().unwrap();
    }
    assert_eq!(offsets(&one.try_recv_batch(100).unwrap()), vec![6]);
    assert_eq!(group.stats().in_flight, 3, "c3, -5, -7 still out");
}

#[test]
fn a_dead_letter_passes_its_key_on_and_a_restart_keeps_the_order() {
    let temp = tempfile::tempdir().unwrap();
    let queue = ordered(temp.path()).max_deliveries(5).open().unwrap();
    for i in 0..4 {
        queue.append(keyed(i, Some("k"))).unwrap();
    }
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let poison = consumer.try_recv().unwrap().unwrap();
    assert!(consumer.try_recv().unwrap().is_none());
    poison.dead_letter().unwrap();
    let one = consumer.try_recv_batch(10).unwrap();
    assert_eq!(offsets(&one), vec![1], "the key passed on past the dead letter");
    drop(one); // given back: offset 1 still owns the key
    let held = consumer.try_recv_batch(10).unwrap();
    assert_eq!(offsets(&held), vec![1]);
    std::mem::forget(held); // left unanswered: the restart finds it not done
    drop(consumer);
    drop(group);
    queue.close().unwrap();

    let queue = ordered(temp.path()).max_deliveries(5).open().unwrap();
    let consumer = queue.existing_group("g").unwrap().consumer();
    let after = consumer.try_recv_batch(10).unwrap();
    assert_eq!(offsets(&after), vec![1], "after the restart, the key's first message not done, alone");
    consumer.ack_all(after).unwrap();
    assert_eq!(offsets(&consumer.try_recv_batch(10).unwrap()), vec![2]);
}

#[test]
fn a_group_not_named_is_not_ordered() {
    let temp = tempfile::tempdir().unwrap();
    let queue = ordered(temp.path()).open().unwrap();
    for i in 0..3 {
        queue.append(keyed(i, Some("k"))).unwrap();
    }
    let all = queue.group("other").unwrap().consumer().try_recv_batch(10).unwrap();
    assert_eq!(offsets(&all), vec![0, 1, 2]);
}

#[test]
fn competing_consumers_with_failures_never_break_a_keys_order() {
    const MESSAGES: u64 = 400;
    const KEYS: u64 = 7;
    for seed in 1..=4u64 {
        let temp = tempfile::tempdir().unwrap();
        let queue = ordered(temp.path()).ack_timeout(Duration::from_millis(20)).max_deliveries(1000).open().unwrap();
        let mut rng = FaultRng::new(seed);
        let key_of: Vec<Option<u64>> =
            (0..MESSAGES).map(|_| if rng.below(5) == 0 { None } else { Some(rng.below(KEYS)) }).collect();
        for (i, key) in key_of.iter().enumerate() {
            queue.append(keyed(i as u64, key.map(|k| format!("k{k}")).as_deref())).unwrap();
        }
        let group = queue.group("g").unwrap();
        let consumers = [group.consumer(), group.consumer(), group.consumer()];
        let mut held: Vec<Delivery> = Vec::new();
        let mut acked: BTreeSet<u64> = BTreeSet::new();
        // key -> the offset out for it (delivered and not acked; an expired lease stays out until acked).
        let mut out: BTreeMap<u64, u64> = BTreeMap::new();
        let mut steps = 0;
        while acked.len() < MESSAGES as usize {
            steps += 1;
            assert!(steps < 100_000, "seed {seed}: no progress");
            if held.len() > 40 {
                drop(held.remove(0)); // the oldest: mostly deliveries whose lease ended long ago
            }
            match rng.below(40) {
                0..=13 => {
                    let consumer = &consumers[rng.below(3) as usize];
                    for delivery in consumer.try_recv_batch(1 + rng.below(8) as usize).unwrap() {
                        let offset = delivery.offset().0;
                        if let Some(key) = key_of[offset as usize] {
                            match out.get(&key) {
                                Some(&other) => assert_eq!(other, offset, "seed {seed}: key {key} is out twice"),
                                None => {
                                    let lower_not_done =
                                        (0..offset).find(|&o| key_of[o as usize] == Some(key) && !acked.contains(&o));
                                    assert_eq!(lower_not_done, None, "seed {seed}: {offset} of key {key} early");
                                    out.insert(key, offset);
                                }
                            }
                        }
                        held.push(delivery);
                    }
                }
                14..=33 if !held.is_empty() => {
                    // Mostly the newest delivery (likely still leased), sometimes any.
                    let at = if rng.below(2) == 0 { held.len() - 1 } else { rng.below(held.len() as u64) as usize };
                    let delivery = held.swap_remove(at);
                    let offset = delivery.offset().0;
                    if delivery.ack().is_ok() {
                        acked.insert(offset);
                        if let Some(key) = key_of[offset as usize] {
                            out.remove(&key);
                        }
                    }
                }
                34..=36 if !held.is_empty() => {
                    let delivery = held.swap_remove(rng.below(held.len() as u64) as usize);
                    let _ = delivery.nack(Duration::ZERO);
                }
                37 | 38 if !held.is_empty() => drop(held.swap_remove(rng.below(held.len() as u64) as usize)),
                39 => std::thread::sleep(Duration::from_millis(25)), // leases expire
                _ => {}
            }
        }
        assert_eq!(group.ack_floor(), Offset(MESSAGES), "seed {seed}: everything done");
    }
}

/// A review found that after a restart a message waiting out a journaled retry delay did not hold its key: the
/// fresh reader skipped it (already waiting) without claiming the key, so the key's next message went out first.
/// A waiting message found by the fresh reader now claims its free key.
#[test]
fn a_message_waiting_out_a_delay_keeps_its_keys_place_across_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let queue = ordered(temp.path()).open().unwrap();
    for i in 0..3 {
        queue.append(keyed(i, Some("k"))).unwrap();
    }
    let consumer = queue.group("g").unwrap().consumer();
    let first = consumer.try_recv().unwrap().unwrap();
    assert_eq!(first.offset(), Offset(0));
    first.nack(Duration::from_millis(400)).unwrap(); // journaled: after the restart it waits again
    drop(consumer);
    queue.close().unwrap();

    let queue = ordered(temp.path()).open().unwrap();
    let consumer = queue.existing_group("g").unwrap().consumer();
    assert!(consumer.try_recv_batch(10).unwrap().is_empty(), "offset 1 waits behind offset 0's delay");
    let again = consumer.recv_timeout(Duration::from_secs(5)).unwrap().expect("offset 0 when its delay ends");
    assert_eq!((again.offset(), again.attempt()), (Offset(0), 2));
    again.ack().unwrap();
    assert_eq!(offsets(&consumer.try_recv_batch(10).unwrap()), vec![1]);
}
