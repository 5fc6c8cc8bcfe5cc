//! One process owns a queue: a second open gets `Error::Locked`, in this process or another; the lock is released
//! on close, and a `kill -9` of the owner never leaves a stale lock.

mod common;

use std::io::{BufRead, BufReader};

use common::*;
use walq::{Error, Queue};

const CHILD_DIR: &str = "WALQ_LOCK_CHILD_DIR";

#[test]
fn second_open_in_the_same_process_is_locked() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::open(temp.path()).unwrap();
    let err = Queue::open(temp.path()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    queue.close().unwrap();
    let again = Queue::open(temp.path()).unwrap();
    drop(again);
    Queue::open(temp.path()).unwrap();
}

/// The child's part: open the queue, say so, and wait to be killed.
#[test]
fn lock_holder_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let queue = Queue::open(&dir).unwrap();
    append_range(&queue, 0..10);
    println!("locked");
    std::thread::sleep(std::time::Duration::from_secs(60));
    drop(queue);
}

#[test]
fn lock_held_by_another_process_and_released_by_kill_9() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_string_lossy().into_owned();
    let mut child = spawn_child("lock_holder_child", &[(CHILD_DIR, dir.clone())]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let said_locked = lines.any(|l| l.is_ok_and(|l| l.ends_with("locked")));
    assert!(said_locked, "the child did not open the queue");
    let err = Queue::open(&dir).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let queue = Queue::open(&dir).unwrap();
    assert_eq!(read_all(&queue).len(), 10);
}

/// Regression (#12, item 6): a second owner after `LOCK` was removed. The lock was an `flock` on a file that can be
/// unlinked: with `LOCK` removed under a running owner, a second open created a new `LOCK`, locked it, and both
/// appended at the same offsets (an acknowledged append was overwritten). The directory itself is now locked too,
/// which no unlink can swap.
#[test]
fn removing_the_lock_file_does_not_let_a_second_owner_in() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::open(temp.path()).unwrap();
    append_range(&queue, 0..3);
    std::fs::remove_file(temp.path().join("LOCK")).unwrap();
    let err = Queue::open(temp.path()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    append_range(&queue, 3..6);
    queue.close().unwrap();
    let reopened = Queue::open(temp.path()).unwrap();
    let records = read_all(&reopened);
    assert_eq!(records.len(), 6);
    for (i, record) in records.iter().enumerate() {
        assert_is_message(record, i as u64);
    }
}
