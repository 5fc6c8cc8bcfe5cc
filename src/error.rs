//! The one error type of walq, and the kinds of corruption it reports.
//!
//! Every variant says what went wrong and, where there is one, what to do about it. Callers match on variants,
//! never on message strings.

use std::io;
use std::path::PathBuf;

/// What can go wrong in walq.
///
/// `#[non_exhaustive]`: later versions may add variants, so match with a wildcard arm.
/// ///
/// ```
/// use walq::{Error, Message, Queue};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// let queue = Queue::builder(temp.path()).message_bytes_max(1024).open()?;
/// match queue.append(Message::new(vec![0u8; 4096])) {
///     Err(Error::MessageTooLarge { size, max }) => assert!(size > max), // nothing was written
///     other => panic!("{other:?}"),
/// }
/// match Queue::open(temp.path()) {
///     Err(Error::Locked { .. }) => {} // one owner at a time, also within a process
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another handle (in this or another process) holds the queue's exclusive lock. Close it first; read-only
    /// inspection does not need the lock.
    #[error("queue {dir} is locked by another handle or process; close it first, or inspect without the lock")]
    Locked {
        /// The queue directory.
        dir: PathBuf,
    },

    /// The path is not a walq queue: it does not exist (where a queue must), is a file, is an empty directory
    /// (where a queue must exist), or holds files but no walq manifest. walq never writes into such a directory.
    #[error("{dir} is not a walq queue: {found}")]
    NotAQueue {
        /// The path that was given.
        dir: PathBuf,
        /// What is there instead, for people: "no such directory", "a file, not a directory", ...
        found: &'static str,
    },

    /// A file was written by a newer format version than this build of walq reads. Upgrade walq.
    #[error("format version {found} is newer than the supported version {supported}; upgrade walq to open it")]
    UnsupportedVersion {
        /// The version found on disk.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },

    /// A message is larger than the queue's `message_bytes_max`. Nothing was written.
    #[error("message of {size} bytes is larger than the limit of {max} bytes; raise message_bytes_max or split it")]
    MessageTooLarge {
        /// Encoded size of key, value and headers, in bytes.
        size: usize,
        /// The configured limit, in bytes.
        max: usize,
    },

    /// A message header breaks a limit (count, name length or value length). Nothing was written.
    #[error("invalid message header: {reason}")]
    InvalidHeader {
        /// Which limit was broken.
        reason: &'static str,
    },

    /// A consumer group name is not allowed. Nothing was created.
    #[error("invalid group name {name:?}: {reason}")]
    InvalidGroupName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A delivery's lease ended (it expired, or the delivery was answered) before this call; the message is up for
    /// delivery again. Acks are still accepted after a lease ends.
    #[error("the lease on offset {offset} has ended; the message will be delivered again")]
    LeaseExpired {
        /// The message's offset.
        offset: crate::Offset,
    },

    /// An ack came from a delivery whose lease had ended after the message was delivered again (by offset and
    /// [`LeaseToken`](crate::LeaseToken) through [`Group::ack`](crate::Group::ack): from any lease that is no
    /// longer current). Nothing was acked: the message is, or will be, delivered again, and that delivery
    /// answers for it.
    #[error("the lease on offset {offset} is no longer current: nothing was acked, the message's next delivery answers for it")]
    StaleLease {
        /// The message's offset.
        offset: crate::Offset,
    },

    /// A batch mixes messages whose ids producer deduplication has seen (within its window, or earlier in the
    /// same batch) with others, or repeats an earlier batch only in part: it cannot be answered with one first
    /// offset. Nothing was appended. A whole earlier batch sent again (every id, at its place) is answered with
    /// its first offset; a batch the window has partly forgotten (older ids leave it first) comes here too, so
    /// resend only messages known to be new, not every message not named here.
    #[error("messages at positions {positions:?} of the batch carry ids already appended (dedup window) or repeated in the batch; nothing was appended: resend only messages known to be new")]
    DuplicateIds {
        /// Positions in the batch of the messages whose ids were seen.
        positions: Vec<usize>,
    },

    /// [`Consumer::ack_all`](crate::Consumer::ack_all) acked every delivery but these, whose messages were delivered
    /// again after their leases ended (as [`Error::StaleLease`]).
    #[error("{} of the deliveries were delivered again after their leases ended and were not acked (offsets {offsets:?}); the others were acked", offsets.len())]
    StaleLeases {
        /// The offsets not acked, in increasing order.
        offsets: Vec<crate::Offset>,
    },

    /// [`Queue::reset_group`](crate::Queue::reset_group) was refused: deliveries of the group are in flight.
    /// Answer them (or drop them) first, so that no answer lands on the old position.
    #[error("consumer group {name:?} has {in_flight} deliveries in flight; answer them before a reset")]
    GroupBusy {
        /// The group's name.
        name: String,
        /// Deliveries leased now.
        in_flight: usize,
    },

    /// The consumer group was deleted through another handle.
    #[error("consumer group {name:?} was deleted")]
    GroupDeleted {
        /// The group's name.
        name: String,
    },

    /// A builder option is out of range or inconsistent with another. Nothing was created or changed.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's name, as in the builder.
        option: &'static str,
        /// Why it was rejected, with the allowed range.
        reason: String,
    },

    /// Stored bytes failed a check (checksum, magic, length, offset order). They are never returned as data.
    /// With the default recovery mode, open fails on corruption that is not a torn tail; see
    /// [`RecoveryMode`](crate::RecoveryMode) for a mode that salvages.
    #[error("corrupt data in {file} at byte {position}: {kind}")]
    Corrupt {
        /// The file holding the bad bytes.
        file: PathBuf,
        /// Byte position of the bad bytes in that file.
        position: u64,
        /// What check failed.
        kind: CorruptionKind,
    },

    /// The disk is full (ENOSPC). What failed did not happen and nothing is lost: an append was not acknowledged, a
    /// take handed out nothing, an ack or nack left the message leased. Reads still work, and every operation
    /// succeeds again once space is freed.
    #[error("disk full (no space left on device); free space, then retry (nothing was lost)")]
    DiskFull,

    /// A batch was appended only in part: its first `appended` messages have offsets from `first_offset` on and are
    /// acknowledged as the durability mode says (in `Sync` and `GroupCommit`: on disk); the others were not
    /// appended, because of `cause` (a full disk when the batch needed a new segment, usually). Retry with
    /// the messages from index `appended` on: retrying the whole batch would store its first part twice.
    #[error("only the first {appended} messages of the batch were appended (from offset {first_offset}): {cause}; retry the rest")]
    BatchIncomplete {
        /// The offset of the batch's first message.
        first_offset: crate::Offset,
        /// How many of the batch's messages were appended, from its start.
        appended: usize,
        /// Why the rest were not.
        cause: Box<Error>,
    },

    /// A durability operation (fsync) failed earlier. Its outcome is unknown, and retrying an fsync after a failure
    /// can falsely report success, so this handle acknowledges nothing more. Once the cause is fixed, call
    /// [`Queue::reopen`](crate::Queue::reopen) (it closes every clone and opens again with the same options):
    /// recovery then establishes what is on disk.
    #[error("queue is poisoned by an earlier failed fsync; reopen it to recover")]
    Poisoned,

    /// The queue was closed through another clone of its handle; or, from a consumer's `recv`, `try_recv` and
    /// their batch forms, it is shutting down ([`Queue::shutdown`](crate::Queue::shutdown)).
    #[error("queue is closed")]
    Closed,

    /// A group of this name does not exist ([`Queue::existing_group`](crate::Queue::existing_group)). Nothing was
    /// created: [`Queue::group`](crate::Queue::group) creates one; `walq groups DIR` lists the ones there are.
    #[error("consumer group {name:?} does not exist; create it with Queue::group, or check the name (walq groups DIR lists them)")]
    GroupNotFound {
        /// The name that was asked for.
        name: String,
    },

    /// A value could not be turned into JSON, or a stored value is not JSON of the type asked for (or is a
    /// tombstone). Nothing was written, and the delivery or record is unchanged.
    #[error("JSON value: {source}")]
    Json {
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// No process serves the queue in `dir` ([`RemoteQueue::connect`](crate::remote::RemoteQueue::connect)): nobody
    /// has it open (open it with [`Queue::open`](crate::Queue::open) instead), or its owner does not share it
    /// ([`QueueBuilder::sharing`](crate::QueueBuilder::sharing)), or the directory is missing.
    #[error("no process serves the queue in {dir} ({source}); open it directly, or have its owner share it")]
    NotServed {
        /// The queue directory.
        dir: PathBuf,
        /// Why the connection failed (no socket, nobody listening, ...).
        #[source]
        source: io::Error,
    },

    /// A process holds the queue in `dir` and its socket, but did not welcome this connection within `waited_ms`:
    /// it is stopped (`SIGSTOP`, a debugger) or hung. Nothing was sent. Resume or end that process (its lock and
    /// socket go with it), then open again.
    #[error("the owner of the queue in {dir} did not answer within {waited_ms} ms; it is stopped or hung")]
    OwnerNotAnswering {
        /// The queue directory.
        dir: PathBuf,
        /// How long the connection waited.
        waited_ms: u64,
    },

    /// The queue's owner refused this process's connection.
    #[error("the owner of the queue in {dir} refused the connection: {reason}")]
    Refused {
        /// The queue directory.
        dir: PathBuf,
        /// Why.
        reason: crate::remote::Refusal,
    },

    /// The connection to the queue's owner ended (the owner closed the queue, exited or died) before this call's
    /// reply came. The call may or may not have taken effect: an append may be stored, an answer may have landed;
    /// treat it as at-least-once. Nothing the owner acknowledged is lost, and the owner released the deliveries
    /// this connection held. Connect again (to the next owner).
    #[error("the connection to the owner of the queue in {dir} was lost; the call's outcome is unknown: reconnect")]
    ConnectionLost {
        /// The queue directory.
        dir: PathBuf,
    },

    /// The queue's owner sent bytes that break the protocol (a bug, or another program on the socket). The
    /// connection is closed: connect again.
    #[error("the queue's owner broke the protocol ({detail}); the connection is closed")]
    Protocol {
        /// What was wrong.
        detail: &'static str,
    },

    /// A batch is too large for one request to the queue's owner (more than 100,000 messages, or more bytes than
    /// a little over the largest message a queue allows). Nothing was sent: split it.
    #[error("a batch of {count} messages ({size_bytes} bytes encoded) is too large for one request; split it")]
    BatchTooLarge {
        /// Messages in the batch.
        count: usize,
        /// Its encoded size in bytes (0 when the count alone was too large).
        size_bytes: usize,
    },

    /// An operating-system I/O error that is none of the above.
    #[error("I/O error during {operation} on {path}: {source}")]
    Io {
        /// What walq was doing.
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Which check a corrupt region failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// A file's magic bytes are wrong: it is not the kind of file its name says.
    #[error("bad magic bytes")]
    BadMagic,
    /// A header or frame checksum does not match its bytes.
    #[error("checksum mismatch")]
    BadChecksum,
    /// A length field is impossible (too small, too large, or past the end of the file).
    #[error("impossible length")]
    BadLength,
    /// Fields that must agree do not (reserved bytes not zero, lengths that do not add up, unknown flags).
    #[error("inconsistent fields")]
    BadLayout,
    /// A frame's offset is not the one expected at its place (a misdirected or stale frame).
    #[error("unexpected offset")]
    BadOffset,
    /// A segment's header names another base offset than its file name.
    #[error("segment header does not match its file name")]
    WrongSegment,
    /// The data ends in the middle of a frame where a whole frame is required.
    #[error("truncated frame")]
    Truncated,
    /// A frame that was durable (a later frame proves it) is invalid: not a torn write but damage.
    #[error("damaged durable frame")]
    DamagedDurableFrame,
    /// The manifest could not be parsed.
    #[error("unreadable manifest")]
    BadManifest,
    /// A segment names a predecessor that is not there: a segment file in the middle of the log is missing (cleanup
    /// and limits only ever delete the oldest segments).
    #[error("a segment before this one is missing")]
    MissingSegment,
}

impl Error {
    /// Wraps an I/O error, turning ENOSPC into [`Error::DiskFull`].
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        if is_disk_full(&source) {
            return Error::DiskFull;
        }
        Error::Io { operation, path: path.into(), source }
    }

    /// Whether this is an I/O error for a file that does not exist (a segment cleanup unlinked meanwhile).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// `map_err` adapter: `file.sync_all().map_err(io_err("fsync segment", &path))`.
pub(crate) fn io_err<'a>(operation: &'static str, path: &'a std::path::Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |e| Error::io(operation, path, e)
}

/// True when an I/O error means the device has no space left.
pub(crate) fn is_disk_full(error: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    error.kind() == io::ErrorKind::StorageFull || error.raw_os_error() == Some(ENOSPC)
}

/// Result with walq's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What [`Error::NotAQueue`] says was found instead of a queue.
pub(crate) mod not_a_queue {
    /// The path does not exist.
    pub(crate) const MISSING: &str = "no such directory (only `Queue::open` and `walq produce` create a queue)";
    /// The path is a file.
    pub(crate) const FILE: &str = "a file, not a directory";
    /// The directory is empty.
    pub(crate) const EMPTY: &str = "an empty directory (nothing was ever written to it as a queue)";
    /// The directory holds something else.
    pub(crate) const FOREIGN: &str = "the directory holds files but no MANIFEST.json; walq will not touch it";
}
