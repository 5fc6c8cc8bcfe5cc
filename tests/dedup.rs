//! Producer deduplication (#18 item 5): with `dedup_window`, a message whose id (`Message::dedup_id`) was appended
//! within the window is not appended again: the append writes nothing and returns the first offset. A batch sent
//! again whole gets its first offset; a batch mixing seen and new ids is refused whole. The window is bounded by
//! time (message timestamps) and count, survives restarts (rebuilt at open from the newest records), holds under
//! concurrent appends of one id, and under power cuts at every storage operation a retried append stores each id
//! exactly once.

mod common;

use std::time::Duration;

use common::*;
use walq::storage::{FaultKind, FaultPlan, FaultyStorage};
use walq::{Error, Message, Offset, QueueBuilder};

fn with_window(dir: &std::path::Path) -> QueueBuilder {
    small(dir).dedup_window(Duration::from_secs(600))
}

fn id(i: &str) -> Message {
    Message::new(format!("value of {i}")).dedup_id(i)
}

#[test]
fn an_id_appended_again_returns_the_first_offset_and_writes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let queue = with_window(temp.path()).open().unwrap();
    assert_eq!(queue.append(id("a")).unwrap(), Offset(0));
    assert_eq!(queue.append(Message::new("no id")).unwrap(), Offset(1));
    assert_eq!(queue.append(id("a")).unwrap(), Offset(0), "a retry of a");
    assert_eq!(queue.stats().next_offset, Offset(2), "nothing written");
    assert_eq!(
        queue.append(Message::new("no id")).unwrap(),
        Offset(2),
        "messages without an id are never deduplicated"
    );

    // Batches: sent again whole, answered with the first offset; partial repeats refused, nothing appended.
    let batch = [id("x"), id("y"), id("z")];
    assert_eq!(queue.append_batch(&batch).unwrap(), Offset(3));
    assert_eq!(queue.append_batch(&batch).unwrap(), Offset(3));
    match queue.append_batch(&[id("z"), id("w")]) {
        Err(Error::DuplicateIds { positions }) => assert_eq!(positions, vec![0]),
        other => panic!("a mixed batch is refused: {other:?}"),
    }
    match queue.append_batch(&[id("w"), id("w")]) {
        Err(Error::DuplicateIds { positions }) => assert_eq!(positions, vec![1]),
        other => panic!("an id twice in one batch is refused: {other:?}"),
    }
    assert!(matches!(queue.append_batch(&[id("y"), id("x")]), Err(Error::DuplicateIds { .. })), "another order");
    assert_eq!(queue.stats().next_offset, Offset(6));
    assert_eq!(queue.get(Offset(3)).unwrap().unwrap().dedup_id(), Some(&b"x"[..]));

    // A batch with messages without an id between two with one is whole; at its edge nothing says it was appended.
    assert_eq!(queue.append_batch(&[id("p"), Message::new("plain"), id("r")]).unwrap(), Offset(6));
    assert_eq!(queue.append_batch(&[id("p"), Message::new("plain"), id("r")]).unwrap(), Offset(6));
    assert!(matches!(queue.append_batch(&[id("p"), Message::new("plain")]), Err(Error::DuplicateIds { .. })));
    assert_eq!(queue.stats().next_offset, Offset(9));
    queue.append_batch(&[id("q-0"), id("q-1")]).unwrap(); // 9, 10
    assert_eq!(queue.stats().next_offset, Offset(11));

    // Too long or empty an id is refused like any bad header.
    let long = Message::new("v").dedup_id(vec![b'i'; walq::DEDUP_ID_BYTES_MAX + 1]);
    assert!(matches!(queue.append(long), Err(Error::InvalidHeader { .. })));
    assert!(matches!(queue.append(Message::new("v").dedup_id("")), Err(Error::InvalidHeader { .. })));

    // A purged offset is not answered: its id is appended anew.
    queue.purge_until(Offset(1)).unwrap();
    assert_eq!(queue.append(id("a")).unwrap(), Offset(11), "a at 0 was purged");
    assert_eq!(queue.append(id("a")).unwrap(), Offset(11));
    queue.close().unwrap();

    // The window survives a restart (stored setting; rebuilt from the newest records).
    let queue = small(temp.path()).open().unwrap();
    assert_eq!(queue.append(id("a")).unwrap(), Offset(11));
    assert_eq!(queue.append_batch(&batch).unwrap(), Offset(3));
    assert_eq!(queue.stats().next_offset, Offset(12));
    queue.close().unwrap();

    // Turned off, ids are only headers.
    let queue = small(temp.path()).remove_dedup_window().open().unwrap();
    assert_eq!(queue.append(id("a")).unwrap(), Offset(12));
}

#[test]
fn the_window_is_bounded_by_count_and_by_time() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).dedup_window(Duration::from_millis(300)).dedup_window_messages(2).open().unwrap();
    for name in ["a", "b", "c"] {
        queue.append(id(name)).unwrap();
    }
    assert_eq!(queue.append(id("c")).unwrap(), Offset(2));
    assert_eq!(queue.append(id("a")).unwrap(), Offset(3), "a left the window: the newest 2 are b and c");
    // The window's time is the append's, not the producer's timestamp: an old one is remembered all the same.
    assert_eq!(queue.append(id("old").timestamp_ms(1_000)).unwrap(), Offset(4));
    assert_eq!(queue.append(id("old").timestamp_ms(1_000)).unwrap(), Offset(4));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(queue.append(id("a")).unwrap(), Offset(5), "a left the window by time");
    queue.append(id("b")).unwrap();
    queue.close().unwrap();

    // The count bounds what the open reads back too: only the newest 2 records (a at 5, b at 6) come back.
    let queue = small(temp.path()).dedup_window(Duration::from_secs(60)).open().unwrap();
    assert_eq!(queue.append(id("a")).unwrap(), Offset(5));
    assert_eq!(queue.append(id("c")).unwrap(), Offset(7), "c at 2 is older than the newest two records");
    assert!(matches!(
        small(temp.path()).dedup_window_messages(walq::DEDUP_WINDOW_MESSAGES_LIMIT + 1).open(),
        Err(Error::InvalidOption { .. })
    ));
    drop(queue);
    // A count without a time bounds nothing: refused; turning the window off forgets the count too.
    let other = tempfile::tempdir().unwrap();
    assert!(matches!(small(other.path()).dedup_window_messages(5).open(), Err(Error::InvalidOption { .. })));
    let queue = small(temp.path()).remove_dedup_window().open().unwrap();
    queue.close().unwrap();
    let manifest = std::fs::read_to_string(temp.path().join("MANIFEST.json")).unwrap();
    assert!(!manifest.contains("dedup_window"), "{manifest}");
}

#[test]
fn concurrent_appends_of_one_id_store_it_once() {
    let temp = tempfile::tempdir().unwrap();
    let queue = with_window(temp.path()).durability(walq::Durability::GroupCommit).open().unwrap();
    let offsets: Vec<Offset> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| queue.append(id("once")).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(offsets.iter().all(|&o| o == Offset(0)), "{offsets:?}");
    assert_eq!(queue.stats().next_offset, Offset(1));
}

/// Message `i` of the sim workload, timestamped when appended (the window counts by message timestamps).
fn with_id(i: u64) -> Message {
    Message::new(format!("value-{i}")).dedup_id(format!("id-{i}"))
}

/// The sim workload: ids 0..30 appended one by one, durably.
fn workload(storage: &FaultyStorage) -> Option<()> {
    let queue = sim_builder(storage).durability(walq::Durability::Sync).dedup_window(Duration::from_secs(600));
    let queue = queue.open().ok()?;
    for i in 0..30 {
        queue.append(with_id(i)).ok()?;
    }
    Some(())
}

#[test]
fn after_a_crash_at_any_storage_operation_a_retry_stores_each_id_exactly_once() {
    let reference = FaultyStorage::new();
    workload(&reference).expect("the workload runs without faults");
    let total_ops = reference.op_count();
    let mut images = 0;
    let mut violations = 0;
    for crash_at in 0..=total_ops {
        let storage = FaultyStorage::new();
        storage.set_plan(Some(FaultPlan { at_op: crash_at, kind: FaultKind::Crash, persistent: false }));
        let _ = workload(&storage);
        for (seed, image) in distinct_crash_images(&storage, (0..3).map(|k| crash_at * 16 + k)) {
            let queue = match sim_builder(&image).open() {
                Ok(queue) => queue,
                Err(Error::NotAQueue { .. }) => continue, // crashed before the queue existed
                Err(error) => panic!("crash at {crash_at}, image seed {seed}: {error}"),
            };
            // The producer retries everything it is not sure of: all 30.
            for i in 0..30 {
                let offset = queue.append(with_id(i)).unwrap();
                let stored = queue.get(offset).unwrap().expect("the answered offset holds a message");
                assert_eq!(stored.dedup_id(), Some(format!("id-{i}").as_bytes()), "the answered offset holds that id");
            }
            let mut seen = std::collections::BTreeMap::new();
            for record in read_all(&queue) {
                *seen.entry(record.dedup_id().unwrap().to_vec()).or_insert(0) += 1;
            }
            if seen.len() != 30 || seen.values().any(|&n| n != 1) {
                violations += 1;
                eprintln!("crash at {crash_at}, image seed {seed}: ids stored {seen:?}");
            }
            images += 1;
        }
    }
    assert!(images > total_ops, "crash images were checked: {images}");
    report(
        "R1 producer dedup",
        "simulated power loss at every storage operation, then a retry",
        images,
        "crash images",
        violations,
    );
    assert_eq!(violations, 0);
}
