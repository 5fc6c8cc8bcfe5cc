//! R7 in small: a log cut at any byte of its last frames comes back as exactly the whole frames before the cut; a
//! zero or garbage tail never yields records; garbage is cut (default) or refused (AbsoluteConsistency).

mod common;

use std::path::Path;

use common::*;
use walq::{Error, Offset, Preallocation, Queue, RecoveryMode};

const COUNT: u64 = 40;

/// How the process that wrote a test queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// `close`: the manifest records that every frame is durable, so a later cut is damage, not a torn write.
    Closed,
    /// The process died (a child process exits without closing): the files hold everything written, but
    /// nothing recorded the end.
    Crashed,
}

const CHILD_DIR: &str = "WALQ_TORN_TAIL_DIR";

/// The child of `Ending::Crashed`: appends, then exits without closing (no destructor runs).
#[test]
fn torn_tail_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let queue = small(Path::new(&dir)).open().unwrap();
    append_range(&queue, 0..COUNT);
    std::process::exit(0);
}

/// A queue of `COUNT` messages in one segment; returns the end position of each frame.
fn build(dir: &Path, ending: Ending) -> Vec<u64> {
    match ending {
        Ending::Closed => {
            let queue = small(dir).open().unwrap();
            append_range(&queue, 0..COUNT);
            queue.close().unwrap();
        }
        Ending::Crashed => {
            let status = common::spawn_child("torn_tail_child", &[(CHILD_DIR, dir.display().to_string())]).wait();
            assert!(status.unwrap().success(), "the child appends and exits");
        }
    }
    let mut ends = Vec::new();
    let mut position = SEGMENT_HEADER_BYTES;
    for i in 0..COUNT {
        position += frame_len(i);
        ends.push(position);
    }
    assert_eq!(std::fs::metadata(&segment_files(dir)[0]).unwrap().len(), position, "frame sizes as FORMAT.md says");
    ends
}

/// A cut models a write torn by a crash; after a clean close the same cut is damage to durable frames.
#[test]
fn a_cut_after_a_clean_close_is_refused_as_damage() {
    let temp = tempfile::tempdir().unwrap();
    let original = temp.path().join("original");
    let ends = build(&original, Ending::Closed);
    let dir = temp.path().join("cut");
    copy_dir(&original, &dir);
    let segment = &segment_files(&dir)[0];
    std::fs::OpenOptions::new().write(true).open(segment).unwrap().set_len(ends[(COUNT - 3) as usize] + 5).unwrap();
    let refused = small(&dir).open().err();
    assert!(
        matches!(refused, Some(walq::Error::Corrupt { kind: walq::CorruptionKind::DamagedDurableFrame, .. })),
        "{refused:?}"
    );
}

#[test]
fn cut_at_every_byte_of_the_last_frames() {
    let temp = tempfile::tempdir().unwrap();
    let original = temp.path().join("original");
    let ends = build(&original, Ending::Crashed);
    let from = ends[(COUNT - 6) as usize];
    let to = *ends.last().unwrap();
    for cut in from..=to {
        let dir = temp.path().join(format!("cut-{cut}"));
        copy_dir(&original, &dir);
        let segment = &segment_files(&dir)[0];
        std::fs::OpenOptions::new().write(true).open(segment).unwrap().set_len(cut).unwrap();
        let whole = ends.iter().filter(|&&end| end <= cut).count() as u64;
        // A torn frame whose surviving bytes are all zeros (one byte of a checksum can be zero) cannot be told
        // from a zero tail: it ends the log cleanly, with nothing to report. Any other torn frame is a cut.
        let torn_start = ends.iter().copied().filter(|&end| end <= cut).max().unwrap_or(SEGMENT_HEADER_BYTES);
        let torn_bytes = &std::fs::read(segment).unwrap()[torn_start as usize..];
        let cut_expected = torn_bytes.iter().any(|&b| b != 0);
        let queue = small(&dir).open().unwrap();
        let records = read_all(&queue);
        assert_eq!(records.len() as u64, whole, "cut at {cut}");
        records.iter().enumerate().for_each(|(i, r)| assert_is_message(r, i as u64));
        let report = queue.recovery_report();
        assert_eq!(report.next_offset, whole);
        assert_eq!(report.truncations.len(), usize::from(cut_expected), "cut at {cut}: {report:?}");
        // The queue works after recovery, and the new message lands at the next offset.
        assert_eq!(queue.append(message(whole)).unwrap(), Offset(whole));
        drop(queue);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn zero_tail_is_a_clean_end_in_every_mode() {
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::AbsoluteConsistency, RecoveryMode::SkipCorrupt] {
        let temp = tempfile::tempdir().unwrap();
        build(temp.path(), Ending::Closed);
        let segment = &segment_files(temp.path())[0];
        let len = std::fs::metadata(segment).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(segment).unwrap().set_len(len + 10_000).unwrap();
        let queue = small(temp.path()).recovery_mode(mode).open().unwrap();
        assert!(queue.recovery_report().lost_nothing());
        assert_eq!(read_all(&queue).len() as u64, COUNT);
    }
}

#[test]
fn garbage_tail_is_cut_by_default_and_refused_when_absolute() {
    let temp = tempfile::tempdir().unwrap();
    let original = temp.path().join("original");
    build(&original, Ending::Closed);
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1).collect();

    let dir = temp.path().join("absolute");
    copy_dir(&original, &dir);
    append_bytes(&segment_files(&dir)[0], &garbage);
    let err = small(&dir).recovery_mode(RecoveryMode::AbsoluteConsistency).open().unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    let dir = temp.path().join("default");
    copy_dir(&original, &dir);
    append_bytes(&segment_files(&dir)[0], &garbage);
    let queue = small(&dir).open().unwrap();
    let report = queue.recovery_report();
    assert_eq!(report.truncations.len(), 1);
    assert_eq!(report.truncations[0].bytes, garbage.len() as u64);
    assert_eq!(read_all(&queue).len() as u64, COUNT);
    drop(queue);
    // The cut is durable and final: opening again finds a clean end.
    let queue = small(&dir).open().unwrap();
    assert!(queue.recovery_report().lost_nothing(), "{:?}", queue.recovery_report());
}

#[test]
fn preallocated_segment_reopens_after_drop_without_close() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let queue = Queue::builder(&dir).preallocation(Preallocation::Reserve).open().unwrap();
    append_range(&queue, 0..100);
    // A copy taken while the queue is open is what a process that died without closing leaves: the segment keeps
    // its preallocated zeros.
    let segment = &segment_files(&dir)[0];
    assert!(std::fs::metadata(segment).unwrap().len() > 1 << 20);
    let copy = temp.path().join("copy");
    copy_dir(&dir, &copy);
    std::fs::remove_file(copy.join("LOCK")).unwrap();
    drop(queue);
    let reopened = Queue::open(&copy).unwrap();
    assert!(reopened.recovery_report().lost_nothing());
    assert_eq!(read_all(&reopened).len(), 100);
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}
