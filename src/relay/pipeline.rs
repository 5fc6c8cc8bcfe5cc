//! The relay's loop: take deliveries in order, publish each with its deduplication id, await acknowledgements
//! oldest first, and answer the group in batches from a task of its own. Every wait is a future of walq's async
//! API (`recv_async`, `ack_all_async`, `nack_async`): no call blocks the runtime, and the fsyncs of the group's
//! commits run on walq's sync thread.
//!
//! Invariant: every delivery the relay holds is in `window`, leased, and answered exactly once (acked after its
//! acknowledgement, nacked after a rejection, or dropped, hence released, when a stop gives up draining). That is
//! what makes at-least-once hold: nothing is acked that JetStream did not acknowledge.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::header::HeaderMap;
use async_nats::jetstream::context::{Context, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::Subject;
use bytes::Bytes;

use super::{mapping, Relay, RelayConfig, RelayError, Shared, StopWhen};
use crate::error::Error;
use crate::group::{Consumer, Delivery};

/// How long one wait for a new message lasts before the loop looks at its stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often the leases of held deliveries are extended (well inside any sensible `ack_timeout`).
const LEASE_REFRESH: Duration = Duration::from_secs(1);
/// Acknowledgements the client may track beyond the window: dropped futures of republished messages hold a permit
/// until their own timeout.
const INFLIGHT_SLACK_FACTOR: usize = 4;
/// Fewest free places in the window worth a take from the group (each take is a journal write). Measured
/// (`benches/relay.rs`, 2026-12-03): 64 relays as fast as a bare publisher sending the same headers, 32 at two
/// thirds of it.
const REFILL_BATCH_MIN: usize = 64;
/// Most answers folded into one group commit.
const ANSWER_BATCH_MAX: usize = 4_096;

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// A delivery on its way to JetStream. Its headers are not kept: a republish (rare) maps the record again, so that
/// the first publish can give its headers away instead of sending a copy.
struct Pending {
    delivery: Delivery,
    subject: Subject,
    payload: Bytes,
    sent: Sent,
}

enum Sent {
    Waiting(AckFuture),
    Failed(PublishError),
}

pub(super) async fn run(relay: Relay) -> Result<(), RelayError> {
    let Relay { queue_id, consumer, config, handle } = relay;
    let shared = handle.shared.clone();
    let client = connect(&config, shared.clone()).await?;
    let context = async_nats::jetstream::ContextBuilder::new()
        .timeout(config.publish_timeout)
        .ack_timeout(config.publish_timeout)
        .max_ack_inflight(config.window * INFLIGHT_SLACK_FACTOR)
        .build(client.clone());
    if let Some(name) = &config.stream {
        if !ensure_stream(&context, name, &config, &shared).await? {
            return Ok(()); // stopped before the server was reachable
        }
    }
    let answers = Answerer::start(consumer.clone(), shared.clone());
    let fixed_subject = Subject::from(config.subject.as_str());
    let mut pipeline =
        Pipeline { queue_id, consumer, config, shared, context, window: VecDeque::new(), answers, fixed_subject };
    let result = pipeline.run().await;
    let answered = pipeline.answers.finish().await;
    result.and(answered)
}

async fn connect(config: &RelayConfig, shared: Arc<Shared>) -> Result<async_nats::Client, RelayError> {
    let events = shared.clone();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => events.connected.store(true, Ordering::Relaxed),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        events.connected.store(false, Ordering::Relaxed);
                        events.note_error(format!("NATS connection {event}"));
                    }
                    async_nats::Event::ServerError(_) | async_nats::Event::ClientError(_) => {
                        events.note_error(format!("NATS {event}"));
                    }
                    _ => {}
                }
                tracing::info!(%event, "nats connection");
            }
        })
        .connect(config.server_url.as_str())
        .await
        .map_err(|source| RelayError::Connect { url: config.server_url.clone(), source })?;
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    shared.connected.store(connected, Ordering::Relaxed);
    Ok(client)
}

/// Looks the stream up or creates it, retrying while the server is unreachable. `Ok(false)`: stopped meanwhile.
async fn ensure_stream(
    context: &Context,
    name: &str,
    config: &RelayConfig,
    shared: &Shared,
) -> Result<bool, RelayError> {
    let subject = match config.subject_mode {
        mapping::SubjectMode::Fixed => config.subject.clone(),
        mapping::SubjectMode::KeyToken => format!("{}.>", config.subject),
    };
    let stream = async_nats::jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![subject],
        duplicate_window: config.duplicate_window,
        ..Default::default()
    };
    let mut backoff = Backoff::new(config);
    loop {
        match context.get_or_create_stream(stream.clone()).await {
            Ok(_) => return Ok(true),
            Err(source) => {
                use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
                if matches!(source.kind(), Kind::EmptyStreamName | Kind::InvalidStreamName) {
                    return Err(RelayError::Stream { name: name.to_string(), source });
                }
                tracing::warn!(stream = name, error = %source, "stream not ready; retrying");
                shared.note_error(format!("stream {name}: {source}"));
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return Ok(false);
        }
        backoff.wait().await;
    }
}

struct Pipeline {
    queue_id: String,
    consumer: Consumer,
    config: RelayConfig,
    shared: Arc<Shared>,
    context: Context,
    window: VecDeque<Pending>,
    answers: Answerer,
    /// The subject of `SubjectMode::Fixed`, built once.
    fixed_subject: Subject,
}

impl Pipeline {
    async fn run(&mut self) -> Result<(), RelayError> {
        let mut backoff = Backoff::new(&self.config);
        let mut leases_refreshed = Instant::now();
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.answers.check()?;
            let stopping = self.shared.stop.load(Ordering::Acquire);
            if stopping && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + self.config.drain_timeout);
            }
            if !stopping && !self.fill().await? {
                self.shared.stop.store(true, Ordering::Release); // the queue closed
                continue;
            }
            self.shared.in_flight.store(self.window.len(), Ordering::Relaxed);
            if self.window.is_empty() {
                if stopping || !self.wait_for_message().await? {
                    return Ok(());
                }
                continue;
            }
            if drain_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                tracing::warn!(
                    outstanding = self.window.len(),
                    "drain timeout: outstanding messages go out again next run"
                );
                self.window.clear(); // dropped deliveries are released to the group
                return Ok(());
            }
            if leases_refreshed.elapsed() >= LEASE_REFRESH {
                self.refresh_leases();
                leases_refreshed = Instant::now();
            }
            self.settle_front(&mut backoff).await;
        }
    }

    /// Takes ready messages into the window once it has room for a batch of them. `Ok(false)` if the queue closed.
    async fn fill(&mut self) -> Result<bool, RelayError> {
        let room = self.config.window - self.window.len();
        if room < REFILL_BATCH_MIN.min(self.config.window) {
            return Ok(true); // one journal write per batch, not per message: settle some more first
        }
        match self.consumer.try_recv_batch(room) {
            Ok(deliveries) => {
                for delivery in deliveries {
                    self.push(delivery).await;
                }
                Ok(true)
            }
            Err(Error::Closed) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Waits a little for a message while nothing is outstanding. `Ok(false)` if the relay should return: the
    /// queue closed, or it is idle and [`StopWhen::Idle`] says so.
    async fn wait_for_message(&mut self) -> Result<bool, RelayError> {
        // Cancel safe: a receive dropped by the timeout takes nothing.
        let waited = tokio::time::timeout(IDLE_WAIT, self.consumer.recv_async()).await;
        match waited {
            Ok(Ok(delivery)) => {
                self.push(delivery).await;
                Ok(true)
            }
            Err(_elapsed) => Ok(self.config.stop_when != StopWhen::Idle),
            Ok(Err(Error::Closed)) => Ok(false),
            Ok(Err(error)) => Err(error.into()),
        }
    }

    async fn push(&mut self, delivery: Delivery) {
        let record = delivery.message();
        let subject = match self.config.subject_mode {
            // One subject for every message: shared, not built again for each.
            mapping::SubjectMode::Fixed => self.fixed_subject.clone(),
            mode => Subject::from(mapping::subject_for(&self.config.subject, mode, record.key.as_deref())),
        };
        let headers = mapping::headers_for(&self.queue_id, record);
        let payload = Bytes::copy_from_slice(record.value.as_deref().unwrap_or_default());
        let sent = publish(&self.context, subject.clone(), headers, payload.clone(), self.config.publish_timeout).await;
        self.window.push_back(Pending { delivery, subject, payload, sent });
    }

    /// Awaits the oldest publish's acknowledgement and acts on it.
    async fn settle_front(&mut self, backoff: &mut Backoff) {
        let front = self.window.front_mut().expect("called with a non-empty window");
        let outcome = match &mut front.sent {
            Sent::Waiting(ack) => ack.as_mut().await,
            Sent::Failed(error) => Err(PublishError::new(error.kind())),
        };
        match outcome {
            Ok(ack) => {
                let pending = self.window.pop_front().expect("front exists");
                if ack.duplicate {
                    self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                backoff.reset();
                self.answers.send(Answer::Ack(pending.delivery));
            }
            Err(error) if is_transient(&error) => {
                tracing::warn!(%error, outstanding = self.window.len(), "publish not acknowledged; publishing again");
                self.shared.note_error(format!("publish: {error}"));
                backoff.wait().await;
                self.refresh_leases();
                self.republish_all().await;
            }
            Err(error) => {
                let pending = self.window.pop_front().expect("front exists");
                let offset = pending.delivery.offset();
                tracing::warn!(%error, %offset, "the server rejected the message; nacking it");
                self.shared.note_error(format!("offset {offset} rejected: {error}"));
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                self.answers.send(Answer::Nack(pending.delivery, self.config.reject_delay));
            }
        }
    }

    /// Publishes every held message again, in order and with its id: JetStream drops those it already stored.
    async fn republish_all(&mut self) {
        for pending in self.window.iter_mut() {
            let headers = mapping::headers_for(&self.queue_id, pending.delivery.message());
            let (subject, payload) = (pending.subject.clone(), pending.payload.clone());
            pending.sent = publish(&self.context, subject, headers, payload, self.config.publish_timeout).await;
        }
        self.shared.retries.fetch_add(self.window.len() as u64, Ordering::Relaxed);
    }

    /// Keeps held deliveries leased, so that a slow or absent server costs no delivery attempts.
    fn refresh_leases(&self) {
        for pending in &self.window {
            if let Err(error) = pending.delivery.extend_lease() {
                // It will be delivered again too; the duplicate publish is dropped by its id.
                tracing::debug!(offset = %pending.delivery.offset(), %error, "lease not extended");
            }
        }
    }
}

async fn publish(context: &Context, subject: Subject, headers: HeaderMap, payload: Bytes, timeout: Duration) -> Sent {
    let message = PublishMessage::build().headers(headers).payload(payload);
    match tokio::time::timeout(timeout, context.send_publish(subject, message)).await {
        Ok(Ok(ack)) => Sent::Waiting(Box::pin(ack.into_future())),
        Ok(Err(error)) => Sent::Failed(error),
        Err(_elapsed) => Sent::Failed(PublishError::new(PublishErrorKind::TimedOut)),
    }
}

/// Failures that say nothing about the message itself: the server is away, slow, restarting or has no stream
/// yet. Everything else is the server's answer to this message, or a message the client refuses to send.
fn is_transient(error: &PublishError) -> bool {
    match error.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => true,
        PublishErrorKind::Other => std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
            // 503: JetStream temporarily unavailable (starting, no leader yet).
            .is_some_and(|server| server.code() == 503),
        _ => false,
    }
}

/// Exponential backoff between attempts.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(config: &RelayConfig) -> Backoff {
        Backoff { next: config.backoff_min, min: config.backoff_min, max: config.backoff_max }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// An answer for the group.
enum Answer {
    Ack(Delivery),
    Nack(Delivery, Duration),
}

/// Answers the group from a task of its own, so that the publishing loop never waits for a group commit. Answers
/// queued meanwhile fold into one commit.
struct Answerer {
    sender: Option<tokio::sync::mpsc::UnboundedSender<Answer>>,
    task: Option<tokio::task::JoinHandle<()>>,
    failure: Arc<Mutex<Option<Error>>>,
}

impl Answerer {
    fn start(consumer: Consumer, shared: Arc<Shared>) -> Answerer {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let failure = Arc::new(Mutex::new(None));
        let task = tokio::spawn(answer_loop(consumer, receiver, shared, failure.clone()));
        Answerer { sender: Some(sender), task: Some(task), failure }
    }

    fn send(&self, answer: Answer) {
        // The task lives until `finish`; a send fails only if it panicked, which `finish` reports.
        let _ = self.sender.as_ref().expect("sender lives until finish").send(answer);
    }

    /// The first failure of the group, if any: the relay stops on it.
    fn check(&self) -> Result<(), RelayError> {
        match self.failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    /// Waits until every answer sent is in the group.
    async fn finish(&mut self) -> Result<(), RelayError> {
        drop(self.sender.take());
        if let Some(task) = self.task.take() {
            task.await.expect("the relay's answer task does not panic");
        }
        self.check()
    }
}

async fn answer_loop(
    consumer: Consumer,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<Answer>,
    shared: Arc<Shared>,
    failure: Arc<Mutex<Option<Error>>>,
) {
    while let Some(first) = receiver.recv().await {
        let mut acks = Vec::new();
        let mut nacks = Vec::new();
        let mut next = Some(first);
        while let Some(answer) = next.take() {
            match answer {
                Answer::Ack(delivery) => acks.push(delivery),
                Answer::Nack(delivery, delay) => nacks.push((delivery, delay)),
            }
            if acks.len() + nacks.len() < ANSWER_BATCH_MAX {
                next = receiver.try_recv().ok();
            }
        }
        let mut acked = acks.len() as u64;
        // A stale ack (the lease ended and the message went out again) is no failure: the others were acked, and
        // the new delivery is relayed again (JetStream drops the duplicate by its message id).
        let mut result = match consumer.ack_all_async(acks).await {
            Err(Error::StaleLeases { offsets }) => {
                tracing::debug!(?offsets, "relayed messages were delivered again before their acks");
                acked -= offsets.len() as u64;
                Ok(())
            }
            other => other,
        };
        for (delivery, delay) in nacks {
            if result.is_ok() {
                result = delivery.nack_async(delay).await.map(drop);
            }
        }
        match result {
            Ok(()) => {
                shared.relayed.fetch_add(acked, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(%error, "the group could not record the relay's answers");
                shared.note_error(&error);
                failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(error);
            }
        }
    }
}
