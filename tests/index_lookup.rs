//! `read_from(offset)` lands exactly on `offset` wherever it lies: first and last frame of each segment, around
//! every sparse-index entry, past the end; with the index files present, deleted, stale or damaged.

mod common;

use common::*;
use walq::Offset;

fn check_every_start(queue: &walq::Queue, count: u64) {
    for start in 0..count {
        let mut reader = queue.read_from(Offset(start)).unwrap();
        let first = reader.next().unwrap().unwrap();
        assert_is_message(&first, start);
        if start + 1 < count {
            assert_is_message(&reader.next().unwrap().unwrap(), start + 1);
        }
    }
    assert!(queue.read_from(Offset(count)).unwrap().next().is_none());
    assert!(queue.read_from(Offset(count + 100)).unwrap().next().is_none());
}

#[test]
fn every_start_offset_lands_exactly() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..2500);
    assert!(queue.stats().segments >= 3);
    check_every_start(&queue, 2500); // sealed segments and the active one, from memory
    queue.close().unwrap();
    let queue = small(temp.path()).open().unwrap();
    check_every_start(&queue, 2500); // sealed indexes read from their files
}

#[test]
fn missing_or_damaged_index_files_are_rebuilt() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..2500);
    queue.close().unwrap();
    let indexes = index_files(temp.path());
    assert!(indexes.len() >= 3);
    std::fs::remove_file(&indexes[0]).unwrap();
    let mut damaged = std::fs::read(&indexes[1]).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&indexes[1], damaged).unwrap();
    let last = indexes.last().unwrap();
    std::fs::write(last, b"garbage").unwrap();

    let queue = small(temp.path()).open().unwrap();
    check_every_start(&queue, 2500);
    // Readers never write: they note the unusable index, and background maintenance (every 50 ms) rebuilds it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !indexes[0].exists() {
        assert!(std::time::Instant::now() < deadline, "a missing index is written again");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    check_every_start(&queue, 2500);
}

#[test]
fn stale_index_from_another_segment_is_not_trusted() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..2500);
    queue.close().unwrap();
    let indexes = index_files(temp.path());
    std::fs::copy(&indexes[1], &indexes[0]).unwrap();
    let queue = small(temp.path()).open().unwrap();
    check_every_start(&queue, 2500);
}
