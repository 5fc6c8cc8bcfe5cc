//! Regression: a panicking background thread stopped silently (#12, item 14).
//!
//! The bug: the interval flusher, the write-buffer writer and maintenance ran in threads whose panic nobody saw:
//! the thread ended, and with the flusher gone `Durability::Interval` quietly became `None` (appends acknowledged,
//! never fsynced).
//!
//! The fix: each background tick runs under `catch_unwind`; a panic poisons the queue (nothing more is acknowledged,
//! so the lost duty cannot go unnoticed) and is counted in `Stats::background_panics`.
//!
//! The test: the flusher's fsync panics (an injected fault); the queue reports it in its stats and refuses appends
//! with `Poisoned`; reopened, it works, with every append acknowledged before the panic.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{message, read_all};
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{Durability, Error, Queue, QueueBuilder};

fn builder(storage: &FaultyStorage) -> QueueBuilder {
    common::small(std::path::Path::new("/sim/queue"))
        .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .durability(Durability::Interval(Duration::from_millis(5)))
}

#[test]
fn a_panicking_flusher_poisons_the_queue_and_shows_in_stats() {
    let storage = FaultyStorage::new();
    let queue = builder(&storage).open().unwrap();
    storage.set_plan(Some(FaultPlan { at_op: storage.op_count(), kind: FaultKind::PanicOnSync, persistent: false }));
    queue.append(message(0)).unwrap(); // the flusher syncs it, and panics
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.stats().background_panics == 0 {
        assert!(Instant::now() < deadline, "the flusher's panic went unnoticed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = queue.stats();
    assert!(stats.poisoned);
    assert_eq!(stats.background_panics, 1);
    assert!(matches!(queue.append(message(1)), Err(Error::Poisoned)));
    drop(queue);

    let queue: Queue = builder(&storage).open().unwrap();
    let records = read_all(&queue);
    assert_eq!(records.len(), 1);
    common::assert_is_message(&records[0], 0);
    queue.append(message(1)).unwrap();
}
