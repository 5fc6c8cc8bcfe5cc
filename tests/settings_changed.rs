//! Builder settings are stored with the queue (#22 item 7): an admin program that opens a service's queue with
//! other options changes them for the service. That is no longer silent: `Queue::settings_changed` lists each
//! stored setting the open replaced (and it is logged); `Queue::open` and options that are not stored change none.

mod common;

use std::time::Duration;

use common::*;
use walq::{Durability, Queue, RetryBackoff};

#[test]
fn an_open_says_which_stored_settings_it_replaced() {
    let temp = tempfile::tempdir().unwrap();
    let created = small(temp.path()).durability(Durability::GroupCommit).max_deliveries(5).open().unwrap();
    assert!(created.settings_changed().is_empty(), "a new queue replaces nothing");
    created.close().unwrap();

    let same = small(temp.path()).durability(Durability::GroupCommit).open().unwrap();
    assert!(same.settings_changed().is_empty(), "the same values change nothing");
    same.close().unwrap();

    let stored_only = Queue::open(temp.path()).unwrap();
    assert!(stored_only.settings_changed().is_empty());
    stored_only.close().unwrap();

    let runtime_only = Queue::builder(temp.path())
        .retry_backoff(RetryBackoff::exponential(Duration::from_millis(10), Duration::from_secs(1)))
        .max_ack_pending(10)
        .open()
        .unwrap();
    assert!(runtime_only.settings_changed().is_empty(), "options that are not stored change nothing");
    runtime_only.close().unwrap();

    let admin = Queue::builder(temp.path()).durability(Durability::None).max_deliveries(2).open().unwrap();
    let changed: Vec<(&str, &str, &str)> =
        admin.settings_changed().iter().map(|c| (c.name.as_str(), c.stored.as_str(), c.now.as_str())).collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(changed.iter().any(|&(name, from, to)| name == "durability" && from != to), "{changed:?}");
    assert!(changed.contains(&("max_deliveries", "5", "2")), "{changed:?}");
    admin.close().unwrap();

    // Stored: the next plain open has them.
    let service = Queue::open(temp.path()).unwrap();
    assert_eq!(service.durability(), Durability::None);
    assert!(service.settings_changed().is_empty());
}
