//! Bad input gets a typed error and changes nothing on disk.

mod common;

use common::*;
use walq::{Error, Message, Offset, Queue};

#[test]
fn oversized_message_is_refused_and_nothing_is_written() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..5);
    let before = dir_snapshot(temp.path());
    let err = queue.append(Message::new(vec![1u8; 4097])).unwrap_err();
    assert!(matches!(err, Error::MessageTooLarge { size: 4097, max: 4096 }), "{err}");
    // One bad message in a batch: none of the batch is written.
    let batch = vec![message(5), Message::new(vec![0u8; 5000]), message(6)];
    assert!(matches!(queue.append_batch(&batch), Err(Error::MessageTooLarge { .. })));
    let too_many_headers = (0..65).fold(Message::new(b"x".to_vec()), |m, i| m.header(format!("h{i}"), Vec::new()));
    assert!(matches!(queue.append(too_many_headers), Err(Error::InvalidHeader { .. })));
    let long_name = Message::new(b"x".to_vec()).header("n".repeat(257), Vec::new());
    assert!(matches!(queue.append(long_name), Err(Error::InvalidHeader { .. })));
    assert_eq!(dir_snapshot(temp.path()), before);
    assert_eq!(queue.append(message(5)).unwrap(), Offset(5));
}

#[test]
fn directory_that_is_not_a_queue_is_never_touched() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::write(temp.path().join("notes.txt"), b"my notes").unwrap();
    let before = dir_snapshot(temp.path());
    let err = Queue::open(temp.path()).unwrap_err();
    assert!(matches!(err, Error::NotAQueue { .. }), "{err}");
    assert_eq!(dir_snapshot(temp.path()), before, "not even a LOCK file");

    let file = temp.path().join("notes.txt");
    assert!(matches!(Queue::open(&file), Err(Error::NotAQueue { .. })));
}

#[test]
fn newer_format_version_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    small(temp.path()).open().unwrap().close().unwrap();
    let manifest = temp.path().join("MANIFEST.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"format_version\": 1", "\"format_version\": 2")).unwrap();
    let before = dir_snapshot(temp.path());
    let err = Queue::open(temp.path()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { found: 2, supported: 1 }), "{err}");
    assert_eq!(dir_snapshot(temp.path()), before);
}

#[test]
fn segment_of_a_newer_version_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..3);
    queue.close().unwrap();
    let segment = &segment_files(temp.path())[0];
    let mut bytes = std::fs::read(segment).unwrap();
    bytes[8] = 3; // format_version, then fix the header CRC as a newer walq would have written it
    let crc = crc32(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(segment, bytes).unwrap();
    let err = Queue::open(temp.path()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { found: 3, supported: 2 }), "{err}");
}

#[test]
fn invalid_settings_are_refused_before_anything_is_created() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("new");
    for builder in [
        Queue::builder(&dir).segment_bytes_max(1000),
        Queue::builder(&dir).segment_bytes_max(u64::MAX),
        Queue::builder(&dir).message_bytes_max(0),
        Queue::builder(&dir).segment_bytes_max(64 * 1024).message_bytes_max(64 * 1024),
        Queue::builder(&dir).durability(walq::Durability::Interval(std::time::Duration::ZERO)),
    ] {
        let err = builder.open().unwrap_err();
        assert!(matches!(err, Error::InvalidOption { .. }), "{err}");
        assert!(!dir.exists());
    }
    // On an existing queue too: the stored settings stay.
    small(&dir).open().unwrap().close().unwrap();
    let before = dir_snapshot(&dir);
    assert!(matches!(
        small(&dir).segment_bytes_max(10).open(),
        Err(Error::InvalidOption { option: "segment_bytes_max", .. })
    ));
    assert_eq!(dir_snapshot(&dir), before);
}

/// A small segment with the default message limit is refused with a reason that says which option to lower, and
/// to what (#22 item 7: the error named only the clash).
#[test]
fn a_small_segment_says_to_lower_the_message_limit() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("new");
    let err = Queue::builder(&dir).segment_bytes_max(256 * 1024).open().unwrap_err();
    let Error::InvalidOption { option: "message_bytes_max", reason } = &err else { panic!("{err}") };
    assert!(reason.contains("lower message_bytes_max to at most"), "{reason}");
    assert!(!dir.exists());
    // What it says works.
    let at_most: usize = reason.split("at most ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let queue = Queue::builder(&dir).segment_bytes_max(256 * 1024).message_bytes_max(at_most).open().unwrap();
    queue.append(Message::new(vec![7u8; at_most])).unwrap();
    assert!(matches!(queue.append(Message::new(vec![7u8; at_most + 1])), Err(Error::MessageTooLarge { .. })));
}

#[test]
fn stored_settings_apply_when_not_given() {
    let temp = tempfile::tempdir().unwrap();
    small(temp.path()).durability(walq::Durability::None).open().unwrap().close().unwrap();
    let queue = Queue::open(temp.path()).unwrap();
    assert_eq!(queue.durability(), walq::Durability::None);
    assert!(matches!(queue.append(Message::new(vec![0u8; 5000])), Err(Error::MessageTooLarge { max: 4096, .. })));
}

#[test]
fn closed_queue_refuses_work() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let clone = queue.clone();
    queue.close().unwrap();
    assert!(matches!(clone.append(message(0)), Err(Error::Closed)));
    assert!(matches!(clone.read_from(Offset::EARLIEST), Err(Error::Closed)));
    assert!(matches!(clone.flush(), Err(Error::Closed)));
    clone.close().unwrap();
}

fn crc32(bytes: &[u8]) -> u32 {
    // CRC-32 (IEEE), bitwise: the tests do not depend on the crate under test for the checksum.
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Regression (#12, item 17): group names equal but for case collided on case-insensitive file systems (one
/// journal file for two groups). The second is refused, and creates nothing.
#[test]
fn a_group_name_equal_to_another_but_for_case_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue.group("orders").unwrap();
    let err = queue.group("Orders").unwrap_err();
    assert!(matches!(err, Error::InvalidGroupName { .. }), "{err}");
    assert_eq!(queue.groups(), vec!["orders".to_string()]);
    drop(queue);
    let queue = Queue::open(dir.path()).unwrap();
    assert!(matches!(queue.group("ORDERS"), Err(Error::InvalidGroupName { .. })), "also after a reopen");
}
