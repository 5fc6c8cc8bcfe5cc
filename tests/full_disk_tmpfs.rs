//! A real full disk: a small tmpfs (root only; skipped elsewhere, required under CI).
//!
//! - With `Preallocation::Reserve`, a full disk when a segment is created is `Error::DiskFull`. It was reported as
//!   `Io { "create segment", NotFound }` (#12, item 9): fs2's `allocate` reads `errno` after `posix_fallocate`,
//!   which returns its error instead of setting `errno`. walq corrects the error from the free space.
//! - A batch that fails partway (its roll finds the disk full) says how many of its messages were appended
//!   (`Error::BatchIncomplete`): exactly those are stored and read, and retrying the rest once space is freed stores
//!   every message exactly once (#12, item 5: the prefix was kept and a documented retry duplicated it).
//! - A segment reopened after a clean close reserves its space again at its first write (open writes nothing,
//!   #15), best effort: on a disk without room for the whole segment, appends that fit still land, and what does
//!   not fit is `DiskFull` as with `Preallocation::Grow` (a review found the first version refusing every append).

mod common;

use common::tmpfs::mount_or_skip;
use walq::{Error, Message, Offset, Preallocation, Queue};

const SEGMENT_BYTES: u64 = 256 * 1024;

fn value(i: u64) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.resize(1000, (i % 251) as u8);
    v
}

/// A queue whose segments reserve their space up front (`Preallocation::Reserve`): the disk fills at a roll.
fn open_reserved(dir: &std::path::Path) -> Queue {
    let builder = Queue::builder(dir).segment_bytes_max(SEGMENT_BYTES).message_bytes_max(4096);
    builder.preallocation(Preallocation::Reserve).open().unwrap()
}

/// Appends `value(i)` from `first` on until an append fails, which must be `DiskFull`; returns the next offset.
fn append_until_full(queue: &Queue, first: u64) -> u64 {
    let mut appended = first;
    let error = loop {
        match queue.append(Message::new(value(appended))) {
            Ok(offset) => {
                assert_eq!(offset, Offset(appended));
                appended += 1;
            }
            Err(error) => break error,
        }
        assert!(appended < 10_000, "a 1 MiB file system never filled");
    };
    assert!(matches!(error, Error::DiskFull), "a full disk must be DiskFull, got: {error}");
    appended
}

#[test]
fn a_full_disk_at_segment_creation_is_disk_full() {
    let Some(fs) = mount_or_skip("a_full_disk_at_segment_creation_is_disk_full", 1024 * 1024) else { return };
    let dir = fs.path().join("q");
    let queue = open_reserved(&dir);
    let appended = append_until_full(&queue, 0);
    // Nothing acknowledged is lost, and reading still works.
    let stored: Vec<_> = queue.read_from(Offset::EARLIEST).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(stored.len() as u64, appended);
}

#[test]
fn a_batch_cut_by_a_full_disk_says_how_much_was_appended() {
    let Some(fs) = mount_or_skip("a_batch_cut_by_a_full_disk_says_how_much_was_appended", 1024 * 1024) else { return };
    let dir = fs.path().join("q");
    // Room to free later: a filler file taking a segment's worth.
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![1u8; SEGMENT_BYTES as usize]).unwrap();
    let queue = open_reserved(&dir);
    let mut next = 0u64;
    let mut incomplete = None;
    for _ in 0..100 {
        let batch: Vec<Message> = (next..next + 50).map(|i| Message::new(value(i))).collect();
        match queue.append_batch(&batch) {
            Ok(first) => {
                assert_eq!(first, Offset(next));
                next += 50;
            }
            Err(Error::BatchIncomplete { first_offset, appended, cause }) => {
                assert_eq!(first_offset, Offset(next));
                assert!(matches!(*cause, Error::DiskFull), "cause: {cause}");
                assert!(appended > 0 && appended < 50);
                incomplete = Some((next, appended as u64));
                break;
            }
            Err(Error::DiskFull) => panic!("a batch that spans a roll must not fail whole after its first part landed"),
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    let (batch_start, appended) = incomplete.expect("a batch met the full disk at a roll");
    let stored: Vec<_> = queue.read_from(Offset::EARLIEST).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(stored.len() as u64, batch_start + appended, "exactly the appended prefix is stored");

    std::fs::remove_file(&filler).unwrap();
    let rest: Vec<Message> = (batch_start + appended..batch_start + 50).map(|i| Message::new(value(i))).collect();
    assert_eq!(queue.append_batch(&rest).unwrap(), Offset(batch_start + appended));
    let stored: Vec<_> = queue.read_from(Offset::EARLIEST).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(stored.len() as u64, batch_start + 50);
    for (i, record) in stored.iter().enumerate() {
        assert_eq!(record.offset, Offset(i as u64));
        assert_eq!(record.value.as_deref(), Some(&value(i as u64)[..]), "message {i} stored once, in order");
    }
}

#[test]
fn a_reopened_segment_without_room_for_its_reservation_still_takes_what_fits() {
    let name = "a_reopened_segment_without_room_for_its_reservation_still_takes_what_fits";
    let Some(fs) = mount_or_skip(name, 1024 * 1024) else { return };
    let dir = fs.path().join("q");
    let queue = open_reserved(&dir);
    for i in 0..10 {
        queue.append(Message::new(value(i))).unwrap();
    }
    queue.close().unwrap(); // gives the reservation back
                            // Leave less room than a segment's reservation, more than a few messages.
    let free = fs2::available_space(fs.path()).unwrap();
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![1u8; (free - SEGMENT_BYTES / 2) as usize]).unwrap();
    assert!(fs2::available_space(fs.path()).unwrap() < SEGMENT_BYTES);

    let queue = open_reserved(&dir);
    let appended = append_until_full(&queue, 10);
    assert!(appended >= 10 + 50, "the appends that fit landed: {appended}");
    let stored: Vec<_> = queue.read_from(Offset::EARLIEST).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(stored.len() as u64, appended);
    for (i, record) in stored.iter().enumerate() {
        assert_eq!(record.value.as_deref(), Some(&value(i as u64)[..]));
    }
}
