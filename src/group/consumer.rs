//! [`Consumer`] and [`Delivery`]: taking messages from a group and answering for them.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::{stale_error, GroupInner, LateAck, LeaseToken, Nacked, Recorded};
use crate::error::{Error, Result};
use crate::message::{Offset, Record};
use crate::nonblocking::{Completion, SignalOrTime};
use crate::reader::KeepOpen;

/// Longest single wait when nothing else bounds it: waits are re-checked at least this often.
const WAIT_SLICE: Duration = Duration::from_secs(1);

/// Takes messages from a group. Cheap to clone, `Send + Sync`; consumers of one group compete for its messages.
/// ///
/// ```
/// use std::time::Duration;
/// use walq::{Message, Queue};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// let queue = Queue::open(temp.path())?;
/// queue.append_batch(&[Message::new("a"), Message::new("b"), Message::new("c")])?;
/// let consumer = queue.group("workers")?.consumer();
/// let worker = {
///     let consumer = consumer.clone(); // another worker of the same group
///     std::thread::spawn(move || consumer.recv_timeout(Duration::from_secs(1)).map(|d| d.map(|d| d.ack())))
/// };
/// let batch = consumer.try_recv_batch(10)?; // what the other worker did not take
/// consumer.ack_all(batch)?;
/// worker.join().unwrap()?;
/// assert_eq!(queue.group("workers")?.ack_floor().value(), 3);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Consumer {
    group: Arc<GroupInner>,
    /// Keeps the queue open while this handle lives.
    queue: KeepOpen,
}

impl Consumer {
    pub(super) fn new(group: Arc<GroupInner>, queue: KeepOpen) -> Consumer {
        Consumer { group, queue }
    }

    /// Waits for the next message. Returns [`Error::Closed`] once the queue is closed or shutting down
    /// ([`Queue::shutdown`](crate::Queue::shutdown)); a `recv` waiting then is woken.
    pub fn recv(&self) -> Result<Delivery> {
        loop {
            if let Some(delivery) = self.recv_until(None, 1)?.pop() {
                return Ok(delivery);
            }
        }
    }

    /// Waits up to `timeout` for the next message; `Ok(None)` if none came.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Delivery>> {
        Ok(self.recv_until(Some(Instant::now() + timeout), 1)?.pop())
    }

    /// The next message if one is available now.
    pub fn try_recv(&self) -> Result<Option<Delivery>> {
        Ok(self.group.try_take(Instant::now(), 1, &self.queue)?.pop())
    }

    /// Up to `max` messages available now, in delivery order (empty if none is). Leasing them costs one journal
    /// write instead of one each; answer them one by one or with [`ack_all`](Consumer::ack_all).
    pub fn try_recv_batch(&self, max: usize) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.group.try_take(Instant::now(), max, &self.queue)
    }

    /// As [`try_recv_batch`](Consumer::try_recv_batch), stopping once the messages taken hold `bytes_max` bytes
    /// (keys, values and headers; the one that passes it is taken): what an owner serving other processes holds
    /// for one of their takes stays bounded whatever its count and the messages' size.
    pub(crate) fn try_recv_batch_within(&self, max: usize, bytes_max: usize) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.group.try_take_within(Instant::now(), max, bytes_max, &self.queue)
    }

    /// Waits up to `timeout` for at least one message, then returns up to `max` available at that moment.
    pub fn recv_batch_timeout(&self, max: usize, timeout: Duration) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.recv_until(Some(Instant::now() + timeout), max)
    }

    /// Acks many deliveries at once: one journal write and one commit (one fsync in `Durability::Sync`) for the
    /// whole batch, instead of one each. Returns once all are acknowledged as the durability mode says; on an
    /// error none of them is known to be durable, and each is delivered again unless a later ack lands, except
    /// [`Error::StaleLeases`](crate::Error::StaleLeases): every delivery was acked but those it names, whose
    /// messages were delivered again after their leases ended (those deliveries answer for them).
    /// Deliveries of other groups are acked in their own group.
    pub fn ack_all(&self, deliveries: impl IntoIterator<Item = Delivery>) -> Result<()> {
        ack_all_by_group(deliveries)
    }

    /// Waits for the next message without blocking a thread: the async [`recv`](Consumer::recv). Returns
    /// [`Error::Closed`] once the queue is closed or shutting down. Runs on any executor (it needs no runtime).
    ///
    /// Cancel safety: dropping the future (a `select!`, a timeout) never loses a message and leases none: a
    /// message is taken only in the poll that returns it.
    ///
    /// ```
    /// # fn main() -> walq::Result<()> {
    /// # let temp = tempfile::tempdir().unwrap();
    /// let queue = walq::Queue::open(temp.path())?;
    /// let consumer = queue.group("workers")?.consumer();
    /// futures_executor::block_on(async {
    ///     queue.append_async(walq::Message::new("job")).await?;
    ///     let delivery = consumer.recv_async().await?;
    ///     assert_eq!(delivery.message().value.as_deref(), Some(&b"job"[..]));
    ///     delivery.ack_async().await
    /// })
    /// # }
    /// ```
    pub async fn recv_async(&self) -> Result<Delivery> {
        loop {
            if let Some(delivery) = self.recv_batch_async(1).await?.pop() {
                return Ok(delivery);
            }
        }
    }

    /// Waits for at least one message without blocking a thread, then returns up to `max` available at that
    /// moment (empty only for `max == 0`). Cancel safety as [`recv_async`](Consumer::recv_async).
    pub async fn recv_batch_async(&self, max: usize) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut waiting = SignalOrTime::new(self.group.signal.clone());
        std::future::poll_fn(|cx| self.poll_take(cx, &mut waiting, max)).await
    }

    /// The deliveries as a [`Stream`](futures_core::Stream), one at a time; it ends when the queue closes. Each
    /// item is taken only when the stream is polled for it (cancel safety as [`recv_async`](Consumer::recv_async)).
    pub fn deliveries(&self) -> Deliveries {
        Deliveries { consumer: self.clone(), waiting: SignalOrTime::new(self.group.signal.clone()), ended: false }
    }

    /// As [`ack_all`](Consumer::ack_all), without blocking a thread: the acks are journaled when the future is
    /// first polled; the fsync that makes them durable (in `Sync` and `GroupCommit`) runs on walq's sync thread.
    ///
    /// Cancel safety: dropped before its first poll, the deliveries are dropped unanswered (delivered again at
    /// once); dropped later, every ack is journaled (deliveries of other groups in their own group) and becomes
    /// durable without the future.
    pub async fn ack_all_async(&self, deliveries: impl IntoIterator<Item = Delivery>) -> Result<()> {
        ack_all_by_group_async(deliveries).await
    }

    /// One attempt at taking up to `max` messages, or arranging to be woken when it is worth trying again.
    fn poll_take(&self, cx: &mut Context<'_>, waiting: &mut SignalOrTime, max: usize) -> Poll<Result<Vec<Delivery>>> {
        for _ in 0..crate::nonblocking::TRIES_PER_POLL {
            let seen = waiting.current();
            match self.group.try_take(Instant::now(), max, &self.queue) {
                Ok(taken) if taken.is_empty() => {}
                taken => return Poll::Ready(taken),
            }
            if waiting.poll_wait(cx, seen, self.group.next_timer()).is_pending() {
                return Poll::Pending;
            }
        }
        // The signal keeps moving (appends elsewhere) and nothing can be taken: yield, so that the tasks that would
        // make room (acks under `max_ack_pending`, a key's owner) run on this executor too.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// A blocking iterator over deliveries; it ends when the queue closes.
    pub fn iter(&self) -> impl Iterator<Item = Result<Delivery>> + '_ {
        std::iter::from_fn(move || match self.recv() {
            Ok(delivery) => Some(Ok(delivery)),
            Err(Error::Closed) => None,
            Err(error) => Some(Err(error)),
        })
    }

    /// Waits on the queue's signal (bumped by appends and by releases in any group), not by polling the disk; the
    /// group's own timers (lease expiry, nack delays) bound each wait.
    fn recv_until(&self, deadline: Option<Instant>, max: usize) -> Result<Vec<Delivery>> {
        loop {
            let seen = self.group.signal.current();
            let now = Instant::now();
            let taken = self.group.try_take(now, max, &self.queue)?;
            if !taken.is_empty() || deadline.is_some_and(|d| now >= d) {
                return Ok(taken);
            }
            let wake = [deadline, self.group.next_timer(), Some(now + WAIT_SLICE)].into_iter().flatten().min();
            self.group.signal.wait_past(seen, wake.expect("the wait slice is always there"));
        }
    }
}

/// One group's leases (offset, lease id), acked in one journal write.
type GroupLeases = (Arc<GroupInner>, Vec<(u64, u64)>);

/// The leases (offset, lease id) of `deliveries`, marked answered, by the group that leased them: a linear search,
/// as one ack_all holds the deliveries of one group or a few.
fn leases_by_group(deliveries: impl IntoIterator<Item = Delivery>) -> Vec<GroupLeases> {
    let deliveries = deliveries.into_iter();
    let expected = deliveries.size_hint().0; // most often all of one group: room for them at once
    let mut by_group: Vec<GroupLeases> = Vec::new();
    for mut delivery in deliveries {
        delivery.answered = true;
        let lease = (delivery.record.offset.0, delivery.lease_id());
        match by_group.iter_mut().find(|(group, _)| Arc::ptr_eq(group, &delivery.taken.group)) {
            Some((_, leases)) => leases.push(lease),
            None => {
                let mut leases = Vec::with_capacity(if by_group.is_empty() { expected } else { 1 });
                leases.push(lease);
                by_group.push((delivery.taken.group.clone(), leases));
            }
        }
    }
    by_group
}

/// Acks `deliveries`, of any consumers and groups, with one journal write and one commit per group (see
/// [`Consumer::ack_all`]). Every group is tried: the first error, else [`Error::StaleLeases`] naming every stale
/// one.
pub(crate) fn ack_all_by_group(deliveries: impl IntoIterator<Item = Delivery>) -> Result<()> {
    let (mut stale, mut failed) = (Vec::new(), None);
    for (group, leases) in leases_by_group(deliveries) {
        match group.ack_many(&leases) {
            Ok(()) => {}
            Err(Error::StaleLeases { offsets }) => stale.extend(offsets),
            Err(error) => {
                failed.get_or_insert(error);
            }
        }
    }
    if let Some(error) = failed {
        return Err(error);
    }
    stale.sort_unstable();
    stale_error(stale)
}

/// [`ack_all_by_group`] without blocking a thread: every group's acks are journaled in the first poll, before
/// any wait (a future dropped at a wait must not leave deliveries marked answered yet neither acked nor
/// released); the commits are waited for on walq's sync thread.
pub(crate) async fn ack_all_by_group_async(deliveries: impl IntoIterator<Item = Delivery>) -> Result<()> {
    let (mut stale, mut waits, mut failed) = (Vec::new(), Vec::new(), None);
    for (group, leases) in leases_by_group(deliveries) {
        match group.record_ack_many(&leases) {
            Ok((recorded, group_stale)) => {
                stale.extend(group_stale);
                waits.push(group.finish_async(recorded));
            }
            Err(error) => {
                failed.get_or_insert(error); // `answer` released them, or the group is closed or deleted
            }
        }
    }
    for wait in waits {
        if let Err(error) = wait.await {
            failed.get_or_insert(error);
        }
    }
    if let Some(error) = failed {
        return Err(error);
    }
    stale.sort_unstable();
    stale_error(stale)
}

/// The stream of [`Consumer::deliveries`]: each item is a message taken for this consumer; it ends when the queue
/// closes. An error is an item; after [`Error::GroupDeleted`] or [`Error::Poisoned`], which never clear, the
/// stream ends.
#[derive(Debug)]
pub struct Deliveries {
    consumer: Consumer,
    waiting: SignalOrTime,
    ended: bool,
}

impl futures_core::Stream for Deliveries {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.consumer.poll_take(cx, &mut this.waiting, 1) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(Error::Closed)) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(error)) => {
                // These never clear: said once, then the stream ends (a loop over it must not spin on them).
                this.ended = matches!(error, Error::GroupDeleted { .. } | Error::Poisoned);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(taken) => Poll::Ready(taken.map(|mut taken| taken.pop()).transpose()),
        }
    }
}

impl futures_core::FusedStream for Deliveries {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

/// What the deliveries of one take share: their group, and the queue they keep open. One reference count per
/// delivery, on a structure of this take alone, instead of two on structures every consumer of the group updates
/// (with competing consumers, those counts bounced between cores on every delivery and every drop).
#[derive(Debug)]
pub(super) struct Take {
    group: Arc<GroupInner>,
    /// Keeps the queue open while a delivery of this take lives.
    _queue: KeepOpen,
}

impl Take {
    pub(super) fn new(group: Arc<GroupInner>, queue: KeepOpen) -> Take {
        Take { group, _queue: queue }
    }
}

/// A message leased to one consumer. Answer it with [`ack`](Delivery::ack), [`nack`](Delivery::nack) or
/// [`dead_letter`](Delivery::dead_letter); dropping it unanswered makes it available again at once.
/// ///
/// ```
/// use std::time::Duration;
/// use walq::{Message, Nacked, Queue};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// let queue = Queue::builder(temp.path()).max_deliveries(2).open()?;
/// queue.append(Message::json(&("refund", 1200))?)?;
/// let consumer = queue.group("payments")?.consumer();
/// let delivery = consumer.try_recv()?.unwrap();
/// let (kind, cents): (String, u64) = delivery.json()?;
/// assert_eq!((kind.as_str(), cents, delivery.attempt()), ("refund", 1200, 1));
/// assert_eq!(delivery.fail("provider timed out")?, Nacked::Retry); // delivered again
/// let again = consumer.try_recv()?.unwrap();
/// assert!(again.is_last_attempt());
/// again.ack()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Delivery {
    taken: Arc<Take>,
    record: Record,
    attempt: u32,
    /// The lease, with the group's epoch when it was taken: a reset of the group since makes every answer stale.
    token: LeaseToken,
    answered: bool,
}

impl Delivery {
    /// A delivery of `record` not leased yet ([`Delivery::leased`] once the take is journaled): as if answered,
    /// so that dropping it (the journal write failed) releases nothing.
    pub(super) fn unleased(taken: Arc<Take>, record: Record, attempt: u32) -> Delivery {
        let token = LeaseToken { epoch: 0, lease_id: super::NO_LEASE };
        Delivery { taken, record, attempt, token, answered: true }
    }

    /// The delivery under its lease: unanswered from here on (a drop releases it).
    pub(super) fn leased(&mut self, token: LeaseToken) {
        debug_assert!(self.answered && token.lease_id != super::NO_LEASE, "leased once");
        self.token = token;
        self.answered = false;
    }

    /// The delivery as a server keeps it for a client in another process: its message, attempt and lease. The
    /// lease stays out (this is not a drop): the server answers it by token (`Group::ack_held` and the others).
    pub(crate) fn into_held(mut self) -> (Record, u32, LeaseToken) {
        self.answered = true;
        let emptied =
            Record { offset: self.record.offset, timestamp_ms: 0, key: None, value: None, headers: Vec::new() };
        (std::mem::replace(&mut self.record, emptied), self.attempt, self.token)
    }

    /// The lease id, or `NO_LEASE` if the group was reset since the delivery (see `GroupInner::lease_id_of`).
    fn lease_id(&self) -> u64 {
        self.taken.group.lease_id_of(self.token)
    }

    /// The message.
    pub fn message(&self) -> &Record {
        &self.record
    }

    /// The message's offset.
    pub fn offset(&self) -> Offset {
        self.record.offset
    }

    /// The value, deserialized from JSON (what [`Message::json`](crate::Message::json) wrote). A value that is
    /// not JSON of type `T` is [`Error::Json`](crate::Error::Json); the delivery stays leased, to be answered as
    /// the caller decides (a value that never parses is a case for [`dead_letter`](Delivery::dead_letter)).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        self.record.json()
    }

    /// Moves the value out of the delivery without copying it (`None` for a tombstone, or when already taken);
    /// the delivery keeps its lease and is answered as usual. Afterwards its `message()` has no value (it reads
    /// as a tombstone, and `json` fails).
    pub fn take_value(&mut self) -> Option<Vec<u8>> {
        self.record.value.take()
    }

    /// Which delivery of this message this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether this is the message's last allowed attempt (`max_deliveries`): if it fails (nack, drop, expiry),
    /// it becomes a dead letter. A handler can then record why, or treat the failure differently.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.taken.group.config.max_deliveries
    }

    /// Marks the message done. Returns once that is acknowledged as the queue's durability mode says; an ack that
    /// was not durable when a crash came means the message is delivered again. Acking after the lease expired
    /// still counts (the work was done), unless the message was delivered again meanwhile: then it is refused
    /// with [`Error::StaleLease`](crate::Error::StaleLease), and the new delivery answers for it.
    pub fn ack(mut self) -> Result<()> {
        self.answered = true;
        self.taken.group.ack(self.record.offset.0, self.lease_id(), LateAck::Counts)
    }

    /// This delivery's lease, for an answer made away from it ([`Group::ack`](crate::Group::ack) and the other
    /// answers by offset).
    pub fn token(&self) -> LeaseToken {
        self.token
    }

    /// Gives the message back, to be delivered again after `delay` (at most [`RETRY_DELAY_MAX`](crate::RETRY_DELAY_MAX);
    /// or dead-lettered if this was its last allowed attempt); says which. The delay is journaled: a restart does
    /// not deliver the message before its time.
    pub fn nack(mut self, delay: Duration) -> Result<Nacked> {
        self.answered = true;
        self.taken.group.nack(self.record.offset.0, self.lease_id(), Some(delay), None)
    }

    /// This attempt failed: the message is delivered again after the queue's
    /// [`retry_backoff`](crate::QueueBuilder::retry_backoff) for its attempt count (at once without one), or
    /// dead-lettered if this was its last allowed attempt; says which. A dropped delivery and an expired lease
    /// wait the same backoff.
    pub fn retry(mut self) -> Result<Nacked> {
        self.answered = true;
        self.taken.group.nack(self.record.offset.0, self.lease_id(), None, None)
    }

    /// This attempt failed with `error`: as [`retry`](Delivery::retry), and the error's text (at most
    /// [`DEAD_LETTER_REASON_BYTES_MAX`](crate::DEAD_LETTER_REASON_BYTES_MAX) bytes) is kept for the message's
    /// dead-letter reason, should a later attempt (or this one) be its last.
    pub fn fail(mut self, error: impl std::fmt::Display) -> Result<Nacked> {
        self.answered = true;
        self.taken.group.nack(self.record.offset.0, self.lease_id(), None, Some(error.to_string()))
    }

    /// Restarts the lease's `ack_timeout`. Fails with [`Error::LeaseExpired`] if the lease already ended (its
    /// deadline passed, even if no other call has noticed yet): the message is another consumer's to take.
    pub fn extend_lease(&self) -> Result<()> {
        self.taken.group.extend_lease(self.record.offset.0, self.lease_id())
    }

    /// Sets the message aside as a dead letter now, whatever its attempt count: [`Nacked::DeadLettered`], or
    /// [`Nacked::LeaseEnded`] (nothing changed) if the lease had ended.
    pub fn dead_letter(mut self) -> Result<Nacked> {
        self.answered = true;
        self.taken.group.dead_letter(self.record.offset.0, self.lease_id(), None)
    }

    /// As [`dead_letter`](Delivery::dead_letter), with the reason [`Group::dead_letters`](crate::Group::dead_letters)
    /// lists (at most [`DEAD_LETTER_REASON_BYTES_MAX`](crate::DEAD_LETTER_REASON_BYTES_MAX) bytes; longer is cut).
    pub fn dead_letter_with(mut self, reason: impl std::fmt::Display) -> Result<Nacked> {
        self.answered = true;
        self.taken.group.dead_letter(self.record.offset.0, self.lease_id(), Some(reason.to_string()))
    }
}

/// The async answers: each is journaled when its future is first polled (as the blocking call would be, on the
/// polling task); the fsync that makes it durable in `Sync` and `GroupCommit` runs on walq's sync thread, never on
/// the executor. Cancel safety: a future dropped before its first poll drops the delivery unanswered (it is
/// delivered again at once, as a dropped [`Delivery`] is); dropped later, the answer stands and becomes durable
/// without the future (a crash before then delivers the message again, as for any answer not yet acknowledged).
impl Delivery {
    /// As [`ack`](Delivery::ack), without blocking a thread. See above for cancel safety.
    pub async fn ack_async(mut self) -> Result<()> {
        self.answered = true;
        let recorded = self.taken.group.record_ack(self.record.offset.0, self.lease_id(), LateAck::Counts)?;
        self.finish_async(recorded).await
    }

    /// As [`nack`](Delivery::nack), without blocking a thread. See above for cancel safety.
    pub async fn nack_async(mut self, delay: Duration) -> Result<Nacked> {
        self.answered = true;
        let (recorded, nacked) =
            self.taken.group.record_nack(self.record.offset.0, self.lease_id(), Some(delay), None)?;
        self.finish_async(recorded).await.map(|()| nacked)
    }

    /// As [`fail`](Delivery::fail), without blocking a thread. See above for cancel safety.
    pub async fn fail_async(mut self, error: impl std::fmt::Display) -> Result<Nacked> {
        self.answered = true;
        let reason = Some(error.to_string());
        let (recorded, nacked) = self.taken.group.record_nack(self.record.offset.0, self.lease_id(), None, reason)?;
        self.finish_async(recorded).await.map(|()| nacked)
    }

    /// As [`dead_letter_with`](Delivery::dead_letter_with), without blocking a thread. See above for cancel safety.
    pub async fn dead_letter_async(mut self, reason: impl std::fmt::Display) -> Result<Nacked> {
        self.answered = true;
        let reason = Some(reason.to_string());
        let (recorded, nacked) = self.taken.group.record_dead_letter(self.record.offset.0, self.lease_id(), reason)?;
        self.finish_async(recorded).await.map(|()| nacked)
    }

    fn finish_async(&self, recorded: Recorded) -> Completion<()> {
        self.taken.group.finish_async(recorded)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.answered {
            self.taken.group.release_dropped(self.record.offset.0, self.lease_id());
        }
    }
}
