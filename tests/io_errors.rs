//! R8 in small: the n-th storage operation fails (EIO, ENOSPC, a short write), for every n of a workload of
//! appends, rolls and reopens, including operations of recovery itself. The workload answers errors as a user
//! would: retry after `DiskFull`, reopen after `Poisoned` or another I/O error. Afterwards: every acknowledged
//! append is present and unaltered, records are attempted messages in order, nothing panics.
//!
//! Reproduce one case with `WALQ_FAIL_AT=<op>`.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{message, small};
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{Error, Offset, Queue};

const MESSAGES: u64 = 300;
const ATTEMPTS_MAX: u32 = 5;

fn open(storage: &FaultyStorage) -> Queue {
    let dir = std::path::Path::new("/sim/queue");
    for attempt in 0.. {
        match small(dir).storage(Arc::new(storage.clone()) as Arc<dyn Storage>).open() {
            Ok(queue) => return queue,
            Err(error) if attempt < ATTEMPTS_MAX => {
                assert!(!matches!(error, Error::Corrupt { .. }), "an I/O error must not look like corruption: {error}")
            }
            Err(error) => panic!("open keeps failing: {error}"),
        }
    }
    unreachable!()
}

/// Appends messages 0..MESSAGES; returns the set of acknowledged message numbers.
fn workload(storage: &FaultyStorage) -> BTreeSet<u64> {
    let mut acked = BTreeSet::new();
    let mut queue = open(storage);
    let mut i = 0;
    let mut attempts = 0;
    while i < MESSAGES {
        if i == MESSAGES / 2 && attempts == 0 {
            drop(queue); // a reopen in the middle puts recovery under the countdown too
            queue = open(storage);
        }
        match queue.append(message(i)) {
            Ok(_) => {
                acked.insert(i);
                i += 1;
                attempts = 0;
            }
            Err(Error::DiskFull) if attempts < ATTEMPTS_MAX => attempts += 1,
            Err(Error::Poisoned | Error::Io { .. }) if attempts < ATTEMPTS_MAX => {
                attempts += 1;
                drop(queue);
                queue = open(storage);
                i += 1; // the failed message may or may not be stored; go on with the next
            }
            Err(error) => panic!("message {i}: {error}"),
        }
    }
    acked
}

fn check(storage: &FaultyStorage, acked: &BTreeSet<u64>, context: &str) {
    let queue = open(storage);
    let mut previous = None;
    let mut found = BTreeSet::new();
    for record in queue.read_from(Offset::EARLIEST).unwrap() {
        let record = record.unwrap_or_else(|e| panic!("{context}: read failed: {e}"));
        let seq = u64::from_le_bytes(record.headers[0].value[..8].try_into().unwrap());
        let expected = message(seq);
        assert_eq!(record.value.as_deref(), expected.value_bytes(), "{context}: altered message {seq}");
        assert!(previous.is_none_or(|p| seq > p), "{context}: order broken at {seq}");
        previous = Some(seq);
        found.insert(seq);
    }
    let lost: Vec<_> = acked.difference(&found).collect();
    assert!(lost.is_empty(), "{context}: acknowledged messages lost: {lost:?}");
}

#[test]
fn an_error_at_every_operation_loses_nothing_acknowledged() {
    let reference = FaultyStorage::new();
    workload(&reference);
    let total_ops = reference.op_count();
    let points: Vec<u64> = match std::env::var("WALQ_FAIL_AT").ok().and_then(|v| v.parse().ok()) {
        Some(point) => vec![point],
        None => (0..total_ops).collect(),
    };
    for kind in [FaultKind::Eio, FaultKind::Enospc, FaultKind::ShortWrite] {
        for &at_op in &points {
            let storage = FaultyStorage::new();
            storage.set_plan(Some(FaultPlan { at_op, kind, persistent: false }));
            let acked = workload(&storage);
            storage.set_plan(None);
            check(&storage, &acked, &format!("WALQ_FAIL_AT={at_op} ({kind:?})"));
            // And after a power cut on top of it.
            check(&storage.crash_image(at_op), &acked, &format!("WALQ_FAIL_AT={at_op} ({kind:?}) then power cut"));
        }
    }
    println!("I/O errors: {} operations x 3 kinds, 0 violations", total_ops);
}
