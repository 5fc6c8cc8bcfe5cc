//! Regression: a sealed segment that shrank killed the reading process with SIGBUS (#12, item 8).
//!
//! The bug: sealed segments were memory-mapped. A mapped file that shrinks under the map (an outside `truncate`,
//! EIO while paging in, NFS) raises SIGBUS on the next read of a page past the new end: the owner died with all its
//! producers, and so did `walq dump`, `walq tail` and `walq verify`, the tool meant to find bad media.
//!
//! The fix: nothing is mapped; every read is a `pread` into a buffer, so a file that ends early is a short read,
//! reported as `Error::Corrupt` (or `Error::Io`), and the process lives on.
//!
//! The test: a sealed 1 MiB segment cut to a third while a reader and a group consumer are partway through it;
//! both get `Corrupt`, and the process (this test) is still alive to check it; `walq dump`, `walq tail` and
//! `walq verify` on the cut queue exit with 2 (corruption), not a signal.

mod common;

use std::path::Path;
use std::process::Command;

use walq::{Error, Message, Offset, Preallocation, Queue};

const SEGMENT_BYTES: u64 = 1024 * 1024;

fn value(i: u64) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.resize(500, b'v');
    v
}

/// A queue of three segments; returns the first (sealed) segment's path.
fn queue_with_sealed_segments(dir: &Path) -> std::path::PathBuf {
    let queue = Queue::builder(dir)
        .segment_bytes_max(SEGMENT_BYTES)
        .message_bytes_max(4096)
        .preallocation(Preallocation::Grow)
        .open()
        .unwrap();
    let mut i = 0;
    while queue.stats().segment_rolls < 2 {
        queue.append(Message::new(value(i))).unwrap();
        i += 1;
    }
    drop(queue);
    common::segment_files(dir).remove(0)
}

fn cut_to_a_third(segment: &Path) {
    let file = std::fs::OpenOptions::new().write(true).open(segment).unwrap();
    file.set_len(SEGMENT_BYTES / 3).unwrap();
}

#[test]
fn a_reader_and_a_consumer_get_corrupt_when_a_sealed_segment_shrinks_under_them() {
    let dir = tempfile::tempdir().unwrap();
    let segment = queue_with_sealed_segments(dir.path());
    let queue = Queue::open(dir.path()).unwrap();
    let mut reader = queue.read_from(Offset::EARLIEST).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().offset, Offset(0));
    let consumer = queue.group("g").unwrap().consumer();
    consumer.try_recv().unwrap().unwrap().ack().unwrap();

    cut_to_a_third(&segment);

    let mut read = 1;
    let error = loop {
        match reader.next() {
            Some(Ok(record)) => {
                assert_eq!(record.value.as_deref(), Some(&value(record.offset.0)[..]));
                read += 1;
            }
            Some(Err(error)) => break error,
            None => panic!("the reader ended without reporting the cut ({read} records read)"),
        }
    };
    assert!(matches!(error, Error::Corrupt { .. } | Error::Io { .. }), "got: {error}");
    assert!(read < 2000, "the reader read past the cut: {read} records");

    let error = loop {
        match consumer.try_recv() {
            Ok(Some(delivery)) => delivery.ack().unwrap(),
            Ok(None) => panic!("the consumer ran dry without reporting the cut"),
            Err(error) => break error,
        }
    };
    assert!(matches!(error, Error::Corrupt { .. } | Error::Io { .. }), "got: {error}");
}

#[test]
fn the_tool_reports_a_shrunk_sealed_segment_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let segment = queue_with_sealed_segments(dir.path());
    cut_to_a_third(&segment);
    let queue_dir = dir.path().to_str().unwrap();
    for args in [vec!["dump", queue_dir], vec!["tail", "-n", "100000", queue_dir], vec!["verify", queue_dir]] {
        let output = Command::new(env!("CARGO_BIN_EXE_walq")).args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "walq {args:?}: {:?}", output.status);
    }
}
