//! Settings of a queue, their limits (named, with units), and the builder that opens a queue.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::record::FRAME_HEADER_BYTES;
use crate::segment::SEGMENT_HEADER_BYTES;
use crate::storage::{FsStorage, Storage};

/// Smallest allowed `segment_bytes_max`.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Largest allowed `segment_bytes_max`: byte positions inside a segment fit in 32 bits with room to spare.
pub const SEGMENT_BYTES_LIMIT: u64 = 1 << 30;
/// Default `segment_bytes_max`.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Largest allowed `message_bytes_max`; also the bound every decoder checks before trusting a length field.
pub const MESSAGE_BYTES_LIMIT: usize = 16 * 1024 * 1024;
/// Default `message_bytes_max`.
pub const MESSAGE_BYTES_DEFAULT: usize = 1024 * 1024;
/// Most headers one message may carry.
pub const HEADERS_COUNT_MAX: usize = 64;
/// Longest header name, in bytes.
pub const HEADER_NAME_BYTES_MAX: usize = 256;
/// Log bytes between two entries of a segment's sparse index: a lookup scans at most about this much.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;
/// Largest allowed [`QueueBuilder::write_buffer_bytes`].
pub const WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How often the write buffer (see [`QueueBuilder::write_buffer_bytes`]) is handed to the OS when it does not fill:
/// the longest an append waits there, and so the window of appends a process crash can lose.
pub const WRITE_BUFFER_LINGER: Duration = Duration::from_millis(5);
/// Shortest flush interval of [`Durability::Interval`].
pub const INTERVAL_MIN: Duration = Duration::from_millis(1);
/// Longest flush interval of [`Durability::Interval`].
pub const INTERVAL_MAX: Duration = Duration::from_secs(60);

/// When an append counts as done, and so what a crash can lose. Chosen per queue; stored in its manifest.
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
    /// most the appends of the last interval (plus the fsync's own duration); a process crash loses nothing.
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

/// Default time a consumer has to answer a delivery before it is handed to another.
pub const ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Longest allowed ack timeout.
pub const ACK_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);
/// Default number of deliveries of a message before it is dead-lettered.
pub const MAX_DELIVERIES_DEFAULT: u32 = 5;

/// What happens to messages that consumers are done with. Chosen per queue; stored in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    /// Delete a sealed segment once every consumer group has acked (or dead-lettered) all of it and it holds no dead
    /// letter. With no group, nothing is deleted.
    #[default]
    DeleteConsumed,
    /// Keep every segment: the log is replayable from its first message forever.
    KeepAll,
    /// Keyed compaction: in sealed segments, keep only the latest message per key (messages without a key are
    /// kept); a tombstone deletes its key and is itself removed after the tombstone retention. Offsets are kept;
    /// readers and groups skip the gaps. Segments are never deleted for being consumed.
    Compact,
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

/// Default time a tombstone is kept after its segment is sealed, so that readers see the deletion.
pub const TOMBSTONE_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// Default share of removable bytes in sealed segments at which background compaction rewrites them.
pub const COMPACTION_DIRTY_PERCENT_DEFAULT: u8 = 50;

/// Whether new segments reserve their full size on disk when created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preallocation {
    /// Reserve `segment_bytes_max` up front (fallocate): fsyncs need not update the file size, and a full disk is
    /// found when a segment is created rather than in the middle of one.
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
        }
    }
}

impl Settings {
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
                    "a message of {} bytes does not fit a segment of {} bytes",
                    self.message_bytes_max, self.segment_bytes_max
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

fn duration_ms(duration: Duration) -> u64 {
    duration.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Opens a queue: `Queue::builder(dir).durability(...).open()`.
///
/// Settings left unset keep the value stored in the queue's manifest (or the default, for a new queue); settings
/// given here replace the stored ones.
#[derive(Debug, Clone)]
pub struct QueueBuilder {
    pub(crate) dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) segment_bytes_max: Option<u64>,
    pub(crate) message_bytes_max: Option<usize>,
    pub(crate) durability: Option<Durability>,
    pub(crate) preallocation: Option<Preallocation>,
    pub(crate) ack_timeout: Option<Duration>,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) cleanup: Option<CleanupPolicy>,
    pub(crate) compaction_scope: Option<CompactionScope>,
    pub(crate) tombstone_retention: Option<Duration>,
    pub(crate) compaction_dirty_percent: Option<u8>,
    pub(crate) retention_max_bytes: Option<u64>,
    pub(crate) retention_max_age: Option<Duration>,
    pub(crate) recovery_mode: RecoveryMode,
    pub(crate) write_buffer_bytes: usize,
}

impl QueueBuilder {
    pub(crate) fn new(dir: PathBuf) -> QueueBuilder {
        QueueBuilder {
            dir,
            storage: Arc::new(FsStorage),
            segment_bytes_max: None,
            message_bytes_max: None,
            durability: None,
            preallocation: None,
            ack_timeout: None,
            max_deliveries: None,
            cleanup: None,
            compaction_scope: None,
            tombstone_retention: None,
            compaction_dirty_percent: None,
            retention_max_bytes: None,
            retention_max_age: None,
            recovery_mode: RecoveryMode::default(),
            write_buffer_bytes: 0,
        }
    }

    /// Size at which a segment file is sealed and a new one started, in bytes.
    pub fn segment_bytes_max(mut self, bytes: u64) -> QueueBuilder {
        self.segment_bytes_max = Some(bytes);
        self
    }

    /// Largest message (key + value + headers), in bytes.
    pub fn message_bytes_max(mut self, bytes: usize) -> QueueBuilder {
        self.message_bytes_max = Some(bytes);
        self
    }

    /// When appends are acknowledged; see [`Durability`].
    pub fn durability(mut self, durability: Durability) -> QueueBuilder {
        self.durability = Some(durability);
        self
    }

    /// Whether new segments reserve their space up front; see [`Preallocation`].
    pub fn preallocation(mut self, preallocation: Preallocation) -> QueueBuilder {
        self.preallocation = Some(preallocation);
        self
    }

    /// How long a consumer has to answer a delivery before it is handed to another consumer of the group.
    pub fn ack_timeout(mut self, timeout: Duration) -> QueueBuilder {
        self.ack_timeout = Some(timeout);
        self
    }

    /// How many deliveries of a message may fail before it is dead-lettered.
    pub fn max_deliveries(mut self, deliveries: u32) -> QueueBuilder {
        self.max_deliveries = Some(deliveries);
        self
    }

    /// What happens to consumed messages; see [`CleanupPolicy`].
    pub fn cleanup(mut self, policy: CleanupPolicy) -> QueueBuilder {
        self.cleanup = Some(policy);
        self
    }

    /// Which messages keyed compaction may remove; see [`CompactionScope`].
    pub fn compaction_scope(mut self, scope: CompactionScope) -> QueueBuilder {
        self.compaction_scope = Some(scope);
        self
    }

    /// How long a tombstone is kept after its segment is sealed (with [`CleanupPolicy::Compact`]).
    pub fn tombstone_retention(mut self, retention: Duration) -> QueueBuilder {
        self.tombstone_retention = Some(retention);
        self
    }

    /// Share of removable bytes (1 to 100 percent) in sealed segments at which background compaction runs.
    pub fn compaction_dirty_percent(mut self, percent: u8) -> QueueBuilder {
        self.compaction_dirty_percent = Some(percent);
        self
    }

    /// Opt-in size limit: the oldest sealed segments are deleted while the log is larger than this, even if
    /// consumer groups have not consumed them (what is dropped is counted in stats and logged). Enforced per
    /// segment: the log may exceed it by up to one segment.
    pub fn retention_max_bytes(mut self, bytes: u64) -> QueueBuilder {
        self.retention_max_bytes = Some(bytes);
        self
    }

    /// Opt-in age limit: a sealed segment is deleted once it was sealed longer ago than this, even if consumer
    /// groups have not consumed it (counted in stats and logged). Age is append time, not message timestamps.
    pub fn retention_max_age(mut self, age: Duration) -> QueueBuilder {
        self.retention_max_age = Some(age);
        self
    }

    /// What open does with invalid bytes at the end of the log; see [`RecoveryMode`].
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> QueueBuilder {
        self.recovery_mode = mode;
        self
    }

    /// Collects appends, and the consumer groups' progress records (deliveries, acks), in buffers of up to `bytes`
    /// in this process, and writes each to the OS in one call when it fills, when a reader or consumer catches up
    /// with the buffered appends, on [`Queue::flush`] and [`Queue::close`], and at least every
    /// [`WRITE_BUFFER_LINGER`]. Only with [`Durability::None`] and [`Durability::Interval`] (with the others every
    /// append and ack is fsynced before it returns, and there is nothing to gain).
    ///
    /// Off (0) by default. The trade: many small appends and acks cost one system call together instead of one each
    /// (several times the rate for 100 B messages), but a process crash (`kill -9`, an abort), or an I/O error
    /// that poisons the queue, loses what the buffers hold: at most `bytes` each, and at most
    /// [`WRITE_BUFFER_LINGER`] of appends and acks. A full disk loses nothing: the buffer waits for space. Lost acks mean
    /// redeliveries (still at least once; nothing is skipped). Without it a process crash loses nothing that
    /// `append` or `ack` acknowledged. Readers and consumers see a buffered message at once (catching up writes the
    /// buffer out). Not stored in the manifest: it is this process's choice.
    pub fn write_buffer_bytes(mut self, bytes: usize) -> QueueBuilder {
        self.write_buffer_bytes = bytes;
        self
    }

    /// The file system to use: the real one by default; tests pass a [`FaultyStorage`](crate::storage::FaultyStorage).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> QueueBuilder {
        self.storage = storage;
        self
    }

    /// Settings from this builder over `stored` ones.
    pub(crate) fn settings_over(&self, stored: Settings) -> Settings {
        Settings {
            segment_bytes_max: self.segment_bytes_max.unwrap_or(stored.segment_bytes_max),
            message_bytes_max: self.message_bytes_max.unwrap_or(stored.message_bytes_max),
            durability: self.durability.unwrap_or(stored.durability),
            preallocation: self.preallocation.unwrap_or(stored.preallocation),
            ack_timeout_ms: self
                .ack_timeout
                .map_or(stored.ack_timeout_ms, |t| t.as_millis().min(u128::from(u64::MAX)) as u64),
            max_deliveries: self.max_deliveries.unwrap_or(stored.max_deliveries),
            cleanup: self.cleanup.unwrap_or(stored.cleanup),
            compaction_scope: self.compaction_scope.unwrap_or(stored.compaction_scope),
            tombstone_retention_ms: self.tombstone_retention.map_or(stored.tombstone_retention_ms, duration_ms),
            compaction_dirty_percent: self.compaction_dirty_percent.unwrap_or(stored.compaction_dirty_percent),
            retention_max_bytes: self.retention_max_bytes.or(stored.retention_max_bytes),
            retention_max_age_ms: self.retention_max_age.map(duration_ms).or(stored.retention_max_age_ms),
        }
    }

    /// Checks the settings that are not stored, against the ones that are.
    pub(crate) fn validate_runtime(&self, settings: &Settings) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidOption { option: "write_buffer_bytes", reason });
        if self.write_buffer_bytes > WRITE_BUFFER_BYTES_MAX {
            return invalid(format!("{} is above {WRITE_BUFFER_BYTES_MAX}", self.write_buffer_bytes));
        }
        if self.write_buffer_bytes > 0 && settings.durability.acknowledges_durable() {
            return invalid(format!(
                "a write buffer needs Durability::None or Interval; {:?} fsyncs every append before it returns",
                settings.durability
            ));
        }
        Ok(())
    }

    /// Opens (or creates) the queue: takes the lock, recovers, and starts background work.
    pub fn open(self) -> Result<Queue> {
        Queue::open_with(self)
    }
}
