//! R13: queue directories of every released format version, and deliberately damaged ones, committed under
//! `tests/fixtures/`, open (or fail with the expected error) forever. Each is opened from a copy, since recovery
//! may write.
//!
//! The fixtures were written once by `generate_fixtures` (ignored: run it only to add a fixture for a new format
//! version, with `cargo test --release --test format_fixtures -- --ignored generate_fixtures`); they are never
//! regenerated for an existing version, because what they prove is that old bytes still open.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{keyed_message, latest_values};
use walq::inspect::Inspector;
use walq::{
    CleanupPolicy, CompactionScope, CorruptionKind, Error, Maintenance, Message, Offset, Preallocation, Queue,
    QueueBuilder, FORMAT_VERSION,
};

const MESSAGES: u64 = 1000;
const ACKED_BEFORE_DEAD_LETTER: u64 = 50;
const ACKED: u64 = 60;

/// The R13 row of one fixture: printed only once its checks passed.
fn fixture_row(name: &str, what: &str) {
    common::report("R13", &format!("committed fixture {name}: {what}"), 1, "fixture", 0);
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Message `i` of the fixtures: key (absent for every 7th), value (a tombstone for every 11th keyed one),
/// headers and a fixed timestamp.
fn fixture_message(i: u64) -> Message {
    let message = keyed_message(i, 17);
    let message = message.timestamp_ms(1_764_000_000_000 + i);
    if i % 5 == 0 {
        message.header("trace", format!("t{i}").into_bytes()).header("n", i.to_le_bytes().to_vec())
    } else {
        message
    }
}

fn builder(dir: &Path) -> QueueBuilder {
    Queue::builder(dir).segment_bytes_max(64 * 1024).message_bytes_max(4096).preallocation(Preallocation::Grow)
}

/// A copy of fixture `name` in a temporary directory.
fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join(name);
    common::copy_tree(&fixtures().join(name), &dir);
    (temp, dir)
}

/// Appends the fixture's messages. The last three one at a time: each frame then records that the ones before it
/// were durable, which the damaged-durable-frame fixture relies on (frames of one batch all carry the same
/// `durable_below`).
fn append_fixture_messages(queue: &Queue) {
    queue.append_batch(&(0..MESSAGES - 3).map(fixture_message).collect::<Vec<_>>()).unwrap();
    for i in MESSAGES - 3..MESSAGES {
        queue.append(fixture_message(i)).unwrap();
    }
}

/// Opens a fixture that recovery must find whole, and checks every record.
fn open_whole(dir: &Path) -> Queue {
    let queue = builder(dir).open().unwrap();
    assert!(queue.recovery_report().lost_nothing());
    let records = common::read_all(&queue);
    assert_eq!(records.len() as u64, MESSAGES);
    for (i, record) in records.iter().enumerate() {
        assert_fixture_record(record, i as u64);
    }
    queue
}

fn assert_fixture_record(record: &walq::Record, i: u64) {
    let expected = fixture_message(i);
    assert_eq!(record.offset, Offset(i));
    assert_eq!(record.key.as_deref(), expected.key_bytes(), "key of {i}");
    assert_eq!(record.value.as_deref(), expected.value_bytes(), "value of {i}");
    assert_eq!(record.timestamp_ms, 1_764_000_000_000 + i, "timestamp of {i}");
    assert_eq!(record.headers.len(), if i % 5 == 0 { 2 } else { 0 }, "headers of {i}");
}

#[test]
#[ignore = "writes tests/fixtures: run only to add the fixtures of a new format version"]
fn generate_fixtures() {
    let version = format!("v{FORMAT_VERSION}");
    let root = fixtures();
    assert!(!root.join(format!("{version}-basic")).exists(), "fixtures of {version} exist: they are never rewritten");

    // A clean queue over several segments, with a group that acked, dead-lettered and has messages in flight.
    let basic = root.join(format!("{version}-basic"));
    let queue = builder(&basic).open().unwrap();
    append_fixture_messages(&queue);
    let consumer = queue.group("billing").unwrap().consumer();
    for i in 0..=ACKED {
        let delivery = consumer.try_recv().unwrap().unwrap();
        assert_eq!(delivery.offset(), Offset(i));
        if i == ACKED_BEFORE_DEAD_LETTER {
            delivery.dead_letter().unwrap();
        } else {
            delivery.ack().unwrap();
        }
    }
    queue.close().unwrap();

    // A keyed queue compacted to the latest value per key: sealed segments with gaps in their offsets.
    let compacted = root.join(format!("{version}-compacted"));
    let queue = builder(&compacted)
        .cleanup(CleanupPolicy::Compact)
        .compaction_scope(CompactionScope::AllSealed)
        .tombstone_retention(Duration::ZERO)
        .maintenance(Maintenance::Manual)
        .open()
        .unwrap();
    queue.append_batch(&(0..MESSAGES).map(fixture_message).collect::<Vec<_>>()).unwrap();
    assert!(queue.compact().unwrap().segments_rewritten > 0);
    queue.close().unwrap();

    // Damaged copies of the clean queue.
    let segments = |dir: &Path| common::segment_files(dir);
    let torn = root.join(format!("{version}-torn-tail"));
    common::copy_tree(&basic, &torn);
    let last = segments(&torn).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0xA5; 300]);
    std::fs::write(&last, bytes).unwrap();

    let sealed = root.join(format!("{version}-corrupt-sealed"));
    common::copy_tree(&basic, &sealed);
    common::flip_bit(&segments(&sealed)[0], 1000, 3);

    let durable = root.join(format!("{version}-damaged-durable-frame"));
    common::copy_tree(&basic, &durable);
    let last = segments(&durable).pop().unwrap();
    // Inside a frame near the end of the last segment, in the tail that open scans; the frames after it prove
    // that it was durable, so this is damage, not a torn write.
    let len = std::fs::metadata(&last).unwrap().len();
    common::flip_bit(&last, len - 250, 0);

    let newer = root.join(format!("v{}-newer-format", FORMAT_VERSION + 1));
    common::copy_tree(&basic, &newer);
    let manifest = newer.join("MANIFEST.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let version_line = format!("\"format_version\": {FORMAT_VERSION},");
    assert!(text.contains(&version_line), "{text}");
    std::fs::write(&manifest, text.replace(&version_line, &format!("\"format_version\": {},", FORMAT_VERSION + 1)))
        .unwrap();

    let not_a_queue = root.join("not-a-queue");
    std::fs::create_dir_all(&not_a_queue).unwrap();
    std::fs::write(not_a_queue.join("notes.txt"), b"an application's own files: walq must not touch them\n").unwrap();
}

/// The fixture of segment headers version 2, group journal version 2 (run, range and delay records) and
/// dead-letter notes version 1, with manifest format 1: what this build writes.
const JOURNAL_V2: &str = "v1-seg-v2-journal-v2";
/// When that fixture was written (ms since the epoch, printed by its generator), and the delay of its nacked
/// message: it is not delivered before `JOURNAL_V2_WRITTEN_MS + JOURNAL_V2_DELAY`.
const JOURNAL_V2_WRITTEN_MS: u64 = 1_796_286_330_439;
const JOURNAL_V2_DELAY: Duration = Duration::from_secs(300 * 24 * 3600);

#[test]
#[ignore = "writes tests/fixtures: run only to add the fixture of new journal and notes versions"]
fn generate_journal_v2_fixture() {
    let dir = fixtures().join(JOURNAL_V2);
    assert!(!dir.exists(), "{JOURNAL_V2} exists: fixtures are never rewritten");
    let queue = builder(&dir).max_deliveries(3).open().unwrap();
    append_fixture_messages(&queue);
    let group = queue.group("billing").unwrap();
    let consumer = group.consumer();
    let taken = consumer.try_recv_batch(200).unwrap(); // one DeliveredFirst run
    let mut out = Vec::new();
    let mut acked = Vec::new();
    for delivery in taken {
        match delivery.offset().0 {
            50 => drop(delivery.dead_letter_with("bad payload at 50").unwrap()),
            60 => drop(delivery.nack(JOURNAL_V2_DELAY).unwrap()),
            70 => drop(delivery.dead_letter_with("to be redriven").unwrap()),
            o if o < 150 => acked.push(delivery),
            _ => out.push(delivery), // still leased when the queue closes
        }
    }
    consumer.ack_all(acked).unwrap(); // AckedRange records
    assert!(group.redrive(Offset(70)).unwrap());
    println!(
        "JOURNAL_V2_WRITTEN_MS = {}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
    );
    queue.close().unwrap();
    drop(out); // after the close: still delivered-not-acked in the journal
}

#[test]
fn v1_seg_v2_journal_v2_opens_with_ranges_delays_redrives_and_reasons() {
    let (_temp, dir) = copy_of(JOURNAL_V2);
    let report = Inspector::open(&dir).unwrap().verify(&mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let queue = open_whole(&dir);
    let group = queue.existing_group("billing").unwrap();
    assert_eq!(group.ack_floor(), Offset(60), "0..60 acked or dead-lettered; 60 waits for its delay");
    let dead = group.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].offset, dead[0].attempts), (Offset(50), 1));
    assert_eq!(dead[0].reason.as_deref(), Some("bad payload at 50"));
    assert!(dead[0].dead_lettered_at_ms.is_some_and(|at| at <= JOURNAL_V2_WRITTEN_MS));
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let delayed_until_ms = JOURNAL_V2_WRITTEN_MS + JOURNAL_V2_DELAY.as_millis() as u64;
    let taken = group.consumer().try_recv_batch(60).unwrap();
    let seen: Vec<(u64, u32)> = taken.iter().map(|d| (d.offset().0, d.attempt())).collect();
    let mut expected = Vec::new();
    if now_ms >= delayed_until_ms {
        expected.push((60, 2)); // its delay is over
    }
    expected.push((70, 1)); // redriven: its count restarts
    expected.extend((150..200).map(|o| (o, 2))); // leased when the queue closed: delivered again
    expected.extend((200..).map(|o| (o, 1)).take(60 - expected.len()));
    assert_eq!(seen, expected, "redeliveries first, lowest offset first; the delayed one not before its time");
    fixture_row(JOURNAL_V2, "opens with its runs, ranges, delay, redrive and dead-letter reason");
}

#[test]
fn v1_basic_opens_with_every_record_and_the_group_state() {
    let (_temp, dir) = copy_of("v1-basic");
    let before = common::dir_snapshot(&dir);
    let report = Inspector::open(&dir).unwrap().verify(&mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(common::dir_snapshot(&dir), before, "inspection writes nothing");

    let queue = open_whole(&dir);
    assert!(queue.stats().segments >= 2, "the fixture spans segments");
    let group = queue.group("billing").unwrap();
    assert_eq!(group.ack_floor(), Offset(ACKED + 1));
    let dead: Vec<_> = group.dead_letters().iter().map(|d| d.offset).collect();
    assert_eq!(dead, vec![Offset(ACKED_BEFORE_DEAD_LETTER)]);
    let next = group.consumer().try_recv().unwrap().unwrap();
    assert_eq!(next.offset(), Offset(ACKED + 1), "the group resumes where it left off");
    assert_eq!(queue.append(fixture_message(MESSAGES)).unwrap(), Offset(MESSAGES), "and takes new appends");
    fixture_row("v1-basic", "opens with every record and the group state");
}

#[test]
fn v1_compacted_keeps_the_latest_value_per_key_with_gaps() {
    let (_temp, dir) = copy_of("v1-compacted");
    let queue = builder(&dir).open().unwrap();
    let records = common::read_all(&queue);
    assert!((records.len() as u64) < MESSAGES, "compaction removed messages");
    assert!(records.windows(2).all(|w| w[0].offset < w[1].offset), "offsets increase");
    for record in &records {
        assert_fixture_record(record, record.offset.0);
    }
    let all: Vec<Message> = (0..MESSAGES).map(fixture_message).collect();
    let model = latest_values(all.iter().map(|m| (m.key_bytes(), m.value_bytes())));
    assert_eq!(latest_values(records.iter().map(|r| (r.key.as_deref(), r.value.as_deref()))), model);
    fixture_row("v1-compacted", "keeps the latest value per key, with gaps");
}

#[test]
fn v1_torn_tail_is_cut_and_reported() {
    let (_temp, dir) = copy_of("v1-torn-tail");
    let queue = builder(&dir).open().unwrap();
    let report = queue.recovery_report();
    assert_eq!(report.truncations.len(), 1, "{report:?}");
    assert_eq!(report.truncations[0].bytes, 300);
    assert_eq!(common::read_all(&queue).len() as u64, MESSAGES);
    fixture_row("v1-torn-tail", "its torn tail is cut and reported");
}

#[test]
fn v1_corrupt_sealed_segment_is_reported_with_file_and_position() {
    let (_temp, dir) = copy_of("v1-corrupt-sealed");
    let queue = builder(&dir).open().unwrap();
    let first_segment = common::segment_files(&dir).remove(0);
    let mut delivered = 0;
    let error = loop {
        match queue.read_from(Offset(delivered)).unwrap().next().unwrap() {
            Ok(record) => {
                assert_fixture_record(&record, delivered);
                delivered += 1;
            }
            Err(error) => break error,
        }
    };
    match error {
        Error::Corrupt { file, position, .. } => {
            assert_eq!(file, first_segment);
            assert!(position <= 1000, "the damaged frame starts at or before byte 1000: {position}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let report = Inspector::open(&dir).unwrap().verify(&mut |_, _| {}).unwrap();
    assert!(!report.is_clean());
    fixture_row("v1-corrupt-sealed", "damage is reported with file and position");
}

#[test]
fn v1_damaged_durable_frame_refuses_to_open() {
    let (_temp, dir) = copy_of("v1-damaged-durable-frame");
    let before = common::dir_snapshot(&dir);
    match builder(&dir).open().err() {
        Some(Error::Corrupt { kind: CorruptionKind::DamagedDurableFrame, file, .. }) => {
            assert_eq!(file, common::segment_files(&dir).pop().unwrap())
        }
        other => panic!("expected a damaged durable frame, got {other:?}"),
    }
    assert_eq!(common::dir_snapshot(&dir), before, "a refused open changes nothing");
    fixture_row("v1-damaged-durable-frame", "refuses to open (Corrupt)");
}

#[test]
fn newer_format_is_refused_with_both_versions() {
    let (_temp, dir) = copy_of(&format!("v{}-newer-format", FORMAT_VERSION + 1));
    let before = common::dir_snapshot(&dir);
    match builder(&dir).open().err() {
        Some(Error::UnsupportedVersion { found, supported }) => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION))
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert!(matches!(Inspector::open(&dir), Err(Error::UnsupportedVersion { .. })));
    assert_eq!(common::dir_snapshot(&dir), before, "nothing is rewritten");
    fixture_row("v2-newer-format", "refused with both versions named");
}

#[test]
fn a_directory_that_is_not_a_queue_is_refused_and_untouched() {
    let (_temp, dir) = copy_of("not-a-queue");
    let before = common::dir_snapshot(&dir);
    assert!(matches!(builder(&dir).open(), Err(Error::NotAQueue { .. })));
    assert_eq!(common::dir_snapshot(&dir), before);
    fixture_row("not-a-queue", "refused, and left untouched");
}
