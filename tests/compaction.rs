//! Keyed compaction keeps the latest message per key in sealed segments: the latest-value-per-key map equals a
//! model replayed from the original messages; superseded values go; unkeyed messages stay; tombstones delete and
//! later disappear; offsets never change; unacked messages survive the default scope.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use walq::{CleanupPolicy, CompactionScope, Maintenance, Message, Offset, QueueBuilder, Record};

const KEYS: u64 = 20;
const COUNT: u64 = 3000;

fn compacting(dir: &std::path::Path) -> QueueBuilder {
    // Manual: each test asserts on what its own `compact()` did; the background tests ask for the thread.
    small(dir).cleanup(CleanupPolicy::Compact).tombstone_retention(Duration::ZERO).maintenance(Maintenance::Manual)
}

fn originals() -> Vec<Message> {
    (0..COUNT).map(|i| keyed_message(i, KEYS)).collect()
}

fn model(messages: &[Message]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    latest_values(messages.iter().map(|m| (m.key_bytes(), m.value_bytes())))
}

fn state(records: &[Record]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    latest_values(records.iter().map(|r| (r.key.as_deref(), r.value.as_deref())))
}

#[test]
fn latest_value_per_key_equals_the_model_and_offsets_are_kept() {
    let temp = tempfile::tempdir().unwrap();
    let queue = compacting(temp.path()).open().unwrap();
    let messages = originals();
    queue.append_batch(&messages).unwrap();
    let bytes_before: u64 = segment_bytes(temp.path());
    let report = queue.compact().unwrap();
    assert!(
        report.segments_rewritten > 0 && report.messages_removed > 0 && report.tombstones_removed > 0,
        "{report:?}"
    );
    assert!(report.bytes_after < report.bytes_before);
    let records = read_all(&queue);
    assert_eq!(state(&records), model(&messages), "compaction never changes the latest values");
    let active_base =
        segment_files(temp.path()).last().unwrap().file_stem().unwrap().to_string_lossy().parse::<u64>().unwrap();
    let latest_offset: BTreeMap<&[u8], u64> =
        messages.iter().enumerate().filter_map(|(i, m)| m.key_bytes().map(|k| (k, i as u64))).collect();
    for record in &records {
        let original = &messages[record.offset.0 as usize];
        assert_eq!(
            (record.key.as_deref(), record.value.as_deref()),
            (original.key_bytes(), original.value_bytes()),
            "offsets kept"
        );
        if let (Some(key), true) = (&record.key, record.offset.0 < active_base) {
            assert_eq!(
                latest_offset[key.as_slice()],
                record.offset.0,
                "only the latest per key survives in sealed segments"
            );
            assert!(!record.is_tombstone(), "expired tombstones are removed");
        }
    }
    let unkeyed = messages.iter().filter(|m| m.key_bytes().is_none()).count();
    assert_eq!(records.iter().filter(|r| r.key.is_none()).count(), unkeyed, "messages without a key are kept");
    assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));
    let bytes_after: u64 = segment_bytes(temp.path());
    assert!(bytes_after < bytes_before, "space is reclaimed on disk");
    assert!(queue.compact().unwrap().messages_removed == 0, "a second pass finds nothing");
    drop(queue);
    let queue = compacting(temp.path()).open().unwrap();
    assert_eq!(read_all(&queue), records, "compaction is durable");
    for start in [0, 1, 100, 1234, 2999] {
        let first = queue.read_from(Offset(start)).unwrap().next().unwrap().unwrap();
        assert!(first.offset.0 >= start && records.iter().any(|r| r.offset == first.offset), "lookups skip gaps");
    }
}

#[test]
fn tombstones_delete_and_disappear_only_after_their_retention() {
    let temp = tempfile::tempdir().unwrap();
    let queue = compacting(temp.path()).tombstone_retention(Duration::from_secs(3600)).open().unwrap();
    let mut messages = vec![];
    for i in 0..2000u64 {
        messages.push(Message::new(format!("value {i}").into_bytes()).key(b"doomed".to_vec()));
    }
    messages.push(Message::tombstone(b"doomed".to_vec()));
    messages.extend((0..2000u64).map(|i| Message::new(format!("other {i}").into_bytes()).key(b"other".to_vec())));
    queue.append_batch(&messages).unwrap();
    queue.compact().unwrap();
    let records = read_all(&queue);
    let doomed: Vec<&Record> = records.iter().filter(|r| r.key.as_deref() == Some(b"doomed")).collect();
    assert_eq!(doomed.len(), 1, "all values of the deleted key are gone, the tombstone stays within its retention");
    assert!(doomed[0].is_tombstone());
    drop(queue);
    let queue = compacting(temp.path()).open().unwrap(); // retention zero now
    queue.compact().unwrap();
    assert!(read_all(&queue).iter().all(|r| r.key.as_deref() != Some(b"doomed")), "the tombstone is removed too");
}

#[test]
fn default_scope_never_removes_what_a_group_has_not_acked() {
    let temp = tempfile::tempdir().unwrap();
    let queue = compacting(temp.path()).open().unwrap();
    let group = queue.group("slow").unwrap();
    let messages = originals();
    queue.append_batch(&messages).unwrap();
    let consumer = group.consumer();
    for _ in 0..1000 {
        consumer.try_recv().unwrap().unwrap().ack().unwrap();
    }
    assert_eq!(group.ack_floor(), Offset(1000));
    queue.compact().unwrap();
    let records = read_all(&queue);
    let present: Vec<u64> = records.iter().map(|r| r.offset.0).collect();
    assert!(present.iter().filter(|&&o| o < 1000).count() < 1000, "acked superseded messages are removed");
    assert!((1000..COUNT).all(|o| present.binary_search(&o).is_ok()), "nothing the group has not acked is removed");
    for expected in 1000..COUNT {
        let delivery = consumer.try_recv().unwrap().unwrap();
        assert_eq!(delivery.offset(), Offset(expected));
        delivery.ack().unwrap();
    }
}

#[test]
fn all_sealed_scope_compacts_unacked_and_groups_skip_the_gaps() {
    let temp = tempfile::tempdir().unwrap();
    let queue = compacting(temp.path()).compaction_scope(CompactionScope::AllSealed).open().unwrap();
    let group = queue.group("changelog-reader").unwrap();
    let messages = originals();
    queue.append_batch(&messages).unwrap();
    let report = queue.compact().unwrap();
    assert!(report.messages_removed > 0);
    let stored: Vec<u64> = read_all(&queue).iter().map(|r| r.offset.0).collect();
    let consumer = group.consumer();
    let mut delivered = vec![];
    while let Some(delivery) = consumer.try_recv().unwrap() {
        delivered.push(delivery.offset().0);
        delivery.ack().unwrap();
    }
    assert_eq!(delivered, stored, "the group gets exactly what is stored, in order");
    assert_eq!(group.ack_floor(), Offset(COUNT), "gaps do not hold the floor back");
    drop((queue, group, consumer)); // the last handle closes the queue
    let queue = compacting(temp.path()).open().unwrap();
    assert_eq!(queue.group("changelog-reader").unwrap().ack_floor(), Offset(COUNT));
}

#[test]
fn dead_letters_are_never_compacted() {
    let temp = tempfile::tempdir().unwrap();
    let queue = compacting(temp.path()).compaction_scope(CompactionScope::AllSealed).open().unwrap();
    let group = queue.group("g").unwrap();
    queue.append_batch(&originals()).unwrap();
    let delivery = group.consumer().try_recv().unwrap().unwrap();
    assert_eq!(delivery.offset(), Offset(0));
    delivery.dead_letter().unwrap();
    queue.compact().unwrap();
    assert_eq!(read_all(&queue)[0].offset, Offset(0), "offset 0 is superseded but dead-lettered: kept");
    assert!(group.redrive(Offset(0)).unwrap());
    assert_eq!(group.consumer().try_recv().unwrap().unwrap().offset(), Offset(0));
}

#[test]
fn background_compaction_runs_when_the_dirty_threshold_is_crossed() {
    let temp = tempfile::tempdir().unwrap();
    let queue =
        compacting(temp.path()).maintenance(Maintenance::Background).compaction_dirty_percent(10).open().unwrap();
    let messages: Vec<Message> =
        (0..6000u64).map(|i| Message::new(vec![i as u8; 100]).key(format!("k{}", i % 5).into_bytes())).collect();
    queue.append_batch(&messages).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while queue.stats().segments_compacted == 0 {
        assert!(std::time::Instant::now() < deadline, "background compaction never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(state(&read_all(&queue)), model(&messages));
}

#[test]
fn manual_maintenance_leaves_compaction_to_the_caller() {
    let temp = tempfile::tempdir().unwrap();
    let queue = compacting(temp.path()).compaction_dirty_percent(10).open().unwrap();
    let messages: Vec<Message> =
        (0..6000u64).map(|i| Message::new(vec![i as u8; 100]).key(format!("k{}", i % 5).into_bytes())).collect();
    queue.append_batch(&messages).unwrap();
    assert!(queue.stats().segment_rolls > 0);
    // The background test above sees the thread compact this workload within a few 50 ms ticks of the rolls.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(queue.stats().segments_compacted, 0, "no thread compacts under Maintenance::Manual");
    assert!(queue.compact().unwrap().segments_rewritten > 0);
    assert_eq!(state(&read_all(&queue)), model(&messages));
}

#[test]
fn compaction_concurrent_with_appends_and_consumers() {
    let temp = tempfile::tempdir().unwrap();
    let queue = compacting(temp.path())
        .maintenance(Maintenance::Background)
        .durability(walq::Durability::None)
        .compaction_dirty_percent(5)
        .open()
        .unwrap();
    let group = queue.group("g").unwrap();
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            for chunk in 0..30u64 {
                let batch: Vec<Message> = (chunk * 200..(chunk + 1) * 200).map(|i| keyed_message(i, KEYS)).collect();
                queue.append_batch(&batch).unwrap();
            }
        })
    };
    let compactor = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                queue.compact().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let consumer = group.consumer();
    let mut last = None;
    while let Some(delivery) = consumer.recv_timeout(Duration::from_secs(2)).unwrap() {
        let offset = delivery.offset().0;
        assert!(last.is_none_or(|l| offset > l), "offset order");
        assert_eq!(delivery.message().value.as_deref(), keyed_message(offset, KEYS).value_bytes());
        last = Some(offset);
        delivery.ack().unwrap();
    }
    producer.join().unwrap();
    compactor.join().unwrap();
    queue.compact().unwrap();
    let messages: Vec<Message> = (0..6000).map(|i| keyed_message(i, KEYS)).collect();
    assert_eq!(state(&read_all(&queue)), model(&messages));
}
