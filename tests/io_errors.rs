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
use walq::{Error, Offset, Preallocation, Queue};

const MESSAGES: u64 = 300;
const ATTEMPTS_MAX: u32 = 5;

/// Opens, retrying a few times as a user would; `None` when it keeps failing (a persistently failing disk).
fn open(storage: &FaultyStorage, preallocation: Preallocation) -> Option<Queue> {
    let dir = std::path::Path::new("/sim/queue");
    for _ in 0..=ATTEMPTS_MAX {
        match small(dir).preallocation(preallocation).storage(Arc::new(storage.clone()) as Arc<dyn Storage>).open() {
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
    /// Whether an append failed with `DiskFull`, and whether every read done then worked and held every
    /// acknowledged message.
    disk_full_seen: bool,
    read_while_full: bool,
    /// The power-cut image taken when the first error reached the workload, before any retry, reopen or close
    /// could fsync again what the fault left unsynced.
    /// With what was acknowledged until then.
    cut_at_fault: Option<(FaultyStorage, BTreeSet<u64>)>,
}

/// Appends messages 0..MESSAGES, answering errors as a user would: retry after `DiskFull`, reopen after
/// `Poisoned` or another I/O error, give up when that keeps failing.
fn workload(storage: &FaultyStorage, preallocation: Preallocation) -> Run {
    let mut run = Run {
        acked: BTreeSet::new(),
        gave_up: false,
        disk_full_seen: false,
        read_while_full: true,
        cut_at_fault: None,
    };
    let Some(mut queue) = open(storage, preallocation) else {
        run.gave_up = true;
        return run;
    };
    let mut i = 0;
    let mut attempts = 0;
    while i < MESSAGES {
        if i == MESSAGES / 2 && attempts == 0 {
            drop(queue); // a reopen in the middle puts recovery under the countdown too
            let Some(reopened) = open(storage, preallocation) else {
                run.gave_up = true;
                return run;
            };
            queue = reopened;
        }
        let result = queue.append(message(i));
        if result.is_err() && run.cut_at_fault.is_none() {
            run.cut_at_fault = Some((storage.crash_image(i), run.acked.clone()));
        }
        match result {
            Ok(_) => {
                run.acked.insert(i);
                i += 1;
                attempts = 0;
            }
            Err(Error::DiskFull) if attempts < ATTEMPTS_MAX => {
                attempts += 1;
                // A full disk is no reason to stop reading.
                let read = queue.read_from(Offset::EARLIEST).and_then(|r| r.collect::<Result<Vec<_>, _>>());
                run.disk_full_seen = true;
                run.read_while_full &= read.is_ok_and(|records| records.len() >= run.acked.len());
            }
            Err(Error::Poisoned | Error::Io { .. }) if attempts < ATTEMPTS_MAX => {
                attempts += 1;
                drop(queue);
                let Some(reopened) = open(storage, preallocation) else {
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

fn check(storage: &FaultyStorage, preallocation: Preallocation, acked: &BTreeSet<u64>, context: &str) {
    let queue =
        open(storage, preallocation).unwrap_or_else(|| panic!("{context}: open keeps failing on a healthy disk"));
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
    let (mut cases, mut fired, mut full) = (0, 0, 0);
    let mut fired_by_kind = std::collections::BTreeMap::new();
    let mut total_ops = 0;
    // Both preallocations: ENOSPC on allocate can only fire where segments reserve their space.
    for preallocation in [Preallocation::Grow, Preallocation::Reserve] {
        let reference = FaultyStorage::new();
        assert!(!workload(&reference, preallocation).gave_up);
        total_ops += reference.op_count();
        let points: Vec<u64> = match common::env_u64("WALQ_FAIL_AT") {
            Some(point) => vec![point],
            None => (0..reference.op_count()).collect(),
        };
        for persistent in [false, true] {
            for kind in KINDS {
                for &at_op in &points {
                    let context =
                        format!("WALQ_FAIL_AT={at_op} ({kind:?}, persistent: {persistent}, {preallocation:?})");
                    let storage = FaultyStorage::new();
                    storage.set_plan(Some(FaultPlan { at_op, kind, persistent }));
                    let run = workload(&storage, preallocation);
                    cases += 1;
                    if storage.faults_injected() == 0 {
                        continue; // nothing at this operation that this kind of fault affects
                    }
                    fired += 1;
                    *fired_by_kind.entry(format!("{kind:?}")).or_insert(0u64) += 1;
                    assert!(persistent || !run.gave_up, "{context}: a transient error must not stop the workload");
                    assert!(
                        !run.disk_full_seen || run.read_while_full,
                        "{context}: a read failed while the disk was full"
                    );
                    full += u64::from(run.disk_full_seen);
                    // The failing disk is replaced (or space is freed): everything acknowledged is there, and the
                    // queue takes appends again.
                    storage.set_plan(None);
                    check(&storage, preallocation, &run.acked, &context);
                    let queue = open(&storage, preallocation)
                        .unwrap_or_else(|| panic!("{context}: open after the fault cleared"));
                    queue
                        .append(message(MESSAGES))
                        .unwrap_or_else(|e| panic!("{context}: append after the fault: {e}"));
                    drop(queue);
                    // And a power cut when the error reached the workload (acknowledged then: everything before it).
                    if let Some((cut, acked_then)) = &run.cut_at_fault {
                        check(cut, preallocation, acked_then, &format!("{context} then a power cut at the error"));
                    }
                }
            }
        }
    }
    // A fault fires only where its operation happens: count what fired, and require every kind to have fired, or
    // that kind was never tested.
    assert_eq!(fired_by_kind.len(), KINDS.len(), "a kind of fault never fired: {fired_by_kind:?}");
    println!(
        "I/O errors: {total_ops} operations x {} kinds x once/persistent: {cases} cases, {fired} with a fault that fired {fired_by_kind:?} ({full} saw a full disk and read on), 0 violations",
        KINDS.len()
    );
    common::report(
        "R8",
        "EIO, ENOSPC (write, allocate), short write at every operation of Grow and Reserve queues, once and persistently; a power cut at the error; reads while full",
        fired,
        "faults fired",
        0,
    );
}

#[test]
fn reads_go_on_while_the_disk_is_full_and_appends_resume_when_space_is_freed() {
    let storage = FaultyStorage::new();
    let queue = open(&storage, Preallocation::Grow).unwrap();
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
