//! Resetting a consumer group (#18 item 1): `Queue::reset_group(name, StartAt)` moves a group back (everything from
//! the new position is delivered again, as new) or forward (everything below it counts as done), forgets attempts,
//! delays and dead letters, is refused while deliveries are in flight, and survives a reopen. Crash-safe: a crash at
//! any storage operation of a reset, with any power-cut image, recovers the old position or the new one, whole.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use walq::storage::{FaultKind, FaultPlan, FaultyStorage};
use walq::{CleanupPolicy, Error, Offset, QueueBuilder, StartAt};

fn keep_all(dir: &std::path::Path) -> QueueBuilder {
    small(dir).cleanup(CleanupPolicy::KeepAll).max_deliveries(1)
}

#[test]
fn a_reset_back_delivers_everything_again_as_new_and_forgets_dead_letters() {
    let temp = tempfile::tempdir().unwrap();
    let queue = keep_all(temp.path()).open().unwrap();
    append_range(&queue, 0..10);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let mut batch = consumer.try_recv_batch(10).unwrap();
    let poison = batch.remove(3);
    poison.dead_letter_with("bad input").unwrap();
    consumer.ack_all(batch).unwrap();
    assert_eq!((group.ack_floor(), group.dead_letters().len()), (Offset(10), 1));

    queue.reset_group("g", StartAt::Offset(Offset(2))).unwrap();
    assert_eq!(group.ack_floor(), Offset(2));
    assert!(group.dead_letters().is_empty());
    drop(consumer);
    drop(group);
    queue.close().unwrap();

    let queue = keep_all(temp.path()).open().unwrap();
    let group = queue.existing_group("g").unwrap();
    let again = group.consumer().try_recv_batch(20).unwrap();
    let seen: Vec<(u64, u32)> = again.iter().map(|d| (d.offset().0, d.attempt())).collect();
    assert_eq!(seen, (2..10).map(|o| (o, 1)).collect::<Vec<_>>(), "from the new position, first attempts");
    assert_is_message(again[0].message(), 2);
    group.consumer().ack_all(again).unwrap();
}

#[test]
fn a_reset_forward_skips_what_is_stored_and_a_busy_group_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let queue = keep_all(temp.path()).open().unwrap();
    append_range(&queue, 0..10);
    let group = queue.group("g").unwrap();
    let held = group.consumer().try_recv().unwrap().unwrap();
    match queue.reset_group("g", StartAt::Latest) {
        Err(Error::GroupBusy { name, in_flight }) => assert_eq!((name.as_str(), in_flight), ("g", 1)),
        other => panic!("expected GroupBusy, got {other:?}"),
    }
    assert_eq!(group.ack_floor(), Offset(0), "nothing changed");
    drop(held); // given back
    queue.reset_group("g", StartAt::Latest).unwrap();
    assert_eq!(group.ack_floor(), Offset(10));
    assert!(group.consumer().try_recv().unwrap().is_none());
    append_range(&queue, 10..11);
    assert_eq!(group.consumer().try_recv().unwrap().unwrap().offset(), Offset(10));
    assert!(matches!(queue.reset_group("nope", StartAt::Earliest), Err(Error::GroupNotFound { .. })));
}

/// The sim workload: 20 messages, 12 acked and one dead letter, then a reset to offset 5.
fn reset_workload(storage: &FaultyStorage) -> Option<()> {
    let builder = sim_builder(storage).durability(walq::Durability::Sync).max_deliveries(1);
    let queue = builder.ack_timeout(Duration::from_secs(60)).open().ok()?;
    queue.append_batch(&(0..20).map(message).collect::<Vec<_>>()).ok()?;
    let group = queue.group("g").ok()?;
    let consumer = group.consumer();
    let mut batch = consumer.try_recv_batch(13).ok()?;
    batch.remove(12).dead_letter().ok()?;
    consumer.ack_all(batch).ok()?;
    drop(consumer);
    queue.reset_group("g", StartAt::Offset(Offset(5))).ok()?;
    Some(())
}

#[test]
fn a_crash_during_a_reset_recovers_the_old_position_or_the_new_one() {
    let reference = FaultyStorage::new();
    reset_workload(&reference).expect("the workload runs without faults");
    let total_ops = reference.op_count();
    let mut images = 0;
    for crash_at in 0..=total_ops {
        let storage = FaultyStorage::new();
        storage.set_plan(Some(FaultPlan { at_op: crash_at, kind: FaultKind::Crash, persistent: false }));
        let finished = reset_workload(&storage).is_some();
        for (seed, image) in distinct_crash_images(&storage, (0..4).map(|k| crash_at * 16 + k)) {
            let context = format!("crash at {crash_at}, image seed {seed}");
            let queue = sim_builder(&image).open().unwrap();
            let group = match queue.existing_group("g") {
                Ok(group) => group,
                Err(Error::GroupNotFound { .. }) => continue, // crashed before the group existed
                Err(error) => panic!("{context}: {error}"),
            };
            let floor = group.ack_floor().0;
            let dead: BTreeSet<u64> = group.dead_letters().iter().map(|d| d.offset.0).collect();
            let new_position = floor == 5 && dead.is_empty();
            // Before the reset: created; the dead letter journaled; the acks journaled (a dead letter is done).
            let old_position =
                matches!((floor, dead.len()), (0, 0) | (0, 1) | (13, 1)) && dead.iter().all(|&o| o == 12);
            assert!(new_position || old_position, "{context}: floor {floor}, dead letters {dead:?}");
            if new_position {
                let first = group.consumer().try_recv().unwrap().unwrap();
                assert_eq!((first.offset(), first.attempt()), (Offset(5), 1), "{context}: from the new position, anew");
            }
            if finished {
                assert!(new_position, "{context}: the reset returned, so it is durable");
            }
            images += 1;
        }
    }
    assert!(images > total_ops, "crash images were checked: {images}");
    report("R1 group reset", "simulated power loss at every storage operation of a reset", images, "crash images", 0);
}

/// A review found that a delivery whose lease had ended before a reset (so the reset was not refused) could still
/// answer after it: its late ack marked an offset of the new position done, and its lease id (ids started again at
/// 1) could match a new delivery's. A reset now draws a new lease epoch: every delivery from before is stale.
#[test]
fn answers_from_before_a_reset_change_nothing_after_it() {
    let temp = tempfile::tempdir().unwrap();
    let queue = keep_all(temp.path()).ack_timeout(Duration::from_millis(100)).max_deliveries(5).open().unwrap();
    append_range(&queue, 0..3);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let mut before = consumer.try_recv_batch(3).unwrap();
    let old_token = before[0].token();
    std::thread::sleep(Duration::from_millis(200)); // the leases end unanswered: the reset is not refused
    assert_eq!(queue.reset_group("g", StartAt::Earliest).unwrap(), Offset(0));
    let now = consumer.try_recv().unwrap().unwrap(); // offset 0 again, under a new lease
    assert_eq!(now.offset(), Offset(0));
    assert!(matches!(before.remove(0).ack(), Err(Error::StaleLease { offset: Offset(0) })));
    assert!(matches!(group.ack(Offset(0), old_token), Err(Error::StaleLease { .. })));
    match consumer.ack_all(before) {
        Err(Error::StaleLeases { offsets }) => assert_eq!(offsets, vec![Offset(1), Offset(2)]),
        other => panic!("expected StaleLeases, got {other:?}"),
    }
    assert_eq!(group.ack_floor(), Offset(0), "nothing of the new position was acked by the old deliveries");
    assert_eq!(group.stats().in_flight, 1, "the new delivery still holds offset 0");
    now.ack().unwrap();
    let rest = consumer.try_recv_batch(10).unwrap();
    assert_eq!(rest.iter().map(|d| d.offset().0).collect::<Vec<_>>(), vec![1, 2]);
    consumer.ack_all(rest).unwrap();
    assert_eq!(group.ack_floor(), Offset(3));
}
