//! Regression: allocations sized by what a file's length claims (#12, item 12).
//!
//! The bug: recovery read the last segment's whole tail into memory, `is_torn_create`, the group snapshot and the
//! tool's segment and index checks allocated what a file's size said. A sparse multi-GB file (one `truncate -s`
//! away) made the process abort on allocation.
//!
//! The fix: frames are read through one reused buffer, zero checks stream, and a file longer than any walq writes
//! (a segment over `SEGMENT_BYTES_LIMIT`, a journal over its limit) is `Corrupt` before anything is sized by it.
//!
//! The test: each kind of file made sparse and 8 GiB long; the engine and the tool answer with typed errors or
//! exit codes, never an abort.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use walq::{Error, Queue};

const SPARSE_BYTES: u64 = 8 << 30;

fn grow_sparse(path: &Path) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(SPARSE_BYTES).unwrap();
}

/// A closed queue of several segments with a group.
fn build(dir: &Path) {
    let queue = small(dir).open().unwrap();
    queue.append_batch(&(0..3000).map(message).collect::<Vec<_>>()).unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    consumer.ack_all(consumer.try_recv_batch(10).unwrap()).unwrap();
}

fn walq_code(args: &[&str]) -> i32 {
    let output = Command::new(env!("CARGO_BIN_EXE_walq")).args(args).output().unwrap();
    output.status.code().unwrap_or_else(|| panic!("walq {args:?} died by a signal: {:?}", output.status))
}

#[test]
fn a_sparse_last_segment_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    grow_sparse(segment_files(dir.path()).last().unwrap());
    let error = Queue::open(dir.path()).unwrap_err();
    assert!(matches!(error, Error::Corrupt { kind: walq::CorruptionKind::BadLength, .. }), "{error}");
    assert_eq!(walq_code(&["verify", dir.path().to_str().unwrap()]), 2);
}

#[test]
fn a_sparse_sealed_segment_is_corrupt_when_read() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    grow_sparse(&segment_files(dir.path())[0]);
    let queue = Queue::open(dir.path()).unwrap();
    let error = queue.read_from(walq::Offset::EARLIEST).unwrap().find_map(Result::err).expect("an error");
    assert!(matches!(error, Error::Corrupt { .. }), "{error}");
    drop(queue);
    for command in ["verify", "dump"] {
        assert_eq!(walq_code(&[command, dir.path().to_str().unwrap()]), 2, "walq {command}");
    }
}

#[test]
fn a_sparse_journal_and_a_sparse_index_are_typed_errors_and_warnings() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    grow_sparse(&index_files(dir.path())[0]);
    grow_sparse(&dir.path().join("groups/g.journal"));
    // The queue opens without its damaged group, which answers Corrupt (BadLength) until it is deleted.
    let queue = Queue::open(dir.path()).unwrap();
    assert_eq!(queue.damaged_groups(), vec!["g".to_string()]);
    let error = queue.group("g").unwrap_err();
    assert!(matches!(error, Error::Corrupt { kind: walq::CorruptionKind::BadLength, .. }), "{error}");
    drop(queue);
    assert_eq!(walq_code(&["verify", dir.path().to_str().unwrap()]), 2, "the journal is damage");
    let code = walq_code(&["groups", dir.path().to_str().unwrap()]);
    assert!(code == 1 || code == 2, "a typed error, not an abort: exit code {code}");
    std::fs::remove_file(dir.path().join("groups/g.journal")).unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    assert_eq!(read_all(&queue).len(), 3000, "a sparse index costs a scan, nothing more");
}
