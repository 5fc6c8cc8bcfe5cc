//! walq: a durable write-ahead-log queue engine, embedded as a library.
//!
//! Producers append messages (key, value, timestamp, headers) to segmented, checksummed log files; each message
//! gets a stable [`Offset`]. Durability is chosen per queue ([`Durability`]): an append reported durable is never
//! lost, whatever crashes. On open, recovery reads only the tail of the last segment, cuts what a crash tore, and
//! reports damage to durable data instead of serving it ([`RecoveryReport`], [`RecoveryMode`]).
//!
//! ```no_run
//! use walq::{Durability, Message, Offset, Queue};
//!
//! # fn main() -> walq::Result<()> {
//! let queue = Queue::builder("data/orders").durability(Durability::GroupCommit).open()?;
//! let offset = queue.append(Message::new(b"payload").key(b"order-17"))?;
//! for record in queue.read_from(Offset::EARLIEST)? {
//!     let record = record?;
//!     println!("{} {:?}", record.offset, record.value);
//! }
//! queue.close()?;
//! # let _ = offset;
//! # Ok(())
//! # }
//! ```
//!
//! The byte layout of every file is specified in FORMAT.md; the module map and invariants in ARCHITECTURE.md.
//! Data flows one way: [`Queue`] → `log` → `segment` / `index` → `record` (pure encoding) → [`storage`].

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod clock;
mod commit;
mod compaction;
mod dedup;
mod error;
mod group;
mod ids;
mod index;
pub mod inspect;
mod limits;
mod log;
mod maintenance;
mod manifest;
mod message;
mod nonblocking;
mod options;
mod queue;
mod reader;
mod record;
mod recovery;
#[cfg(feature = "nats")]
pub mod relay;
pub mod remote;
mod retention;
mod segment;
mod signal;
pub mod storage;
pub mod telemetry;

pub use builder::QueueBuilder;
pub use compaction::CompactionReport;
pub use dedup::DEDUP_ID_HEADER;
pub use error::{CorruptionKind, Error, Result};
pub use group::{
    Consumer, DeadLetter, Deliveries, Delivery, Group, GroupSnapshot, GroupStats, LeaseToken, Nacked, RetryBackoff,
    StartAt, GROUP_NAME_BYTES_MAX, RETRY_DELAY_MAX, RETRY_MULTIPLIER_MAX,
};
pub use limits::{
    ACK_TIMEOUT_DEFAULT, ACK_TIMEOUT_MAX, DEAD_LETTER_REASON_BYTES_MAX, DEDUP_ID_BYTES_MAX,
    DEDUP_WINDOW_MESSAGES_DEFAULT, DEDUP_WINDOW_MESSAGES_LIMIT, HEADERS_COUNT_MAX, HEADER_NAME_BYTES_MAX,
    INDEX_INTERVAL_BYTES, INTERVAL_MAX, INTERVAL_MIN, MAX_DELIVERIES_DEFAULT, MESSAGE_BYTES_DEFAULT,
    MESSAGE_BYTES_LIMIT, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_LIMIT, SEGMENT_BYTES_MIN, WRITE_BUFFER_BYTES_MAX,
    WRITE_BUFFER_LINGER,
};
pub use message::{Header, Message, Offset, Record, DELIVER_AT_HEADER};
pub use options::{
    CleanupPolicy, CompactionScope, Durability, Maintenance, Preallocation, RecoveryMode, SettingChange,
};
pub use queue::{Queue, ShutdownReport, Stats};
pub use reader::{Follow, Reader};
pub use recovery::{RecoveryReport, SkippedRange, Truncation};
pub use segment::FORMAT_VERSION;

/// Not part of the API, and may change in any release: the frame codec, exposed for `benches/record.rs` only (a
/// benchmark is a separate crate and sees nothing else).
#[doc(hidden)]
pub mod __bench {
    use crate::message::{AsParts, Message};
    use crate::record::{self, CrcSeed};

    /// The codec of one segment, as the log and readers hold it (the id's checksum state built once).
    #[derive(Debug)]
    pub struct Codec(CrcSeed);

    impl Codec {
        /// The codec of the segment with this id.
        pub fn new(segment_id: u64) -> Codec {
            Codec(CrcSeed::new(segment_id))
        }

        /// Appends the frame of `message` at `offset` to `out`, as an append writes it.
        pub fn encode_frame(&self, out: &mut Vec<u8>, offset: u64, message: &Message) {
            record::encode(out, &self.0, offset, 0, 0, message.parts());
        }

        /// Decodes (length, checksum, layout) and copies out the message of the frame at the start of `bytes`, as
        /// a reader does; returns the frame's length, or `None` for invalid bytes.
        pub fn decode_frame(&self, bytes: &[u8]) -> Option<(usize, crate::Record)> {
            record::decode(bytes, &self.0).ok().map(|frame| (frame.len_bytes, frame.to_record()))
        }
    }
}

/// Not part of the API, and may change in any release: the owner's protocol decoder, for the `remote_protocol`
/// fuzz target.
#[doc(hidden)]
pub mod __fuzz {
    /// Decodes `bytes` as one frame, both as a request and as a reply; never panics on any input (a request that
    /// decodes must encode back to itself).
    pub fn decode_remote_frame(bytes: &[u8]) {
        crate::remote::protocol::decode_any(bytes);
    }
}
