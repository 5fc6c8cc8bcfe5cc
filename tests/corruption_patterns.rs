//! R6: damage that is not a single flipped bit, each in a fresh copy of a simulated queue:
//!
//! - every pair of bits of a frame header (44 bytes: 61,776 pairs) in a sealed segment;
//! - random bursts (1 to 64 bytes of garbage at a random place) in a sealed segment;
//! - every aligned 512-byte and 4 KiB sector zeroed, in a sealed segment and in the last one;
//! - misdirected frames: a valid frame copied over another place of its segment, and into another segment;
//! - stale frames: a segment file replaced by a newer one of the same name whose tail still holds the old
//!   file's frames.
//!
//! None of it may be delivered as data. In sealed segments every damage is reported (`Corrupt` on open or when
//! read). In the last segment, damage followed by a valid frame is reported, and damage at the very end may be
//! cut as a torn tail only with the recovery report saying so. `WALQ_SEED` fixes the bursts; `WALQ_SOAK`
//! multiplies their count.

mod common;

use common::{
    env_u64, read_damaged, report, sim_builder, sim_path, sim_queue_with_sealed_segment, sim_segment_names, soak,
    Outcome, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use walq::storage::{FaultRng, FaultyStorage};
use walq::Offset;

const BURSTS: u64 = 20_000;

/// Byte positions of the frames of a segment, read from the tool's view of a clean copy.
fn frame_positions(storage: &FaultyStorage, name: &str) -> Vec<(u64, u64)> {
    let bytes = &storage.snapshot()[&sim_path(name)];
    let mut positions = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES as usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if len < FRAME_HEADER_BYTES as usize || at + len > bytes.len() {
            break;
        }
        positions.push((at as u64, len as u64));
        at += len;
    }
    positions
}

/// A copy of `base` with `edit` applied to file `name`, and the file's index removed (a stale index would only
/// be cross-checked; without it every read scans the damage).
fn damaged(base: &FaultyStorage, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> FaultyStorage {
    let image = base.clean_image();
    image.corrupt_file(&sim_path(name), edit);
    let _ = walq::storage::Storage::remove_file(&image, &sim_path(&name.replace(".seg", ".idx")));
    image
}

fn assert_reported(outcome: Outcome, context: &str) {
    if let Outcome::Read { delivered, corrupt_reported: false, .. } = outcome {
        panic!("{context}: damage went unreported ({delivered} records read)");
    }
}

/// In the last segment: reported, or cut with the recovery report saying so.
fn assert_reported_or_cut(outcome: Outcome, total: u64, context: &str) {
    if let Outcome::Read { delivered, corrupt_reported: false, recovery_lost_nothing } = outcome {
        assert!(
            delivered == total || !recovery_lost_nothing,
            "{context}: {delivered} of {total} read and no loss reported"
        );
    }
}

#[test]
fn every_two_bit_flip_of_a_frame_header_is_reported() {
    let (base, _) = sim_queue_with_sealed_segment(3);
    let sealed = sim_segment_names(&base)[0].clone();
    let frames = frame_positions(&base, &sealed);
    let (position, _) = frames[frames.len() / 2];
    let header_bits = FRAME_HEADER_BYTES as usize * 8;
    let mut pairs = 0u64;
    for first in 0..header_bits {
        for second in first + 1..header_bits {
            let context = format!("{sealed}: frame at byte {position}, bits {first} and {second} of its header");
            let image = damaged(&base, &sealed, |bytes| {
                for bit in [first, second] {
                    bytes[position as usize + bit / 8] ^= 1 << (bit % 8);
                }
            });
            assert_reported(read_damaged(sim_builder(&image), &context), &context);
            pairs += 1;
        }
    }
    assert_eq!(pairs, 61_776);
    println!("R6: {pairs} two-bit flips of a frame header, every one reported");
    report(
        "R6 2-bit flips",
        "every pair of bits of a frame header flipped: reported, never delivered",
        pairs,
        "pairs",
        0,
    );
}

#[test]
fn random_bursts_in_a_sealed_segment_are_reported() {
    let (base, _) = sim_queue_with_sealed_segment(3);
    let sealed = sim_segment_names(&base)[0].clone();
    let len = base.snapshot()[&sim_path(&sealed)].len();
    let seed = env_u64("WALQ_SEED").unwrap_or(6);
    let mut rng = FaultRng::new(seed);
    let bursts = BURSTS * soak();
    for burst in 0..bursts {
        let at = rng.below(len as u64) as usize;
        let burst_len = (1 + rng.below(64) as usize).min(len - at);
        let garbage: Vec<u8> = (0..burst_len).map(|_| rng.next_u64() as u8).collect();
        let context = format!("WALQ_SEED={seed} burst {burst}: {burst_len} bytes at byte {at} of {sealed}");
        let image = damaged(&base, &sealed, |bytes| {
            let old = bytes[at..at + burst_len].to_vec();
            bytes[at..at + burst_len].copy_from_slice(&garbage);
            if old == garbage {
                bytes[at] ^= 1; // make sure something changed
            }
        });
        assert_reported(read_damaged(sim_builder(&image), &context), &context);
    }
    println!("R6: {bursts} random bursts in a sealed segment, every one reported");
    report("R6 bursts", "random garbage bursts of 1-64 bytes in a sealed segment: reported", bursts, "bursts", 0);
}

#[test]
fn zeroed_sectors_are_reported_or_cut() {
    let (base, total) = sim_queue_with_sealed_segment(200);
    let names = sim_segment_names(&base);
    let mut sectors = 0;
    for sector_bytes in [512usize, 4096] {
        for (name, last) in [(&names[0], false), (names.last().unwrap(), true)] {
            let len = base.snapshot()[&sim_path(name)].len();
            for start in (0..len).step_by(sector_bytes) {
                let end = (start + sector_bytes).min(len);
                let context = format!("{name}: bytes {start}..{end} zeroed");
                let image = damaged(&base, name, |bytes| bytes[start..end].fill(0));
                let outcome = read_damaged(sim_builder(&image), &context);
                if last {
                    // A zeroed sector with a valid frame behind it is damage to durable data, never a clean end.
                    let valid_frame_behind = frame_positions(&base, name).iter().any(|&(p, _)| p as usize >= end);
                    if valid_frame_behind && start >= SEGMENT_HEADER_BYTES as usize {
                        assert_reported(outcome, &context);
                    } else {
                        assert_reported_or_cut(outcome, total, &context);
                    }
                } else {
                    assert_reported(outcome, &context);
                }
                sectors += 1;
            }
        }
    }
    println!("R6: {sectors} zeroed 512 B and 4 KiB sectors in a sealed and in the last segment, none delivered");
    report(
        "R6 zeroed sectors",
        "every aligned 512 B and 4 KiB sector zeroed, sealed and last segment",
        sectors,
        "sectors",
        0,
    );
}

#[test]
fn misdirected_frames_are_rejected() {
    let (base, total) = sim_queue_with_sealed_segment(100);
    let names = sim_segment_names(&base);
    let snapshot = base.snapshot();
    let mut cases = 0;
    for (name, last) in [(&names[0], false), (names.last().unwrap(), true)] {
        let frames = frame_positions(&base, name);
        for (i, &(from, len)) in frames.iter().enumerate().step_by(7) {
            // Over the next frame of equal or greater length, else over the one after: a valid frame at the
            // wrong place (its offset is inside its checksum).
            let Some(&(to, _)) = frames[i + 1..].iter().find(|&&(_, l)| l >= len) else { continue };
            let context = format!("{name}: frame at {from} copied over the frame at {to}");
            let image = damaged(&base, name, |bytes| {
                let frame = bytes[from as usize..(from + len) as usize].to_vec();
                bytes[to as usize..(to + len) as usize].copy_from_slice(&frame);
            });
            let outcome = read_damaged(sim_builder(&image), &context);
            if last {
                assert_reported_or_cut(outcome, total, &context);
            } else {
                assert_reported(outcome, &context);
            }
            cases += 1;
        }
    }
    // Into another segment: the first frame of the sealed segment over the first frame of the last one.
    let sealed_frame = frame_positions(&base, &names[0])[0];
    let last = names.last().unwrap();
    let target = frame_positions(&base, last)[0].0 as usize;
    let source = &snapshot[&sim_path(&names[0])];
    let frame = source[sealed_frame.0 as usize..(sealed_frame.0 + sealed_frame.1) as usize].to_vec();
    let image = damaged(&base, last, |bytes| bytes[target..target + frame.len()].copy_from_slice(&frame));
    let context = "a frame of the sealed segment copied into the last one".to_string();
    assert_reported(read_damaged(sim_builder(&image), &context), &context);
    cases += 1;
    println!("R6: {cases} misdirected frames, none delivered");
    report("R6 misdirected frames", "valid frames copied to another place or segment: rejected", cases, "cases", 0);
}

#[test]
fn stale_frames_of_an_older_file_are_never_accepted() {
    // An old queue whose only segment holds 300 messages; a new queue in the same place whose segment of the
    // same name holds 100, followed by the old file's bytes (as if the new file were written over the old one).
    let (old, _) = {
        let storage = FaultyStorage::new();
        let queue = sim_builder(&storage).open().unwrap();
        common::append_range(&queue, 0..300);
        queue.close().unwrap();
        (storage.clean_image(), 300)
    };
    let storage = FaultyStorage::new();
    let queue = sim_builder(&storage).open().unwrap();
    common::append_range(&queue, 0..100);
    queue.close().unwrap();
    let name = sim_segment_names(&storage)[0].clone();
    let old_bytes = old.snapshot()[&sim_path(&name)].clone();
    let mut cases = 0;
    // Shift 0: the old frames 100.. sit exactly where the new frames 100.. would, with the offsets expected
    // there; only the segment id inside their checksum tells them apart. Other shifts: misaligned leftovers.
    for shift in [0usize, 1, 7, 44, 4096] {
        let image = damaged(&storage.clean_image(), &name, |bytes| {
            let keep = bytes.len();
            bytes.extend_from_slice(&old_bytes[(keep + shift).min(old_bytes.len())..]);
        });
        let context = format!("stale tail of the old file, shifted by {shift} bytes");
        let queue = sim_builder(&image).open().unwrap_or_else(|e| panic!("{context}: {e}"));
        let records: Vec<_> = queue.read_from(Offset::EARLIEST).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(records.len(), 100, "{context}: the old file's frames must not be accepted");
        for (i, record) in records.iter().enumerate() {
            common::assert_is_message(record, i as u64);
        }
        assert_eq!(queue.append(common::message(100)).unwrap(), Offset(100), "{context}");
        cases += 1;
    }
    println!("R6: {cases} stale tails from an older file, none accepted");
    report("R6 stale frames", "frames left from an older file of the same name: never accepted", cases, "cases", 0);
}
