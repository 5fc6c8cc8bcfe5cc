//! Every limit and default of walq, named with its unit. No imports from the rest of the crate: every layer may
//! read these, so they sit below all of them.

use std::time::Duration;

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

/// Longest dead-letter reason kept, in bytes of UTF-8: a longer one is cut at a character boundary.
pub const DEAD_LETTER_REASON_BYTES_MAX: usize = 1024;

/// Log bytes between two entries of a segment's sparse index: a lookup scans at most about this much.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;

/// Largest allowed [`QueueBuilder::write_buffer_bytes`](crate::QueueBuilder::write_buffer_bytes).
pub const WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How often the write buffer (see [`QueueBuilder::write_buffer_bytes`](crate::QueueBuilder::write_buffer_bytes)) is handed to the OS when it does not fill:
/// the longest an append waits there, and so the window of appends a process crash can lose.
pub const WRITE_BUFFER_LINGER: Duration = Duration::from_millis(5);

/// Shortest flush interval of [`Durability::Interval`](crate::Durability::Interval).
pub const INTERVAL_MIN: Duration = Duration::from_millis(1);

/// Longest flush interval of [`Durability::Interval`](crate::Durability::Interval).
pub const INTERVAL_MAX: Duration = Duration::from_secs(60);

/// Default time a consumer has to answer a delivery before it is handed to another.
pub const ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Longest allowed ack timeout.
pub const ACK_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// Default number of deliveries of a message before it is dead-lettered.
pub const MAX_DELIVERIES_DEFAULT: u32 = 5;

/// Default time a tombstone is kept after its segment is sealed, so that readers see the deletion.
pub const TOMBSTONE_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// Default share of removable bytes in sealed segments at which background compaction rewrites them.
pub const COMPACTION_DIRTY_PERCENT_DEFAULT: u8 = 50;

/// Default number of message ids producer deduplication remembers (the newest), when only a time is given.
pub const DEDUP_WINDOW_MESSAGES_DEFAULT: u64 = 100_000;

/// Most message ids producer deduplication may be set to remember: a bound on its memory and on the records an
/// open reads to rebuild it.
pub const DEDUP_WINDOW_MESSAGES_LIMIT: u64 = 1_000_000;

/// Longest message id, in bytes.
pub const DEDUP_ID_BYTES_MAX: usize = 256;
