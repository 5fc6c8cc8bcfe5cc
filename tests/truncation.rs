//! R7: the last segment (about 64 KiB) cut at every byte offset, and extended with zeros and with garbage, each
//! in a fresh copy of a simulated queue. Only the whole frames before the cut come back, byte-exact; a zero
//! tail never decodes as records and is a clean end; a garbage tail is cut (and reported) by default and refused
//! by `AbsoluteConsistency`. `WALQ_SEED` fixes the garbage.

mod common;

use common::{env_u64, message, read_damaged, report, sim_builder, sim_path, Outcome, SEGMENT_HEADER_BYTES};
use walq::storage::{FaultKind, FaultPlan, FaultRng, FaultyStorage};
use walq::{Offset, RecoveryMode};

/// A simulated queue with one segment of just under 64 KiB whose process died (so that nothing recorded its end
/// as durable: a cut is then what a torn write leaves); returns it, the segment's name and the end byte of every
/// frame.
fn full_segment() -> (FaultyStorage, String, Vec<u64>) {
    let storage = FaultyStorage::new();
    let queue = sim_builder(&storage).open().unwrap();
    let mut ends = Vec::new();
    let mut end = SEGMENT_HEADER_BYTES;
    for i in 0.. {
        let len = common::frame_len(i);
        if end + len > 62 * 1024 {
            break;
        }
        assert_eq!(queue.append(message(i)).unwrap(), Offset(i));
        end += len;
        ends.push(end);
    }
    storage.set_plan(Some(FaultPlan { at_op: storage.op_count(), kind: FaultKind::Crash, persistent: true }));
    drop(queue);
    assert_eq!(common::sim_segment_names(&storage).len(), 1);
    let name = common::sim_segment_names(&storage).remove(0);
    (storage.clean_image(), name, ends)
}

fn edited(base: &FaultyStorage, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> FaultyStorage {
    let image = base.clean_image();
    image.corrupt_file(&sim_path(name), edit);
    image
}

#[test]
fn cut_at_every_byte_gives_back_exactly_the_whole_frames_before_it() {
    let (base, name, ends) = full_segment();
    let len = *ends.last().unwrap();
    for cut in 0..=len {
        let context = format!("{name} cut at byte {cut} of {len}");
        let image = edited(&base, &name, |bytes| bytes.truncate(cut as usize));
        let whole = ends.iter().filter(|&&end| end <= cut).count() as u64;
        match read_damaged(sim_builder(&image), &context) {
            Outcome::Read { delivered, corrupt_reported: false, .. } => {
                assert_eq!(delivered, whole, "{context}: exactly the whole frames before the cut")
            }
            other => panic!("{context}: a cut is a torn tail, not damage: {other:?}"),
        }
    }
    println!("R7: {name} cut at each of its {} byte offsets: exactly the whole frames before each cut", len + 1);
    report(
        "R7 truncation",
        "last segment cut at every byte offset: exactly the whole frames before the cut",
        len + 1,
        "cuts",
        0,
    );
}

#[test]
fn a_zero_tail_is_a_clean_end_and_never_records() {
    let (base, name, ends) = full_segment();
    let total = ends.len() as u64;
    let lengths = [1usize, 43, 44, 45, 511, 512, 4096, 65_536];
    for zeros in lengths {
        let context = format!("{name} extended with {zeros} zero bytes");
        let image = edited(&base, &name, |bytes| bytes.resize(bytes.len() + zeros, 0));
        for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::AbsoluteConsistency] {
            match read_damaged(sim_builder(&image).recovery_mode(mode), &context) {
                Outcome::Read { delivered, corrupt_reported: false, .. } => {
                    assert_eq!(delivered, total, "{context} ({mode:?}): zeros are no records, and no loss")
                }
                other => panic!("{context} ({mode:?}): a zero tail is a clean end: {other:?}"),
            }
        }
    }
    report(
        "R7 zero tails",
        "zero tails of 1 B to 64 KiB: a clean end, never records",
        lengths.len() as u64,
        "lengths",
        0,
    );
}

#[test]
fn a_garbage_tail_is_cut_by_default_and_refused_when_absolute() {
    let (base, name, ends) = full_segment();
    let total = ends.len() as u64;
    let seed = env_u64("WALQ_SEED").unwrap_or(7);
    let mut rng = FaultRng::new(seed);
    let mut cases = 0;
    for garbage_len in [1usize, 8, 43, 44, 45, 512, 4096, 65_536] {
        for _ in 0..8 {
            let garbage: Vec<u8> = (0..garbage_len).map(|_| (rng.next_u64() as u8) | 1).collect(); // not zeros
            let context = format!("WALQ_SEED={seed}: {name} extended with {garbage_len} bytes of garbage");
            let image = edited(&base, &name, |bytes| bytes.extend_from_slice(&garbage));
            match read_damaged(sim_builder(&image.clean_image()), &context) {
                Outcome::Read { delivered, corrupt_reported: false, recovery_lost_nothing: false } => {
                    assert_eq!(delivered, total, "{context}: every record before the garbage stays")
                }
                other => panic!("{context}: garbage is a torn tail, cut and reported: {other:?}"),
            }
            let absolute = read_damaged(sim_builder(&image).recovery_mode(RecoveryMode::AbsoluteConsistency), &context);
            assert!(matches!(absolute, Outcome::Refused(_)), "{context}: AbsoluteConsistency refuses: {absolute:?}");
            cases += 1;
        }
    }
    report(
        "R7 garbage tails",
        "garbage tails: cut and reported by default, refused by AbsoluteConsistency",
        cases,
        "tails",
        0,
    );
}
