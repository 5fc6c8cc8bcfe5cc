//! Regression: after a power cut, recovery accepted a log with a torn frame inside it, and readers then hit
//! `Corrupt` at that offset forever (found by R1 at 67,000 crash states: `WALQ_SEED=101 WALQ_CRASH_AT=329
//! WALQ_IMAGE_SEED=101005578` in tests/crash_simulation.rs). Cause: the tail scan started at the newest index
//! entry whose frame verified. The index is written without fsync, and the sectors of an unsynced batch land
//! independently, so an entry and its frame can survive while an earlier frame of the same batch is torn: the
//! hole lay before the scan and was never seen. Fix: the start frame's `durable_below` (and the manifest's record
//! of the last clean close) say how far back the log is proven durable; the scan starts at an entry at or below
//! that point, so every unproven frame is scanned and a torn one is cut with what follows it.

mod common;

use common::{message, read_damaged, sim_builder, sim_path, Outcome, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use walq::storage::{FaultKind, FaultPlan};
use walq::Durability;

#[test]
fn a_torn_frame_before_the_last_index_entry_is_cut_not_served() {
    let storage = walq::storage::FaultyStorage::new();
    // 1 MiB segments and about 350 KiB of messages: the index flushes its first 64 entries to the file.
    let queue = sim_builder(&storage).segment_bytes_max(1 << 20).durability(Durability::None).open().unwrap();
    queue.append(message(0)).unwrap();
    queue.flush().unwrap(); // message 0 is durable; the batch below is not
    let batch: Vec<_> = (1..3500).map(message).collect();
    queue.append_batch(&batch).unwrap();
    // The power goes: nothing more reaches the disk, and close cannot record a clean end.
    storage.set_plan(Some(FaultPlan { at_op: storage.op_count(), kind: FaultKind::Crash, persistent: true }));
    drop(queue);

    // What survived: every unsynced byte (index entries included) except one torn sector in frame 20, well
    // before the last index entry.
    let image = storage.clean_image();
    let segment = "00000000000000000000.seg";
    let frame_20 = SEGMENT_HEADER_BYTES + (0..20).map(common::frame_len).sum::<u64>();
    image.corrupt_file(&sim_path(segment), |bytes| {
        let at = (frame_20 + FRAME_HEADER_BYTES) as usize;
        bytes[at..at + 16].fill(0xEE);
    });
    assert!(image.snapshot()[&sim_path("00000000000000000000.idx")].len() > 32 + 16, "the index has entries");

    let builder = || sim_builder(&image).segment_bytes_max(1 << 20);
    let report = builder().open().unwrap().recovery_report().clone();
    assert_eq!(report.truncations.len(), 1, "the torn frame and everything after it is cut: {report:?}");
    assert_eq!(report.truncations[0].position, frame_20);
    match read_damaged(builder(), "after recovery") {
        Outcome::Read { delivered: 20, corrupt_reported: false, .. } => {}
        other => panic!("exactly frames 0..20, and no Corrupt for readers: {other:?}"),
    }
}
