//! The relay to NATS JetStream (feature `nats`): drains one consumer group of a queue into a JetStream subject.
//!
//! walq is then the durable outbox at the edge and JetStream the distributed log. The guarantee carries over:
//!
//! * **At least once.** A walq message is acked in its group only after JetStream acknowledged storing it. A crash
//!   of the relay, the process or the machine leaves the message unacked, and the group delivers it again.
//! * **No duplicates in the stream.** Every publish carries `Nats-Msg-Id: <queue id>:<offset>:<content crc>`, or
//!   `<queue id>:id:<dedup id>` for a message with a [`dedup_id`](crate::Message::dedup_id) (see [`mapping`]),
//!   so JetStream drops a redelivered copy that arrives within the stream's duplicate window (2 minutes by
//!   default), while a new message at an offset a power cut freed (`None`, `Interval`) gets a new id. A relay down for longer than that window can add a copy of the messages that were in flight.
//! * **Pipelined.** Up to [`RelayConfig::window`] publishes wait for their acknowledgement at once; acks reach the
//!   group in batches (one journal commit per batch, see [`Consumer::ack_all`]).
//! * **Failures.** A publish that times out or finds no server (down, restarting, no stream yet) is published
//!   again, with the same id, after an exponential backoff; its delivery stays leased meanwhile, so an outage costs
//!   no delivery attempts. A publish the server answers with an error (message too large for the stream, ...)
//!   is nacked: it is delivered again after [`RelayConfig::reject_delay`] and, after the queue's `max_deliveries`,
//!   becomes a dead letter of the group. A stop ([`RelayHandle::stop`]) waits for the outstanding acknowledgements,
//!   up to [`RelayConfig::drain_timeout`].
//!
//! JetStream's acknowledgement means the server stored the message as its own settings say: with the file store
//! of nats-server 2.9 that is written but fsynced only every two minutes (`sync_interval` from 2.10 on), so a power
//! failure of the server's machine can lose what it acknowledged; a replicated stream (R3) is the remedy.
//!
//! ```no_run
//! # fn main() -> Result<(), walq::relay::RelayError> {
//! use walq::relay::{Relay, RelayConfig};
//!
//! let queue = walq::Queue::open("data/orders")?;
//! let config = RelayConfig::new("nats://127.0.0.1:4222", "orders").create_stream("ORDERS");
//! let relay = Relay::new(&queue, "to-nats", config)?;
//! let handle = relay.handle(); // stats() and stop() from other threads
//! let stats = relay.run_blocking()?; // until handle.stop() or the queue closes
//! println!("relayed {}", stats.relayed);
//! # let _ = handle;
//! # Ok(())
//! # }
//! ```

pub mod mapping;
mod pipeline;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use mapping::{record_from_message, NotRelayed, Relayed, SubjectMode};

use crate::group::{Consumer, Group};
use crate::queue::Queue;

/// Most publishes awaiting their acknowledgement at once that [`RelayConfig::window`] accepts.
pub const WINDOW_MAX: usize = 16_384;
/// Default for [`RelayConfig::window`]: enough to keep a loopback or LAN round trip busy.
pub const WINDOW_DEFAULT: usize = 512;
/// Default for [`RelayConfig::publish_timeout`].
pub const PUBLISH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default first wait before publishing again after a failure; it doubles up to [`BACKOFF_MAX_DEFAULT`].
pub const BACKOFF_MIN_DEFAULT: Duration = Duration::from_millis(100);
/// Default longest wait between publish attempts.
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(5);
/// Default for [`RelayConfig::reject_delay`].
pub const REJECT_DELAY_DEFAULT: Duration = Duration::from_secs(1);
/// Default for [`RelayConfig::drain_timeout`].
pub const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default duplicate window of a stream the relay creates: JetStream's own default.
pub const DUPLICATE_WINDOW_DEFAULT: Duration = Duration::from_secs(120);

/// What went wrong starting or running a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The subject cannot be published to.
    #[error(
        "{subject:?} is not a NATS subject to publish to: use dot-separated tokens of printable ASCII, no wildcards"
    )]
    InvalidSubject {
        /// The subject given.
        subject: String,
    },
    /// The window is outside `1..=WINDOW_MAX`.
    #[error("a relay window of {window} publishes is outside 1..={max}")]
    InvalidWindow {
        /// The window given.
        window: usize,
        /// [`WINDOW_MAX`].
        max: usize,
    },
    /// The server URL cannot be used (the relay retries an unreachable server; it does not retry a bad URL).
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL given.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
    /// The stream could not be looked up or created.
    #[error("cannot create or look up the JetStream stream {name}: {source} (is JetStream enabled on the server?)")]
    Stream {
        /// The stream's name.
        name: String,
        /// The client's error.
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// The queue or its group failed (acks could not be journaled, the queue was closed under the relay, ...).
    #[error(transparent)]
    Queue(#[from] crate::Error),
    /// The async runtime of [`Relay::run_blocking`] could not be started.
    #[error("cannot start the relay's runtime: {0}")]
    Runtime(std::io::Error),
}

/// When [`Relay::run`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopWhen {
    /// On [`RelayHandle::stop`], or when the queue closes.
    #[default]
    Stopped,
    /// Also as soon as nothing is outstanding and no message is ready (a one-shot drain).
    Idle,
}

/// How to relay: where to, how many publishes at once, how to treat failures.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    server_url: String,
    subject: String,
    subject_mode: SubjectMode,
    stream: Option<String>,
    duplicate_window: Duration,
    window: usize,
    publish_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    reject_delay: Duration,
    drain_timeout: Duration,
    stop_when: StopWhen,
}

impl RelayConfig {
    /// Relay to `subject` on the server at `server_url` (`nats://host:port`; a comma-separated list for a cluster).
    pub fn new(server_url: impl Into<String>, subject: impl Into<String>) -> RelayConfig {
        RelayConfig {
            server_url: server_url.into(),
            subject: subject.into(),
            subject_mode: SubjectMode::Fixed,
            stream: None,
            duplicate_window: DUPLICATE_WINDOW_DEFAULT,
            window: WINDOW_DEFAULT,
            publish_timeout: PUBLISH_TIMEOUT_DEFAULT,
            backoff_min: BACKOFF_MIN_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
            reject_delay: REJECT_DELAY_DEFAULT,
            drain_timeout: DRAIN_TIMEOUT_DEFAULT,
            stop_when: StopWhen::Stopped,
        }
    }

    /// Publish to a subject per key ([`SubjectMode::KeyToken`]) instead of one subject.
    pub fn subject_mode(mut self, mode: SubjectMode) -> RelayConfig {
        self.subject_mode = mode;
        self
    }

    /// Create the stream `name` capturing the subject (with its key tokens) if it does not exist yet. Without
    /// this, a stream capturing the subject must exist; until it does, publishes are retried.
    pub fn create_stream(mut self, name: impl Into<String>) -> RelayConfig {
        self.stream = Some(name.into());
        self
    }

    /// The duplicate window of a stream created by [`create_stream`](RelayConfig::create_stream): how long after
    /// a publish its redelivered copy is still recognised.
    pub fn duplicate_window(mut self, window: Duration) -> RelayConfig {
        self.duplicate_window = window;
        self
    }

    /// How many publishes may await their acknowledgement at once (1 to [`WINDOW_MAX`]).
    pub fn window(mut self, publishes: usize) -> RelayConfig {
        self.window = publishes;
        self
    }

    /// How long to wait for a publish's acknowledgement before publishing it again.
    pub fn publish_timeout(mut self, timeout: Duration) -> RelayConfig {
        self.publish_timeout = timeout;
        self
    }

    /// The backoff between attempts after a failure: starts at `min`, doubles up to `max`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> RelayConfig {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// How long a message the server rejected waits before it is delivered (and published) again.
    pub fn reject_delay(mut self, delay: Duration) -> RelayConfig {
        self.reject_delay = delay;
        self
    }

    /// How long a stop waits for outstanding acknowledgements; what is still outstanding then is delivered again
    /// by the next run.
    pub fn drain_timeout(mut self, timeout: Duration) -> RelayConfig {
        self.drain_timeout = timeout;
        self
    }

    /// When [`Relay::run`] returns.
    pub fn stop_when(mut self, stop_when: StopWhen) -> RelayConfig {
        self.stop_when = stop_when;
        self
    }

    fn validate(&self) -> Result<(), RelayError> {
        if !mapping::is_valid_subject(&self.subject) {
            return Err(RelayError::InvalidSubject { subject: self.subject.clone() });
        }
        if !(1..=WINDOW_MAX).contains(&self.window) {
            return Err(RelayError::InvalidWindow { window: self.window, max: WINDOW_MAX });
        }
        Ok(())
    }
}

/// Progress and health of a relay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RelayStats {
    /// Messages JetStream acknowledged (duplicates included) and acked in the group, since the relay started.
    pub relayed: u64,
    /// Of those, how many JetStream recognised as duplicates of an earlier publish (redeliveries after a crash).
    pub duplicates: u64,
    /// Publishes the server rejected (nacked in the group; dead letters after the queue's `max_deliveries`).
    pub rejected: u64,
    /// Publishes sent again after a timeout or an unreachable server.
    pub retries: u64,
    /// Publishes awaiting their acknowledgement now.
    pub in_flight: usize,
    /// Messages of the group not yet relayed.
    pub lag: u64,
    /// Whether the client is connected to a server now.
    pub connected: bool,
    /// The last failure, for people (not to be matched on).
    pub last_error: Option<String>,
}

/// Counters shared between the running relay and its handles.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    relayed: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    in_flight: AtomicUsize,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, error: impl std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
    }
}

/// Watches and stops a relay from another thread or task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
    group: Group,
}

impl RelayHandle {
    /// Progress and health now.
    pub fn stats(&self) -> RelayStats {
        let s = &self.shared;
        RelayStats {
            relayed: s.relayed.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            lag: self.group.stats().lag,
            connected: s.connected.load(Ordering::Relaxed),
            last_error: s.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Asks the relay to stop: it takes no new messages, waits for the outstanding acknowledgements (up to the
    /// drain timeout) and returns from [`Relay::run`].
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// Drains one consumer group of a queue into a JetStream subject. See the [module docs](self).
#[derive(Debug)]
pub struct Relay {
    queue_id: String,
    consumer: Consumer,
    config: RelayConfig,
    handle: RelayHandle,
}

impl Relay {
    /// A relay of `queue`'s group `group` (created if new) with `config`. Nothing is sent before [`run`](Self::run).
    pub fn new(queue: &Queue, group: &str, config: RelayConfig) -> Result<Relay, RelayError> {
        config.validate()?;
        let group = queue.group(group)?;
        Ok(Relay {
            queue_id: queue.queue_id().to_string(),
            consumer: group.consumer(),
            config,
            handle: RelayHandle { shared: Arc::new(Shared::default()), group },
        })
    }

    /// A handle to watch and stop the relay.
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// Relays until stopped (see [`StopWhen`]); returns the final stats. Runs on the caller's tokio runtime and
    /// never blocks it: the group is used through walq's async API, whose fsyncs run on walq's sync thread.
    pub async fn run(self) -> Result<RelayStats, RelayError> {
        let handle = self.handle();
        pipeline::run(self).await?;
        Ok(handle.stats())
    }

    /// [`run`](Self::run) on a runtime of its own, for callers without one.
    pub fn run_blocking(self) -> Result<RelayStats, RelayError> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RelayError::Runtime)?;
        runtime.block_on(self.run())
    }
}
