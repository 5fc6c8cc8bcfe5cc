//! R5: flip every single bit of a sealed 64 KiB segment, of the last segment, of a group journal and of the
//! manifest, each in a fresh copy of the queue, then open and read it. Always detected or harmless, never wrong
//! data:
//!
//! - a sealed segment's bytes are all checksummed: every flip is reported (`Corrupt` on open or when read);
//! - the last segment, after a clean close (whose manifest records that every frame is durable): every flip is
//!   reported as damage, never cut as if it were a torn write;
//! - a group journal: open fails with `Corrupt`, or the group comes back no further than it was (redelivery is
//!   allowed, skipping is not) and still delivers every message it had not acked;
//! - the manifest: open fails with a typed error, every time (its checksum, and strict parsing for key names).
//!
//! `WALQ_SOAK` is accepted for uniformity; every bit is already flipped once.

mod common;

use common::{
    message, read_damaged, report, sim_builder, sim_path, sim_queue_with_sealed_segment, sim_segment_names, Outcome,
    SIM_DIR,
};
use walq::storage::{FaultyStorage, Storage};
use walq::Offset;

fn flip(bytes: &mut [u8], bit: usize) {
    bytes[bit / 8] ^= 1 << (bit % 8);
}

/// A copy of `base` with bit `bit` of `name` flipped (and, for odd bits, the segment's index removed, so that both
/// the indexed and the scanning read paths meet the damage).
fn flipped_copy(base: &FaultyStorage, name: &str, bit: usize) -> FaultyStorage {
    let image = base.clean_image();
    image.corrupt_file(&sim_path(name), |bytes| flip(bytes, bit));
    if bit % 2 == 1 && name.ends_with(".seg") {
        let _ = image.remove_file(&sim_path(&name.replace(".seg", ".idx")));
    }
    image
}

#[test]
fn every_bit_flip_of_a_sealed_segment_is_reported() {
    let (base, total) = sim_queue_with_sealed_segment(20);
    let sealed = &sim_segment_names(&base)[0];
    let bits = base.snapshot()[&sim_path(sealed)].len() * 8;
    assert!(bits >= 60 * 1024 * 8, "a segment of about 64 KiB: {bits} bits");
    for bit in 0..bits {
        let context = format!("sealed segment {sealed}, bit {bit}");
        match read_damaged(sim_builder(&flipped_copy(&base, sealed, bit)), &context) {
            Outcome::Refused(_) => {}
            Outcome::Read { delivered, corrupt_reported, .. } => {
                assert!(corrupt_reported, "{context}: a flipped bit went unreported ({delivered} of {total} read)")
            }
        }
    }
    println!("R5: {bits} single-bit flips of a sealed segment, every one reported");
    report(
        "R5 sealed segment",
        "every single-bit flip of a sealed 64 KiB segment reported, never delivered",
        bits as u64,
        "flips",
        0,
    );
}

#[test]
fn every_bit_flip_of_the_last_segment_is_reported() {
    let (base, total) = sim_queue_with_sealed_segment(40);
    let last = sim_segment_names(&base).pop().unwrap();
    let bits = base.snapshot()[&sim_path(&last)].len() * 8;
    let (mut refused, mut reported) = (0, 0);
    for bit in 0..bits {
        let context = format!("last segment {last}, bit {bit}");
        match read_damaged(sim_builder(&flipped_copy(&base, &last, bit)), &context) {
            Outcome::Refused(_) => refused += 1,
            Outcome::Read { delivered, corrupt_reported, recovery_lost_nothing } => {
                // The queue was closed cleanly: nothing in it is a torn write, so a cut would hide durable damage.
                assert!(
                    corrupt_reported || (delivered == total && recovery_lost_nothing),
                    "{context}: damage after a clean close was not reported as Corrupt ({delivered} of {total} read, \
                     recovery lost nothing: {recovery_lost_nothing})"
                );
                reported += u64::from(corrupt_reported);
            }
        }
    }
    println!(
        "R5: {bits} single-bit flips of the last segment: {refused} refused on open, {reported} reported when read"
    );
    report(
        "R5 last segment",
        "every single-bit flip of the last segment after a clean close reported as damage, never cut as a torn tail",
        bits as u64,
        "flips",
        0,
    );
}

#[test]
fn every_bit_flip_of_a_group_journal_is_reported_or_redelivers() {
    let (base, total) = sim_queue_with_sealed_segment(5);
    let queue = sim_builder(&base).open().unwrap();
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let acked = 60u64;
    for _ in 0..acked {
        consumer.try_recv().unwrap().unwrap().ack().unwrap();
    }
    let in_flight = consumer.try_recv().unwrap().unwrap(); // a Delivered record with nothing after it
    drop(in_flight);
    queue.close().unwrap();
    let base = base.clean_image();
    let journal = "groups/g.journal";
    let bits = base.snapshot()[&sim_path(journal)].len() * 8;
    let mut refused = 0;
    for bit in 0..bits {
        let context = format!("{journal}, bit {bit}");
        let image = flipped_copy(&base, journal, bit);
        let queue = match sim_builder(&image).open() {
            Ok(queue) => queue,
            Err(walq::Error::Corrupt { .. }) => {
                refused += 1;
                continue;
            }
            Err(other) => panic!("{context}: open failed with an untyped error: {other}"),
        };
        let group = match queue.group("g") {
            Ok(group) => group,
            Err(walq::Error::Corrupt { .. }) => {
                refused += 1;
                continue;
            }
            Err(other) => panic!("{context}: group failed with an untyped error: {other}"),
        };
        let floor = group.ack_floor();
        assert!(floor.0 <= acked, "{context}: the floor moved forward to {floor} (acked {acked}): messages skipped");
        let consumer = group.consumer();
        let mut next = floor.0;
        while let Some(delivery) = consumer.try_recv().unwrap() {
            assert_eq!(delivery.offset(), Offset(next), "{context}: a message skipped or out of order");
            assert_eq!(delivery.message().value.as_deref(), message(next).value_bytes(), "{context}: wrong data");
            next += 1;
            delivery.ack().unwrap();
        }
        assert_eq!(next, total, "{context}: not every unacked message was delivered");
    }
    println!("R5: {bits} single-bit flips of a group journal: {refused} refused, the rest no further than acked");
    report(
        "R5 group journal",
        "every single-bit flip of a group journal refused, or the group redelivers and skips nothing",
        bits as u64,
        "flips",
        0,
    );
}

#[test]
fn every_bit_flip_of_the_manifest_is_refused() {
    let (base, _) = sim_queue_with_sealed_segment(5);
    let manifest = "MANIFEST.json";
    let bits = base.snapshot()[&sim_path(manifest)].len() * 8;
    for bit in 0..bits {
        let context = format!("{manifest}, bit {bit}");
        let image = flipped_copy(&base, manifest, bit);
        match walq::Queue::builder(SIM_DIR).storage(std::sync::Arc::new(image) as std::sync::Arc<dyn Storage>).open() {
            Ok(_) => panic!("{context}: a damaged manifest was accepted"),
            Err(
                walq::Error::Corrupt { .. } | walq::Error::UnsupportedVersion { .. } | walq::Error::NotAQueue { .. },
            ) => {}
            Err(other) => panic!("{context}: open failed with an untyped error: {other}"),
        }
    }
    println!("R5: {bits} single-bit flips of the manifest, every one refused with a typed error");
    report("R5 manifest", "every single-bit flip of the manifest refused with a typed error", bits as u64, "flips", 0);
}
