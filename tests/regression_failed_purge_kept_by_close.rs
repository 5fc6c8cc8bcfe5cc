//! Regression (found by a review of the change that made a close write no unchanged manifest, issue #15): a purge
//! whose manifest write failed after its rename landed (the directory fsync returned EIO) reported an error, which
//! promises nothing was purged; the close then found the manifest it remembered unchanged and wrote nothing, so the
//! next open read the failed purge's point and dropped the messages below it. The cause: the remembered on-disk
//! manifest kept its old content after a failed write, whose effect on the file is unknown. The fix: a failed
//! write marks the remembered copy uncertain, and the next edit (another purge, or the close) writes whatever it
//! holds. The test fails each storage operation of a purge in turn (EIO, once), then closes and reopens: where the
//! purge reported an error, every message is still there; where it reported success, the ones below its point are
//! gone.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{append_range, assert_is_message, small};
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{Offset, Queue};

const MESSAGES: u64 = 200;
const PURGE_POINT: u64 = 120;

fn open(storage: &FaultyStorage) -> Queue {
    small(Path::new("/sim/queue")).storage(Arc::new(storage.clone()) as Arc<dyn Storage>).open().unwrap()
}

#[test]
fn a_purge_that_reported_an_error_purges_nothing_after_close_and_reopen() {
    let (mut failed, mut succeeded) = (0, 0);
    for fail_at in 0.. {
        let storage = FaultyStorage::new();
        let queue = open(&storage);
        append_range(&queue, 0..MESSAGES);
        queue.close().unwrap();
        // A session that only purges: its close has no new durable end to record, so only the fix writes.
        let queue = open(&storage);
        let at_op = storage.op_count() + fail_at;
        storage.set_plan(Some(FaultPlan { at_op, kind: FaultKind::Eio, persistent: false }));
        let purged = queue.purge_until(Offset(PURGE_POINT));
        let fault_hit = storage.faults_injected() > 0;
        storage.set_plan(None);
        queue.close().unwrap();
        let queue = open(&storage);
        let first = if purged.is_ok() { PURGE_POINT } else { 0 };
        let mut reader = queue.read_from(Offset(0)).unwrap();
        let record = reader.next().unwrap().unwrap();
        assert_eq!(record.offset, Offset(first), "fault at purge operation {fail_at}: purge said {purged:?}");
        assert_is_message(&record, first);
        queue.close().unwrap();
        if purged.is_err() {
            failed += 1;
        } else {
            succeeded += 1;
        }
        if !fault_hit {
            break; // the purge ran past its last operation: every one of them has failed once
        }
    }
    assert!(failed >= 3, "temporary file write, its fsync, the rename or the directory fsync: {failed} failed");
    assert!(succeeded >= 1);
}
