//! The settings of a queue, stored in its manifest, and the choices they are made of. Limits live in `limits`,
//! the builder that opens a queue in `builder`.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::limits::*;
use crate::record::FRAME_HEADER_BYTES;
use crate::segment::SEGMENT_HEADER_BYTES;

/// When an append counts as done, and so what a crash can lose. Chosen per queue; stored in its manifest.
/// ///
/// ```
/// use std::time::Duration;
/// use walq::{Durability, Message, Queue};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// // A metrics buffer that may lose the last 100 ms in a power cut, for far fewer fsyncs.
/// let queue = Queue::builder(temp.path()).durability(Durability::Interval(Duration::from_millis(100))).open()?;
/// queue.append(Message::new("cpu=0.42"))?;
/// queue.flush()?; // everything appended so far is on disk now
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Each append is written and fsynced before it returns, one at a time. Loses nothing acknowledged.
    Sync,
    /// Each append returns once an fsync covering it has finished. Concurrent appenders share one fsync; a lone
    /// appender fsyncs at once (no artificial delay). Loses nothing acknowledged.
    #[default]
    GroupCommit,
    /// Appends return once written to the OS; a background thread fsyncs every interval. A power failure loses at
    /// most the appends of the last interval plus the time of up to two fsyncs (the one running when they were
    /// appended, and the next; see `Stats::slowest_fsync_us`); a process crash loses nothing.
    Interval(Duration),
    /// Appends return once written to the OS; walq fsyncs only when a segment rolls and on close. A process crash
    /// loses nothing; a power failure loses whatever the OS had not written back.
    None,
}

impl Durability {
    /// Whether an acknowledged append is on disk when the call returns.
    pub fn acknowledges_durable(self) -> bool {
        matches!(self, Durability::Sync | Durability::GroupCommit)
    }
}

/// What open does with invalid bytes at the end of the last segment. Modelled on RocksDB's WAL recovery modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryMode {
    /// Cut a torn tail (invalid bytes that no later frame proves were durable); fail with [`Error::Corrupt`] on
    /// damage to data that was durable. The default: what a crash leaves is repaired, real damage is reported.
    #[default]
    TolerateTornTail,
    /// Fail with [`Error::Corrupt`] on any invalid non-zero byte after the last valid frame. Zeros (preallocated
    /// space) are not an error.
    AbsoluteConsistency,
    /// Keep every valid frame, skipping invalid regions even where they hold durable data; the report lists what
    /// was skipped. For salvage, when losing damaged messages is better than not opening.
    SkipCorrupt,
}

/// What happens to messages that consumers are done with. Chosen per queue; stored in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    /// Delete a sealed segment once every consumer group has acked (or dead-lettered) all of it and it holds no dead
    /// letter. With no group, nothing is deleted. A segment kept for a few messages some group still needs (a long
    /// lease, a delayed nack, a dead letter) is swept: rewritten with only those, once every group is done with at
    /// least half of it, so one held message pins its own bytes (and a header and an index file per segment), not
    /// the log behind it. Swept messages are gone for readers too (offsets are kept; readers skip the gaps), and a
    /// group created later starts at the oldest message still stored, without the swept ones.
    #[default]
    DeleteConsumed,
    /// Keep every segment: the log is replayable from its first message forever.
    KeepAll,
    /// Keyed compaction: in sealed segments, keep only the latest message per key (messages without a key are
    /// kept); a tombstone deletes its key and is itself removed after the tombstone retention. Offsets are kept;
    /// readers and groups skip the gaps. Segments are never deleted for being consumed.
    Compact,
}

/// Who does the queue's maintenance (compaction, sweeps, size and age limits, index rebuilds): a background thread,
/// or the caller. This process's choice; not stored in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Maintenance {
    /// The process's maintenance thread runs it after segment rolls, and at least every 10 s (for age limits and
    /// tombstone retention, which depend on time alone). One thread serves every queue open in the process, one
    /// queue after another: opening and closing a queue starts and joins no thread, and a long compaction of one
    /// queue delays the others' maintenance by its length. The thread ends about 1 s after the last such queue
    /// closes.
    #[default]
    Background,
    /// No background thread: compaction, sweeps, size and age limits and index rebuilds run only when the caller
    /// asks ([`Queue::compact`](crate::Queue::compact), [`Queue::enforce_retention_limits`](crate::Queue::enforce_retention_limits)).
    /// Acks still delete consumed segments as they go (one that finds maintenance busy leaves it to the next of
    /// those calls, or the next such ack); `compaction_dirty_percent` has no effect (`compact` always compacts).
    /// For a service that schedules its own disk work, and for tests whose outcome must not depend on when a
    /// thread wakes.
    Manual,
}

/// Which messages keyed compaction may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompactionScope {
    /// Only messages every consumer group has acked (all of them, when there is no group); never dead letters.
    #[default]
    Acked,
    /// Every message in a sealed segment, acked or not (a changelog whose readers want the latest values only).
    /// Groups skip what was removed. Dead letters are still kept.
    AllSealed,
}

/// Whether new segments reserve their full size on disk when created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preallocation {
    /// Reserve `segment_bytes_max` up front (fallocate): fsyncs need not update the file size, and a full disk is
    /// found when a segment is created rather than in the middle of one. A clean close gives the unused part back;
    /// the segment reopened after it reserves again at its first write, best effort (without room for all of it,
    /// it grows as written, and a full disk is met by the append that does not fit).
    #[default]
    Reserve,
    /// Grow files as written.
    Grow,
}

/// The settings stored in a queue's manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)] // see `Manifest`: a damaged key name must not fall back to a default
pub(crate) struct Settings {
    pub(crate) segment_bytes_max: u64,
    pub(crate) message_bytes_max: usize,
    pub(crate) durability: Durability,
    pub(crate) preallocation: Preallocation,
    #[serde(default = "default_ack_timeout_ms")]
    pub(crate) ack_timeout_ms: u64,
    #[serde(default = "default_max_deliveries")]
    pub(crate) max_deliveries: u32,
    #[serde(default)]
    pub(crate) cleanup: CleanupPolicy,
    #[serde(default)]
    pub(crate) compaction_scope: CompactionScope,
    #[serde(default = "default_tombstone_retention_ms")]
    pub(crate) tombstone_retention_ms: u64,
    #[serde(default = "default_dirty_percent")]
    pub(crate) compaction_dirty_percent: u8,
    #[serde(default)]
    pub(crate) retention_max_bytes: Option<u64>,
    #[serde(default)]
    pub(crate) retention_max_age_ms: Option<u64>,
    /// Left out of the manifest when unset, so that a queue without it opens in walq versions before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retention_max_messages: Option<u64>,
    /// Producer deduplication (`QueueBuilder::dedup_window`): how long a message id is remembered, by the
    /// message's timestamp. `None`: off. Left out of the manifest when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dedup_window_ms: Option<u64>,
    /// At most this many ids are remembered (the newest); `None`: `DEDUP_WINDOW_MESSAGES_DEFAULT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dedup_window_messages: Option<u64>,
}

fn default_tombstone_retention_ms() -> u64 {
    TOMBSTONE_RETENTION_DEFAULT.as_millis() as u64
}

fn default_dirty_percent() -> u8 {
    COMPACTION_DIRTY_PERCENT_DEFAULT
}

fn default_ack_timeout_ms() -> u64 {
    ACK_TIMEOUT_DEFAULT.as_millis() as u64
}

fn default_max_deliveries() -> u32 {
    MAX_DELIVERIES_DEFAULT
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_DEFAULT,
            durability: Durability::default(),
            preallocation: Preallocation::default(),
            ack_timeout_ms: default_ack_timeout_ms(),
            max_deliveries: default_max_deliveries(),
            cleanup: CleanupPolicy::default(),
            compaction_scope: CompactionScope::default(),
            tombstone_retention_ms: default_tombstone_retention_ms(),
            compaction_dirty_percent: default_dirty_percent(),
            retention_max_bytes: None,
            retention_max_age_ms: None,
            retention_max_messages: None,
            dedup_window_ms: None,
            dedup_window_messages: None,
        }
    }
}

/// A stored setting that a [`QueueBuilder`](crate::QueueBuilder) option replaced when the queue was opened (the
/// new value is stored: it holds for every later open that does not set it). See [`Queue::settings_changed`](crate::Queue::settings_changed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SettingChange {
    /// The setting's name, as in `MANIFEST.json` (`durability`, `segment_bytes_max`, `ack_timeout_ms`, ...).
    pub name: String,
    /// The value stored before, as JSON.
    pub stored: String,
    /// The value stored now, as JSON.
    pub now: String,
}

impl Settings {
    /// The settings that differ between `stored` and these, by their manifest names: compared as the manifest
    /// stores them, so a setting added later is compared without code here.
    pub(crate) fn changes_from(&self, stored: &Settings) -> Vec<SettingChange> {
        let as_map = |settings: &Settings| match serde_json::to_value(settings) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => unreachable!("settings serialize as a JSON object"),
        };
        let (before, after) = (as_map(stored), as_map(self));
        // A setting left out of the manifest when unset is null on the side that lacks it.
        let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        let json = |map: &serde_json::Map<String, serde_json::Value>, name: &String| {
            map.get(name).map_or_else(|| "null".to_string(), ToString::to_string)
        };
        names
            .into_iter()
            .filter(|name| json(&before, name) != json(&after, name))
            .map(|name| SettingChange { name: name.clone(), stored: json(&before, name), now: json(&after, name) })
            .collect()
    }

    /// The disk space a new segment reserves up front: `segment_bytes_max` with `Preallocation::Reserve`.
    pub(crate) fn reserve_bytes(&self) -> Option<u64> {
        (self.preallocation == Preallocation::Reserve).then_some(self.segment_bytes_max)
    }

    /// Checks every setting against its limits and against the others.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |option, reason: String| Err(Error::InvalidOption { option, reason });
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_LIMIT).contains(&self.segment_bytes_max) {
            return invalid(
                "segment_bytes_max",
                format!("{} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_LIMIT}", self.segment_bytes_max),
            );
        }
        if !(1..=MESSAGE_BYTES_LIMIT).contains(&self.message_bytes_max) {
            return invalid(
                "message_bytes_max",
                format!("{} is outside 1..={MESSAGE_BYTES_LIMIT}", self.message_bytes_max),
            );
        }
        let frame_max = (SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + self.message_bytes_max) as u64;
        if frame_max > self.segment_bytes_max {
            return invalid(
                "message_bytes_max",
                format!(
                    "a message of {} bytes does not fit a segment of {} bytes (a segment holds at least one \
                     message: lower message_bytes_max to at most {} with this segment_bytes_max, or raise \
                     segment_bytes_max)",
                    self.message_bytes_max,
                    self.segment_bytes_max,
                    self.segment_bytes_max.saturating_sub((SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES) as u64)
                ),
            );
        }
        if !(1..=ACK_TIMEOUT_MAX.as_millis() as u64).contains(&self.ack_timeout_ms) {
            return invalid("ack_timeout", format!("{} ms is outside 1 ms..=24 h", self.ack_timeout_ms));
        }
        if !(1..=100).contains(&self.compaction_dirty_percent) {
            return invalid(
                "compaction_dirty_percent",
                format!("{} is outside 1..=100", self.compaction_dirty_percent),
            );
        }
        if self.retention_max_bytes == Some(0) || self.retention_max_age_ms == Some(0) {
            return invalid("retention limits", "a size or age limit must be above zero".to_string());
        }
        if self.retention_max_messages == Some(0) {
            return invalid("retention_max_messages", "must be at least 1".to_string());
        }
        if self.dedup_window_ms == Some(0) {
            return invalid("dedup_window", "must be at least 1 ms".to_string());
        }
        if self.dedup_window_messages.is_some() && self.dedup_window_ms.is_none() {
            return invalid("dedup_window_messages", "needs a dedup_window (a time) to bound".to_string());
        }
        if let Some(messages) = self.dedup_window_messages {
            if !(1..=crate::limits::DEDUP_WINDOW_MESSAGES_LIMIT).contains(&messages) {
                let limit = crate::limits::DEDUP_WINDOW_MESSAGES_LIMIT;
                return invalid("dedup_window_messages", format!("{messages} is outside 1..={limit}"));
            }
        }
        if self.max_deliveries == 0 {
            return invalid("max_deliveries", "must be at least 1".to_string());
        }
        if let Durability::Interval(interval) = self.durability {
            if !(INTERVAL_MIN..=INTERVAL_MAX).contains(&interval) {
                return invalid("durability", format!("interval {interval:?} is outside 1 ms..=60 s"));
            }
        }
        Ok(())
    }
}
