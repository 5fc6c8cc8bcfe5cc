//! Metrics through the [`metrics`](https://docs.rs/metrics) facade, behind the cargo feature `metrics`: walq records
//! into whatever recorder the embedder installed (a Prometheus exporter, StatsD, ...), and costs nothing without the
//! feature. Install the recorder before opening a queue.
//!
//! Every metric carries the label `queue` (the queue directory); group metrics also `group`.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `walq_appends_total`, `walq_appended_bytes_total` | counter | messages and frame bytes appended since open |
//! | `walq_fsyncs_total` | counter | fsyncs of the log since open |
//! | `walq_fsync_seconds` | histogram | each fsync of appended data; label `file`: `segment` or `journal` |
//! | `walq_segments`, `walq_disk_bytes` | gauge | segment files, and their bytes on disk |
//! | `walq_first_offset`, `walq_next_offset`, `walq_durable_offset` | gauge | the log's positions |
//! | `walq_group_lag`, `walq_group_in_flight`, `walq_group_dead_letters` | gauge | per group: messages not done, leased, set aside |
//! | `walq_group_oldest_unacked_age_seconds` | gauge | per group: age of the oldest message not done (0: none) |
//! | `walq_group_deliveries_total`, `walq_group_redeliveries_total`, `walq_group_acked_total`, `walq_group_dead_lettered_total` | counter | per group, since open |
//!
//! The histogram is recorded at each fsync; the rest is published every [`PUBLISH_INTERVAL`] by a background
//! thread and by [`Queue::publish_metrics`](crate::Queue::publish_metrics). Counters count since the queue was
//! opened (a reopen starts them again, as a process restart does).

use std::path::Path;
use std::time::Duration;

/// How often the background thread publishes the gauges and counters.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(5);

/// Where an fsync's time is recorded: `walq_fsync_seconds` with its labels (nothing without the feature).
#[derive(Debug, Clone, Default)]
pub(crate) struct FsyncHistogram {
    #[cfg(feature = "metrics")]
    labels: Option<(String, &'static str)>,
}

impl FsyncHistogram {
    /// The histogram of the fsyncs of `file` ("segment" or "journal") of the queue in `queue_dir`.
    pub(crate) fn new(queue_dir: &Path, file: &'static str) -> FsyncHistogram {
        #[cfg(feature = "metrics")]
        return FsyncHistogram { labels: Some((queue_dir.display().to_string(), file)) };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (queue_dir, file);
            FsyncHistogram {}
        }
    }

    /// Records one fsync that took `took`.
    pub(crate) fn record(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        if let Some((queue, file)) = &self.labels {
            metrics::histogram!("walq_fsync_seconds", "queue" => queue.clone(), "file" => *file).record(took);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }
}

/// Publishes `stats` (and `disk_bytes`) of the queue in `queue_dir`.
#[cfg(feature = "metrics")]
pub(crate) fn publish(queue_dir: &Path, stats: &crate::Stats, disk_bytes: u64) {
    use metrics::{counter, gauge};
    let queue = queue_dir.display().to_string();
    counter!("walq_appends_total", "queue" => queue.clone()).absolute(stats.appends);
    counter!("walq_appended_bytes_total", "queue" => queue.clone()).absolute(stats.appended_bytes);
    counter!("walq_fsyncs_total", "queue" => queue.clone()).absolute(stats.fsyncs);
    gauge!("walq_segments", "queue" => queue.clone()).set(stats.segments as f64);
    gauge!("walq_disk_bytes", "queue" => queue.clone()).set(disk_bytes as f64);
    gauge!("walq_first_offset", "queue" => queue.clone()).set(stats.first_offset.0 as f64);
    gauge!("walq_next_offset", "queue" => queue.clone()).set(stats.next_offset.0 as f64);
    gauge!("walq_durable_offset", "queue" => queue.clone()).set(stats.durable_offset.0 as f64);
    for group in &stats.groups {
        let labels = [("queue", queue.clone()), ("group", group.name.clone())];
        gauge!("walq_group_lag", &labels).set(group.lag as f64);
        gauge!("walq_group_in_flight", &labels).set(group.in_flight as f64);
        gauge!("walq_group_dead_letters", &labels).set(group.dead_letters as f64);
        let age_seconds = group.oldest_unacked_age_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
        gauge!("walq_group_oldest_unacked_age_seconds", &labels).set(age_seconds);
        counter!("walq_group_deliveries_total", &labels).absolute(group.deliveries);
        counter!("walq_group_redeliveries_total", &labels).absolute(group.redeliveries);
        counter!("walq_group_acked_total", &labels).absolute(group.acked);
        counter!("walq_group_dead_lettered_total", &labels).absolute(group.dead_lettered);
    }
}
