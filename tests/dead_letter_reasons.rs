//! Dead letters that explain themselves (#22 item 3): `Delivery::dead_letter_with(reason)`, an automatic reason
//! for a dead letter by attempts (how many failed, how the last ended, the last error given to
//! `Delivery::fail`), and the time; all persisted in `groups/<name>.dead_letters` (FORMAT.md), across restarts
//! and power cuts: a dead letter that was durably reported has its reason, and no dead letter ever shows a reason
//! that was not written for it (a redriven one's old reason, bytes of a torn note).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{Durability, Nacked, Offset, Queue, QueueBuilder, DEAD_LETTER_REASON_BYTES_MAX};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn reasons(group: &walq::Group) -> BTreeMap<u64, String> {
    group.dead_letters().into_iter().map(|d| (d.offset.0, d.reason.expect("every dead letter has a reason"))).collect()
}

#[test]
fn reasons_and_times_are_kept_across_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let open = || small(temp.path()).max_deliveries(2).ack_timeout(Duration::from_millis(100)).open().unwrap();
    let before = now_ms();
    {
        let queue = open();
        append_range(&queue, 0..5);
        let consumer = queue.group("jobs").unwrap().consumer();
        let take = || consumer.try_recv().unwrap().expect("ready");
        assert_eq!(take().dead_letter_with("payload is not a job").unwrap(), Nacked::DeadLettered); // 0
        assert_eq!(take().fail("connection refused").unwrap(), Nacked::Retry); // 1, attempt 1
        assert_eq!(take().fail("timeout talking to billing").unwrap(), Nacked::DeadLettered); // 1, attempt 2
        take().dead_letter().unwrap(); // 2
        assert_eq!(take().fail("disk quota").unwrap(), Nacked::Retry); // 3, attempt 1
        let held = take(); // 3, attempt 2: its lease expires
        std::thread::sleep(Duration::from_millis(150));
        assert!(consumer.try_recv().unwrap().is_some_and(|d| d.offset() == Offset(4)));
        drop(held);
        queue.close().unwrap();
    }
    let after = now_ms();
    let queue = open();
    let group = queue.existing_group("jobs").unwrap();
    let expected: BTreeMap<u64, String> = [
        (0, "payload is not a job".to_string()),
        (1, "2 failed attempts; the last failed; last error: timeout talking to billing".to_string()),
        (2, "set aside by its consumer on attempt 1".to_string()),
        (3, "2 failed attempts; the last was not answered within the ack timeout; last error: disk quota".to_string()),
    ]
    .into();
    assert_eq!(reasons(&group), expected);
    for dead in group.dead_letters() {
        let at = dead.dead_lettered_at_ms.unwrap();
        assert!((before..=after).contains(&at), "{at} outside {before}..={after}");
    }
}

#[test]
fn a_redriven_dead_letter_does_not_keep_its_old_reason() {
    let temp = tempfile::tempdir().unwrap();
    let open = || small(temp.path()).max_deliveries(1).open().unwrap();
    {
        let queue = open();
        append_range(&queue, 0..1);
        let group = queue.group("g").unwrap();
        group.consumer().try_recv().unwrap().unwrap().dead_letter_with("first reason").unwrap();
        assert!(group.redrive(Offset(0)).unwrap());
        group.consumer().try_recv().unwrap().unwrap().retry().unwrap();
        assert_eq!(reasons(&group)[&0], "1 failed attempts; the last was retried");
        queue.close().unwrap();
    }
    let queue = open();
    assert_eq!(reasons(&queue.group("g").unwrap())[&0], "1 failed attempts; the last was retried");
}

#[test]
fn a_long_reason_is_cut_to_the_limit() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..1);
    let group = queue.group("g").unwrap();
    group.consumer().try_recv().unwrap().unwrap().dead_letter_with("ж".repeat(DEAD_LETTER_REASON_BYTES_MAX)).unwrap();
    let reason = &reasons(&group)[&0];
    assert_eq!(reason.len(), DEAD_LETTER_REASON_BYTES_MAX);
    assert!(reason.chars().all(|c| c == 'ж'));
}

#[test]
fn a_damaged_notes_file_loses_reasons_not_the_group() {
    let temp = tempfile::tempdir().unwrap();
    {
        let queue = small(temp.path()).open().unwrap();
        append_range(&queue, 0..3);
        let consumer = queue.group("g").unwrap().consumer();
        consumer.try_recv().unwrap().unwrap().dead_letter_with("kept").unwrap();
        consumer.try_recv().unwrap().unwrap().dead_letter_with("torn").unwrap();
        queue.close().unwrap();
    }
    let notes = temp.path().join("groups/g.dead_letters");
    let len = std::fs::metadata(&notes).unwrap().len();
    flip_bit(&notes, len - 2, 0); // inside the last note's reason
    let verify =
        std::process::Command::new(env!("CARGO_BIN_EXE_walq")).arg("verify").arg(temp.path()).output().unwrap();
    let said = String::from_utf8_lossy(&verify.stdout).to_string() + &String::from_utf8_lossy(&verify.stderr);
    assert!(said.contains("dead-letter notes end in"), "walq verify reports the damage: {said}");
    let queue = small(temp.path()).open().unwrap();
    let group = queue.group("g").unwrap();
    let dead = group.dead_letters();
    assert_eq!(dead.len(), 2, "both are still dead letters");
    assert_eq!(dead[0].reason.as_deref(), Some("kept"));
    assert_eq!(dead[1].reason, None, "a damaged note is never shown");
    // The file was rewritten without the damage: a new note after it is read back.
    group.consumer().try_recv().unwrap().unwrap().dead_letter_with("after").unwrap();
    queue.close().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let group = queue.group("g").unwrap();
    let shown: Vec<Option<String>> = group.dead_letters().into_iter().map(|d| d.reason).collect();
    assert_eq!(shown, vec![Some("kept".into()), None, Some("after".into())]);
}

const SIM: &str = "/sim/queue";

fn sim(storage: &FaultyStorage, durability: Durability) -> QueueBuilder {
    Queue::builder(SIM)
        .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(durability)
        .max_deliveries(2)
}

/// Dead-letters messages 0..8 by every path (explicit with a reason, by attempts after `fail`, redriven and
/// dead-lettered again); returns the reason each reported dead letter must show (the last `Ok` wins).
fn workload(storage: &FaultyStorage, durability: Durability) -> BTreeMap<u64, String> {
    let mut reported = BTreeMap::new();
    let run = |reported: &mut BTreeMap<u64, String>| -> walq::Result<()> {
        let queue = sim(storage, durability).open()?;
        queue.append_batch(&(0..8).map(message).collect::<Vec<_>>())?;
        let group = queue.group("g")?;
        let consumer = group.consumer();
        for i in 0..8u64 {
            let delivery = consumer.try_recv()?.expect("ready");
            let offset = delivery.offset().0;
            if i % 2 == 0 {
                let reason = format!("reason {offset} {}", "x".repeat(offset as usize * 40));
                delivery.dead_letter_with(&reason)?;
                reported.insert(offset, reason);
            } else {
                delivery.fail(format!("error {offset}"))?;
                let again = consumer.try_recv()?.expect("retried at once");
                again.fail(format!("final {offset}"))?;
                reported.insert(offset, format!("2 failed attempts; the last failed; last error: final {offset}"));
            }
        }
        // Redrive two and set them aside again for another reason.
        for offset in [0, 3] {
            reported.remove(&offset); // from here it may be redriven (a redrive cut by the crash may still hold)
            group.redrive(Offset(offset))?;
            consumer.try_recv()?.expect("redriven").dead_letter_with(format!("again {offset}"))?;
            reported.insert(offset, format!("again {offset}"));
        }
        queue.close()
    };
    let _ = run(&mut reported);
    reported
}

/// What a crash image shows: each dead letter with its reason.
fn recover(image: &FaultyStorage, durability: Durability, context: &str) -> BTreeMap<u64, Option<String>> {
    let queue = sim(image, durability).open().unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
    let group = queue.group("g").unwrap_or_else(|e| panic!("{context}: {e}"));
    group.dead_letters().into_iter().map(|d| (d.offset.0, d.reason)).collect()
}

#[test]
fn power_loss_at_every_operation_keeps_durable_reasons_and_never_shows_a_wrong_one() {
    let mut images = 0;
    for durability in [Durability::Sync, Durability::GroupCommit] {
        let reference = FaultyStorage::new();
        let full = workload(&reference, durability);
        assert_eq!(full.len(), 8, "the workload dead-letters every message");
        // Every reason a run writes for an offset: the final one, and the first of the two redriven ones.
        let mut written: BTreeMap<u64, Vec<String>> = full.iter().map(|(&o, r)| (o, vec![r.clone()])).collect();
        written.get_mut(&0).unwrap().push("reason 0 ".to_string());
        written.get_mut(&3).unwrap().push("2 failed attempts; the last failed; last error: final 3".to_string());
        for crash_at in 0..=reference.op_count() {
            let storage = FaultyStorage::new();
            storage.set_plan(Some(FaultPlan { at_op: crash_at, kind: FaultKind::Crash, persistent: false }));
            let reported = workload(&storage, durability);
            let seeds = (0..8).map(|k| crash_at * 64 + k);
            for (seed, image) in distinct_crash_images(&storage, seeds) {
                let context = format!("{durability:?} crash at {crash_at}, image {seed}");
                let shown = recover(&image, durability, &context);
                for (offset, reason) in &reported {
                    // Reported durably: still dead (nothing redrives it in recovery) and explained.
                    assert_eq!(shown.get(offset), Some(&Some(reason.clone())), "{context}: offset {offset}");
                }
                for (offset, reason) in &shown {
                    if let Some(reason) = reason {
                        assert!(written[offset].contains(reason), "{context}: {offset} shows {reason:?}");
                    }
                }
                images += 1;
            }
        }
    }
    report(
        "R1 dead-letter reasons",
        "simulated power loss at every operation of dead letters with reasons",
        images,
        "distinct crash images",
        0,
    );
}

/// Regression (review of this change): an I/O error while a group's notes were read at open deleted every
/// reason (anything but a newer version was taken for damage, and the "repair" rewrote an empty file), and a
/// failed rewrite at open failed the whole queue's open. Now only `Corrupt` is damage; otherwise the file is left
/// alone for the next open. Checked with an EIO at every storage operation of an open that must rewrite.
#[test]
fn an_io_error_at_any_operation_of_an_open_keeps_every_reason() {
    let prepared = FaultyStorage::new();
    {
        let queue = sim(&prepared, Durability::Sync).max_deliveries(5).open().unwrap();
        append_range(&queue, 0..6);
        let group = queue.group("g").unwrap();
        let consumer = group.consumer();
        for i in 0..5 {
            consumer.try_recv().unwrap().unwrap().dead_letter_with(format!("why {i}")).unwrap();
        }
        // A redrive and an ack leave an obsolete note: the next open rewrites the file.
        group.redrive(Offset(4)).unwrap();
        consumer.try_recv().unwrap().unwrap().ack().unwrap();
        queue.close().unwrap();
    }
    let expected: BTreeMap<u64, Option<String>> = (0..4).map(|i| (i, Some(format!("why {i}")))).collect();
    assert_eq!(recover(&prepared.clean_image(), Durability::Sync, "prepared"), expected);
    let probe = prepared.clean_image();
    let before = probe.op_count();
    drop(sim(&probe, Durability::Sync).open().unwrap());
    let open_ops = probe.op_count() - before;
    for k in 0..open_ops {
        let image = prepared.clean_image();
        image.set_plan(Some(FaultPlan { at_op: image.op_count() + k, kind: FaultKind::Eio, persistent: false }));
        if let Ok(queue) = sim(&image, Durability::Sync).open() {
            let shown: BTreeMap<u64, Option<String>> =
                queue.group("g").unwrap().dead_letters().into_iter().map(|d| (d.offset.0, d.reason)).collect();
            assert!(shown.values().all(|r| r.is_none() || expected.values().any(|e| e == r)), "EIO at {k}: {shown:?}");
        }
        image.set_plan(None);
        let context = format!("EIO at operation {k} of {open_ops}");
        assert_eq!(recover(&image, Durability::Sync, &context), expected, "{context}");
    }
}
