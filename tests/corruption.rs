//! A damaged byte is reported with its file and position, never delivered as data: in sealed segments (found when
//! read), and in the last segment (found on open when a later frame proves the damaged one was durable).

mod common;

use common::*;
use walq::{CorruptionKind, Error, RecoveryMode};

#[test]
fn flipped_byte_in_sealed_segment_is_reported_when_read() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..3000);
    queue.close().unwrap();
    let segments = segment_files(temp.path());
    assert!(segments.len() >= 3);
    // Damage the value of message 10 (in the first segment).
    let frame_start: u64 = SEGMENT_HEADER_BYTES + (0..10).map(frame_len).sum::<u64>();
    flip_bit(&segments[0], frame_start + FRAME_HEADER_BYTES + 8, 3);

    let queue = small(temp.path()).open().unwrap();
    let mut reader = queue.read_from(walq::Offset::EARLIEST).unwrap();
    for i in 0..10 {
        assert_is_message(&reader.next().unwrap().unwrap(), i);
    }
    match reader.next() {
        Some(Err(Error::Corrupt { file, position, kind })) => {
            assert_eq!(file, segments[0]);
            assert_eq!(position, frame_start);
            assert_eq!(kind, CorruptionKind::BadChecksum);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(reader.next().is_none(), "a reader stops at damage");
    // Reading from later segments still works.
    let later = queue.read_from(walq::Offset(2500)).unwrap().next().unwrap().unwrap();
    assert_is_message(&later, 2500);
}

#[test]
fn damaged_durable_frame_in_last_segment_fails_open_unless_salvaging() {
    let temp = tempfile::tempdir().unwrap();
    let original = temp.path().join("original");
    let queue = small(&original).open().unwrap();
    append_range(&queue, 0..30); // group commit, one at a time: each frame proves its predecessors durable
    queue.close().unwrap();
    let frame_start: u64 = SEGMENT_HEADER_BYTES + (0..12).map(frame_len).sum::<u64>();

    let dir = temp.path().join("default");
    copy_dir(&original, &dir);
    flip_bit(&segment_files(&dir)[0], frame_start + FRAME_HEADER_BYTES + 2, 0);
    match small(&dir).open().unwrap_err() {
        Error::Corrupt { position, kind, .. } => {
            assert_eq!(position, frame_start);
            assert_eq!(kind, CorruptionKind::DamagedDurableFrame);
        }
        other => panic!("expected corruption, got {other}"),
    }
    let err = small(&dir).recovery_mode(RecoveryMode::AbsoluteConsistency).open().unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }));

    // Salvage: everything but the damaged message, offsets kept, and the queue keeps working.
    let queue = small(&dir).recovery_mode(RecoveryMode::SkipCorrupt).open().unwrap();
    let report = queue.recovery_report().clone();
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.skipped[0].first_missing_offset, 12);
    assert_eq!(report.skipped[0].resumes_at_offset, 13);
    let offsets: Vec<u64> = read_all(&queue).iter().map(|r| r.offset.0).collect();
    assert_eq!(offsets, (0..30).filter(|&i| i != 12).collect::<Vec<_>>());
    append_range(&queue, 30..40);
    drop(queue);
    let queue = small(&dir).recovery_mode(RecoveryMode::SkipCorrupt).open().unwrap();
    assert_eq!(read_all(&queue).len(), 39);
    drop(queue);
    // A default-mode reader still refuses to read past the damage rather than hide it.
    let queue = small(&dir).open().unwrap();
    let results: Vec<_> = queue.read_from(walq::Offset::EARLIEST).unwrap().collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 12);
    assert!(matches!(results.last(), Some(Err(Error::Corrupt { .. }))));
}

#[test]
fn frame_copied_from_another_segment_is_rejected() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..3000);
    queue.close().unwrap();
    let segments = segment_files(temp.path());
    // Copy the first frame of segment 1 over the first frame of segment 0 (same length not needed: the CRC
    // covers the segment id, so it fails wherever it lands).
    let donor = std::fs::read(&segments[1]).unwrap();
    let mut target = std::fs::read(&segments[0]).unwrap();
    let len = u32::from_le_bytes(donor[68..72].try_into().unwrap()) as usize;
    target[64..64 + len].copy_from_slice(&donor[64..64 + len]);
    std::fs::write(&segments[0], target).unwrap();
    let queue = small(temp.path()).open().unwrap();
    let first = queue.read_from(walq::Offset::EARLIEST).unwrap().next().unwrap();
    assert!(matches!(first, Err(Error::Corrupt { position: 64, .. })), "{first:?}");
}

#[test]
fn every_bit_flip_of_a_small_last_segment_is_detected_or_harmless() {
    let temp = tempfile::tempdir().unwrap();
    let original = temp.path().join("original");
    let queue = small(&original).open().unwrap();
    append_range(&queue, 0..8);
    queue.close().unwrap();
    let segment_name = segment_files(&original)[0].file_name().unwrap().to_owned();
    let bytes = std::fs::read(original.join(&segment_name)).unwrap();
    let dir = temp.path().join("flipped");
    copy_dir(&original, &dir);
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(dir.join(&segment_name), &flipped).unwrap();
        let _ = std::fs::remove_file(dir.join(segment_name.to_string_lossy().replace(".seg", ".idx")));
        let Ok(queue) = small(&dir).open() else { continue }; // detected on open
        let (mut delivered, mut reported) = (0, !queue.recovery_report().lost_nothing());
        for (i, record) in queue.read_from(walq::Offset::EARLIEST).unwrap().enumerate() {
            match record {
                Ok(record) => assert_is_message(&record, i as u64), // never wrong data
                Err(Error::Corrupt { .. }) => {
                    reported = true;
                    break;
                }
                Err(other) => panic!("bit {bit}: {other}"),
            }
            delivered += 1;
        }
        assert!(delivered == 8 || reported, "bit {bit}: {delivered} of 8 delivered and no loss reported");
    }
}
