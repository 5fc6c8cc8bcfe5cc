//! Metrics (#18 item 8, feature `metrics`): a queue publishes its counters and gauges through the `metrics` facade
//! into the recorder the embedder installed, labelled by queue directory (and group), and records every fsync in
//! `walq_fsync_seconds`. Checked with `metrics-util`'s debugging recorder against the queue's own `stats()`.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use walq::{Durability, Message};

/// Every metric of the snapshot, by name and sorted labels.
type Metrics = HashMap<(String, Vec<(String, String)>), DebugValue>;

fn snapshot(snapshotter: &metrics_util::debugging::Snapshotter) -> Metrics {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let mut labels: Vec<(String, String)> =
                key.key().labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
            labels.sort();
            ((key.key().name().to_string(), labels), value)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    labels.sort();
    labels
}

#[test]
fn a_queue_publishes_its_figures_and_every_fsync() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder of this test binary");

    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).durability(Durability::Sync).open().unwrap();
    let minute_ago_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 - 60_000;
    for i in 0..10 {
        queue.append(Message::new(format!("m{i}")).timestamp_ms(minute_ago_ms)).unwrap();
    }
    let group = queue.group("jobs").unwrap();
    let consumer = group.consumer();
    let mut taken = consumer.try_recv_batch(4).unwrap();
    taken.pop().unwrap().nack(std::time::Duration::ZERO).unwrap(); // delivered again below
    consumer.ack_all(taken).unwrap();
    consumer.try_recv().unwrap().unwrap().dead_letter().unwrap();
    queue.publish_metrics();

    let stats = queue.stats();
    let metrics = snapshot(&snapshotter);
    let dir = temp.path().display().to_string();
    let queue_labels = labels(&[("queue", &dir)]);
    let group_labels = labels(&[("queue", &dir), ("group", "jobs")]);
    let get = |name: &str, labels: &Vec<(String, String)>| {
        metrics.get(&(name.to_string(), labels.clone())).unwrap_or_else(|| panic!("{name} {labels:?}"))
    };
    let counter = |name: &str, labels: &Vec<(String, String)>| match get(name, labels) {
        DebugValue::Counter(n) => *n,
        other => panic!("{name} is a counter: {other:?}"),
    };
    let gauge = |name: &str, labels: &Vec<(String, String)>| match get(name, labels) {
        DebugValue::Gauge(v) => v.into_inner(),
        other => panic!("{name} is a gauge: {other:?}"),
    };
    assert_eq!(counter("walq_appends_total", &queue_labels), 10);
    assert_eq!(counter("walq_appended_bytes_total", &queue_labels), stats.appended_bytes);
    assert_eq!(counter("walq_fsyncs_total", &queue_labels), stats.fsyncs);
    assert_eq!(gauge("walq_segments", &queue_labels), 1.0);
    assert_eq!(gauge("walq_next_offset", &queue_labels), 10.0);
    let segment_bytes: u64 = segment_files(temp.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(gauge("walq_disk_bytes", &queue_labels), segment_bytes as f64);
    assert_eq!(gauge("walq_group_lag", &group_labels), 6.0, "10 less 3 acked and 1 dead letter");
    assert_eq!(gauge("walq_group_in_flight", &group_labels), 0.0);
    assert_eq!(gauge("walq_group_dead_letters", &group_labels), 1.0);
    let age_seconds = gauge("walq_group_oldest_unacked_age_seconds", &group_labels);
    assert!((59.0..3600.0).contains(&age_seconds), "the oldest message not done is a minute old: {age_seconds}");
    assert_eq!(counter("walq_group_deliveries_total", &group_labels), 5);
    assert_eq!(counter("walq_group_redeliveries_total", &group_labels), 1);
    assert_eq!(counter("walq_group_acked_total", &group_labels), 3);
    assert_eq!(counter("walq_group_dead_lettered_total", &group_labels), 1);
    for file in ["segment", "journal"] {
        match get("walq_fsync_seconds", &labels(&[("queue", &dir), ("file", file)])) {
            DebugValue::Histogram(times) => assert!(!times.is_empty(), "{file} fsyncs recorded"),
            other => panic!("a histogram: {other:?}"),
        }
    }
    drop((consumer, group));
    queue.close().unwrap();

    // After a reopen (walq's own counts start again at 0) each publish adds what they grew by, once: the debugging
    // recorder hands out what was added since its last snapshot.
    let queue = small(temp.path()).open().unwrap();
    queue.append(Message::new("after")).unwrap();
    queue.append(Message::new("reopen")).unwrap();
    queue.publish_metrics();
    queue.publish_metrics();
    let metrics = snapshot(&snapshotter);
    match metrics.get(&("walq_appends_total".to_string(), queue_labels.clone())) {
        Some(DebugValue::Counter(n)) => assert_eq!(*n, 2, "the growth since the reopen, added once"),
        other => panic!("walq_appends_total: {other:?}"),
    }
}
