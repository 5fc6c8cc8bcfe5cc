//! Answers for deliveries another process holds: the owner's server keeps each one a client took as its offset
//! and [`LeaseToken`], and answers it here exactly as the [`Delivery`](super::Delivery) it stands for would be
//! answered (an ack after the lease expired still counts; a release is a dropped delivery). The server holds no
//! `Delivery`, so a client's leases never keep the owner's queue open.

use std::time::Duration;

use super::{Group, LateAck, LeaseToken, Nacked};
use crate::error::Result;

impl Group {
    /// As [`Delivery::ack`](super::Delivery::ack).
    pub(crate) fn ack_held(&self, offset: u64, token: LeaseToken) -> Result<()> {
        self.inner.ack(offset, self.inner.lease_id_of(token), LateAck::Counts)
    }

    /// As [`Consumer::ack_all`](super::Consumer::ack_all) of deliveries of this group.
    pub(crate) fn ack_all_held(&self, leases: &[(u64, LeaseToken)]) -> Result<()> {
        let answered: Vec<(u64, u64)> =
            leases.iter().map(|&(offset, token)| (offset, self.inner.lease_id_of(token))).collect();
        self.inner.ack_many(&answered)
    }

    /// As [`Delivery::nack`](super::Delivery::nack) (`delay` given), [`retry`](super::Delivery::retry) (none)
    /// or [`fail`](super::Delivery::fail) (a reason).
    pub(crate) fn nack_held(
        &self,
        offset: u64,
        token: LeaseToken,
        delay: Option<Duration>,
        reason: Option<String>,
    ) -> Result<Nacked> {
        self.inner.nack(offset, self.inner.lease_id_of(token), delay, reason)
    }

    /// As [`Delivery::dead_letter_with`](super::Delivery::dead_letter_with) (`None`: as `dead_letter`).
    pub(crate) fn dead_letter_held(&self, offset: u64, token: LeaseToken, reason: Option<String>) -> Result<Nacked> {
        self.inner.dead_letter(offset, self.inner.lease_id_of(token), reason)
    }

    /// As [`Delivery::extend_lease`](super::Delivery::extend_lease).
    pub(crate) fn extend_held(&self, offset: u64, token: LeaseToken) -> Result<()> {
        self.inner.extend_lease(offset, self.inner.lease_id_of(token))
    }

    /// As dropping the delivery unanswered: available again at once (after the retry backoff, if any), the
    /// attempt counted.
    pub(crate) fn release_held(&self, offset: u64, token: LeaseToken) {
        self.inner.release_dropped(offset, self.inner.lease_id_of(token));
    }

    /// The group's `max_deliveries`: a delivery of that attempt is its last.
    pub(crate) fn max_deliveries(&self) -> u32 {
        self.inner.config.max_deliveries
    }
}

impl Group {
    /// What a wait for this group's next message watches without holding the queue: the queue's signal (bumped
    /// by appends, released messages and the close), and the group's next timer (a lease's expiry, a delay's
    /// end), which no signal announces.
    pub(crate) fn wake_source(&self) -> (std::sync::Arc<crate::signal::Signal>, Option<std::time::Instant>) {
        (self.inner.signal.clone(), self.inner.next_timer())
    }
}
