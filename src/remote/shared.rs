//! [`SharedQueue`]: one queue, many processes, no fixed owner. Each process opens the queue with the same call; the
//! first becomes its owner and serves the others, which connect. When the owner exits or dies, the kernel releases
//! its lock and closes its connections: every connected process sees that at once (a watch connection's read
//! ends), races for the lock, and the winner recovers the queue and serves it while the others connect to it.
//!
//! Calls in flight when the owner goes fail with [`Error::ConnectionLost`] where a retry could duplicate (an append,
//! an answer), and are retried on the next owner where it cannot (reads, statistics, takes: the old owner's death
//! released every lease). Nothing an owner acknowledged is lost: the next owner's recovery finds it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{self, OwnerWatch, RemoteConsumer, RemoteDelivery, RemoteFollow, RemoteQueue};
use super::Sharing;
use crate::builder::{LockWait, QueueBuilder};
use crate::error::{Error, Result};
use crate::group::{Consumer, Delivery, LeaseToken, Nacked};
use crate::message::{Message, Offset, Record};
use crate::nonblocking::Syncer;
use crate::queue::{Queue, Stats};

/// How long an open, or a takeover, waits for an owner that holds the lock but does not serve yet (it is
/// recovering), before giving up: [`Error::Locked`] at open (an owner that does not share the queue), and
/// [`Error::ConnectionLost`] from then on after a takeover.
pub const OWNER_WAIT: Duration = Duration::from_secs(30);

/// Takeovers one async wait for messages goes on through before it returns [`Error::ConnectionLost`]: owners
/// that keep dying are reported, not waited out forever.
const TAKEOVERS_PER_WAIT_MAX: u32 = 3;

/// Pause between tries while no process both holds the lock and serves.
const RETRY_PAUSE: Duration = Duration::from_millis(1);

/// A queue shared by processes: this process owns and serves it, or uses it through the process that does, and
/// takes it over when that process goes. See the [module](crate::remote) docs.
///
/// ```
/// use walq::remote::SharedQueue;
/// use walq::{Message, Queue};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// let first = SharedQueue::open(Queue::builder(temp.path()))?; // owns it
/// let second = SharedQueue::open(Queue::builder(temp.path()))?; // (another process) connects
/// assert!(first.is_owner() && !second.is_owner());
/// second.append(Message::new("job"))?;
/// drop(first); // the owner goes: the other takes over
/// let delivery = second.consumer("workers")?.recv()?;
/// assert!(second.is_owner());
/// delivery.ack()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SharedQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// How this process opens the queue when it becomes the owner.
    builder: QueueBuilder,
    state: Mutex<State>,
    /// Held while a new route is established: one attempt at a time, the others then use its outcome.
    establishing: Mutex<()>,
    /// Establishes routes for async calls (the wait for an owner, up to [`OWNER_WAIT`]), off their executor.
    establisher: Syncer,
}

#[derive(Debug)]
struct State {
    route: Route,
    /// Counts route changes: a consumer built on an older route builds itself again.
    generation: u64,
    /// Ends the watcher's wait when this handle is dropped.
    watch_stopper: Option<std::os::unix::net::UnixStream>,
}

#[derive(Debug, Clone)]
enum Route {
    Owner(Queue),
    Client(RemoteQueue),
    /// The last attempt found neither a lock to take nor an owner to connect to within [`OWNER_WAIT`]: the next
    /// call tries again.
    Lost,
}

impl SharedQueue {
    /// Opens the queue in the builder's directory as its owner (serving the others: [`Sharing::Serve`] unless the
    /// builder shares with a group too), or, if another process owns it, connects to that one. An owner that does
    /// not serve is waited for up to [`OWNER_WAIT`], then [`Error::Locked`].
    pub fn open(builder: QueueBuilder) -> Result<SharedQueue> {
        let mut builder = builder;
        if builder.sharing == Sharing::Private {
            builder.sharing = Sharing::Serve;
        }
        builder.lock_wait = LockWait::No;
        let dir = builder.dir.clone();
        let route = establish(&builder, Instant::now() + OWNER_WAIT).map_err(|error| match error {
            Error::ConnectionLost { .. } => Error::Locked { dir: dir.clone() },
            other => other,
        })?;
        let inner = Arc::new(Inner {
            dir,
            builder,
            state: Mutex::new(State { route: Route::Lost, generation: 0, watch_stopper: None }),
            establishing: Mutex::new(()),
            establisher: Syncer::default(),
        });
        inner.install(route);
        Ok(SharedQueue { inner })
    }

    /// Whether this process owns the queue now (it may take it over later).
    pub fn is_owner(&self) -> bool {
        matches!(self.inner.route().0, Route::Owner(_))
    }

    /// The process that owns the queue now: this one's id if it does.
    pub fn owner_pid(&self) -> Option<u32> {
        match self.inner.route().0 {
            Route::Owner(_) => Some(std::process::id()),
            Route::Client(remote) => Some(remote.owner_pid()),
            Route::Lost => None,
        }
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// As [`Queue::append`]. [`Error::ConnectionLost`] if the owner went during the call: the message may or may
    /// not be stored (at-least-once: append it again to be sure).
    pub fn append(&self, message: Message) -> Result<Offset> {
        self.append_batch(std::slice::from_ref(&message))
    }

    /// As [`Queue::append_batch`]; see [`append`](SharedQueue::append) for an owner that goes.
    pub fn append_batch(&self, messages: &[Message]) -> Result<Offset> {
        self.inner.call(Retry::Unsafe, |route| match route {
            Route::Owner(queue) => queue.append_batch(messages),
            Route::Client(remote) => remote.append_batch(messages),
            Route::Lost => Err(self.inner.lost()),
        })
    }

    /// As [`append`](SharedQueue::append), without blocking a thread: [`Queue::append_async`] when this process
    /// owns the queue, [`RemoteQueue::append_async`] when it connects. A takeover it meets (the owner went) is
    /// waited for on a walq thread, never on the executor; the append then fails with [`Error::ConnectionLost`]
    /// as [`append`](SharedQueue::append) does.
    pub async fn append_async(&self, message: Message) -> Result<Offset> {
        self.append_batch_async(std::slice::from_ref(&message)).await
    }

    /// As [`append_batch`](SharedQueue::append_batch), without blocking a thread; see
    /// [`append_async`](SharedQueue::append_async).
    pub async fn append_batch_async(&self, messages: &[Message]) -> Result<Offset> {
        let (route, generation) = self.inner.route_async().await?;
        let appended = match &route {
            Route::Owner(queue) => queue.append_batch_async(messages).await,
            Route::Client(remote) => remote.append_batch_async(messages).await,
            Route::Lost => Err(self.inner.lost()),
        };
        if let Err(Error::ConnectionLost { .. } | Error::Protocol { .. }) = &appended {
            self.inner.reestablish_async(generation).await;
        }
        appended
    }

    /// As [`Queue::get`].
    pub fn get(&self, offset: Offset) -> Result<Option<Record>> {
        self.inner.call(Retry::Safe, |route| match route {
            Route::Owner(queue) => queue.get(offset),
            Route::Client(remote) => remote.get(offset),
            Route::Lost => Err(self.inner.lost()),
        })
    }

    /// Up to `max_count` records from `offset` on (oldest stored first if `offset` is older), as
    /// [`Queue::read_from`] reads them; fewer at the end of the log.
    pub fn read_batch(&self, offset: Offset, max_count: usize) -> Result<Vec<Record>> {
        self.inner.call(Retry::Safe, |route| match route {
            Route::Owner(queue) => queue.read_from(offset)?.take(max_count).collect(),
            Route::Client(remote) => remote.read_from(offset)?.take(max_count).collect(),
            Route::Lost => Err(self.inner.lost()),
        })
    }

    /// The records from `offset` on, as [`Queue::read_from`] reads them, fetched in batches from whichever
    /// process owns the queue (a takeover in between is invisible: the reader goes on where it was).
    pub fn read_from(&self, offset: Offset) -> SharedReader {
        SharedReader { queue: self.clone(), next: offset, batch: Vec::new().into_iter(), end: false }
    }

    /// The records from `offset` on, waiting for new appends once caught up, as [`Queue::follow`]: in the owner a
    /// local [`Follow`](crate::Follow), in a client a [`RemoteFollow`]. It goes on through a takeover, on the next
    /// owner, from the record after the last it returned. [`Offset::LATEST`] is where the log ends when this is
    /// called.
    pub fn follow(&self, offset: Offset) -> Result<SharedFollow> {
        let next = if offset == Offset::LATEST { self.stats()?.next_offset } else { offset };
        let state = FollowState { queue: self.clone(), next, on: None, ended: false };
        Ok(SharedFollow { state: Some(state), pending: None })
    }

    /// The owner's [`Queue::stats`]: [`Stats::owner_pid`] says which process owns the queue (this one if it is
    /// `std::process::id()`), [`Stats::clients_served`] how many connections it serves.
    pub fn stats(&self) -> Result<Stats> {
        self.inner.call(Retry::Safe, |route| match route {
            Route::Owner(queue) => Ok(queue.stats()),
            Route::Client(remote) => remote.stats(),
            Route::Lost => Err(self.inner.lost()),
        })
    }

    /// The consumer group `name`, created if missing, as [`Queue::group`].
    pub fn group(&self, name: &str) -> Result<SharedGroup> {
        self.consumer(name).map(|consumer| SharedGroup { queue: self.clone(), name: consumer.group })
    }

    /// A consumer of group `name` (created if missing), competing with the group's other consumers in every
    /// process. It follows the queue to each new owner.
    pub fn consumer(&self, name: &str) -> Result<SharedConsumer> {
        let consumer =
            SharedConsumer { queue: self.clone(), group: name.to_owned(), route: Arc::new(Mutex::new(None)) };
        consumer.current()?;
        Ok(consumer)
    }
}

/// A consumer group of a [`SharedQueue`].
#[derive(Debug, Clone)]
pub struct SharedGroup {
    queue: SharedQueue,
    name: String,
}

impl SharedGroup {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new consumer, competing with the group's other consumers in every process.
    pub fn consumer(&self) -> Result<SharedConsumer> {
        self.queue.consumer(&self.name)
    }
}

/// Records of a [`SharedQueue`] from an offset on ([`SharedQueue::read_from`]).
#[derive(Debug)]
pub struct SharedReader {
    queue: SharedQueue,
    next: Offset,
    batch: std::vec::IntoIter<Record>,
    end: bool,
}

/// Records one fetch of a [`SharedReader`] asks for.
const READ_BATCH_RECORDS: usize = 1_000;

impl Iterator for SharedReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if let Some(record) = self.batch.next() {
                self.next = Offset(record.offset.0 + 1);
                return Some(Ok(record));
            }
            if self.end {
                return None;
            }
            match self.queue.read_batch(self.next, READ_BATCH_RECORDS) {
                Ok(records) if records.is_empty() => self.end = true,
                Ok(records) => self.batch = records.into_iter(),
                Err(error) => {
                    self.end = true;
                    return Some(Err(error));
                }
            }
        }
    }
}

/// The stream of [`SharedConsumer::deliveries`].
pub struct SharedDeliveries {
    /// The consumer, while no take is in flight (then the take owns it); `None` with no take once ended.
    consumer: Option<SharedConsumer>,
    pending: Option<std::pin::Pin<Box<dyn std::future::Future<Output = DeliveryStep> + Send>>>,
}

type DeliveryStep = (SharedConsumer, Option<Result<SharedDelivery>>);

impl std::fmt::Debug for SharedDeliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDeliveries").field("taking", &self.pending.is_some()).finish()
    }
}

impl futures_core::Stream for SharedDeliveries {
    type Item = Result<SharedDelivery>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<SharedDelivery>>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            let Some(consumer) = this.consumer.take() else { return std::task::Poll::Ready(None) };
            this.pending = Some(Box::pin(async move {
                let item = match consumer.recv_async().await {
                    Ok(delivery) => Some(Ok(delivery)),
                    Err(Error::Closed) => None,
                    Err(error) => Some(Err(error)),
                };
                (consumer, item)
            }));
        }
        let pending = this.pending.as_mut().expect("set above");
        let std::task::Poll::Ready((consumer, item)) = pending.as_mut().poll(cx) else {
            return std::task::Poll::Pending;
        };
        this.pending = None;
        // After the end or an error that does not clear, the stream is over (`consumer` stays `None`).
        let over = match &item {
            None => true,
            Some(Ok(_)) => false,
            Some(Err(error)) => client::ends_the_stream(error),
        };
        if !over {
            this.consumer = Some(consumer);
        }
        std::task::Poll::Ready(item)
    }
}

impl futures_core::FusedStream for SharedDeliveries {
    fn is_terminated(&self) -> bool {
        self.consumer.is_none() && self.pending.is_none()
    }
}

/// The follow of [`SharedQueue::follow`]: [`next_record`](SharedFollow::next_record), or a `Stream` of records. It
/// ends when the queue closes (this process owning it) or after an error that a takeover did not cure.
pub struct SharedFollow {
    /// The follow, while no read is in flight.
    state: Option<FollowState>,
    /// The read in flight: it owns the state until it is done (a `next_record` dropped meanwhile leaves it here,
    /// for the next call to finish).
    pending: Option<std::pin::Pin<Box<dyn std::future::Future<Output = FollowStep> + Send>>>,
}

type FollowStep = (FollowState, Option<Result<Record>>);

impl std::fmt::Debug for SharedFollow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFollow").field("state", &self.state).field("reading", &self.pending.is_some()).finish()
    }
}

#[derive(Debug)]
struct FollowState {
    queue: SharedQueue,
    /// One past the last record returned.
    next: Offset,
    /// The follow on the route of that generation.
    on: Option<(u64, FollowRoute)>,
    ended: bool,
}

#[derive(Debug)]
enum FollowRoute {
    Owner(Box<crate::Follow>),
    Client(RemoteFollow),
}

impl SharedFollow {
    /// The next record, waiting for it if the follow has caught up; `None` once it ended.
    pub async fn next_record(&mut self) -> Option<Result<Record>> {
        std::future::poll_fn(|cx| self.poll_record(cx)).await
    }

    /// The offset this follow looks for next (one past the last record returned; while a read is in flight, the
    /// offset it started at).
    pub fn next_offset(&self) -> Option<Offset> {
        self.state.as_ref().map(|state| state.next)
    }

    fn poll_record(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<Record>>> {
        if self.pending.is_none() {
            let Some(mut state) = self.state.take() else { return std::task::Poll::Ready(None) };
            self.pending = Some(Box::pin(async move {
                let item = state.next_record().await;
                (state, item)
            }));
        }
        let pending = self.pending.as_mut().expect("set above");
        let std::task::Poll::Ready((state, item)) = pending.as_mut().poll(cx) else {
            return std::task::Poll::Pending;
        };
        self.pending = None;
        self.state = Some(state);
        std::task::Poll::Ready(item)
    }
}

impl futures_core::Stream for SharedFollow {
    type Item = Result<Record>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Record>>> {
        self.get_mut().poll_record(cx)
    }
}

impl FollowState {
    async fn next_record(&mut self) -> Option<Result<Record>> {
        let mut takeovers_met = 0;
        loop {
            if self.ended {
                return None;
            }
            let (generation, follow) = match &mut self.on {
                Some((generation, follow)) => (*generation, follow),
                None => match self.open().await {
                    Ok(on) => {
                        let (generation, follow) = self.on.insert(on);
                        (*generation, follow)
                    }
                    Err(error) => {
                        self.ended = true;
                        return Some(Err(error));
                    }
                },
            };
            let item = match follow {
                FollowRoute::Owner(follow) => follow.next_record().await,
                FollowRoute::Client(follow) => follow.next_record().await,
            };
            match item {
                Some(Ok(record)) => {
                    self.next = Offset(record.offset.0 + 1);
                    return Some(Ok(record));
                }
                // The owner went: follow on the next one, from the record after the last returned.
                Some(Err(Error::ConnectionLost { .. })) if takeovers_met < TAKEOVERS_PER_WAIT_MAX => {
                    takeovers_met += 1;
                    self.on = None;
                    self.queue.inner.reestablish_async(generation).await;
                }
                None => {
                    self.ended = true;
                    return None;
                }
                Some(Err(error)) => {
                    self.ended = true;
                    return Some(Err(error));
                }
            }
        }
    }

    /// A follow from `next` on the current route; a connection to the owner is made on walq's thread.
    async fn open(&self) -> Result<(u64, FollowRoute)> {
        let (route, generation) = self.queue.inner.route_async().await?;
        let follow = match route {
            Route::Owner(queue) => FollowRoute::Owner(Box::new(queue.follow(self.next)?)),
            Route::Client(remote) => {
                let next = self.next;
                FollowRoute::Client(self.queue.inner.establisher.run(move || remote.follow(next)).await?)
            }
            Route::Lost => return Err(self.queue.inner.lost()),
        };
        Ok((generation, follow))
    }
}

/// Whether a call that failed because the owner went may be made again on the next owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// It changes nothing (a read), or what it changed died with the owner (a take's leases).
    Safe,
    /// It may have taken effect: the caller decides.
    Unsafe,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn route(&self) -> (Route, u64) {
        let state = self.lock();
        (state.route.clone(), state.generation)
    }

    fn lost(&self) -> Error {
        Error::ConnectionLost { dir: self.dir.clone() }
    }

    /// Runs `call` on the current route. A route that is gone (the owner went, the connection broke, or the last
    /// attempt found no owner) is established again first or after: by the watcher if it was first, or here; and
    /// a call that cannot duplicate anything is then made again on the new route.
    fn call<T>(self: &Arc<Self>, retry: Retry, call: impl Fn(&Route) -> Result<T>) -> Result<T> {
        let (mut route, mut generation) = self.route();
        if matches!(route, Route::Lost) {
            self.reestablish(generation);
            (route, generation) = self.route();
            if matches!(route, Route::Lost) {
                return Err(self.lost()); // that attempt waited its full time: not again for this call
            }
        }
        match call(&route) {
            Err(error @ (Error::ConnectionLost { .. } | Error::Protocol { .. })) => {
                self.reestablish(generation);
                match retry {
                    Retry::Safe => call(&self.route().0),
                    Retry::Unsafe => Err(error),
                }
            }
            other => other,
        }
    }

    /// The current route for an async call: a lost one is established again first, on walq's thread.
    async fn route_async(self: &Arc<Self>) -> Result<(Route, u64)> {
        let (route, generation) = self.route();
        if !matches!(route, Route::Lost) {
            return Ok((route, generation));
        }
        self.reestablish_async(generation).await;
        match self.route() {
            (Route::Lost, _) => Err(self.lost()), // that attempt waited its full time: not again for this call
            current => Ok(current),
        }
    }

    /// [`reestablish`](Inner::reestablish) on walq's thread: the wait for a new owner never runs on the executor.
    async fn reestablish_async(self: &Arc<Self>, seen: u64) {
        let inner = self.clone();
        let _ = self
            .establisher
            .run(move || {
                inner.reestablish(seen);
                Ok(())
            })
            .await;
    }

    /// Establishes a new route unless one was installed since `seen` (by another caller or the watcher).
    fn reestablish(self: &Arc<Self>, seen: u64) {
        let _one_at_a_time = self.establishing.lock().unwrap_or_else(|p| p.into_inner());
        if self.route().1 != seen {
            return;
        }
        let route = establish(&self.builder, Instant::now() + OWNER_WAIT).unwrap_or_else(|error| {
            tracing::error!(dir = %self.dir.display(), %error, "no owner of the queue, and it cannot be opened");
            Route::Lost
        });
        if let Route::Owner(queue) = &route {
            tracing::info!(dir = %self.dir.display(), next_offset = queue.stats().next_offset.0, "took the queue over");
        }
        self.install(route);
    }

    /// Makes `route` current; a client then starts watching its owner. A watch that reaches another owner than
    /// the route's (the route's went meanwhile) counts as the owner gone.
    fn install(self: &Arc<Self>, route: Route) {
        let watch = match &route {
            Route::Client(remote) => {
                Some(OwnerWatch::open(&self.dir).ok().filter(|watch| watch.owner_pid() == remote.owner_pid()))
            }
            _ => None,
        };
        let mut state = self.lock();
        state.route = route;
        state.generation += 1;
        let generation = state.generation;
        let stopper = watch.as_ref().and_then(|w| w.as_ref()?.stopper().ok());
        // The previous route's watcher ends (its owner may be alive: a route replaced after a protocol error).
        if let Some(previous) = std::mem::replace(&mut state.watch_stopper, stopper) {
            let _ = previous.shutdown(std::net::Shutdown::Both);
        }
        drop(state);
        if let Some(watch) = watch {
            self.spawn_watcher(watch, generation);
        }
    }

    /// Starts a thread that waits for the owner of route `generation` to go (at once if `watch` is `None`), then
    /// establishes a new route. It holds the handle weakly while it waits (dropping the last handle ends the wait
    /// through `watch_stopper`), and does nothing for a handle no one holds any more.
    fn spawn_watcher(self: &Arc<Self>, watch: Option<OwnerWatch>, generation: u64) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("walq-takeover".into()).spawn(move || {
            if let Some(watch) = watch {
                watch.wait_for_owner_gone();
            }
            let Some(inner) = weak.upgrade() else { return };
            if Arc::strong_count(&inner) > 1 {
                inner.reestablish(generation);
            }
        });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the thread that takes the queue over when its owner goes");
        }
    }
}

/// Owns the queue if its lock is free, or connects to the process that holds it; tries both until `deadline`
/// while neither works (an owner recovering before it serves, or closing).
fn establish(builder: &QueueBuilder, deadline: Instant) -> Result<Route> {
    loop {
        match builder.clone().open() {
            Ok(queue) => return Ok(Route::Owner(queue)),
            Err(Error::Locked { .. }) => {}
            Err(error) => return Err(error),
        }
        match RemoteQueue::connect(&builder.dir) {
            Ok(remote) => return Ok(Route::Client(remote)),
            Err(Error::NotServed { .. } | Error::ConnectionLost { .. }) => {}
            Err(error) => return Err(error),
        }
        if Instant::now() >= deadline {
            return Err(Error::ConnectionLost { dir: builder.dir.clone() });
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(stopper) = self.lock().watch_stopper.take() {
            let _ = stopper.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The consumer of `group` for the current route, in `slot`; built again after a takeover (waited for if the
/// owner went while it was being built).
fn current_route(queue: &SharedQueue, group: &str, slot: &ConsumerSlot) -> Result<(u64, ConsumerRoute)> {
    match build_route(queue, group, slot) {
        Err((generation, Error::ConnectionLost { .. })) => {
            queue.inner.reestablish(generation);
            build_route(queue, group, slot).map_err(|(_, error)| error)
        }
        other => other.map_err(|(_, error)| error),
    }
}

/// Where a [`SharedConsumer`] keeps its consumer on the route of one generation. Held while one is built, so that
/// two callers never build two.
type ConsumerSlot = Mutex<Option<(u64, ConsumerRoute)>>;

fn build_route(
    queue: &SharedQueue,
    group: &str,
    slot: &ConsumerSlot,
) -> std::result::Result<(u64, ConsumerRoute), (u64, Error)> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    let (route, generation) = queue.inner.route();
    if let Some((built, consumer)) = slot.as_ref() {
        if *built == generation {
            return Ok((generation, consumer.clone()));
        }
    }
    // The group is created by the first build only: one deleted since is not brought back by a takeover.
    let first = slot.is_none();
    let built = match route {
        Route::Owner(queue) => {
            let group = if first { queue.group(group) } else { queue.existing_group(group) };
            group.map(|g| ConsumerRoute::Owner(Arc::new(g.consumer())))
        }
        Route::Client(remote) => {
            let group = if first { remote.group(group) } else { remote.existing_group(group) };
            group.and_then(|g| g.consumer()).map(|c| ConsumerRoute::Client(Arc::new(c)))
        }
        Route::Lost => Err(queue.inner.lost()),
    };
    let consumer = built.map_err(|error| (generation, error))?;
    *slot = Some((generation, consumer.clone()));
    Ok((generation, consumer))
}

/// A consumer of a [`SharedQueue`]'s group, in whichever process owns the queue now.
#[derive(Debug)]
pub struct SharedConsumer {
    queue: SharedQueue,
    group: String,
    /// The consumer on the route of that generation.
    route: Arc<Mutex<Option<(u64, ConsumerRoute)>>>,
}

#[derive(Debug, Clone)]
enum ConsumerRoute {
    Owner(Arc<Consumer>),
    Client(Arc<RemoteConsumer>),
}

impl SharedConsumer {
    /// The consumer for the current route, built again after a takeover (waited for if the owner went while it
    /// was being built).
    fn current(&self) -> Result<(u64, ConsumerRoute)> {
        current_route(&self.queue, &self.group, &self.route)
    }

    /// Takes with `take` on the current route; once more on the next owner if the owner went meanwhile (what the
    /// old owner leased died with it).
    fn take(&self, take: impl Fn(&ConsumerRoute) -> Result<Vec<SharedDelivery>>) -> Result<Vec<SharedDelivery>> {
        let (generation, consumer) = self.current()?;
        match take(&consumer) {
            Err(Error::ConnectionLost { .. }) => {
                self.queue.inner.reestablish(generation);
                take(&self.current()?.1)
            }
            other => other,
        }
    }

    /// A message if one is available now.
    pub fn try_recv(&self) -> Result<Option<SharedDelivery>> {
        Ok(self.try_recv_batch(1)?.into_iter().next())
    }

    /// Up to `max` messages available now.
    pub fn try_recv_batch(&self, max: usize) -> Result<Vec<SharedDelivery>> {
        self.take(|consumer| match consumer {
            ConsumerRoute::Owner(c) => Ok(c.try_recv_batch(max)?.into_iter().map(SharedDelivery::Owner).collect()),
            ConsumerRoute::Client(c) => Ok(c.try_recv_batch(max)?.into_iter().map(SharedDelivery::Client).collect()),
        })
    }

    /// Waits up to `timeout` for at least one message, then returns up to `max` available at that moment.
    pub fn recv_batch_timeout(&self, max: usize, timeout: Duration) -> Result<Vec<SharedDelivery>> {
        self.take(|consumer| match consumer {
            ConsumerRoute::Owner(c) => {
                Ok(c.recv_batch_timeout(max, timeout)?.into_iter().map(SharedDelivery::Owner).collect())
            }
            ConsumerRoute::Client(c) => {
                Ok(c.recv_batch_timeout(max, timeout)?.into_iter().map(SharedDelivery::Client).collect())
            }
        })
    }

    /// Waits up to `timeout` for a message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<SharedDelivery>> {
        Ok(self.recv_batch_timeout(1, timeout)?.into_iter().next())
    }

    /// Waits for the next message; [`Error::Closed`] once the queue is closed or shutting down.
    pub fn recv(&self) -> Result<SharedDelivery> {
        loop {
            if let Some(delivery) = self.recv_timeout(Duration::from_secs(1))? {
                return Ok(delivery);
            }
        }
    }

    /// A blocking iterator over deliveries, as [`Consumer::iter`]: through takeovers as [`recv`](Self::recv) goes;
    /// it ends when the queue closes, and after an error that does not clear (the group deleted, the owner gone
    /// and no takeover in time).
    pub fn iter(&self) -> impl Iterator<Item = Result<SharedDelivery>> + '_ {
        client::iter_until_end(|| self.recv())
    }

    /// The stream of deliveries, as [`Consumer::deliveries`]: each item one message from
    /// [`recv_async`](Self::recv_async), through takeovers; it ends as [`iter`](Self::iter) does. Dropped while
    /// a take waits, what that take leases is released.
    pub fn deliveries(self) -> SharedDeliveries {
        SharedDeliveries { consumer: Some(self), pending: None }
    }

    /// [`current`](SharedConsumer::current) for an async call: the consumer built for the current route if there
    /// is one and no one holds it, else built (a connection and round trips to the owner, or a takeover) on
    /// walq's thread, never on the executor.
    async fn current_async(&self) -> Result<(u64, ConsumerRoute)> {
        if let Ok(slot) = self.route.try_lock() {
            let generation = self.queue.inner.route().1;
            if let Some((built, consumer)) = slot.as_ref().filter(|(built, _)| *built == generation) {
                return Ok((*built, consumer.clone()));
            }
        }
        let (queue, group, slot) = (self.queue.clone(), self.group.clone(), self.route.clone());
        self.queue.inner.establisher.run(move || current_route(&queue, &group, &slot)).await
    }

    /// Waits for the next message without blocking a thread: as [`Consumer::recv_async`] when this process owns
    /// the queue, [`RemoteConsumer::recv_async`] (see its cancel safety) when it connects. It goes on through a
    /// takeover, on the next owner.
    pub async fn recv_async(&self) -> Result<SharedDelivery> {
        loop {
            if let Some(delivery) = self.recv_batch_async(1).await?.pop() {
                return Ok(delivery);
            }
        }
    }

    /// Waits without blocking a thread for at least one message, then returns up to `max` available at that
    /// moment; as [`recv_async`](SharedConsumer::recv_async).
    pub async fn recv_batch_async(&self, max: usize) -> Result<Vec<SharedDelivery>> {
        let mut takeovers_met = 0;
        loop {
            let (generation, consumer) = self.current_async().await?;
            let taken = match &consumer {
                ConsumerRoute::Owner(c) => {
                    c.recv_batch_async(max).await.map(|taken| taken.into_iter().map(SharedDelivery::Owner).collect())
                }
                ConsumerRoute::Client(c) => {
                    c.recv_batch_async(max).await.map(|taken| taken.into_iter().map(SharedDelivery::Client).collect())
                }
            };
            match taken {
                // The owner went: its leases died with it; take again on the next one (as the blocking takes do,
                // once per takeover met).
                Err(Error::ConnectionLost { .. }) if takeovers_met < TAKEOVERS_PER_WAIT_MAX => {
                    takeovers_met += 1;
                    self.queue.inner.reestablish_async(generation).await;
                }
                other => return other,
            }
        }
    }

    /// As [`ack_all`](SharedConsumer::ack_all), without blocking a thread.
    pub async fn ack_all_async(&self, deliveries: impl IntoIterator<Item = SharedDelivery>) -> Result<()> {
        let (mut owned, mut remote) = (Vec::new(), Vec::new());
        for delivery in deliveries {
            match delivery {
                SharedDelivery::Owner(d) => owned.push(d),
                SharedDelivery::Client(d) => remote.push(d),
            }
        }
        // Sent (remote) and journaled (local) in the first poll, before any wait: a call dropped after it leaves
        // every ack standing. Neither needs the current route: each delivery is acked where it was leased.
        let remote_acks = client::ack_all_started(remote);
        let owned_result = crate::group::ack_all_by_group_async(owned).await;
        owned_result.and(remote_acks.await)
    }

    /// Acks many deliveries in one commit where they come from one owner, as [`Consumer::ack_all`].
    pub fn ack_all(&self, deliveries: impl IntoIterator<Item = SharedDelivery>) -> Result<()> {
        let (mut owned, mut remote) = (Vec::new(), Vec::new());
        for delivery in deliveries {
            match delivery {
                SharedDelivery::Owner(d) => owned.push(d),
                SharedDelivery::Client(d) => remote.push(d),
            }
        }
        // Each where it was leased, in one request or commit per consumer or group: through an owner that went,
        // `ConnectionLost` (those leases ended with it); taken while this process owned the queue before, on
        // their own group handles.
        let remote_result = client::ack_all_blocking(remote);
        crate::group::ack_all_by_group(owned).and(remote_result)
    }
}

/// A message leased to a [`SharedConsumer`]: a [`Delivery`] from this process's queue, or a [`RemoteDelivery`]
/// through its owner; answered alike.
#[derive(Debug)]
pub enum SharedDelivery {
    /// Taken while this process owned the queue.
    Owner(Delivery),
    /// Taken through another process that owns it.
    Client(RemoteDelivery),
}

impl SharedDelivery {
    /// The message.
    pub fn message(&self) -> &Record {
        match self {
            SharedDelivery::Owner(d) => d.message(),
            SharedDelivery::Client(d) => d.message(),
        }
    }

    /// The message's offset.
    pub fn offset(&self) -> Offset {
        self.message().offset
    }

    /// Which delivery of this message this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        match self {
            SharedDelivery::Owner(d) => d.attempt(),
            SharedDelivery::Client(d) => d.attempt(),
        }
    }

    /// This delivery's lease.
    pub fn token(&self) -> LeaseToken {
        match self {
            SharedDelivery::Owner(d) => d.token(),
            SharedDelivery::Client(d) => d.token(),
        }
    }

    /// As [`Delivery::ack`]. [`Error::ConnectionLost`] if its owner went: the message is delivered again.
    pub fn ack(self) -> Result<()> {
        match self {
            SharedDelivery::Owner(d) => d.ack(),
            SharedDelivery::Client(d) => d.ack(),
        }
    }

    /// As [`Delivery::nack`].
    pub fn nack(self, delay: Duration) -> Result<Nacked> {
        match self {
            SharedDelivery::Owner(d) => d.nack(delay),
            SharedDelivery::Client(d) => d.nack(delay),
        }
    }

    /// As [`Delivery::fail`].
    pub fn fail(self, error: impl std::fmt::Display) -> Result<Nacked> {
        match self {
            SharedDelivery::Owner(d) => d.fail(error),
            SharedDelivery::Client(d) => d.fail(error),
        }
    }

    /// As [`Delivery::dead_letter_with`].
    pub fn dead_letter_with(self, reason: impl std::fmt::Display) -> Result<Nacked> {
        match self {
            SharedDelivery::Owner(d) => d.dead_letter_with(reason),
            SharedDelivery::Client(d) => d.dead_letter_with(reason),
        }
    }

    /// As [`ack`](SharedDelivery::ack), without blocking a thread ([`Delivery::ack_async`],
    /// [`RemoteDelivery::ack_async`]).
    pub async fn ack_async(self) -> Result<()> {
        match self {
            SharedDelivery::Owner(d) => d.ack_async().await,
            SharedDelivery::Client(d) => d.ack_async().await,
        }
    }

    /// As [`nack`](SharedDelivery::nack), without blocking a thread.
    pub async fn nack_async(self, delay: Duration) -> Result<Nacked> {
        match self {
            SharedDelivery::Owner(d) => d.nack_async(delay).await,
            SharedDelivery::Client(d) => d.nack_async(delay).await,
        }
    }

    /// As [`fail`](SharedDelivery::fail), without blocking a thread.
    pub async fn fail_async(self, error: impl std::fmt::Display) -> Result<Nacked> {
        match self {
            SharedDelivery::Owner(d) => d.fail_async(error).await,
            SharedDelivery::Client(d) => d.fail_async(error).await,
        }
    }

    /// As [`dead_letter_with`](SharedDelivery::dead_letter_with), without blocking a thread.
    pub async fn dead_letter_async(self, reason: impl std::fmt::Display) -> Result<Nacked> {
        match self {
            SharedDelivery::Owner(d) => d.dead_letter_async(reason).await,
            SharedDelivery::Client(d) => d.dead_letter_async(reason).await,
        }
    }

    /// As [`Delivery::extend_lease`].
    pub fn extend_lease(&self) -> Result<()> {
        match self {
            SharedDelivery::Owner(d) => d.extend_lease(),
            SharedDelivery::Client(d) => d.extend_lease(),
        }
    }
}
