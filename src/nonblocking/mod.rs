//! The machinery of the async API ([`Queue::append_async`](crate::Queue::append_async),
//! [`Consumer::recv_async`](crate::Consumer::recv_async), [`Delivery::ack_async`](crate::Delivery::ack_async),
//! [`Follow`](crate::Follow), ...): futures that need no particular runtime and never block their executor on
//! an fsync.
//!
//! - A task that waits for a message or a new append registers its waker with the queue's signal
//!   ([`crate::signal`]), which every append and every release bumps; timers (a lease's end, a retry delay) run on
//!   `futures-timer`'s one helper thread.
//! - What waits for the disk runs on walq's sync thread ([`Syncer`]): a task writes its append or answer to the
//!   file (a copy into the page cache, as a blocking call would) and awaits the fsync that thread leads or joins.
//!
//! Reads and writes of the page cache run on the polling task. So do, still, a few rarer things that fsync (the
//! README's async section lists them for users): a group journal's checkpoint (amortised: it rewrites the group's
//! state once the journal has grown past a multiple of it), a dead letter's reason note in `Sync` and
//! `GroupCommit`, deletions after an ack with `Maintenance::Manual`, and the close that dropping a queue's last
//! handle performs. A blocking `Sync` call on another thread holds the log's or a journal's lock for its fsync, and a
//! task waits for that lock.

mod syncer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_timer::Delay;

use crate::signal::{AsyncWait, Signal};

pub(crate) use syncer::{Completion, Syncer};

/// Longest single wait of a task when nothing else bounds it: its condition is re-checked at least this often (as
/// a blocked thread's is).
pub(crate) const WAIT_SLICE: Duration = Duration::from_secs(1);

/// How often one poll checks its condition again after the signal moved during the check, before it yields: a
/// signal bumped by a stream of appends elsewhere must not keep a task polling (and its executor's thread busy).
pub(crate) const TRIES_PER_POLL: usize = 3;

/// A task's wait for the next bump of a signal or a time, whichever comes first.
#[derive(Debug)]
pub(crate) struct SignalOrTime {
    wait: AsyncWait,
    timer: Option<(Instant, Delay)>,
    /// When the current wait slice ends (see [`WAIT_SLICE`]).
    slice_end: Instant,
}

impl SignalOrTime {
    pub(crate) fn new(signal: Arc<Signal>) -> SignalOrTime {
        SignalOrTime { wait: AsyncWait::new(signal), timer: None, slice_end: Instant::now() + WAIT_SLICE }
    }

    /// The signal's sequence number now: read it before checking the condition.
    pub(crate) fn current(&self) -> u64 {
        self.wait.signal().current()
    }

    /// Arranges for the task to be woken by the next bump after `seen`, or at `wake_at` (or the end of the wait
    /// slice) if earlier. `Ready` means it is time to check the condition again now.
    pub(crate) fn poll_wait(&mut self, cx: &mut Context<'_>, seen: u64, wake_at: Option<Instant>) -> Poll<()> {
        if !self.wait.register(seen, cx.waker()) {
            return Poll::Ready(());
        }
        let now = Instant::now();
        if now >= self.slice_end {
            self.slice_end = now + WAIT_SLICE;
            return Poll::Ready(());
        }
        let wake_at = wake_at.map_or(self.slice_end, |at| at.min(self.slice_end));
        if wake_at <= now {
            return Poll::Ready(());
        }
        let delay = match &mut self.timer {
            Some((at, delay)) if *at == wake_at => delay,
            timer => {
                let (_, delay) = timer.insert((wake_at, Delay::new(wake_at - now)));
                delay
            }
        };
        match Pin::new(delay).poll(cx) {
            Poll::Ready(()) => {
                self.timer = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
