//! [`QueueBuilder`]: the options of `Queue::builder(dir)...open()`, laid over the settings a queue has stored.
//! Its `open` is in `queue.rs`: the builder knows nothing of the queue it opens, so the two do not import each
//! other.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::group::RetryBackoff;
use crate::limits::WRITE_BUFFER_BYTES_MAX;
use crate::options::{CleanupPolicy, CompactionScope, Durability, Maintenance, Preallocation, RecoveryMode, Settings};
use crate::storage::{FsStorage, Storage};

fn duration_ms(duration: Duration) -> u64 {
    duration.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Opens a queue: `Queue::builder(dir).durability(...).open()`.
///
/// Settings left unset keep the value stored in the queue's manifest (or the default, for a new queue); settings
/// given here replace the stored ones.
/// ///
/// ```
/// use std::time::Duration;
/// use walq::{Durability, Queue, RetryBackoff};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// let queue = Queue::builder(temp.path())
///     .segment_bytes_max(8 << 20)
///     .durability(Durability::GroupCommit) // Ok from an append means on disk
///     .ack_timeout(Duration::from_secs(30))
///     .max_deliveries(5)
///     .retry_backoff(RetryBackoff::exponential(Duration::from_millis(100), Duration::from_secs(60)))
///     .open()?;
/// assert_eq!(queue.durability(), Durability::GroupCommit);
/// assert!(queue.settings_changed().is_empty()); // a new queue replaces nothing
/// # Ok(()) }
/// ```
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
    /// `None`: keep the stored limit; `Some(None)`: remove it.
    pub(crate) retention_max_bytes: Option<Option<u64>>,
    /// `None`: keep the stored limit; `Some(None)`: remove it.
    pub(crate) retention_max_age: Option<Option<Duration>>,
    pub(crate) retention_max_messages: Option<Option<u64>>,
    pub(crate) dedup_window: Option<Option<Duration>>,
    pub(crate) dedup_window_messages: Option<Option<u64>>,
    pub(crate) recovery_mode: RecoveryMode,
    pub(crate) write_buffer_bytes: usize,
    pub(crate) max_ack_pending: Option<usize>,
    pub(crate) ordered_by_key: std::collections::BTreeSet<String>,
    pub(crate) retry_backoff: Option<RetryBackoff>,
    pub(crate) maintenance: Maintenance,
    pub(crate) sharing: crate::remote::Sharing,
    pub(crate) lock_wait: LockWait,
}

/// What an open does when the queue's lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockWait {
    /// Tries again for a moment (an owner closing as this open starts), then `Error::Locked`.
    Briefly,
    /// `Error::Locked` at once: a takeover race, whose losers connect to the winner instead.
    No,
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
            retention_max_messages: None,
            dedup_window: None,
            dedup_window_messages: None,
            recovery_mode: RecoveryMode::default(),
            write_buffer_bytes: 0,
            max_ack_pending: None,
            ordered_by_key: std::collections::BTreeSet::new(),
            retry_backoff: None,
            maintenance: Maintenance::default(),
            sharing: crate::remote::Sharing::default(),
            lock_wait: LockWait::Briefly,
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
        self.retention_max_bytes = Some(Some(bytes));
        self
    }

    /// Removes a size limit set before (limits are stored with the queue, so leaving this method out keeps it).
    pub fn remove_retention_max_bytes(mut self) -> QueueBuilder {
        self.retention_max_bytes = Some(None);
        self
    }

    /// Opt-in age limit: a sealed segment is deleted once it was sealed longer ago than this, even if consumer
    /// groups have not consumed it (counted in stats and logged). Age is append time, not message timestamps.
    pub fn retention_max_age(mut self, age: Duration) -> QueueBuilder {
        self.retention_max_age = Some(Some(age));
        self
    }

    /// Removes an age limit set before (limits are stored with the queue, so leaving this method out keeps it).
    pub fn remove_retention_max_age(mut self) -> QueueBuilder {
        self.retention_max_age = Some(None);
        self
    }

    /// Opt-in count limit (JetStream's `MaxMsgs`): the oldest sealed segments are deleted while the offsets from
    /// the oldest kept message to the log's end number more than this, even if consumer groups have not consumed
    /// them (counted in stats and logged). Offsets count, not surviving messages: gaps left by compaction count
    /// as messages. Enforced per segment: the log keeps at most this many, and fewer by up to one segment's worth
    /// (more only while the segment being written alone holds more). At least 1.
    pub fn retention_max_messages(mut self, messages: u64) -> QueueBuilder {
        self.retention_max_messages = Some(Some(messages));
        self
    }

    /// Removes a count limit set before (limits are stored with the queue, so leaving this method out keeps it).
    pub fn remove_retention_max_messages(mut self) -> QueueBuilder {
        self.retention_max_messages = Some(None);
        self
    }

    /// What open does with invalid bytes at the end of the log; see [`RecoveryMode`].
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> QueueBuilder {
        self.recovery_mode = mode;
        self
    }

    /// Collects appends, and the consumer groups' progress records (deliveries, acks), in buffers of up to `bytes`
    /// in this process, and writes each to the OS in one call when it fills, when a reader or consumer catches up
    /// with the buffered appends, on [`Queue::flush`](crate::Queue::flush) and [`Queue::close`](crate::Queue::close), and at least every
    /// [`WRITE_BUFFER_LINGER`](crate::WRITE_BUFFER_LINGER). Only with [`Durability::None`] and [`Durability::Interval`] (with the others every
    /// append and ack is fsynced before it returns, and there is nothing to gain).
    ///
    /// Off (0) by default. The trade: many small appends and acks cost one system call together instead of one each
    /// (several times the rate for 100 B messages), but a process crash (`kill -9`, an abort), or an I/O error
    /// that poisons the queue, loses what the buffers hold: at most `bytes` each, and at most
    /// [`WRITE_BUFFER_LINGER`](crate::WRITE_BUFFER_LINGER) of appends and acks. A full disk loses nothing: the buffer waits for space. Lost acks mean
    /// redeliveries (still at least once; nothing is skipped). Without it a process crash loses nothing that
    /// `append` or `ack` acknowledged. Readers and consumers see a buffered message at once (catching up writes the
    /// buffer out). Not stored in the manifest: it is this process's choice.
    pub fn write_buffer_bytes(mut self, bytes: usize) -> QueueBuilder {
        self.write_buffer_bytes = bytes;
        self
    }

    /// The most messages one consumer group has leased at once (JetStream's `MaxAckPending`): once that many are
    /// out unanswered, `recv` waits for an answer and `try_recv_batch` leases no more. A bound on the work a
    /// group's slow or stuck consumers can hold, and on what a redelivery storm can hand out. Unbounded by default;
    /// at least 1. Not stored in the manifest: it is this process's choice.
    pub fn max_ack_pending(mut self, messages: usize) -> QueueBuilder {
        self.max_ack_pending = Some(messages);
        self
    }

    /// Delivers the consumer group `group` in per-key order (SQS FIFO's message groups): at most one message per
    /// key is out at a time (leased, or waiting to be delivered again), and a key's messages go out in offset
    /// order, its redeliveries included, while different keys flow to different consumers in parallel. Messages
    /// without a key are not ordered. A key's next message goes out when the one before it is done: acked,
    /// dead-lettered (the messages behind a dead letter are not held for its redrive; a redriven message waits for
    /// its key to be free) or removed. Call once per group; other groups are unaffected.
    ///
    /// Memory follows the keys in flight and the messages waiting behind them, not the keys ever seen: at most
    /// 100,000 messages wait behind busy keys, and past that the group reads no new message, of any key, until
    /// their keys pass on: a key whose message is stuck (a consumer that holds it, a retry delay, a delivery time
    /// far ahead: [`Message::deliver_at_ms`](crate::Message::deliver_at_ms) holds its key too) holds back its own
    /// messages, and the rest of the group too once 100,000 of them wait. Nothing is stored for it: after a restart
    /// the group rebuilds the order from its progress. Not stored in the manifest: it is this process's choice.
    pub fn order_by_key(mut self, group: impl Into<String>) -> QueueBuilder {
        self.ordered_by_key.insert(group.into());
        self
    }

    /// How long a failed delivery waits before it is delivered again: after [`Delivery::retry`](crate::Delivery::retry),
    /// a dropped delivery and an expired lease (an explicit [`Delivery::nack`](crate::Delivery::nack) delay is kept).
    /// Without one (the default) such a message comes back at once, and a handler that fails fast uses up every
    /// attempt within microseconds. The wait is journaled, so a restart keeps it (for a drop or an expiry, once
    /// the group's next answer commits). Not stored in the manifest: it is this process's choice.
    pub fn retry_backoff(mut self, backoff: RetryBackoff) -> QueueBuilder {
        self.retry_backoff = Some(backoff);
        self
    }

    /// Who runs compaction, sweeps, size and age limits and index rebuilds: a background thread (the default), or
    /// the caller through [`Queue::compact`](crate::Queue::compact) and
    /// [`Queue::enforce_retention_limits`](crate::Queue::enforce_retention_limits). Not stored in the manifest: it
    /// is this process's choice.
    pub fn maintenance(mut self, maintenance: Maintenance) -> QueueBuilder {
        self.maintenance = maintenance;
        self
    }

    /// Whether other processes may use the queue through this one while it is open ([`crate::remote`]):
    /// [`Sharing::Serve`](crate::remote::Sharing::Serve) listens on `walq.sock` in the queue directory, for
    /// [`RemoteQueue::connect`](crate::remote::RemoteQueue::connect) of processes of this user. Not stored in the
    /// manifest: it is this process's choice. Default: [`Sharing::Private`](crate::remote::Sharing::Private).
    pub fn sharing(mut self, sharing: crate::remote::Sharing) -> QueueBuilder {
        self.sharing = sharing;
        self
    }

    /// Turns on producer deduplication (JetStream's duplicate window): a message with an id
    /// ([`Message::dedup_id`](crate::Message::dedup_id)) that was appended within `window` (by the messages'
    /// timestamps: the append time unless the producer set one) and among the newest
    /// [`dedup_window_messages`](QueueBuilder::dedup_window_messages) ids is not appended again: the append
    /// writes nothing and returns the first one's offset (acknowledged as the durability mode says). A batch sent
    /// again whole is answered with its first offset; one mixing seen and new ids is refused with
    /// [`Error::DuplicateIds`](crate::Error::DuplicateIds), appending nothing. The window survives restarts: the
    /// open reads back the newest `dedup_window_messages` records (a bounded cost). Stored in the manifest.
    pub fn dedup_window(mut self, window: Duration) -> QueueBuilder {
        self.dedup_window = Some(Some(window));
        self
    }

    /// How many ids deduplication remembers at most (the newest); default
    /// [`DEDUP_WINDOW_MESSAGES_DEFAULT`](crate::DEDUP_WINDOW_MESSAGES_DEFAULT), at most
    /// [`DEDUP_WINDOW_MESSAGES_LIMIT`](crate::DEDUP_WINDOW_MESSAGES_LIMIT): a bound on the window's memory and on
    /// what an open reads to rebuild it. Stored in the manifest.
    pub fn dedup_window_messages(mut self, messages: u64) -> QueueBuilder {
        self.dedup_window_messages = Some(Some(messages));
        self
    }

    /// Turns producer deduplication off (ids stay as headers), forgetting its count too.
    pub fn remove_dedup_window(mut self) -> QueueBuilder {
        self.dedup_window = Some(None);
        self.dedup_window_messages = Some(None);
        self
    }

    /// The file system to use: the real one by default; crash and fault tests pass the fault model
    /// (`walq::storage::FaultyStorage`, built with the cargo feature `fault-injection`).
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
            retention_max_bytes: self.retention_max_bytes.unwrap_or(stored.retention_max_bytes),
            retention_max_age_ms: self
                .retention_max_age
                .map_or(stored.retention_max_age_ms, |age| age.map(duration_ms)),
            retention_max_messages: self.retention_max_messages.unwrap_or(stored.retention_max_messages),
            dedup_window_ms: self.dedup_window.map_or(stored.dedup_window_ms, |window| window.map(duration_ms)),
            dedup_window_messages: self.dedup_window_messages.unwrap_or(stored.dedup_window_messages),
        }
    }

    /// Checks the settings that are not stored, against the ones that are.
    pub(crate) fn validate_runtime(&self, settings: &Settings) -> Result<()> {
        if let Some(backoff) = &self.retry_backoff {
            backoff.validate()?;
        }
        for name in &self.ordered_by_key {
            crate::group::validate_name(name)?;
        }
        if self.max_ack_pending == Some(0) {
            let reason = "0 would never deliver anything; the least is 1".to_string();
            return Err(Error::InvalidOption { option: "max_ack_pending", reason });
        }
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
}
