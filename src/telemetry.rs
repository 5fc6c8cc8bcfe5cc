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
//! thread and by [`Queue::publish_metrics`](crate::Queue::publish_metrics). Counters only grow: each publish adds
//! what walq's own count (since open) grew by, so a reopen in the same process carries on from where they were.
//! The `queue` label is the directory as the queue was opened with it: open it by one spelling of its path.
//! Figures of a closed queue or a deleted group keep their last value in the recorder.

use std::path::Path;
use std::time::Duration;

/// How often the background thread publishes the gauges and counters.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(5);

/// Where an fsync's time is recorded: `walq_fsync_seconds` with its labels (nothing without the feature). The
/// handle is registered once, with the recorder installed when the queue opened.
#[derive(Debug, Clone, Default)]
pub(crate) struct FsyncHistogram {
    #[cfg(feature = "metrics")]
    histogram: Option<metrics::Histogram>,
}

impl FsyncHistogram {
    /// The histogram of the fsyncs of `file` ("segment" or "journal") of the queue in `queue_dir`.
    pub(crate) fn new(queue_dir: &Path, file: &'static str) -> FsyncHistogram {
        #[cfg(feature = "metrics")]
        return FsyncHistogram {
            histogram: Some(
                metrics::histogram!("walq_fsync_seconds", "queue" => queue_dir.display().to_string(), "file" => file),
            ),
        };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (queue_dir, file);
            FsyncHistogram {}
        }
    }

    /// Records one fsync that took `took`.
    pub(crate) fn record(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(histogram) = &self.histogram {
            histogram.record(took);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }
}

/// Publishes a queue's figures; remembers what each counter was last published at, so that it adds the growth
/// since (a counter of the facade only goes up: `absolute` would freeze one that a reopen started again at 0).
#[cfg(feature = "metrics")]
#[derive(Debug, Default)]
pub(crate) struct Publisher {
    last: std::collections::HashMap<(&'static str, String), u64>,
}

#[cfg(feature = "metrics")]
impl Publisher {
    /// Publishes `stats` (and `disk_bytes`) of the queue in `queue_dir`.
    pub(crate) fn publish(&mut self, queue_dir: &Path, stats: &crate::Stats, disk_bytes: u64) {
        use metrics::{counter, gauge};
        let queue = queue_dir.display().to_string();
        let q = || [("queue", queue.clone())];
        self.count(counter!("walq_appends_total", &q()), "walq_appends_total", "", stats.appends);
        self.count(counter!("walq_appended_bytes_total", &q()), "walq_appended_bytes_total", "", stats.appended_bytes);
        self.count(counter!("walq_fsyncs_total", &q()), "walq_fsyncs_total", "", stats.fsyncs);
        gauge!("walq_segments", &q()).set(stats.segments as f64);
        gauge!("walq_disk_bytes", &q()).set(disk_bytes as f64);
        gauge!("walq_first_offset", &q()).set(stats.first_offset.0 as f64);
        gauge!("walq_next_offset", &q()).set(stats.next_offset.0 as f64);
        gauge!("walq_durable_offset", &q()).set(stats.durable_offset.0 as f64);
        for group in &stats.groups {
            let labels = [("queue", queue.clone()), ("group", group.name.clone())];
            gauge!("walq_group_lag", &labels).set(group.lag as f64);
            gauge!("walq_group_in_flight", &labels).set(group.in_flight as f64);
            gauge!("walq_group_dead_letters", &labels).set(group.dead_letters as f64);
            let age_seconds = group.oldest_unacked_age_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
            gauge!("walq_group_oldest_unacked_age_seconds", &labels).set(age_seconds);
            let name = &group.name;
            let counters = [
                ("walq_group_deliveries_total", group.deliveries),
                ("walq_group_redeliveries_total", group.redeliveries),
                ("walq_group_acked_total", group.acked),
                ("walq_group_dead_lettered_total", group.dead_lettered),
            ];
            for (metric, value) in counters {
                self.count(counter!(metric, &labels), metric, name, value);
            }
        }
    }

    /// Adds to `counter` what `value` (a count since open) grew by since it was last published; all of it if it
    /// went down (counted again from 0 since: a reopen, a group created again).
    fn count(&mut self, counter: metrics::Counter, metric: &'static str, group: &str, value: u64) {
        let last = self.last.entry((metric, group.to_string())).or_insert(0);
        counter.increment(if value >= *last { value - *last } else { value });
        *last = value;
    }
}
