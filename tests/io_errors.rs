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

/// Opens, retrying a few times as a user would; `None` when it keeps failing (a persistently failing disk).
fn open(storage: &FaultyStorage) -> Option<Queue> {
    let dir = std::path::Path::new("/sim/queue");
    for _ in 0..=ATTEMPTS_MAX {
        match small(dir).storage(Arc::new(storage.clone()) as Arc<dyn Storage>).open() {
            Ok(queue) => return Some(queue),
            Err(error) => {
                assert!(!matches!(error, Error::Corrupt { .. }), "an I/O error must not look like corruption: {error}")
            }
        }
    }
    None
}

/// What a workload run saw.
struct Run {
    /// Message numbers whose append returned `Ok`.
    acked: BTreeSet<u64>,
    /// Whether it gave up (the disk kept failing) before attempting every message.
    gave_up: bool,
    /// Whether reads still worked on an open queue whose appends failed with `DiskFull`.
    read_while_full: bool,
}

/// Appends messages 0..MESSAGES, answering errors as a user would: retry after `DiskFull`, reopen after
/// `Poisoned` or another I/O error, give up when that keeps failing.
fn workload(storage: &FaultyStorage) -> Run {
    let mut run = Run { acked: BTreeSet::new(), gave_up: false, read_while_full: false };
    let Some(mut queue) = open(storage) else {
        run.gave_up = true;
        return run;
    };
    let mut i = 0;
    let mut attempts = 0;
    while i < MESSAGES {
        if i == MESSAGES / 2 && attempts == 0 {
            drop(queue); // a reopen in the middle puts recovery under the countdown too
            let Some(reopened) = open(storage) else {
                run.gave_up = true;
                return run;
            };
            queue = reopened;
        }
        match queue.append(message(i)) {
            Ok(_) => {
                run.acked.insert(i);
                i += 1;
                attempts = 0;
            }
            Err(Error::DiskFull) if attempts < ATTEMPTS_MAX => {
                attempts += 1;
                // A full disk is no reason to stop reading.
                let read = queue.read_from(Offset::EARLIEST).and_then(|r| r.collect::<Result<Vec<_>, _>>());
                run.read_while_full = read.is_ok_and(|records| records.len() >= run.acked.len());
            }
            Err(Error::Poisoned | Error::Io { .. }) if attempts < ATTEMPTS_MAX => {
                attempts += 1;
                drop(queue);
                let Some(reopened) = open(storage) else {
                    run.gave_up = true;
                    return run;
                };
                queue = reopened;
                i += 1; // the failed message may or may not be stored; go on with the next
            }
            Err(Error::DiskFull | Error::Poisoned | Error::Io { .. }) => {
                run.gave_up = true;
                return run;
            }
            Err(error) => panic!("message {i}: {error}"),
        }
    }
    run
}

fn check(storage: &FaultyStorage, acked: &BTreeSet<u64>, context: &str) {
    let queue = open(storage).unwrap_or_else(|| panic!("{context}: open keeps failing on a healthy disk"));
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

const KINDS: [FaultKind; 4] = [FaultKind::Eio, FaultKind::Enospc, FaultKind::EnospcOnAllocate, FaultKind::ShortWrite];

#[test]
fn an_error_at_every_operation_loses_nothing_acknowledged() {
    let reference = FaultyStorage::new();
    assert!(!workload(&reference).gave_up);
    let total_ops = reference.op_count();
    let points: Vec<u64> = match common::env_u64("WALQ_FAIL_AT") {
        Some(point) => vec![point],
        None => (0..total_ops).collect(),
    };
    let mut cases = 0;
    for persistent in [false, true] {
        for kind in KINDS {
            for &at_op in &points {
                let context = format!("WALQ_FAIL_AT={at_op} ({kind:?}, persistent: {persistent})");
                let storage = FaultyStorage::new();
                storage.set_plan(Some(FaultPlan { at_op, kind, persistent }));
                let run = workload(&storage);
                assert!(persistent || !run.gave_up, "{context}: a transient error must not stop the workload");
                // The failing disk is replaced (or space is freed): everything acknowledged is there, and the
                // queue takes appends again.
                storage.set_plan(None);
                check(&storage, &run.acked, &context);
                let queue = open(&storage).unwrap_or_else(|| panic!("{context}: open after the fault cleared"));
                queue.append(message(MESSAGES)).unwrap_or_else(|e| panic!("{context}: append after the fault: {e}"));
                drop(queue);
                // And after a power cut on top of it.
                check(&storage.crash_image(at_op), &run.acked, &format!("{context} then power cut"));
                cases += 1;
            }
        }
    }
    println!(
        "I/O errors: {total_ops} operations x {} kinds x once/persistent: {cases} cases, 0 violations",
        KINDS.len()
    );
    common::report(
        "R8",
        "EIO, ENOSPC (write, allocate), short write at every operation, once and persistently, then a power cut",
        cases,
        "cases",
        0,
    );
}

#[test]
fn reads_go_on_while_the_disk_is_full_and_appends_resume_when_space_is_freed() {
    let storage = FaultyStorage::new();
    let queue = open(&storage).unwrap();
    for i in 0..50 {
        queue.append(message(i)).unwrap();
    }
    storage.set_plan(Some(FaultPlan { at_op: storage.op_count(), kind: FaultKind::Enospc, persistent: true }));
    for _ in 0..3 {
        assert!(matches!(queue.append(message(50)), Err(Error::DiskFull)), "a full disk is DiskFull");
    }
    let records: Vec<_> = queue.read_from(Offset::EARLIEST).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), 50, "reads work while the disk is full");
    storage.set_plan(None); // space freed
    assert_eq!(queue.append(message(50)).unwrap(), Offset(50), "appends resume on the same handle");
    assert!(!queue.stats().poisoned);
}
