//! Regression: a power cut while a consumer group was being created could leave `groups/<name>.journal` with
//! its name durable but its bytes not (an empty or torn file), and the queue then refused to open (`Corrupt`).
//!
//! Cause: the journal was created under its final name, written, fsynced, and only then was the directory fsynced;
//! a file system may persist the new name before the data (the classic zero-length file after a crash).
//!
//! Fix: a journal is always written to `<name>.journal.tmp`, fsynced, renamed over its final name, and the
//! directory fsynced (the same code path as checkpoints), so the final name only ever points at a complete file;
//! open removes leftover `.tmp` files. This test crashes at every operation of a group's creation and opens every
//! crash image.

use std::sync::Arc;

use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{Message, Queue};

#[test]
fn power_cut_during_group_creation_never_prevents_open() {
    let open = |storage: &FaultyStorage| {
        Queue::builder("/sim/q")
            .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
            .segment_bytes_max(64 * 1024)
            .message_bytes_max(4096)
            .open()
    };
    let setup = FaultyStorage::new();
    let queue = open(&setup).unwrap();
    queue.append(Message::new(b"m".to_vec())).unwrap();
    drop(queue);
    let base = setup.clean_image();
    let reference = base.clean_image();
    let queue = open(&reference).unwrap();
    let start = reference.op_count();
    queue.group("g").unwrap();
    let ops = reference.op_count() - start;
    drop(queue);
    for crash_at in 0..ops + 2 {
        let storage = base.clean_image();
        let queue = open(&storage).unwrap();
        storage.set_plan(Some(FaultPlan {
            at_op: storage.op_count() + crash_at,
            kind: FaultKind::Crash,
            persistent: false,
        }));
        let created = queue.group("g").is_ok();
        drop(queue);
        for seed in 0..16 {
            let image = storage.crash_image(seed);
            let reopened = open(&image).unwrap_or_else(|e| panic!("crash at {crash_at}, seed {seed}: {e}"));
            let groups = reopened.groups();
            if created {
                assert_eq!(groups, vec!["g".to_string()], "a created group is durable");
            }
            let consumer = reopened.group("g").unwrap().consumer();
            assert_eq!(consumer.try_recv().unwrap().unwrap().offset().0, 0);
        }
    }
}
