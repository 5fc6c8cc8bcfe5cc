//! `recv` blocks until a message is appended (woken by the append, not by polling), `recv_timeout` gives up, and
//! closing the queue wakes blocked consumers with `Error::Closed`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use walq::{Durability, Error, Offset};

#[test]
fn recv_wakes_on_append() {
    for durability in [Durability::GroupCommit, Durability::None, Durability::Sync] {
        let temp = tempfile::tempdir().unwrap();
        let queue = small(temp.path()).durability(durability).open().unwrap();
        let consumer = queue.group("g").unwrap().consumer();
        let waiter = std::thread::spawn(move || consumer.recv().map(|d| d.offset()));
        std::thread::sleep(Duration::from_millis(50));
        append_range(&queue, 0..1);
        assert_eq!(waiter.join().unwrap().unwrap(), Offset(0), "{durability:?}");
    }
}

#[test]
fn recv_timeout_gives_up_and_close_wakes_waiters() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    let started = Instant::now();
    assert!(consumer.recv_timeout(Duration::from_millis(100)).unwrap().is_none());
    assert!(started.elapsed() >= Duration::from_millis(100));
    let blocked = {
        let consumer = consumer.clone();
        std::thread::spawn(move || consumer.recv().map(|d| d.offset()))
    };
    let iterating = {
        let consumer = consumer.clone();
        std::thread::spawn(move || consumer.iter().count())
    };
    std::thread::sleep(Duration::from_millis(50));
    queue.close().unwrap();
    assert!(matches!(blocked.join().unwrap(), Err(Error::Closed)));
    assert_eq!(iterating.join().unwrap(), 0, "the iterator ends when the queue closes");
}
