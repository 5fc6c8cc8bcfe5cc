//! Consumer groups: at-least-once delivery with persisted progress, competing consumers, leases, redelivery and
//! dead letters.
//!
//! Each group has a journal (`groups/<name>.journal`, see `journal`) and an in-memory state (see `state`). Semantics,
//! precisely:
//! - Messages are handed out lowest offset first; messages to deliver again (dropped, nacked, expired, redriven) go
//!   before new ones. Each message is leased to one consumer at a time.
//! - `ack` records the message as done; it returns once the journal record is acknowledged as the queue's
//!   durability mode says (in `Sync` and `GroupCommit`: on disk).
//! - A lease ends without an ack when its `ack_timeout` passes, when the `Delivery` is dropped, or on `nack(delay)`;
//!   the message is then delivered again (after the delay for a nack), to any consumer of the group.
//! - Each hand-out is journaled before the consumer gets the message, so attempt counts survive a process crash
//!   (after a power failure they may be lower by the hand-outs of the last unsynced moments). A message whose
//!   `max_deliveries`-th attempt fails is dead-lettered: kept, listed by `dead_letters`, put back by `redrive`.
//! - After a restart, every message that is not durably acked (or dead-lettered) is delivered again, with its
//!   attempt count carried over. No durably acked message is delivered again. No message is skipped.

mod attempts;
mod backoff;
mod consumer;
mod held;
mod journal;
mod key_order;
mod notes;
mod ranges;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use backoff::{RetryBackoff, RETRY_DELAY_MAX, RETRY_MULTIPLIER_MAX};
use consumer::Take;
pub(crate) use consumer::{ack_all_by_group, ack_all_by_group_async};
pub use consumer::{Consumer, Deliveries, Delivery};
use journal::{Entry, Journal, JournalMode};
use key_order::{Admit, KeyOrder};
use notes::{notes_path, Note, NoteSync, Notes};
use state::GroupState;

use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::message::{Offset, Record};
use crate::reader::{KeepOpen, Reader};
use crate::retention::{FloorListener, RetentionSource};
use crate::signal::Signal;
use crate::storage::Storage;

/// How long a message to redeliver whose read failed (an I/O error, damage) waits before it is read again.
const REDELIVERY_READ_RETRY: Duration = Duration::from_secs(1);

/// Most messages waiting for a time at once (nacked with a delay, retried after a backoff, or delivered later by
/// their own time): past it the group reads no new messages until some come due.
const HELD_MAX: usize = 100_000;

/// Most deliveries a take reserves room for at once (a larger batch grows its vector as it fills): a take of
/// `usize::MAX` (a client's "all you have") must not allocate for that many.
const TAKE_RESERVE_MAX: usize = 1024;

/// Longest a delayed message is held before its time is checked again (an `Instant` that far ahead is safe to
/// compute; a delivery time years away is read again then).
const HOLD_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// The subdirectory of a queue that holds the group journals.
pub(crate) const GROUPS_DIR: &str = "groups";
/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 64;
const JOURNAL_SUFFIX: &str = ".journal";

/// Checks a group name: 1 to [`GROUP_NAME_BYTES_MAX`] bytes of ASCII letters, digits, `-`, `_` and `.`, not
/// starting with `.` (so it is a plain file name on every file system, never `..` or hidden).
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > GROUP_NAME_BYTES_MAX {
        Some("longer than GROUP_NAME_BYTES_MAX (64) bytes")
    } else if name.starts_with('.') {
        Some("starts with '.'")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidGroupName { name: name.to_string(), reason }),
        None => Ok(()),
    }
}

/// Where a group's dead-letter reasons are kept (see `notes`).
pub(crate) fn dead_letter_notes_path(queue_dir: &Path, name: &str) -> PathBuf {
    notes_path(queue_dir, name)
}

/// Reads a group's dead-letter notes without changing them; returns the bytes after the last valid record.
pub(crate) fn read_dead_letter_notes(storage: &dyn Storage, path: &Path) -> Result<u64> {
    notes::read(storage, path).map(|replayed| replayed.invalid_bytes)
}

pub(crate) fn journal_path(queue_dir: &Path, name: &str) -> PathBuf {
    queue_dir.join(GROUPS_DIR).join(format!("{name}{JOURNAL_SUFFIX}"))
}

/// The names of the groups stored in a queue directory (leftover temporary files are removed).
pub(crate) fn stored_names(storage: &dyn Storage, queue_dir: &Path) -> Result<Vec<String>> {
    let dir = queue_dir.join(GROUPS_DIR);
    let entries = match storage.list_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list groups", &dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        if entry.ends_with(".tmp") {
            let path = dir.join(&entry);
            storage.remove_file(&path).map_err(|e| Error::io("remove leftover", &path, e))?;
        } else if let Some(name) = entry.strip_suffix(JOURNAL_SUFFIX).filter(|n| validate_name(n).is_ok()) {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// A group's persisted state, read without opening the queue (for `walq groups` and `walq verify`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct GroupSnapshot {
    /// The group's name.
    pub name: String,
    /// Every offset below this is acked or dead-lettered.
    pub ack_floor: Offset,
    /// Messages from the floor up to `log_end` not yet done.
    pub lag: u64,
    /// Messages delivered at least once and not done (in flight, or waiting for redelivery).
    pub delivered_not_acked: usize,
    /// The dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Size of the journal file.
    pub journal_bytes: u64,
    /// Bytes after the journal's last valid record (a torn tail, cut on the next open).
    pub torn_tail_bytes: u64,
    /// Why the journal cannot be read, if it cannot (the other fields are then zero): the queue opens without this
    /// group, which answers `Error::Corrupt` until it is deleted (`walq groups DIR --delete NAME`).
    pub damage: Option<String>,
}

impl GroupSnapshot {
    /// The snapshot of a group whose journal is damaged.
    pub(crate) fn damaged(name: &str, journal_bytes: u64, error: &Error) -> GroupSnapshot {
        GroupSnapshot {
            name: name.to_string(),
            ack_floor: Offset(0),
            lag: 0,
            delivered_not_acked: 0,
            dead_letters: Vec::new(),
            journal_bytes,
            torn_tail_bytes: 0,
            damage: Some(error.to_string()),
        }
    }
}

/// Reads and replays a group's journal without changing it.
pub(crate) fn snapshot(storage: &dyn Storage, queue_dir: &Path, name: &str, log_end: u64) -> Result<GroupSnapshot> {
    let path = journal_path(queue_dir, name);
    let file = storage
        .open_file(&path, crate::storage::OpenMode::ReadOnly)
        .map_err(|e| Error::io("open journal", &path, e))?;
    let len = file.len_bytes().map_err(|e| Error::io("read journal length", &path, e))?;
    if len > journal::JOURNAL_BYTES_LIMIT {
        // What a sparse or damaged file's length claims is not allocated (the engine refuses it on open too).
        return Err(Error::Corrupt { file: path, position: 0, kind: crate::error::CorruptionKind::BadLength });
    }
    let bytes =
        crate::storage::read_range(file.as_ref(), 0, len as usize).map_err(|e| Error::io("read journal", &path, e))?;
    let replayed = journal::replay(&bytes, &path)?;
    let state = GroupState::replay(&replayed.entries);
    // Notes are advisory: a damaged notes file shows as dead letters without reasons (`walq verify` reports it).
    let notes = notes::read(storage, &notes_path(queue_dir, name)).map(|replayed| replayed.notes).unwrap_or_default();
    let floor = state.floor();
    let lag = log_end.saturating_sub(floor).saturating_sub(state.done_between(floor, log_end));
    Ok(GroupSnapshot {
        name: name.to_string(),
        ack_floor: Offset(floor),
        lag,
        delivered_not_acked: state.delivered_not_done(),
        dead_letters: state.dead_letters().map(|(o, attempts)| DeadLetter::new(o, attempts, notes.get(&o))).collect(),
        journal_bytes: len,
        torn_tail_bytes: replayed.torn_bytes,
        damage: None,
    })
}

/// The wall-clock time (ms) a wait of `delay` from now ends at: what a `Delayed` record holds.
fn not_before_ms(delay: Duration) -> u64 {
    now_ms().saturating_add(delay.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// Settings every group of a queue shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupConfig {
    pub(crate) ack_timeout: Duration,
    pub(crate) max_deliveries: u32,
    pub(crate) skip_corrupt: bool,
    /// The most messages leased at once (`QueueBuilder::max_ack_pending`).
    pub(crate) max_ack_pending: usize,
    /// How long a failed delivery waits before it is delivered again (`QueueBuilder::retry_backoff`); at once
    /// without one.
    pub(crate) retry_backoff: Option<RetryBackoff>,
}

/// What became of a message its consumer gave back: `nack`, `retry` or `dead_letter`.
///
/// One rule for every answer on a lease that has ended: `nack`, `retry` and `dead_letter` change nothing and say
/// [`Nacked::LeaseEnded`]; `ack` still counts (the work was done) unless the message was delivered again meanwhile
/// ([`Error::StaleLease`]); `extend_lease` fails with
/// [`Error::LeaseExpired`] (its purpose, keeping the message, failed). A lease ends at its deadline, whether or
/// not another call has noticed yet. `LeaseEnded` is an answer, not an error: a caller that must know whether its
/// answer took effect checks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nacked {
    /// It is delivered again (after the delay, if any).
    Retry,
    /// It is a dead letter now: `dead_letter` was called, or that was its last allowed attempt
    /// (`max_deliveries`).
    DeadLettered,
    /// This delivery's lease was no longer current (it expired, a limit deleted the message, `Queue::shutdown`
    /// gave it back, or it went to another consumer): the answer changed nothing.
    LeaseEnded,
}

/// A dead-lettered message: which, how often it was tried, and why and when it was set aside.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message's offset (read it with [`Queue::get`](crate::Queue::get)).
    pub offset: Offset,
    /// How many times it was delivered.
    pub attempts: u32,
    /// Why: the text given to [`Delivery::dead_letter_with`], or one walq wrote (how many attempts failed, how
    /// the last one ended, and the last error given to [`Delivery::fail`]). `None` for a dead letter whose note
    /// was lost (written by a walq before notes, or cut by a crash in `None` and `Interval` durability).
    pub reason: Option<String>,
    /// When it was dead-lettered, in milliseconds since the Unix epoch (`None` as for `reason`).
    pub dead_lettered_at_ms: Option<u64>,
}

impl DeadLetter {
    fn new(offset: u64, attempts: u32, note: Option<&Note>) -> DeadLetter {
        DeadLetter {
            offset: Offset(offset),
            attempts,
            reason: note.map(|note| note.reason.clone()),
            dead_lettered_at_ms: note.map(|note| note.at_ms),
        }
    }
}

/// How a failed attempt ended: what an automatic dead-letter reason says of the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Nacked,
    Retried,
    /// `Delivery::fail`: its error text is in `Locked::errors`.
    Failed,
    Dropped,
    Expired,
}

impl Failure {
    fn describe(self) -> &'static str {
        match self {
            Failure::Nacked => "was nacked",
            Failure::Retried => "was retried",
            Failure::Failed => "failed",
            Failure::Dropped => "was dropped unanswered",
            Failure::Expired => "was not answered within the ack timeout",
        }
    }
}

/// Progress and health of one group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct GroupStats {
    /// The group's name.
    pub name: String,
    /// Every offset below this is acked or dead-lettered (except redriven ones).
    pub ack_floor: Offset,
    /// Visible messages not yet done.
    pub lag: u64,
    /// Messages leased to a consumer now.
    pub in_flight: usize,
    /// Hand-outs since open.
    pub deliveries: u64,
    /// Hand-outs since open that were not a message's first.
    pub redeliveries: u64,
    /// Dead letters stored.
    pub dead_letters: usize,
    /// Age of the oldest message not yet done, from its timestamp, if there is one.
    pub oldest_unacked_age_ms: Option<u64>,
    /// Journal fsyncs since open.
    pub fsyncs: u64,
    /// Messages acked since open.
    pub acked: u64,
    /// Failed attempts answered by `nack`, `retry` or `fail` since open (those that ended in a dead letter
    /// included).
    pub nacked: u64,
    /// Deliveries dropped unanswered since open (each a failed attempt).
    pub dropped: u64,
    /// Leases found expired since open (each a failed attempt): by a take, an answer or a shutdown, not by
    /// `stats()`, which changes nothing.
    pub expired: u64,
    /// Messages dead-lettered since open: by `dead_letter`, or after their last allowed attempt.
    pub dead_lettered: u64,
    /// Dead letters ended for good by [`Group::discard`] since open.
    pub discarded: u64,
}

/// A named consumer group. Cheap to clone; every handle of the same name shares one state.
/// ///
/// ```
/// use walq::{Message, Queue};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// let queue = Queue::builder(temp.path()).max_deliveries(1).open()?;
/// queue.append(Message::new("job"))?;
/// let billing = queue.group("billing")?; // created and persisted on first use
/// billing.consumer().try_recv()?.unwrap().dead_letter_with("no such customer")?;
/// let dead = billing.dead_letters();
/// assert_eq!(dead[0].reason.as_deref(), Some("no such customer"));
/// billing.redrive(dead[0].offset)?; // delivered again, before new messages
/// assert_eq!(queue.existing_group("billing")?.stats().dead_letters, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Group {
    pub(crate) inner: Arc<GroupInner>,
    /// Keeps the queue open while this handle lives.
    pub(crate) queue: KeepOpen,
}

/// One delivery of one message (its lease), as [`Group::ack`] and the other answers by offset take it: an answer
/// made away from the [`Delivery`] (another thread, another process, after a restart of the worker) presents it,
/// and an answer whose lease ended after the message was delivered again is refused instead of answering for the
/// new delivery. Tokens from an earlier open of the queue are stale. Across processes, send
/// [`to_u128`](LeaseToken::to_u128) (or its `Display`, 32 hex digits). A token fences; it does not authenticate:
/// lease ids are sequential, so whoever can call [`Group::ack`] can name another lease of the group.
///
/// ```
/// # fn main() -> walq::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let queue = walq::Queue::open(dir.path())?;
/// queue.append(walq::Message::new("job"))?;
/// let group = queue.group("workers")?;
/// let delivery = group.consumer().try_recv()?.unwrap();
/// let (offset, token) = (delivery.offset(), delivery.token());
/// std::mem::forget(delivery); // say, the work goes on elsewhere with (offset, token)
/// group.ack(offset, walq::LeaseToken::from_u128(token.to_u128()))?;
/// assert_eq!(group.ack_floor(), walq::Offset(1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken {
    epoch: u64,
    lease_id: u64,
}

impl LeaseToken {
    /// The token as one number, to send to another process.
    pub fn to_u128(self) -> u128 {
        u128::from(self.epoch) << 64 | u128::from(self.lease_id)
    }

    /// The token a [`to_u128`](LeaseToken::to_u128) gave. Any number is a token; one that names no current
    /// lease is stale.
    pub fn from_u128(value: u128) -> LeaseToken {
        LeaseToken { epoch: (value >> 64) as u64, lease_id: value as u64 }
    }
}

impl std::fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.to_u128())
    }
}

impl Group {
    /// Acks `offset` for the delivery whose [`token`](Delivery::token) this is: as [`Delivery::ack`], for an ack
    /// made away from the delivery (see [`LeaseToken`]). Refused with [`Error::StaleLease`] unless that lease is
    /// current (a lease past its deadline has ended, noticed or not); an offset already acked or dead-lettered is
    /// `Ok`, nothing to do.
    pub fn ack(&self, offset: Offset, token: LeaseToken) -> Result<()> {
        self.inner.ack(offset.0, self.inner.lease_id_of(token), LateAck::Refused)
    }

    /// Gives `offset` back for the delivery whose token this is, as [`Delivery::nack`] does:
    /// [`Nacked::LeaseEnded`] (nothing changed) unless that lease is current.
    pub fn nack(&self, offset: Offset, token: LeaseToken, delay: Duration) -> Result<Nacked> {
        self.inner.nack(offset.0, self.inner.lease_id_of(token), Some(delay), None)
    }

    /// Restarts the lease's `ack_timeout` for the delivery whose token this is, as [`Delivery::extend_lease`]
    /// does: [`Error::LeaseExpired`] unless that lease is current.
    pub fn extend_lease(&self, offset: Offset, token: LeaseToken) -> Result<()> {
        self.inner.extend_lease(offset.0, self.inner.lease_id_of(token))
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A new consumer. Consumers of one group compete: each message is leased to one of them at a time.
    pub fn consumer(&self) -> Consumer {
        Consumer::new(self.inner.clone(), self.queue.clone())
    }

    /// Every offset below this is acked or dead-lettered.
    pub fn ack_floor(&self) -> Offset {
        Offset(self.inner.lock().state.floor())
    }

    /// The dead letters, lowest offset first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        let locked = self.inner.lock();
        let notes = &locked.notes;
        locked
            .state
            .dead_letters()
            .map(|(offset, attempts)| DeadLetter::new(offset, attempts, notes.get(offset)))
            .collect()
    }

    /// Puts a dead letter back: it is delivered again (before new messages), its attempt count reset. Returns
    /// `false` if `offset` is not a dead letter of this group.
    pub fn redrive(&self, offset: Offset) -> Result<bool> {
        self.inner.redrive(offset.0)
    }

    /// Ends a dead letter for good, as if it had been acked: it is no longer listed, and its segment can be
    /// deleted once nothing else holds it (dead letters hold their segments under `DeleteConsumed`, to be read
    /// with [`Queue::get`](crate::Queue::get) and redriven). Journaled and committed as an ack is. Returns `false`
    /// if `offset` is not a dead letter of this group.
    pub fn discard(&self, offset: Offset) -> Result<bool> {
        self.inner.discard(offset.0)
    }

    /// Progress and health: a snapshot of counts and running counters, read without changing anything.
    pub fn stats(&self) -> GroupStats {
        self.inner.stats()
    }
}

/// Running counters since open, read by `stats()` without the group's lock.
#[derive(Debug, Default)]
struct GroupCounters {
    deliveries: AtomicU64,
    redeliveries: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    dropped: AtomicU64,
    expired: AtomicU64,
    dead_lettered: AtomicU64,
    discarded: AtomicU64,
}

impl GroupCounters {
    fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Locked {
    state: GroupState,
    /// Reads new messages, from `state.next_fresh()` on.
    fresh: Option<Reader>,
    /// Why each dead letter was set aside.
    notes: Notes,
    /// The last error text given to `Delivery::fail` for each message not yet done, for its dead-letter reason.
    /// In memory only; removed when the message is done. At most one bounded text per failing message.
    errors: BTreeMap<u64, String>,
    /// Per-key order (`QueueBuilder::order_by_key`); `None`: messages go out in offset order, keys aside.
    keys: Option<KeyOrder>,
}

/// An answer journaled and applied, not yet acknowledged: the journal sequence number to commit, and the floor to
/// tell cleanup about once it is.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub(super) struct Recorded {
    seq: Option<u64>,
    floor: Option<u64>,
}

impl Recorded {
    const NOTHING: Recorded = Recorded { seq: None, floor: None };
}

/// The group's lock; when it is released, the state's invariants are checked (`debug_assertions` only): every
/// operation must leave the state whole, whichever way it returns.
struct CheckedGuard<'a>(MutexGuard<'a, Locked>);

impl std::ops::Deref for CheckedGuard<'_> {
    type Target = Locked;
    fn deref(&self) -> &Locked {
        &self.0
    }
}

impl std::ops::DerefMut for CheckedGuard<'_> {
    fn deref_mut(&mut self) -> &mut Locked {
        &mut self.0
    }
}

impl Drop for CheckedGuard<'_> {
    fn drop(&mut self) {
        self.0.state.check_invariants();
        if let Some(keys) = &self.0.keys {
            keys.check_invariants();
        }
    }
}

/// The shared state of one group.
#[derive(Debug)]
pub(crate) struct GroupInner {
    name: String,
    log: Arc<Log>,
    journal: Journal,
    locked: Mutex<Locked>,
    config: GroupConfig,
    /// Told when an answer moved the floor (`retention`): the queue's cleanup, without this module knowing it.
    floor_moved: FloorListener,
    signal: Arc<Signal>,
    deleted: AtomicBool,
    counters: GroupCounters,
    /// Published by a checkpoint for as long as it holds the lock: what [`GroupInner::stats`] reads meanwhile
    /// instead of waiting for the rewrite (the state cannot change while the lock is held, so it is exact).
    during_checkpoint: Mutex<Option<StateCounts>>,
    /// Spreads this group's retry waits apart from other groups' (see `RetryBackoff::delay`).
    jitter_seed: u64,
    /// Random per open of the group, drawn again by each reset: in every [`LeaseToken`], so that tokens of an
    /// earlier open (whose lease ids start again at 1) or from before a reset are stale.
    epoch: AtomicU64,
    /// See [`GroupContext::syncer`].
    syncer: Arc<crate::nonblocking::Syncer>,
}

/// The offset `start` names in the log now: clamped to the stored messages.
fn start_floor(log: &Arc<Log>, start: StartAt, skip_corrupt: bool) -> Result<u64> {
    if let StartAt::Time(time_ms) = start {
        // The first message at or after the time; past every one readers see, where they end (appends not yet
        // acknowledged come after: they are delivered).
        return Ok(match crate::reader::offset_for_time(log, time_ms, skip_corrupt)? {
            Ok(offset) => offset.0,
            Err(end) => end,
        });
    }
    let state = log.lock();
    let (first, end) = (log.first_offset(&state), state.active.next_offset);
    Ok(match start {
        StartAt::Earliest => first,
        StartAt::Latest => end,
        StartAt::Offset(offset) => offset.0.clamp(first, end),
        StartAt::Time(_) => unreachable!("answered above"),
    })
}

/// `Ok`, or [`Error::StaleLeases`] naming `stale`.
pub(super) fn stale_error(stale: Vec<Offset>) -> Result<()> {
    if stale.is_empty() {
        Ok(())
    } else {
        Err(Error::StaleLeases { offsets: stale })
    }
}

/// A lease id no lease has (they start at 1): what a token of another open of the group, or from before a reset,
/// stands for.
const NO_LEASE: u64 = 0;

/// Where a new consumer group starts ([`Queue::group_starting_at`](crate::Queue::group_starting_at)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest stored message (what [`Queue::group`](crate::Queue::group) does).
    #[default]
    Earliest,
    /// The next message appended: nothing stored now is delivered.
    Latest,
    /// This offset, clamped to the stored messages (below the oldest: the oldest; past the end: the end).
    Offset(Offset),
    /// The first stored message whose timestamp is at or after this time (milliseconds since the Unix epoch), as
    /// [`Queue::offset_for_time`](crate::Queue::offset_for_time) finds it; the end if none is that late.
    Time(u64),
}

/// What an ack whose lease has ended does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LateAck {
    /// It counts (the work was done), unless the message was delivered again meanwhile: a [`Delivery`]'s ack.
    Counts,
    /// It is refused: an ack by offset and token ([`Group::ack`]), which nothing else ties to the message.
    Refused,
}

/// What [`GroupInner::stats`] reads of the state, taken at once under the group's lock.
#[derive(Debug, Clone, Copy)]
struct StateCounts {
    floor: u64,
    lowest_needed: u64,
    /// Dead letters put back below the floor: not done, each counts in the lag.
    redriven: u64,
    /// The log's visible end when these were taken (no offset at or above it can be done: only delivered messages
    /// are answered, and compaction and sweeps remove only below it).
    end: u64,
    /// Acked or dead-lettered offsets in `floor..end`.
    done_above_floor: u64,
    in_flight: usize,
    dead_letters: usize,
}

impl StateCounts {
    fn of(state: &GroupState, end: u64, now: Instant) -> StateCounts {
        let floor = state.floor();
        StateCounts {
            floor,
            lowest_needed: state.lowest_needed(),
            redriven: state.redriven_count() as u64,
            end,
            done_above_floor: state.done_between(floor, end),
            in_flight: state.in_flight_at(now),
            dead_letters: state.dead_letters().count(),
        }
    }

    /// Messages not yet done below `end`, or below the end these were taken at if that is later (a checkpoint
    /// may have published them after the caller read `end`).
    fn lag(&self, end: u64) -> u64 {
        let end = end.max(self.end);
        let not_done = end.saturating_sub(self.floor).saturating_sub(self.done_above_floor);
        not_done + self.redriven
    }
}

/// What the group layer needs from the queue to open a group.
#[derive(Debug, Clone)]
pub(crate) struct GroupContext {
    pub(crate) queue_dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) log: Arc<Log>,
    pub(crate) signal: Arc<Signal>,
    pub(crate) floor_moved: FloorListener,
    pub(crate) config: GroupConfig,
    /// The groups that deliver in per-key order (`QueueBuilder::order_by_key`).
    pub(crate) ordered_by_key: Arc<std::collections::BTreeSet<String>>,
    /// Waits for the journals' durability on behalf of the async API: shared by the queue's groups, apart from the
    /// log's (an answer's fsync and an append's run side by side).
    pub(crate) syncer: Arc<crate::nonblocking::Syncer>,
}

impl GroupContext {
    fn journal_mode(&self) -> JournalMode {
        JournalMode { durability: self.log.settings.durability, buffer_bytes: self.log.write_buffer_bytes }
    }

    /// Notes are fsynced where answers are: a durable dead letter has a durable reason.
    fn note_sync(&self) -> NoteSync {
        match self.log.settings.durability {
            crate::options::Durability::Sync | crate::options::Durability::GroupCommit => NoteSync::Fsync,
            _ => NoteSync::Written,
        }
    }
}

impl GroupInner {
    /// Creates a new group starting at `start` (clamped to the stored messages).
    pub(crate) fn create(context: &GroupContext, name: &str, start: StartAt) -> Result<Arc<GroupInner>> {
        // First, before any file: a lookup by time can fail (a damaged segment) and must leave nothing behind.
        let floor = start_floor(&context.log, start, context.config.skip_corrupt)?;
        let dir = context.queue_dir.join(GROUPS_DIR);
        context.storage.create_dir_all(&dir).map_err(|e| Error::io("create groups directory", &dir, e))?;
        context
            .storage
            .sync_dir(&context.queue_dir)
            .map_err(|e| Error::io("fsync directory", &context.queue_dir, e))?;
        // A leftover of a deleted group of this name goes first: if that fails, no journal exists to bring the
        // group back on the next open.
        let notes = Notes::create(context.storage.clone(), notes_path(&context.queue_dir, name), context.note_sync())?;
        let path = journal_path(&context.queue_dir, name);
        let journal = Journal::create(
            context.storage.clone(),
            path,
            context.journal_mode(),
            context.signal.clone(),
            &[Entry::Floor(floor)],
        )?;
        tracing::info!(group = name, floor, "created consumer group");
        Ok(GroupInner::assemble(context, name, journal, GroupState::new(floor), notes))
    }

    /// Opens a stored group: replays its journal, and clamps it to the log's end.
    pub(crate) fn open(context: &GroupContext, name: &str) -> Result<Arc<GroupInner>> {
        let path = journal_path(&context.queue_dir, name);
        let (journal, entries, first_format) =
            Journal::open(context.storage.clone(), path, context.journal_mode(), context.signal.clone())?;
        let mut state = GroupState::replay(&entries);
        let log_end = context.log.lock().active.next_offset;
        // Clamped before the delays are scheduled: a delay of an offset a crash lost from the log would come due
        // as a redelivery of nothing (recorded Gone), and the message appended later at that offset be skipped.
        let clamped = state.clamp_to(log_end);
        state.restore_delays(Instant::now(), now_ms());
        if clamped {
            // The log lost unsynced appends that the group had seen (possible only without durable appends).
            tracing::warn!(group = name, log_end, "group state was ahead of the log; clamped to its end");
        }
        if clamped || first_format {
            // A journal of the first format is migrated here, before any record of the current format is written.
            journal.checkpoint(&state.checkpoint_entries())?;
        }
        let path = notes_path(&context.queue_dir, name);
        let notes = Notes::open(context.storage.clone(), path, context.note_sync(), |offset| state.is_dead(offset));
        Ok(GroupInner::assemble(context, name, journal, state, notes))
    }

    fn assemble(
        context: &GroupContext,
        name: &str,
        journal: Journal,
        state: GroupState,
        notes: Notes,
    ) -> Arc<GroupInner> {
        Arc::new(GroupInner {
            name: name.to_string(),
            log: context.log.clone(),
            journal,
            locked: Mutex::new(Locked {
                state,
                fresh: None,
                notes,
                errors: BTreeMap::new(),
                keys: context.ordered_by_key.contains(name).then(KeyOrder::default),
            }),
            config: context.config,
            floor_moved: context.floor_moved.clone(),
            signal: context.signal.clone(),
            syncer: context.syncer.clone(),
            deleted: AtomicBool::new(false),
            counters: GroupCounters::default(),
            during_checkpoint: Mutex::new(None),
            jitter_seed: backoff::jitter_seed(name),
            epoch: AtomicU64::new(crate::ids::new_file_id()),
        })
    }

    fn lock(&self) -> CheckedGuard<'_> {
        CheckedGuard(self.locked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn check_usable(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::GroupDeleted { name: self.name.clone() });
        }
        if self.log.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Journals entries and applies them to the state; checkpoints the journal when it has grown.
    fn record(&self, locked: &mut Locked, entries: &[Entry]) -> Result<u64> {
        let seq = self.journal.write(entries)?;
        for entry in entries {
            locked.state.apply(*entry);
            let done = match *entry {
                Entry::Acked(offset) => Some(offset..offset + 1),
                Entry::AckedRange { from, to } | Entry::Gone { from, to } => Some(from..to),
                Entry::DeadLettered { offset, .. } => {
                    locked.errors.remove(&offset);
                    None
                }
                _ => None,
            };
            if let Some(done) = done {
                // Acked (a discarded dead letter too) or no longer stored: done for good, never dead again.
                ranges::remove_range(&mut locked.errors, done.clone());
                locked.notes.forget(done);
            }
            if Self::pass_keys_on(locked, entry) {
                self.signal.notify(); // a consumer waiting in `recv` takes the key's next message now
            }
        }
        if self.journal.wants_checkpoint() {
            let counts = StateCounts::of(&locked.state, self.visible_end(), Instant::now());
            *self.during_checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = Some(counts);
            let result = self.journal.checkpoint(&locked.state.checkpoint_entries());
            *self.during_checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if let Err(error) = result {
                tracing::warn!(group = %self.name, %error, "journal checkpoint failed; the journal keeps growing");
            }
        }
        Ok(seq)
    }

    /// A delivery failed (nack, drop, expiry): deliver it again at `due`, or dead-letter it after too many tries.
    /// Returns the journal sequence number to commit, if something was journaled. If the dead letter cannot be
    /// journaled, the message is up for delivery again instead: never neither leased, ready nor done.
    fn fail(&self, locked: &mut Locked, offset: u64, due: Option<Instant>, failure: Failure) -> Result<Option<u64>> {
        let attempts = locked.state.attempts(offset);
        if attempts >= self.config.max_deliveries {
            tracing::warn!(group = %self.name, offset, attempts, "dead-lettering message");
            let reason = format!("{attempts} failed attempts; the last {}", failure.describe());
            let reason = with_last_error(reason, locked.errors.get(&offset));
            self.write_note(locked, offset, reason);
            return match self.record(locked, &[Entry::DeadLettered { offset, attempts }]) {
                Ok(seq) => {
                    locked.state.end_lease(offset);
                    GroupCounters::count(&self.counters.dead_lettered, 1);
                    Ok(Some(seq))
                }
                Err(error) => {
                    locked.state.release(offset, due);
                    Err(error)
                }
            };
        }
        locked.state.release(offset, due);
        Ok(None)
    }

    /// Records why `offset` is about to be dead-lettered, before the journal says it is. A note that cannot be
    /// written is logged, not returned: setting the message aside matters more than its explanation.
    fn write_note(&self, locked: &mut Locked, offset: u64, reason: String) {
        if let Err(error) = locked.notes.set(offset, Note { at_ms: now_ms(), reason }) {
            tracing::warn!(group = %self.name, offset, %error, "cannot write the dead letter's reason");
        }
    }

    /// Ends expired leases: each message is delivered again, or dead-lettered after its last allowed attempt. Every
    /// expired lease is handled even when a journal write fails; the first error is returned.
    fn expire_leases(&self, locked: &mut Locked, now: Instant) -> Result<()> {
        let mut first_error = None;
        let mut delays = Vec::new();
        for offset in locked.state.expire_leases(now) {
            tracing::debug!(group = %self.name, offset, "lease expired");
            GroupCounters::count(&self.counters.expired, 1);
            // Journaled; made durable with the next commit. On error the message is ready again (see `fail`).
            let delay = self.backoff_delay(locked, offset);
            let due = (!delay.is_zero()).then(|| now + delay);
            match self.fail(locked, offset, due, Failure::Expired) {
                Ok(None) if due.is_some() => {
                    delays.push(Entry::Delayed { offset, not_before_ms: not_before_ms(delay) })
                }
                Ok(_) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        self.journal_delays(locked, &delays); // one write for all of them
        first_error.map_or(Ok(()), Err)
    }

    /// Journals the waits of failed deliveries, so that a restart does not deliver them before their time (a retry
    /// storm against whatever made them fail). The waits hold in memory already: failing to journal them loses
    /// only that, and is no error of the call that failed them. Returns the sequence number to commit.
    fn journal_delays(&self, locked: &mut Locked, delays: &[Entry]) -> Option<u64> {
        if delays.is_empty() {
            return None;
        }
        match self.record(locked, delays) {
            Ok(seq) => Some(seq),
            Err(error) => {
                tracing::warn!(group = %self.name, %error, "cannot journal retry delays; a restart delivers at once");
                None
            }
        }
    }

    /// Ends the lease of a message that is done already (acked twice, or after a dead letter), waking consumers
    /// waiting for room under `max_ack_pending`.
    fn end_lease_of_done(&self, locked: &mut Locked, offset: u64) {
        self.end_leases(locked, [offset]);
    }

    /// Ends the leases of `offsets`; wakes consumers waiting for room if the group was at `max_ack_pending`.
    fn end_leases(&self, locked: &mut Locked, offsets: impl IntoIterator<Item = u64>) {
        let was_full = locked.state.in_flight() >= self.config.max_ack_pending;
        offsets.into_iter().for_each(|offset| locked.state.end_lease(offset));
        if was_full {
            self.signal.notify();
        }
    }

    /// Ends the leases of `answered` (offset, lease id) once their answer (ack, dead letter), `entries`, is
    /// journaled. If it cannot be, each message whose lease is still the answering one is up for delivery again at
    /// once rather than left leased until its timeout; one whose lease expired and went to another consumer keeps
    /// that consumer's lease (a late ack that fails must not take the message from under it).
    fn answer(&self, locked: &mut Locked, answered: &[(u64, u64)], entries: &[Entry]) -> Result<u64> {
        match self.record(locked, entries) {
            Ok(seq) => {
                self.end_leases(locked, answered.iter().map(|&(offset, _)| offset));
                Ok(seq)
            }
            Err(error) => {
                for &(offset, lease_id) in answered {
                    if locked.state.holds(offset, lease_id) {
                        locked.state.release(offset, None);
                    }
                }
                self.signal.notify();
                Err(error)
            }
        }
    }

    /// Hands out up to `max` messages available now, oldest redelivery first, with one journal write for all.
    fn try_take(self: &Arc<Self>, now: Instant, max: usize, queue: &KeepOpen) -> Result<Vec<Delivery>> {
        self.try_take_within(now, max, usize::MAX, queue)
    }

    /// As [`try_take`](Self::try_take), and stops once the records taken hold `bytes_max` bytes of keys, values
    /// and headers (the record that passes it is taken: a take never comes back empty for want of room). Bounds
    /// what a take holds in memory whatever the size of the messages.
    fn try_take_within(
        self: &Arc<Self>,
        now: Instant,
        max: usize,
        bytes_max: usize,
        queue: &KeepOpen,
    ) -> Result<Vec<Delivery>> {
        debug_assert!(max > 0);
        self.check_usable()?;
        if self.log.is_draining() {
            return Err(Error::Closed); // `Queue::shutdown`: nothing more is handed out
        }
        let mut locked = self.lock();
        self.expire_leases(&mut locked, now)?;
        let max = max.min(self.config.max_ack_pending.saturating_sub(locked.state.in_flight()));
        // Built in place, not from a vector of records: a batch's records were written and read twice more.
        let (mut taken, mut bytes) = (Vec::new(), 0usize);
        let mut take = None; // made with the first message: a take that finds none allocates nothing
        while taken.len() < max && bytes < bytes_max {
            match self.next_record(&mut locked, now) {
                Ok(Some(record)) => {
                    bytes = bytes.saturating_add(record_bytes(&record));
                    let attempt = locked.state.attempts(record.offset.0) + 1;
                    let take = take.get_or_insert_with(|| {
                        taken.reserve(max.min(TAKE_RESERVE_MAX));
                        Arc::new(Take::new(self.clone(), queue.clone()))
                    });
                    taken.push(Delivery::unleased(take.clone(), record, attempt));
                }
                Ok(None) => break,
                // What was taken before the error is handed out; the error comes again on the next take.
                Err(error) if taken.is_empty() => return Err(error),
                Err(_) => break,
            }
        }
        self.deliver(&mut locked, taken, now)
    }

    /// The next message to hand out, taken out of the ready set or the fresh reader (not yet leased).
    fn next_record(&self, locked: &mut Locked, now: Instant) -> Result<Option<Record>> {
        while let Some(offset) = locked.state.take_ready(now) {
            let record = match self.read_at(offset) {
                Ok(record) => record,
                Err(error) => {
                    // Tried again later, not at once: redeliveries go lowest first, so an unreadable message put
                    // straight back would stop every other delivery of the group behind it.
                    locked.state.release(offset, Some(now + REDELIVERY_READ_RETRY));
                    return Err(error);
                }
            };
            match record {
                // Checked again here, not only when first read: the wall clock may have been set back since.
                Some(record) if !Self::admit(locked, &record) || Self::hold_if_early(locked, &record, now) => {}
                Some(record) => return Ok(Some(record)),
                None => {
                    // Removed meanwhile (compaction with `CompactionScope::AllSealed`): done here, or the floor
                    // would wait for it forever.
                    tracing::warn!(group = %self.name, offset, "message to redeliver is no longer stored");
                    if let Err(error) = self.record(locked, &[Entry::Gone { from: offset, to: offset + 1 }]) {
                        locked.state.release(offset, None);
                        return Err(error);
                    }
                }
            }
        }
        loop {
            if locked.keys.as_ref().is_some_and(KeyOrder::is_full) || locked.state.delayed_count() >= HELD_MAX {
                // The waiting messages go first (parked behind busy keys: their owners' answers release them;
                // delayed: their time comes): one stuck key or a backlog dated tomorrow cannot make the group
                // hold the log in memory.
                return Ok(None);
            }
            let next = locked.state.next_fresh();
            let skip_corrupt = self.config.skip_corrupt;
            let reader = locked.fresh.get_or_insert_with(|| Reader::new(self.log.clone(), next, skip_corrupt));
            match reader.next() {
                None => return Ok(None),
                Some(Err(error)) => {
                    locked.fresh = None;
                    return Err(error);
                }
                Some(Ok(record)) => {
                    let (offset, next) = (record.offset.0, locked.state.next_fresh());
                    if offset < next {
                        continue; // the floor moved past the reader (offsets forgotten after a limit deleted them)
                    }
                    if offset > next && offset > locked.state.floor() {
                        // The offsets in between are not stored (compacted, deleted, salvaged): done here. If that
                        // cannot be journaled, the reader starts again at `next`, so that nothing is passed over.
                        if let Err(error) = self.record(locked, &[Entry::Gone { from: next, to: offset }]) {
                            locked.fresh = None;
                            return Err(error);
                        }
                    }
                    if !locked.state.take_fresh(offset) {
                        Self::claim_key_if_waiting(locked, &record);
                    } else if Self::admit(locked, &record) && !Self::hold_if_early(locked, &record, now) {
                        return Ok(Some(record));
                    }
                }
            }
        }
    }

    /// The keys whose owner `entry` made done pass to the next message of each (per-key order): up for delivery
    /// now. A dead letter passes its key on too: the messages behind it are not held for a redrive.
    /// Returns whether a key passed on.
    fn pass_keys_on(locked: &mut Locked, entry: &Entry) -> bool {
        let Some(keys) = locked.keys.as_mut() else { return false };
        let done = match *entry {
            Entry::Acked(offset) | Entry::DeadLettered { offset, .. } => offset..offset + 1,
            Entry::AckedRange { from, to } | Entry::Gone { from, to } => from..to,
            Entry::Floor(floor) => 0..floor,
            _ => return false,
        };
        let state = &mut locked.state;
        let next_owners = keys.finished(done, |offset| state.is_done(offset));
        for &next in &next_owners {
            state.schedule_now(next);
        }
        !next_owners.is_empty()
    }

    /// A message the fresh reader finds waiting already (after a restart: a journaled retry delay) claims its key
    /// if the key is free, so that the key's later messages wait behind it as they did before the restart.
    fn claim_key_if_waiting(locked: &mut Locked, record: &Record) {
        let (offset, key) = (record.offset.0, record.key.as_deref());
        if let (Some(keys), Some(key)) = (locked.keys.as_mut(), key) {
            if locked.state.is_waiting(offset) {
                keys.claim_if_free(offset, key);
            }
        }
    }

    /// Whether `record` may go out now under per-key order (always, without it); parks it behind its key's
    /// owner otherwise.
    fn admit(locked: &mut Locked, record: &Record) -> bool {
        match locked.keys.as_mut() {
            Some(keys) => keys.admit(record.offset.0, record.key.as_deref()) == Admit::Deliver,
            None => true,
        }
    }

    /// Holds `record` back if it carries a delivery time still to come ([`Message::deliver_at_ms`]): it is due
    /// then, not leased meanwhile, and nothing behind it waits. Not journaled: the time is stored in the message,
    /// so after a restart the group finds it there again when it reads the message.
    ///
    /// [`Message::deliver_at_ms`]: crate::Message::deliver_at_ms
    fn hold_if_early(locked: &mut Locked, record: &Record, now: Instant) -> bool {
        let Some(deliver_at_ms) = record.deliver_at_ms() else { return false };
        let wall_ms = now_ms();
        if deliver_at_ms <= wall_ms {
            return false;
        }
        // One millisecond more: the wall clock counts whole milliseconds, and early is what must not happen. A
        // longer wait than `HOLD_MAX` is checked again when that ends.
        let wait = Duration::from_millis((deliver_at_ms - wall_ms).saturating_add(1)).min(HOLD_MAX);
        locked.state.hold(record.offset.0, now + wait);
        true
    }

    fn read_at(&self, offset: u64) -> Result<Option<Record>> {
        let mut reader = Reader::new(self.log.clone(), offset, self.config.skip_corrupt);
        Ok(reader.next().transpose()?.filter(|record| record.offset.0 == offset))
    }

    /// Leases taken messages to a consumer. Journaled (not yet synced) before the consumer sees them, in one
    /// write: attempt counts survive a process crash. `taken` are not leased yet (a drop releases nothing).
    fn deliver(&self, locked: &mut Locked, mut taken: Vec<Delivery>, now: Instant) -> Result<Vec<Delivery>> {
        if taken.is_empty() {
            return Ok(taken);
        }
        let entries = delivery_entries(taken.iter().map(|delivery| (delivery.offset().0, delivery.attempt())));
        if let Err(error) = self.record(locked, &entries) {
            for delivery in &taken {
                locked.state.release(delivery.offset().0, None); // taken but not handed out: up for delivery again
            }
            return Err(error);
        }
        let mut redeliveries = 0;
        for delivery in &mut taken {
            let lease = locked.state.lease(delivery.offset().0, now, self.config.ack_timeout);
            redeliveries += u64::from(delivery.attempt() > 1);
            delivery.leased(self.token(lease.id));
        }
        // Counted once per batch: an atomic add per message showed in profiles of batched takes.
        self.counters.deliveries.fetch_add(taken.len() as u64, Ordering::Relaxed);
        self.counters.redeliveries.fetch_add(redeliveries, Ordering::Relaxed);
        Ok(taken)
    }

    fn next_timer(&self) -> Option<Instant> {
        self.lock().state.next_timer()
    }

    fn ack(&self, offset: u64, lease_id: u64, late: LateAck) -> Result<()> {
        let recorded = self.record_ack(offset, lease_id, late)?;
        self.finish(recorded)
    }

    /// Commits an answer journaled by a `record_*` method and tells cleanup where the floor went: the part of an
    /// answer that may wait for the disk.
    fn finish(&self, recorded: Recorded) -> Result<()> {
        if let Some(seq) = recorded.seq {
            self.journal.commit(seq)?;
        }
        if let Some(floor) = recorded.floor {
            self.floor_moved.floor_moved(floor);
        }
        Ok(())
    }

    /// [`GroupInner::finish`] for the async API: on walq's sync thread when the durability mode waits for an
    /// fsync, at once otherwise.
    pub(super) fn finish_async(self: &Arc<Self>, recorded: Recorded) -> crate::nonblocking::Completion<()> {
        let Some(seq) = recorded.seq.filter(|_| self.log.settings.durability.acknowledges_durable()) else {
            return crate::nonblocking::Completion::ready(self.finish(recorded));
        };
        let group = self.clone();
        self.syncer.run(move || {
            // Waits in a group-commit round even in `Sync`: the tasks' records written meanwhile share the fsync.
            group.journal.make_durable(seq)?;
            group.finish(recorded)
        })
    }

    /// Journals an ack (see [`GroupInner::ack`]); [`GroupInner::finish`] does the rest.
    fn record_ack(&self, offset: u64, lease_id: u64, late: LateAck) -> Result<Recorded> {
        self.check_usable()?;
        let (seq, floor) = {
            let mut locked = self.lock();
            // Expiry first, as every answer does: a lease past its deadline on its last attempt is then a dead letter
            // whatever ran before this ack, and the ack leaves it so.
            let held = self.holds_now(&mut locked, offset, lease_id, Instant::now());
            if locked.state.is_done(offset) {
                self.end_lease_of_done(&mut locked, offset);
                return Ok(Recorded::NOTHING); // acked twice, or after a dead letter: nothing to do
            }
            if Self::ack_is_stale(&locked, offset, lease_id, held, late) {
                return Err(Error::StaleLease { offset: Offset(offset) });
            }
            let seq = self.answer(&mut locked, &[(offset, lease_id)], &[Entry::Acked(offset)])?;
            GroupCounters::count(&self.counters.acked, 1);
            (seq, locked.state.floor())
        };
        Ok(Recorded { seq: Some(seq), floor: Some(floor) })
    }

    /// Acks many (offset, lease id) pairs with one journal write and one commit: one fsync for the batch in
    /// `Durability::Sync`.
    fn ack_many(&self, answered: &[(u64, u64)]) -> Result<()> {
        let (recorded, stale) = self.record_ack_many(answered)?;
        self.finish(recorded)?;
        stale_error(stale)
    }

    /// Journals the acks of [`GroupInner::ack_many`]; returns what to finish, and the stale ones.
    fn record_ack_many(&self, answered: &[(u64, u64)]) -> Result<(Recorded, Vec<Offset>)> {
        self.check_usable()?;
        let mut stale = Vec::new();
        let (seq, floor) = {
            let mut locked = self.lock();
            // Two deliveries of one offset (a lease expired, the message went out again) journal one ack, for the
            // newer lease (ids only grow): it is the current one if either is. A batch as taken is in order already.
            let answered = if answered.windows(2).all(|pair| pair[0].0 < pair[1].0) {
                std::borrow::Cow::Borrowed(answered)
            } else {
                let mut answered = answered.to_vec();
                answered.sort_unstable_by_key(|&(offset, lease_id)| (offset, std::cmp::Reverse(lease_id)));
                answered.dedup_by_key(|&mut (offset, _)| offset);
                std::borrow::Cow::Owned(answered)
            };
            let mut acked = Vec::with_capacity(answered.len());
            self.expire_due(&mut locked, Instant::now()); // expiry first, as in `ack`: once, `now` is one moment
            for &(offset, lease_id) in answered.iter() {
                let held = locked.state.holds(offset, lease_id);
                if locked.state.is_done(offset) {
                    self.end_lease_of_done(&mut locked, offset);
                } else if Self::ack_is_stale(&locked, offset, lease_id, held, LateAck::Counts) {
                    stale.push(Offset(offset)); // delivered again after this lease ended: that delivery answers
                } else {
                    acked.push((offset, lease_id));
                }
            }
            if acked.is_empty() {
                return Ok((Recorded::NOTHING, stale));
            }
            let offsets: Vec<u64> = acked.iter().map(|&(offset, _)| offset).collect();
            let seq = self.answer(&mut locked, &acked, &ack_entries(&offsets))?;
            GroupCounters::count(&self.counters.acked, offsets.len() as u64);
            (seq, locked.state.floor())
        };
        Ok((Recorded { seq: Some(seq), floor: Some(floor) }, stale))
    }

    /// A nack: `delay` given, or (`None`) the retry backoff's; `error` is the caller's text for `Delivery::fail`.
    fn nack(&self, offset: u64, lease_id: u64, delay: Option<Duration>, error: Option<String>) -> Result<Nacked> {
        let (recorded, nacked) = self.record_nack(offset, lease_id, delay, error)?;
        self.finish(recorded)?;
        Ok(nacked)
    }

    /// Journals a nack (see [`GroupInner::nack`]); [`GroupInner::finish`] does the rest.
    fn record_nack(
        &self,
        offset: u64,
        lease_id: u64,
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<(Recorded, Nacked)> {
        self.check_usable()?;
        let (seq, nacked) = {
            let mut locked = self.lock();
            if !self.holds_now(&mut locked, offset, lease_id, Instant::now()) {
                return Ok((Recorded::NOTHING, Nacked::LeaseEnded));
            }
            let failure = match (&error, delay) {
                (Some(_), _) => Failure::Failed,
                (None, Some(_)) => Failure::Nacked,
                (None, None) => Failure::Retried,
            };
            if let Some(error) = error {
                locked.errors.insert(offset, notes::bounded(error));
            }
            let delay = delay.unwrap_or_else(|| self.backoff_delay(&locked, offset));
            let failed = self.fail_after(&mut locked, offset, delay, failure)?;
            GroupCounters::count(&self.counters.nacked, 1);
            failed
        };
        self.signal.notify();
        Ok((Recorded { seq, floor: None }, nacked))
    }

    /// The retry backoff's wait for `offset`'s last failed attempt (none without a policy).
    fn backoff_delay(&self, locked: &Locked, offset: u64) -> Duration {
        let attempts = locked.state.attempts(offset);
        self.config.retry_backoff.map_or(Duration::ZERO, |backoff| backoff.delay(self.jitter_seed, offset, attempts))
    }

    /// A failed delivery without an answer (dropped, expired): delivered again after the retry backoff.
    fn fail_with_backoff(&self, locked: &mut Locked, offset: u64) -> Result<Option<u64>> {
        let delay = self.backoff_delay(locked, offset);
        Ok(self.fail_after(locked, offset, delay, Failure::Dropped)?.0)
    }

    /// [`GroupInner::fail`], delivering again after `delay` (at most [`RETRY_DELAY_MAX`]), journaled (see
    /// `journal_delays`). Returns the sequence number to commit, if something was journaled.
    fn fail_after(
        &self,
        locked: &mut Locked,
        offset: u64,
        delay: Duration,
        failure: Failure,
    ) -> Result<(Option<u64>, Nacked)> {
        let delay = delay.min(RETRY_DELAY_MAX);
        let due = (!delay.is_zero()).then(|| Instant::now() + delay);
        match self.fail(locked, offset, due, failure)? {
            Some(seq) => Ok((Some(seq), Nacked::DeadLettered)),
            None if due.is_some() => {
                let delayed = [Entry::Delayed { offset, not_before_ms: not_before_ms(delay) }];
                Ok((self.journal_delays(locked, &delayed), Nacked::Retry))
            }
            None => Ok((None, Nacked::Retry)),
        }
    }

    fn release_dropped(&self, offset: u64, lease_id: u64) {
        if self.check_usable().is_err() {
            return; // closed or deleted: there is nothing to deliver it to, and the journal takes no more
        }
        let mut locked = self.lock();
        if self.holds_now(&mut locked, offset, lease_id, Instant::now()) {
            GroupCounters::count(&self.counters.dropped, 1);
            if let Err(error) = self.fail_with_backoff(&mut locked, offset) {
                tracing::warn!(group = %self.name, offset, %error, "releasing a dropped delivery failed");
            }
            drop(locked);
            self.signal.notify();
        }
    }

    /// Replaces the group's state with a fresh one starting at `start` (see `Queue::reset_group`), written at once
    /// as a checkpoint (a new journal file renamed over the old one): a crash leaves the old position or the new
    /// one. Returns the new floor.
    pub(crate) fn reset(&self, start: StartAt) -> Result<u64> {
        self.check_usable()?;
        // Found before the group's lock is taken: a lookup by time reads the log.
        let new_floor = start_floor(&self.log, start, self.config.skip_corrupt)?;
        let floor = {
            let mut locked = self.lock();
            self.expire_due(&mut locked, Instant::now());
            let in_flight = locked.state.in_flight();
            if in_flight > 0 {
                return Err(Error::GroupBusy { name: self.name.clone(), in_flight });
            }
            let floor = new_floor;
            let state = GroupState::new(floor);
            self.journal.checkpoint(&state.checkpoint_entries())?;
            locked.state = state;
            locked.fresh = None;
            locked.errors.clear();
            if let Some(keys) = locked.keys.as_mut() {
                keys.clear();
            }
            // Every delivery from before (a lease that ended unanswered) is stale from now on: a new epoch.
            self.epoch.store(crate::ids::new_file_id(), Ordering::Relaxed);
            // The reasons go from the file too: one left there would come back with a later dead letter of the
            // same offset whose own note did not reach the disk.
            locked.notes.forget(0..u64::MAX);
            if let Err(error) = locked.notes.rewrite() {
                tracing::warn!(group = %self.name, %error, "cannot clear the dead-letter reasons after a reset");
            }
            floor
        };
        tracing::info!(group = %self.name, floor, "consumer group reset");
        self.signal.notify();
        self.floor_moved.floor_moved(floor);
        Ok(floor)
    }

    /// The lease id a token names: `NO_LEASE` unless it comes from this open of the group.
    pub(super) fn lease_id_of(&self, token: LeaseToken) -> u64 {
        if token.epoch == self.epoch.load(Ordering::Relaxed) {
            token.lease_id
        } else {
            NO_LEASE
        }
    }

    /// The token of lease `lease_id` (see [`LeaseToken`]).
    pub(super) fn token(&self, lease_id: u64) -> LeaseToken {
        LeaseToken { epoch: self.epoch.load(Ordering::Relaxed), lease_id }
    }

    fn extend_lease(&self, offset: u64, lease_id: u64) -> Result<()> {
        self.check_usable()?;
        let now = Instant::now();
        let mut locked = self.lock();
        if self.holds_now(&mut locked, offset, lease_id, now) {
            let extended = locked.state.extend(offset, lease_id, now + self.config.ack_timeout);
            debug_assert!(extended);
            Ok(())
        } else {
            Err(Error::LeaseExpired { offset: Offset(offset) })
        }
    }

    /// Whether the lease `lease_id` on `offset` is current at `now`. Expiry is decided by time: leases past their
    /// deadline are expired first (each a failed attempt), whether or not a take has noticed them yet, so that
    /// every answer sees the same lease whatever ran before it. An expiry that cannot be journaled leaves the
    /// message ready again (see `fail`) and is logged: it is not this answer's error.
    fn holds_now(&self, locked: &mut Locked, offset: u64, lease_id: u64, now: Instant) -> bool {
        self.expire_due(locked, now);
        locked.state.holds(offset, lease_id)
    }

    /// Expires the leases past their deadline at `now`; one whose expiry cannot be journaled is ready again (see
    /// `fail`) and logged: the caller's operation goes on.
    fn expire_due(&self, locked: &mut Locked, now: Instant) {
        if let Err(error) = self.expire_leases(locked, now) {
            tracing::warn!(group = %self.name, %error, "journaling expired leases failed; they are ready again");
        }
    }

    /// Whether an ack under lease `lease_id` (`held`: current) is refused as stale (see [`LateAck`]).
    fn ack_is_stale(locked: &Locked, offset: u64, lease_id: u64, held: bool, late: LateAck) -> bool {
        match late {
            // `NO_LEASE`: taken before a reset, whose new position no answer from before may change.
            LateAck::Counts => !held && (lease_id == NO_LEASE || locked.state.is_leased(offset)),
            LateAck::Refused => !held,
        }
    }

    /// `reason`: the caller's, or (`None`) one saying the consumer set it aside.
    fn dead_letter(&self, offset: u64, lease_id: u64, reason: Option<String>) -> Result<Nacked> {
        let (recorded, nacked) = self.record_dead_letter(offset, lease_id, reason)?;
        self.finish(recorded)?;
        Ok(nacked)
    }

    /// Journals a dead letter (see [`GroupInner::dead_letter`]); [`GroupInner::finish`] does the rest.
    fn record_dead_letter(&self, offset: u64, lease_id: u64, reason: Option<String>) -> Result<(Recorded, Nacked)> {
        self.check_usable()?;
        let (seq, floor) = {
            let mut locked = self.lock();
            if !self.holds_now(&mut locked, offset, lease_id, Instant::now()) {
                return Ok((Recorded::NOTHING, Nacked::LeaseEnded));
            }
            let attempts = locked.state.attempts(offset);
            let reason = reason.unwrap_or_else(|| {
                let reason = format!("set aside by its consumer on attempt {attempts}");
                with_last_error(reason, locked.errors.get(&offset))
            });
            self.write_note(&mut locked, offset, reason);
            let seq = self.answer(&mut locked, &[(offset, lease_id)], &[Entry::DeadLettered { offset, attempts }])?;
            GroupCounters::count(&self.counters.dead_lettered, 1);
            (seq, locked.state.floor())
        };
        Ok((Recorded { seq: Some(seq), floor: Some(floor) }, Nacked::DeadLettered))
    }

    fn redrive(&self, offset: u64) -> Result<bool> {
        self.check_usable()?;
        let seq = {
            let mut locked = self.lock();
            if !locked.state.is_dead(offset) {
                return Ok(false);
            }
            let seq = self.record(&mut locked, &[Entry::Redriven(offset)])?;
            locked.state.schedule_now(offset);
            seq
        };
        self.journal.commit(seq)?;
        // After the commit: a crash before it keeps the dead letter, with its reason.
        let cleared = self.lock().notes.clear(offset);
        if let Err(error) = cleared {
            // Only a later dead letter of it whose own note is lost too could show this reason.
            tracing::warn!(group = %self.name, offset, %error, "cannot record that a dead letter was redriven");
        }
        self.signal.notify();
        Ok(true)
    }

    /// An ack of a dead letter: it is done for good, and no longer holds its segment.
    fn discard(&self, offset: u64) -> Result<bool> {
        self.check_usable()?;
        let (seq, floor) = {
            let mut locked = self.lock();
            if !locked.state.is_dead(offset) {
                return Ok(false);
            }
            let seq = self.record(&mut locked, &[Entry::Acked(offset)])?;
            debug_assert!(!locked.state.is_dead(offset) && locked.state.is_done(offset));
            GroupCounters::count(&self.counters.discarded, 1);
            (seq, locked.state.floor())
        };
        self.journal.commit(seq)?;
        self.floor_moved.floor_moved(floor);
        Ok(true)
    }

    /// The log's visible end: where reading stops now.
    fn visible_end(&self) -> u64 {
        let state = self.log.lock();
        self.log.visible_end(&state).0
    }

    /// Read only: no lease is expired here (that can dead-letter and journal); expired ones are not counted. Never
    /// waits for a checkpoint: while one holds the group's lock, the counts it published are read instead.
    pub(crate) fn stats(&self) -> GroupStats {
        let end = self.visible_end();
        let counts = match self.locked.try_lock() {
            Ok(locked) => StateCounts::of(&locked.state, end, Instant::now()),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                StateCounts::of(&poisoned.into_inner().state, end, Instant::now())
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                let published = *self.during_checkpoint.lock().unwrap_or_else(|p| p.into_inner());
                published.unwrap_or_else(|| StateCounts::of(&self.lock().state, end, Instant::now()))
            }
        };
        let oldest_unacked_age_ms = if counts.lowest_needed < end {
            self.read_at(counts.lowest_needed).ok().flatten().map(|record| now_ms().saturating_sub(record.timestamp_ms))
        } else {
            None
        };
        GroupStats {
            name: self.name.clone(),
            ack_floor: Offset(counts.floor),
            lag: counts.lag(end),
            in_flight: counts.in_flight,
            deliveries: self.counters.deliveries.load(Ordering::Relaxed),
            redeliveries: self.counters.redeliveries.load(Ordering::Relaxed),
            dead_letters: counts.dead_letters,
            oldest_unacked_age_ms,
            fsyncs: self.journal.fsyncs.load(Ordering::Relaxed),
            acked: self.counters.acked.load(Ordering::Relaxed),
            nacked: self.counters.nacked.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            expired: self.counters.expired.load(Ordering::Relaxed),
            dead_lettered: self.counters.dead_lettered.load(Ordering::Relaxed),
            discarded: self.counters.discarded.load(Ordering::Relaxed),
        }
    }

    /// The group's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Messages leased now and not expired: deliveries a consumer may still answer (none in a deleted group: its
    /// answers are refused).
    pub(crate) fn leased_now(&self) -> usize {
        if self.deleted.load(Ordering::Acquire) {
            return 0;
        }
        self.lock().state.in_flight_at(Instant::now())
    }

    /// The end of `Queue::shutdown`'s grace: every message still leased (and not expired) is given back without
    /// counting this delivery as an attempt (its consumer was interrupted; it did not fail). Returns how many were
    /// given back. An expired lease is a failure (the consumer took too long) and keeps its count.
    ///
    /// Written as one checkpoint (the whole state, with the counts from before these deliveries, replacing the
    /// journal by a rename): appended records could be cut between a reset and the count that follows it, by a
    /// crash or a full disk, and leave a poison message at a count of 0. On failure nothing changed.
    pub(crate) fn give_back_interrupted(&self) -> Result<usize> {
        if self.deleted.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut locked = self.lock();
        let now = Instant::now();
        // A lease past its deadline failed (its consumer took too long): expired as any answer would, so a message
        // on its last attempt is dead-lettered now rather than delivered past its limit after the restart.
        self.expire_due(&mut locked, now);
        let leased = locked.state.leased_at(now);
        if leased.is_empty() {
            return Ok(0);
        }
        let before: BTreeMap<u64, u32> =
            leased.iter().map(|&offset| (offset, locked.state.attempts(offset).saturating_sub(1))).collect();
        for (&offset, &attempt) in &before {
            // `Redriven` resets the count (and keeps a redriven message below the floor redriven); then the count
            // from before. The checkpoint is then written from this state: first deliveries are kept (and
            // checkpointed) as runs, so editing a checkpoint's per-offset records would miss them. If the
            // checkpoint fails, the journal keeps the higher counts, which a restart then uses: one attempt too
            // many, never one too few.
            locked.state.apply(Entry::Redriven(offset));
            if attempt > 0 {
                locked.state.apply(Entry::Delivered { offset, attempt });
            }
        }
        self.journal.checkpoint(&locked.state.checkpoint_entries())?;
        for &offset in before.keys() {
            locked.state.release(offset, None);
        }
        Ok(leased.len())
    }

    /// For the interval flusher.
    pub(crate) fn sync_if_behind(&self) {
        self.journal.sync_if_behind();
    }

    /// For the write buffer's ticker: hands buffered journal records to the OS.
    pub(crate) fn write_buffered(&self) {
        self.journal.write_pending_now();
    }

    /// Flushes the journal and refuses further work.
    pub(crate) fn close(&self) -> Result<()> {
        self.journal.close()
    }

    /// Marks the group deleted and removes its journal.
    pub(crate) fn delete(&self, storage: &dyn Storage) -> Result<()> {
        self.deleted.store(true, Ordering::Release);
        let _ = self.journal.close();
        let path = self.journal.path();
        storage.remove_file(path).map_err(|e| Error::io("remove group journal", path, e))?;
        // After the journal: a crash between leaves notes without a group, which a group created under the
        // same name removes first (see `Notes::create`).
        if let Err(error) = self.lock().notes.remove() {
            tracing::warn!(group = %self.name, %error, "cannot remove the deleted group's dead-letter notes");
        }
        let dir = path.parent().expect("journals live in a directory");
        storage.sync_dir(dir).map_err(|e| Error::io("fsync directory", dir, e))?;
        self.signal.notify();
        Ok(())
    }
}

/// An automatic dead-letter reason, with the last error `Delivery::fail` gave for the message, if any.
fn with_last_error(mut reason: String, last_error: Option<&String>) -> String {
    if let Some(error) = last_error {
        reason.push_str("; last error: ");
        reason.push_str(error);
    }
    reason
}

/// The bytes a record holds in memory past its fixed fields: key, value and headers.
fn record_bytes(record: &Record) -> usize {
    let headers: usize = record.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len) + headers
}

/// The journal entries of one take: runs of first deliveries as `DeliveredFirst` ranges (one record for a whole
/// batch of fresh messages), redeliveries one by one with their attempt.
fn delivery_entries(attempts: impl IntoIterator<Item = (u64, u32)>) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for (offset, attempt) in attempts {
        match run {
            Some((from, to)) if attempt == 1 && offset == to && to - from < journal::DELIVERED_RUN_MAX => {
                run = Some((from, to + 1));
                continue;
            }
            _ => {}
        }
        if let Some((from, to)) = run.take() {
            entries.push(Entry::DeliveredFirst { from, to });
        }
        if attempt == 1 {
            run = Some((offset, offset + 1));
        } else {
            entries.push(Entry::Delivered { offset, attempt });
        }
    }
    entries.extend(run.map(|(from, to)| Entry::DeliveredFirst { from, to }));
    entries
}

/// The journal entries of acks of `offsets` (sorted, distinct): runs of consecutive offsets as one `AckedRange`.
fn ack_entries(offsets: &[u64]) -> Vec<Entry> {
    debug_assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    let mut entries = Vec::new();
    let mut i = 0;
    while i < offsets.len() {
        let from = offsets[i];
        let mut to = from + 1;
        while i + 1 < offsets.len() && offsets[i + 1] == to {
            to += 1;
            i += 1;
        }
        i += 1;
        entries.push(if to - from == 1 { Entry::Acked(from) } else { Entry::AckedRange { from, to } });
    }
    entries
}

impl RetentionSource for GroupInner {
    fn durable_floor(&self) -> Result<u64> {
        let floor = self.lock().state.floor();
        self.journal.flush()?;
        Ok(floor)
    }

    fn retains(&self, start: u64, end: u64) -> bool {
        self.lock().state.retains_any(start, end)
    }

    fn retained_offsets(&self) -> Vec<u64> {
        self.lock().state.retained()
    }

    fn needed_in(&self, window: std::ops::Range<u64>) -> Vec<std::ops::Range<u64>> {
        self.lock().state.needed_in(window)
    }

    fn read_below(&self) -> u64 {
        self.lock().state.next_fresh()
    }

    fn sync(&self) -> Result<()> {
        self.journal.flush()
    }

    fn forget_below(&self, first: u64) -> Result<()> {
        let seq = {
            let mut locked = self.lock();
            let state = &locked.state;
            if state.floor() >= first && state.retained().iter().all(|&o| o >= first) {
                return Ok(());
            }
            tracing::warn!(group = %self.name, first, "messages this group had not consumed were deleted by a retention limit or a purge");
            // Journaled before the leases end: if it cannot be, the messages stay leased (answerable) instead of
            // neither leased nor done until the next open.
            let seq = self.record(&mut locked, &[Entry::Gone { from: 0, to: first }])?;
            locked.fresh = None;
            locked.state.end_leases_below(first);
            seq
        };
        self.signal.notify(); // room under max_ack_pending, keys passed on
        self.journal.commit(seq)
    }
}
