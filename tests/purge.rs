//! Purging (#18 item 7): `Queue::purge_until(offset)` deletes every message below `offset` for every reader and
//! group: reads start there, `get` below it is `None`, each group's floor moves up to it (leases of purged messages
//! end; a late ack of one is a harmless `Ok`), the segment files wholly below it are deleted whatever the cleanup policy, and all of it survives a
//! reopen. Crash-safe: a crash at any storage operation of a purge, with any power-cut image, recovers no purge or
//! the whole purge (the whole one whenever `purge_until` returned).

mod common;

use std::time::Duration;

use common::*;
use walq::inspect::{Inspector, Scanned};
use walq::storage::{FaultKind, FaultPlan, FaultyStorage};
use walq::{CleanupPolicy, Offset, QueueBuilder};

fn keep_all(dir: &std::path::Path) -> QueueBuilder {
    small(dir).cleanup(CleanupPolicy::KeepAll)
}

fn offsets(records: &[walq::Record]) -> Vec<u64> {
    records.iter().map(|r| r.offset.0).collect()
}

#[test]
fn reads_start_at_the_purge_point_and_whole_segments_below_it_are_deleted() {
    let temp = tempfile::tempdir().unwrap();
    let queue = keep_all(temp.path()).open().unwrap();
    append_range(&queue, 0..3000);
    let segments_before = segment_files(temp.path()).len();
    assert!(segments_before >= 4, "several segments: {segments_before}");
    // A reader inside the segment the purge cuts through, before the purge: it skips the purged rest too.
    let mut early = queue.read_from(Offset(1000)).unwrap();
    assert_eq!(early.next().unwrap().unwrap().offset, Offset(1000));

    assert_eq!(queue.purge_until(Offset(2001)).unwrap(), Offset(2001));
    assert!(segment_files(temp.path()).len() < segments_before, "the segments wholly below were deleted");
    assert_eq!(early.next().unwrap().unwrap().offset, Offset(2001), "the open reader skips what was purged");
    assert!(queue.get(Offset(2000)).unwrap().is_none());
    assert!(queue.get(Offset(0)).unwrap().is_none());
    assert_is_message(&queue.get(Offset(2001)).unwrap().unwrap(), 2001);
    let all = read_all(&queue);
    assert_eq!(offsets(&all), (2001..3000).collect::<Vec<_>>());
    assert_eq!(queue.stats().first_offset, Offset(2001));

    // Never back, never past the end.
    assert_eq!(queue.purge_until(Offset(5)).unwrap(), Offset(2001));
    append_range(&queue, 3000..3010);
    queue.close().unwrap();

    let queue = keep_all(temp.path()).open().unwrap();
    assert_eq!(queue.stats().first_offset, Offset(2001), "the purge survives a reopen");
    assert_eq!(offsets(&read_all(&queue)), (2001..3010).collect::<Vec<_>>());
    assert_eq!(queue.purge_until(Offset(u64::MAX - 1)).unwrap(), Offset(3010), "clamped to the end");
    assert!(read_all(&queue).is_empty());
    append_range(&queue, 3010..3012);
    assert_eq!(offsets(&read_all(&queue)), vec![3010, 3011], "appends after a purge of everything are read");
    queue.close().unwrap();

    // The tool sees what the queue does.
    let inspector = Inspector::open(temp.path()).unwrap();
    assert_eq!(inspector.summary().unwrap().first_offset, Offset(3010));
    let dumped: Vec<u64> = inspector
        .records(Offset(0))
        .unwrap()
        .filter_map(|s| match s.unwrap() {
            Scanned::Record(record) => Some(record.offset.0),
            _ => None,
        })
        .collect();
    assert_eq!(dumped, vec![3010, 3011]);
    assert!(inspector.verify(&mut |_, _| {}).unwrap().is_clean());
}

#[test]
fn groups_move_past_the_purge_and_leases_of_purged_messages_end() {
    let temp = tempfile::tempdir().unwrap();
    let queue = keep_all(temp.path()).ack_timeout(Duration::from_secs(60)).open().unwrap();
    append_range(&queue, 0..100);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let held = consumer.try_recv_batch(20).unwrap();
    let behind = queue.group("behind").unwrap(); // has read nothing

    assert_eq!(queue.purge_until(Offset(50)).unwrap(), Offset(50));
    assert_eq!(group.ack_floor(), Offset(50));
    assert_eq!(behind.ack_floor(), Offset(50));
    assert_eq!(group.stats().in_flight, 0, "leases of purged messages ended");
    // A purged message is done: a late ack of one is answered `Ok` (as for any offset below the floor) and changes
    // nothing.
    consumer.ack_all(held).unwrap();
    assert_eq!((group.ack_floor(), group.stats().in_flight), (Offset(50), 0));
    let next = behind.consumer().try_recv_batch(100).unwrap();
    assert_eq!(next.first().map(|d| d.offset()), Some(Offset(50)));
    assert_eq!(next.len(), 50);
    drop(next);
    drop((consumer, group, behind));
    queue.close().unwrap();

    let queue = keep_all(temp.path()).open().unwrap();
    assert_eq!(queue.existing_group("g").unwrap().ack_floor(), Offset(50), "the groups' floors were journaled");
}

/// The purge point, recorded past a tail a crash lost (`Durability::None`), is lowered to the recovered end: the
/// offsets given out again after the crash are read, not purged.
#[test]
fn a_purge_past_a_lost_tail_purges_nothing_appended_after_the_crash() {
    let storage = FaultyStorage::new();
    let builder = || sim_builder(&storage).durability(walq::Durability::None);
    let queue = builder().open().unwrap();
    append_range(&queue, 0..10);
    queue.flush().unwrap();
    append_range(&queue, 10..20); // not durable
    assert_eq!(queue.purge_until(Offset(15)).unwrap(), Offset(15));
    // An image in which the crash lost the tail past the purge point (which unsynced writes survive is random).
    let image = (0..256)
        .map(|seed| storage.crash_image(seed))
        .find(|image| sim_builder(&image.clean_image()).open().unwrap().stats().next_offset.0 < 15)
        .expect("some power cut loses the unsynced tail");
    drop(queue);
    let reopened = sim_builder(&image).durability(walq::Durability::None).open().unwrap();
    let end = reopened.stats().next_offset.0;
    assert!((10..15).contains(&end), "the flushed messages stay, the tail past the purge is lost: end {end}");
    append_range(&reopened, end..end + 10);
    reopened.flush().unwrap();
    assert_eq!(offsets(&read_all(&reopened)), (end..end + 10).collect::<Vec<_>>());
    // The lowered point is what the manifest says, before any append: another crash (no clean close) does not
    // purge them either.
    let crashed = image.crash_image(7);
    drop(reopened);
    let again = sim_builder(&crashed).durability(walq::Durability::None).open().unwrap();
    assert_eq!(offsets(&read_all(&again)), (end..end + 10).collect::<Vec<_>>());
}

/// The sim workload: 2,000 messages over several segments, a group that acked 100, then a purge below 1,500.
fn purge_workload(storage: &FaultyStorage) -> Option<()> {
    let queue = sim_builder(storage).durability(walq::Durability::Sync).open().ok()?;
    queue.append_batch(&(0..2000).map(message).collect::<Vec<_>>()).ok()?;
    let group = queue.group("g").ok()?;
    let consumer = group.consumer();
    consumer.ack_all(consumer.try_recv_batch(100).ok()?).ok()?;
    queue.purge_until(Offset(1500)).ok()?;
    Some(())
}

#[test]
fn a_crash_during_a_purge_recovers_no_purge_or_the_whole_purge() {
    let reference = FaultyStorage::new();
    purge_workload(&reference).expect("the workload runs without faults");
    assert!(sim_segment_names(&reference).len() < sim_segment_names_before_purge(), "the purge deleted segments");
    let total_ops = reference.op_count();
    let mut images = 0;
    for crash_at in 0..=total_ops {
        let storage = FaultyStorage::new();
        storage.set_plan(Some(FaultPlan { at_op: crash_at, kind: FaultKind::Crash, persistent: false }));
        let finished = purge_workload(&storage).is_some();
        for (seed, image) in distinct_crash_images(&storage, (0..4).map(|k| crash_at * 16 + k)) {
            let context = format!("crash at {crash_at}, image seed {seed}");
            let queue = sim_builder(&image).open().unwrap_or_else(|e| panic!("{context}: {e}"));
            let records = queue.read_from(Offset::EARLIEST).unwrap().collect::<Result<Vec<_>, _>>();
            let records = records.unwrap_or_else(|e| panic!("{context}: {e}"));
            let first = records.first().map(|r| r.offset.0);
            for record in &records {
                assert_is_message(record, record.offset.0);
            }
            let purged = first == Some(1500);
            if purged {
                assert_eq!(records.len(), 500, "{context}: everything from the purge point on");
                if let Ok(group) = queue.existing_group("g") {
                    assert_eq!(group.ack_floor(), Offset(1500), "{context}: the open finished the purge");
                    let next = group.consumer().try_recv().unwrap().map(|d| d.offset());
                    assert_eq!(next, Some(Offset(1500)), "{context}: the group goes on from the purge point");
                }
                let bases: Vec<u64> =
                    sim_segment_names(&image).iter().map(|n| n.trim_end_matches(".seg").parse().unwrap()).collect();
                assert!(bases.get(1).is_none_or(|&second| second > 1500), "{context}: segments below: {bases:?}");
            } else {
                let read: Vec<u64> = records.iter().map(|r| r.offset.0).collect();
                let expected: Vec<u64> = (0..read.len() as u64).collect();
                assert_eq!(read, expected, "{context}: no purge, or the whole purge");
            }
            if finished {
                assert!(purged, "{context}: the purge returned, so it is durable");
            }
            images += 1;
        }
    }
    assert!(images > total_ops, "crash images were checked: {images}");
    report("R1 purge", "simulated power loss at every storage operation of a purge", images, "crash images", 0);
}

/// How many segments the workload's 2,000 messages fill before the purge.
fn sim_segment_names_before_purge() -> usize {
    let storage = FaultyStorage::new();
    let queue = sim_builder(&storage).open().unwrap();
    queue.append_batch(&(0..2000).map(message).collect::<Vec<_>>()).unwrap();
    queue.close().unwrap();
    sim_segment_names(&storage).len()
}
