//! Delayed messages (#18 item 3): a message appended with `Message::deliver_at_ms` / `deliver_after` is delivered
//! by no group before its time, holds nothing behind it back, comes when its time is reached (within a poll
//! interval, and to a consumer blocked in `recv`), and keeps its time across restarts and crashes: the time is
//! stored in the message (the `walq-deliver-at-ms` header), so the group finds it again whenever it reads it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use walq::storage::{FaultKind, FaultPlan, FaultyStorage};
use walq::{Message, Offset, DELIVER_AT_HEADER};

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn a_delayed_message_waits_for_its_time_and_holds_nothing_back() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let due_ms = wall_ms() + 400;
    queue.append(Message::new("first")).unwrap();
    queue.append(Message::new("later").deliver_at_ms(due_ms)).unwrap();
    queue.append(Message::new("third")).unwrap();
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();

    let now = consumer.try_recv_batch(10).unwrap();
    assert_eq!(now.iter().map(|d| d.offset().0).collect::<Vec<_>>(), vec![0, 2], "the delayed one is held back");
    consumer.ack_all(now).unwrap();
    assert_eq!(group.ack_floor(), Offset(1), "the held message is not done");
    assert!(consumer.try_recv().unwrap().is_none());

    // A consumer blocked in `recv` is woken when the time comes, not before.
    let later = consumer.recv_timeout(Duration::from_secs(5)).unwrap().expect("delivered at its time");
    assert!(wall_ms() >= due_ms, "not early: {} < {due_ms}", wall_ms());
    assert_eq!((later.offset(), later.attempt()), (Offset(1), 1), "a first attempt");
    assert_eq!(later.message().deliver_at_ms(), Some(due_ms));
    assert_eq!(later.message().headers[0].name, DELIVER_AT_HEADER);
    later.ack().unwrap();
    assert_eq!(group.ack_floor(), Offset(3));

    // Readers are not groups: they see it at once.
    let read = read_all(&queue);
    assert_eq!(read[1].value.as_deref(), Some(&b"later"[..]));
}

#[test]
fn the_delay_survives_a_restart_and_a_past_time_or_a_bad_value_delays_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let started = Instant::now();
    queue.append(Message::new("in 1.5 s").deliver_after(Duration::from_millis(1500))).unwrap();
    queue.append(Message::new("past").deliver_at_ms(1)).unwrap();
    queue.append(Message::new("bad").header(DELIVER_AT_HEADER, "soon")).unwrap();
    let group = queue.group("g").unwrap();
    let first = group.consumer().try_recv_batch(10).unwrap();
    assert_eq!(first.iter().map(|d| d.offset().0).collect::<Vec<_>>(), vec![1, 2]);
    group.consumer().ack_all(first).unwrap();
    drop(group);
    queue.close().unwrap();

    let queue = small(temp.path()).open().unwrap();
    let group = queue.existing_group("g").unwrap();
    let consumer = group.consumer();
    if started.elapsed() < Duration::from_millis(1400) {
        assert!(consumer.try_recv().unwrap().is_none(), "a restart does not deliver it early");
    }
    let delivery = consumer.recv_timeout(Duration::from_secs(5)).unwrap().expect("delivered after the restart");
    assert!(started.elapsed() >= Duration::from_millis(1500), "not early: {:?}", started.elapsed());
    assert_eq!(delivery.offset(), Offset(0));
    delivery.ack().unwrap();
}

#[test]
fn a_nacked_delayed_message_is_delivered_again_like_any_other() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    queue.append(Message::new("soon").deliver_after(Duration::from_millis(100))).unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    let first = consumer.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    first.nack(Duration::ZERO).unwrap();
    let again = consumer.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!((again.offset(), again.attempt()), (Offset(0), 2));
    again.ack().unwrap();
}

/// The sim workload: messages 0..10 with offset 4 delayed by an hour, appended durably, then a group that takes
/// and acks what it may.
fn workload(storage: &FaultyStorage, due_ms: u64) -> Option<()> {
    let queue = sim_builder(storage).durability(walq::Durability::Sync).open().ok()?;
    let messages: Vec<Message> =
        (0..10).map(|i| if i == 4 { message(i).deliver_at_ms(due_ms) } else { message(i) }).collect();
    queue.append_batch(&messages).ok()?;
    let group = queue.group("g").ok()?;
    let consumer = group.consumer();
    consumer.ack_all(consumer.try_recv_batch(10).ok()?).ok()?;
    Some(())
}

#[test]
fn after_a_crash_at_any_storage_operation_a_delayed_message_is_not_delivered_early() {
    let due_ms = wall_ms() + 3_600_000;
    let reference = FaultyStorage::new();
    workload(&reference, due_ms).expect("the workload runs without faults");
    let total_ops = reference.op_count();
    let mut images = 0;
    let mut violations = 0;
    for crash_at in 0..=total_ops {
        let storage = FaultyStorage::new();
        storage.set_plan(Some(FaultPlan { at_op: crash_at, kind: FaultKind::Crash, persistent: false }));
        let _ = workload(&storage, due_ms);
        for (seed, image) in distinct_crash_images(&storage, (0..4).map(|k| crash_at * 16 + k)) {
            let queue = sim_builder(&image).open().unwrap();
            let consumer = queue.group("g").unwrap().consumer();
            let taken = consumer.try_recv_batch(100).unwrap();
            let offsets: Vec<u64> = taken.iter().map(|d| d.offset().0).collect();
            if offsets.contains(&4) {
                violations += 1;
                eprintln!("crash at {crash_at}, image seed {seed}: the delayed message was delivered: {offsets:?}");
            }
            let floor = queue.existing_group("g").unwrap().ack_floor().0;
            assert!(floor <= 4, "crash at {crash_at}, image seed {seed}: the delayed message is not done: {floor}");
            if queue.stats().next_offset.0 == 10 {
                let rest: Vec<u64> = (floor..10).filter(|&o| o != 4).collect();
                assert!(offsets.iter().all(|o| rest.contains(o)), "crash at {crash_at}: {offsets:?}");
            }
            images += 1;
        }
    }
    assert!(images > total_ops, "crash images were checked: {images}");
    report("R1 delayed message", "simulated power loss at every storage operation", images, "crash images", violations);
    assert_eq!(violations, 0);
}
