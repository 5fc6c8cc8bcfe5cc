//! Opt-in size, age and count limits delete the oldest segments even when groups have not consumed them; what is
//! dropped is counted; groups move past it and go on with what is stored. The count limit (#18 item 7, JetStream's
//! `MaxMsgs`) is left out of the manifest when unset, so that such a queue still opens in earlier versions.

mod common;

use std::time::Duration;

use common::*;
use walq::{CleanupPolicy, Offset};

fn disk_bytes(dir: &std::path::Path) -> u64 {
    segment_bytes(dir)
}

#[test]
fn size_limit_drops_the_oldest_segments_and_counts_unconsumed_messages() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).retention_max_bytes(200 * 1024).durability(walq::Durability::None).open().unwrap();
    let group = queue.group("lagging").unwrap();
    let batch: Vec<_> = (0..10_000).map(message).collect();
    queue.append_batch(&batch).unwrap();
    assert!(disk_bytes(temp.path()) > 400 * 1024);
    queue.enforce_retention_limits().unwrap();
    let bytes = disk_bytes(temp.path());
    assert!(bytes <= 200 * 1024 + 64 * 1024, "at most one segment over the limit: {bytes}");
    let stats = queue.stats();
    let first = stats.first_offset;
    assert!(first > Offset(0));
    assert_eq!(stats.messages_dropped_by_limits, first.0, "every dropped message was unconsumed by the group");
    assert!(group.ack_floor() >= first, "the group moved past what is gone");
    let delivery = group.consumer().try_recv().unwrap().unwrap();
    assert_eq!(delivery.offset(), first);
    assert_is_message(delivery.message(), first.0);
    drop(delivery);
    queue.close().unwrap();
    let queue = small(temp.path()).open().unwrap();
    assert_eq!(queue.group("lagging").unwrap().consumer().try_recv().unwrap().unwrap().offset(), first);
}

#[test]
fn age_limit_drops_segments_sealed_long_enough_ago() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path())
        .cleanup(CleanupPolicy::KeepAll)
        .retention_max_age(Duration::from_millis(300))
        .open()
        .unwrap();
    let batch: Vec<_> = (0..3000).map(message).collect();
    queue.append_batch(&batch).unwrap();
    let segments = segment_files(temp.path()).len();
    assert_eq!(queue.enforce_retention_limits().unwrap(), 0, "nothing is old enough yet");
    std::thread::sleep(Duration::from_millis(400));
    // The background maintenance or this call deletes them; either way only the active segment is left.
    queue.enforce_retention_limits().unwrap();
    assert_eq!(segment_files(temp.path()).len(), 1, "of {segments} segments, the sealed ones expired");
    assert_eq!(queue.stats().segments_deleted, segments as u64 - 1);
    assert_eq!(queue.stats().messages_dropped_by_limits, 0, "no group: nothing counts as unconsumed");
}

/// Regression (#12, item 17): limits once set could not be removed (the builder's `None` meant "keep the stored
/// one"). `remove_retention_max_bytes` / `remove_retention_max_age` remove them, and leaving them out keeps them.
#[test]
fn a_limit_set_once_can_be_removed() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).retention_max_bytes(200 * 1024).retention_max_age(Duration::from_secs(60)).open();
    drop(queue.unwrap());
    let queue = small(temp.path()).remove_retention_max_bytes().open().unwrap();
    queue.append_batch(&(0..10_000).map(message).collect::<Vec<_>>()).unwrap();
    assert_eq!(queue.enforce_retention_limits().unwrap(), 0, "the size limit is gone");
    assert_eq!(queue.stats().first_offset, Offset(0));
    drop(queue);
    drop(small(temp.path()).open().unwrap());
    let settings = stored_settings(temp.path());
    assert_eq!(settings["retention_max_bytes"], serde_json::Value::Null);
    assert_eq!(settings["retention_max_age_ms"], 60_000, "the age limit was kept");
    drop(small(temp.path()).remove_retention_max_age().open().unwrap());
    assert_eq!(stored_settings(temp.path())["retention_max_age_ms"], serde_json::Value::Null);
}

fn stored_settings(dir: &std::path::Path) -> serde_json::Value {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("MANIFEST.json")).unwrap()).unwrap();
    manifest["settings"].clone()
}

#[test]
fn count_limit_keeps_at_most_that_many_offsets_and_is_stored_only_when_set() {
    let temp = tempfile::tempdir().unwrap();
    drop(small(temp.path()).open().unwrap());
    assert!(stored_settings(temp.path()).get("retention_max_messages").is_none(), "unset: not in the manifest");
    assert!(matches!(
        small(temp.path()).retention_max_messages(0).open(),
        Err(walq::Error::InvalidOption { option: "retention_max_messages", .. })
    ));
    let queue = small(temp.path()).retention_max_messages(3_000).durability(walq::Durability::None).open().unwrap();
    assert_eq!(stored_settings(temp.path())["retention_max_messages"], 3_000);
    let group = queue.group("lagging").unwrap();
    queue.append_batch(&(0..10_000).map(message).collect::<Vec<_>>()).unwrap();
    assert!(segment_files(temp.path()).len() > 4);
    queue.enforce_retention_limits().unwrap();
    let stats = queue.stats();
    let kept = stats.next_offset.0 - stats.first_offset.0;
    assert!(kept <= 3_000, "at most the limit: {kept}");
    // Whole segments only: fewer by less than one segment's worth (a 64 KiB segment holds < 1,500 of these).
    assert!(kept > 3_000 - 1_500, "one segment too many deleted: {kept} kept");
    assert_eq!(stats.messages_dropped_by_limits, stats.first_offset.0, "every dropped message was unconsumed");
    let delivery = group.consumer().try_recv().unwrap().unwrap();
    assert_eq!(delivery.offset(), stats.first_offset);
    assert_is_message(delivery.message(), stats.first_offset.0);
    drop(delivery);
    queue.close().unwrap();
    let queue = small(temp.path()).open().unwrap();
    assert_eq!(queue.settings_changed(), &[], "the stored limit holds");
    drop(queue);
    let queue = small(temp.path()).remove_retention_max_messages().open().unwrap();
    let changed: Vec<&str> = queue.settings_changed().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(changed, vec!["retention_max_messages"], "a removal is a change too");
    drop(queue);
    assert!(stored_settings(temp.path()).get("retention_max_messages").is_none());
}
