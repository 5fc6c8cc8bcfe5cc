//! Regression: one damaged group journal made the whole queue unopenable (#14, item 11).
//!
//! The bug: `Queue::open` failed on any group's `Corrupt` journal, so producers, the other groups and
//! `verify --repair` all stopped, and the only way out was deleting the journal by hand.
//!
//! The fix: the queue opens; the damaged group answers `Error::Corrupt` (and holds back cleanup, its progress being
//! unknown) until it is deleted (`Queue::delete_group`, `walq groups DIR --delete NAME`); `walq groups` lists it
//! as damaged (exit 2).

mod common;

use std::process::Command;

use common::*;
use walq::{Error, Offset};

#[test]
fn a_damaged_journal_takes_down_its_group_only() {
    let dir = tempfile::tempdir().unwrap();
    let queue = small(dir.path()).open().unwrap();
    append_range(&queue, 0..100);
    for name in ["good", "bad"] {
        let consumer = queue.group(name).unwrap().consumer();
        consumer.ack_all(consumer.try_recv_batch(10).unwrap()).unwrap();
    }
    queue.close().unwrap();
    drop(queue);
    let journal = dir.path().join("groups/bad.journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[40] ^= 0xFF; // the first record: damage with valid records behind it
    std::fs::write(&journal, bytes).unwrap();

    let queue = small(dir.path()).open().expect("the queue opens without its damaged group");
    assert_eq!(queue.damaged_groups(), vec!["bad".to_string()]);
    assert!(matches!(queue.group("bad"), Err(Error::Corrupt { .. })));
    assert_eq!(queue.group("good").unwrap().ack_floor(), Offset(10));
    append_range(&queue, 100..110);
    assert_eq!(read_all(&queue).len(), 110);
    queue.close().unwrap();
    drop(queue);

    let path = dir.path().to_str().unwrap();
    let groups = Command::new(env!("CARGO_BIN_EXE_walq")).args(["groups", path]).output().unwrap();
    assert_eq!(groups.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&groups.stdout).contains("DAMAGED"));
    let delete = Command::new(env!("CARGO_BIN_EXE_walq")).args(["groups", path, "--delete", "bad"]).output().unwrap();
    assert_eq!(delete.status.code(), Some(0), "{}", String::from_utf8_lossy(&delete.stderr));
    let queue = small(dir.path()).open().unwrap();
    assert!(queue.damaged_groups().is_empty());
    assert_eq!(queue.groups(), vec!["good".to_string()]);
    assert_eq!(queue.group("bad").unwrap().ack_floor(), Offset(0), "a new group of that name starts afresh");
}
