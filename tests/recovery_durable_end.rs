//! A clean close records in the manifest that every offset below the log's end is durable
//! (`durable_end_offset`). Recovery then reads a missing or invalid frame below it as damage, not as a torn tail
//! (no frame after the last one could prove it durable), and starts its tail scan near the end even when the
//! last frames' own `durable_below` lags (`Durability::None`, batches), so open after a close stays cheap.

mod common;

use common::{message, sim_builder, sim_path, SEGMENT_HEADER_BYTES};
use walq::{CorruptionKind, Durability, Error, RecoveryMode};

const SEGMENT: &str = "00000000000000000000.seg";

/// A cleanly closed queue of 500 messages appended in one batch without fsync until close.
fn closed_queue() -> walq::storage::FaultyStorage {
    let storage = walq::storage::FaultyStorage::new();
    let queue = sim_builder(&storage).durability(Durability::None).open().unwrap();
    queue.append_batch(&(0..500).map(message).collect::<Vec<_>>()).unwrap();
    queue.close().unwrap();
    storage.clean_image()
}

fn open_error(storage: &walq::storage::FaultyStorage, mode: RecoveryMode) -> Option<Error> {
    sim_builder(storage).recovery_mode(mode).open().err()
}

#[test]
fn open_after_a_clean_close_scans_only_the_tail() {
    let storage = closed_queue();
    let queue = sim_builder(&storage).open().unwrap();
    let report = queue.recovery_report();
    let len = storage.snapshot()[&sim_path(SEGMENT)].len() as u64;
    assert!(len > 40_000, "a large last segment: {len}");
    assert!(report.scanned_bytes < 8192, "scanned {} of {len} bytes", report.scanned_bytes);
    assert!(report.lost_nothing());
}

#[test]
fn damage_to_the_last_frames_after_a_clean_close_is_refused() {
    let storage = closed_queue();
    let len = storage.snapshot()[&sim_path(SEGMENT)].len();
    storage.corrupt_file(&sim_path(SEGMENT), |bytes| bytes[len - 10] ^= 0x40); // inside the very last frame
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::AbsoluteConsistency] {
        match open_error(&storage, mode) {
            Some(Error::Corrupt { kind: CorruptionKind::DamagedDurableFrame, .. }) => {}
            other => panic!("{mode:?}: the last frame was durable, its damage is reported: {other:?}"),
        }
    }
    let salvaged = sim_builder(&storage).recovery_mode(RecoveryMode::SkipCorrupt).open().unwrap();
    assert_eq!(salvaged.stats().next_offset.0, 499, "SkipCorrupt salvages the frames before the damage");
}

#[test]
fn a_zeroed_end_after_a_clean_close_is_not_a_clean_end() {
    let storage = closed_queue();
    let len = storage.snapshot()[&sim_path(SEGMENT)].len();
    storage.corrupt_file(&sim_path(SEGMENT), |bytes| bytes[len - 700..].fill(0)); // the last sectors zeroed
    match open_error(&storage, RecoveryMode::TolerateTornTail) {
        Some(Error::Corrupt { kind: CorruptionKind::DamagedDurableFrame, position, .. }) => {
            assert!(position > SEGMENT_HEADER_BYTES && (position as usize) < len)
        }
        other => panic!("durable frames read back as zeros are damage: {other:?}"),
    }
}

#[test]
fn the_record_is_kept_across_later_sessions() {
    let storage = closed_queue();
    let queue = sim_builder(&storage).open().unwrap();
    queue.append(message(500)).unwrap();
    drop(queue); // closes again: the record moves to 501
    let image = storage.clean_image();
    let len = image.snapshot()[&sim_path(SEGMENT)].len();
    image.corrupt_file(&sim_path(SEGMENT), |bytes| bytes[len - 10] ^= 1);
    assert!(matches!(
        open_error(&image, RecoveryMode::TolerateTornTail),
        Some(Error::Corrupt { kind: CorruptionKind::DamagedDurableFrame, .. })
    ));
}
