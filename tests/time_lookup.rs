//! Time lookup (#18 item 2): `Queue::offset_for_time(ms)` is the first offset whose timestamp is at or after `ms`,
//! found through the time index folded into each segment's offset index (the greatest timestamp before each
//! entry), exactly, whether producer timestamps grow or not; across segments, reopens, compaction, a purge and
//! lost index files. Groups start or reset at a time (`StartAt::Time`), and the tool's `dump --since-ms` starts
//! reading where the index says.

mod common;

use common::*;
use walq::inspect::{Inspector, Scanned};
use walq::storage::FaultRng;
use walq::{CleanupPolicy, Message, Offset, Queue, QueueBuilder, StartAt};

fn keep_all(dir: &std::path::Path) -> QueueBuilder {
    small(dir).cleanup(CleanupPolicy::KeepAll)
}

/// The model: the first offset whose timestamp is at or after `time_ms`.
fn model(stamps: &[(u64, u64)], time_ms: u64) -> Option<Offset> {
    stamps.iter().find(|&&(_, t)| t >= time_ms).map(|&(o, _)| Offset(o))
}

fn append_stamped(queue: &Queue, stamps: &mut Vec<(u64, u64)>, timestamps: impl IntoIterator<Item = u64>) {
    for t in timestamps {
        let offset = queue.append(Message::new(vec![b'v'; 200]).key(format!("k{}", t % 7)).timestamp_ms(t)).unwrap();
        stamps.push((offset.0, t));
    }
}

fn check_all(queue: &Queue, stamps: &[(u64, u64)], targets: impl IntoIterator<Item = u64>, context: &str) {
    for time_ms in targets {
        assert_eq!(queue.offset_for_time(time_ms).unwrap(), model(stamps, time_ms), "{context}: time {time_ms}");
    }
}

#[test]
fn growing_timestamps_across_segments_and_a_reopen() {
    let temp = tempfile::tempdir().unwrap();
    let queue = keep_all(temp.path()).open().unwrap();
    let mut stamps = Vec::new();
    let t0 = 1_700_000_000_000;
    append_stamped(&queue, &mut stamps, (0..1500).map(|i| t0 + i * 250));
    assert!(segment_files(temp.path()).len() >= 4, "several segments");
    let targets = || (0..200).map(|k| t0 - 1000 + k * 2_000).chain([0, t0, t0 + 1, u64::MAX]);
    check_all(&queue, &stamps, targets(), "before the reopen");
    queue.close().unwrap();

    // The reopened segment's new index entries carry on from what recovery read.
    let queue = keep_all(temp.path()).open().unwrap();
    append_stamped(&queue, &mut stamps, (1500..2500).map(|i| t0 + i * 250));
    check_all(&queue, &stamps, targets().chain((0..60).map(|k| t0 + 350_000 + k * 5_000)), "after the reopen");

    // A purge: nothing below the purge point is an answer.
    queue.purge_until(Offset(1000)).unwrap();
    let kept: Vec<(u64, u64)> = stamps.iter().copied().filter(|&(o, _)| o >= 1000).collect();
    check_all(&queue, &kept, [0, t0, t0 + 300_000], "after a purge");

    // Groups start and reset at a time.
    let group = queue.group_starting_at("late", StartAt::Time(t0 + 500_000)).unwrap();
    assert_eq!(group.ack_floor(), Offset(2000));
    assert_eq!(queue.reset_group("late", StartAt::Time(t0 + 400_000)).unwrap(), Offset(1600));
    assert_eq!(queue.reset_group("late", StartAt::Time(u64::MAX)).unwrap(), queue.stats().next_offset);
}

#[test]
fn timestamps_out_of_order_are_answered_exactly() {
    for seed in 1..=3u64 {
        let temp = tempfile::tempdir().unwrap();
        let mut queue = keep_all(temp.path()).open().unwrap();
        let mut rng = FaultRng::new(seed);
        let mut stamps = Vec::new();
        // Mostly growing, with stragglers from the past and a few from the future.
        let base = 1_700_000_000_000;
        let times: Vec<u64> = (0..2000)
            .map(|i| match rng.below(10) {
                0 => base + rng.below(i * 100 + 1),         // late: earlier than its neighbours
                1 => base + i * 100 + rng.below(1_000_000), // early: far ahead
                _ => base + i * 100 + rng.below(100),
            })
            .collect();
        // Half, a reopen (the last segment's running maximum comes back from recovery), the rest.
        append_stamped(&queue, &mut stamps, times[..1000].iter().copied());
        queue.close().unwrap();
        queue = keep_all(temp.path()).open().unwrap();
        append_stamped(&queue, &mut stamps, times[1000..].iter().copied());
        let mut targets: Vec<u64> = (0..300).map(|_| base + rng.below(2000 * 100 + 1_000_000)).collect();
        targets.extend(times.iter().step_by(37).copied()); // exact timestamps too
        targets.extend(times.iter().step_by(41).map(|t| t + 1));
        check_all(&queue, &stamps, targets.iter().copied(), &format!("seed {seed}"));

        // Without index files (lost, rebuilt by maintenance later), lookups stay exact.
        queue.close().unwrap();
        for index in index_files(temp.path()) {
            std::fs::remove_file(index).unwrap();
        }
        let queue = keep_all(temp.path()).open().unwrap();
        check_all(&queue, &stamps, targets.iter().copied().take(50), &format!("seed {seed}, no index files"));
    }
}

#[test]
fn compaction_keeps_the_time_index_an_upper_bound() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).cleanup(CleanupPolicy::Compact).open().unwrap();
    let mut stamps = Vec::new();
    let t0 = 1_700_000_000_000;
    // Every 7th message a minute ahead of its neighbours: when compaction removes one, the index's maximum before
    // the entries after it is too high, never too low.
    append_stamped(
        &queue,
        &mut stamps,
        (0..1500).map(|i| if i % 7 == 3 { t0 + i * 1_000 + 60_000 } else { t0 + i * 1_000 }),
    );
    queue.compact().unwrap();
    let kept: Vec<(u64, u64)> = read_all(&queue).iter().map(|r| (r.offset.0, r.timestamp_ms)).collect();
    assert!(kept.len() < stamps.len(), "compaction removed messages: {} of {}", kept.len(), stamps.len());
    check_all(&queue, &kept, (0..150).map(|k| t0 + k * 10_000 + 500), "after compaction");
}

#[test]
fn the_tool_dumps_from_where_the_time_index_says() {
    let temp = tempfile::tempdir().unwrap();
    let queue = keep_all(temp.path()).open().unwrap();
    let mut stamps = Vec::new();
    let t0 = 1_700_000_000_000;
    append_stamped(&queue, &mut stamps, (0..1500).map(|i| t0 + i * 1_000));
    queue.close().unwrap();
    let inspector = Inspector::open(temp.path()).unwrap();
    let since = t0 + 1_200_500;
    let start = inspector.time_start(since).unwrap();
    assert!(start.0 > 1000 && start.0 <= 1201, "starts near the answer, not at 0: {start}");
    let first_late = inspector
        .records(start)
        .unwrap()
        .filter_map(|s| match s.unwrap() {
            Scanned::Record(record) => Some(record),
            _ => None,
        })
        .find(|r| r.timestamp_ms >= since)
        .map(|r| r.offset);
    assert_eq!(first_late, Some(Offset(1201)));
    assert_eq!(inspector.time_start(t0 + 10_000_000).unwrap(), Offset::LATEST, "no record that late");
}

/// The last segment's running maximum comes back at open from the entry recovery started at: a message far ahead
/// of its neighbours, written before a reopen, is still the answer for its time once the reopened segment has new
/// index entries after it.
#[test]
fn a_reopened_segment_keeps_counting_the_times_before_the_reopen() {
    let temp = tempfile::tempdir().unwrap();
    let queue = keep_all(temp.path()).segment_bytes_max(1024 * 1024).open().unwrap();
    let mut stamps = Vec::new();
    let t0 = 1_700_000_000_000;
    let far = t0 + 86_400_000; // a day ahead
    append_stamped(&queue, &mut stamps, (0..100).map(|i| t0 + i));
    append_stamped(&queue, &mut stamps, [far]);
    append_stamped(&queue, &mut stamps, (101..400).map(|i| t0 + i));
    queue.close().unwrap();
    let queue = keep_all(temp.path()).segment_bytes_max(1024 * 1024).open().unwrap();
    append_stamped(&queue, &mut stamps, (400..800).map(|i| t0 + i));
    assert_eq!(segment_files(temp.path()).len(), 1, "one segment, reopened and appended to");
    assert_eq!(queue.offset_for_time(far).unwrap(), Some(Offset(100)));
    check_all(&queue, &stamps, [t0 + 500, far - 1, far, far + 1], "after the reopen");
}

/// The sim workload: 1,500 stamped messages (every tenth far behind its neighbours) over several segments,
/// appended durably in batches of 50.
fn workload(storage: &walq::storage::FaultyStorage) -> Option<()> {
    let queue = sim_builder(storage).durability(walq::Durability::Sync).open().ok()?;
    let t0 = 1_700_000_000_000u64;
    for batch in 0..30u64 {
        let messages: Vec<Message> = (batch * 50..batch * 50 + 50)
            .map(|i| {
                let t = if i % 10 == 3 { t0 + i * 100 - 50_000 } else { t0 + i * 100 };
                Message::new(vec![b'v'; 100]).timestamp_ms(t)
            })
            .collect();
        queue.append_batch(&messages).ok()?;
    }
    Some(())
}

/// R1 for the time index: a power cut at any storage operation (index files are never fsynced: any of their
/// writes may be lost or kept) leaves lookups exact against the records the reopened queue holds.
#[test]
fn after_a_power_cut_at_any_storage_operation_lookups_stay_exact() {
    use walq::storage::{FaultKind, FaultPlan, FaultyStorage};
    let reference = FaultyStorage::new();
    workload(&reference).expect("the workload runs without faults");
    let total_ops = reference.op_count();
    let (mut images, mut violations) = (0, 0);
    let t0 = 1_700_000_000_000u64;
    for crash_at in (0..=total_ops).step_by(3) {
        let storage = FaultyStorage::new();
        storage.set_plan(Some(FaultPlan { at_op: crash_at, kind: FaultKind::Crash, persistent: false }));
        let _ = workload(&storage);
        for (seed, image) in distinct_crash_images(&storage, (0..2).map(|k| crash_at * 16 + k)) {
            let queue = match sim_builder(&image).open() {
                Ok(queue) => queue,
                Err(walq::Error::NotAQueue { .. }) => continue,
                Err(error) => panic!("crash at {crash_at}, image seed {seed}: {error}"),
            };
            // Appends after the reopen add index entries from the recovered running maximum.
            let more: Vec<Message> =
                (0..200).map(|i| Message::new(vec![b'w'; 100]).timestamp_ms(t0 + 150_000 + i * 100)).collect();
            queue.append_batch(&more).unwrap();
            let stamps: Vec<(u64, u64)> = read_all(&queue).iter().map(|r| (r.offset.0, r.timestamp_ms)).collect();
            let after_reopen = (0..20).map(|k| t0 + 150_000 + k * 1_000 + 50);
            for time_ms in (0..40).map(|k| t0 - 60_000 + k * 5_000).chain(after_reopen).chain([u64::MAX]) {
                if queue.offset_for_time(time_ms).unwrap() != model(&stamps, time_ms) {
                    violations += 1;
                    eprintln!("crash at {crash_at}, image seed {seed}: time {time_ms}");
                }
            }
            images += 1;
        }
    }
    assert!(images > total_ops / 3, "crash images were checked: {images}");
    report(
        "R1 time index",
        "simulated power loss at every third storage operation; lookups against a model",
        images,
        "crash images",
        violations,
    );
    assert_eq!(violations, 0);
}

/// A review found that a lookup took the sealed segments and the active one under two locks: a roll in between
/// left the segment it sealed out of the walk, and the answer came from the segment after it. Lookups while a
/// producer appends (and rolls) must agree with the model once the records they name exist.
#[test]
fn lookups_while_a_producer_rolls_segments_agree_with_the_model() {
    let temp = tempfile::tempdir().unwrap();
    let queue = keep_all(temp.path()).open().unwrap();
    let t0 = 1_700_000_000_000u64;
    let answers = std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            for i in 0..6_000u64 {
                queue.append(Message::new(vec![b'p'; 200]).timestamp_ms(t0 + i * 10)).unwrap();
            }
        });
        let mut answers = Vec::new();
        let mut rng = FaultRng::new(7);
        while !producer.is_finished() {
            let appended = queue.stats().next_offset.0;
            let time_ms = t0 + rng.below(appended.max(1)) * 10;
            answers.push((time_ms, queue.offset_for_time(time_ms).unwrap()));
        }
        answers
    });
    let stamps: Vec<(u64, u64)> = read_all(&queue).iter().map(|r| (r.offset.0, r.timestamp_ms)).collect();
    let found: Vec<(u64, Option<Offset>)> = answers.into_iter().filter(|(_, a)| a.is_some()).collect();
    assert!(found.len() > 10, "lookups found records while appending: {}", found.len());
    for (time_ms, answer) in found {
        // An answer names a stored record; the model over everything stored since must agree with it.
        assert_eq!(answer, model(&stamps, time_ms), "time {time_ms}");
    }
}

/// A review found that a damaged sealed segment counted as earlier than any time behind its damage (the walk for
/// its greatest timestamp stopped there), so a lookup passed over it silently. Now its greatest timestamp is not
/// known: the lookup reads it, and the damage is an error, or skipped under `SkipCorrupt`.
#[test]
fn a_damaged_segment_is_read_not_passed_over() {
    let temp = tempfile::tempdir().unwrap();
    let queue = keep_all(temp.path()).open().unwrap();
    let mut stamps = Vec::new();
    let t0 = 1_700_000_000_000;
    append_stamped(&queue, &mut stamps, (0..1500).map(|i| t0 + i * 1_000));
    queue.close().unwrap();
    let segments = segment_files(temp.path());
    assert!(segments.len() >= 3);
    // The first segment without its index (its greatest timestamp is then found by reading it) and damaged in
    // its middle: the frames behind the damage, the latest of the segment, cannot be read.
    std::fs::remove_file(&index_files(temp.path())[0]).unwrap();
    let len = std::fs::metadata(&segments[0]).unwrap().len();
    flip_bit(&segments[0], len / 2, 3);
    let second_base: u64 = segments[1].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let behind_damage = stamps[second_base as usize - 1].1; // the first segment's last record

    let strict = keep_all(temp.path()).open().unwrap();
    let answer = strict.offset_for_time(behind_damage);
    assert!(matches!(answer, Err(walq::Error::Corrupt { .. })), "read and reported, not passed over: {answer:?}");
    drop(strict);

    let salvaging = keep_all(temp.path()).recovery_mode(walq::RecoveryMode::SkipCorrupt).open().unwrap();
    let readable: Vec<(u64, u64)> = read_all(&salvaging).iter().map(|r| (r.offset.0, r.timestamp_ms)).collect();
    assert!(readable.len() < stamps.len(), "the damage hides records");
    let late = stamps[stamps.len() / 2].1;
    check_all(&salvaging, &readable, [t0 + 10_500, behind_damage, late], "skipping the damage");
}
