//! Regression: `RemoteConsumer::ack_all_async` marked the consumer's own deliveries answered, then awaited the
//! acks of other consumers' deliveries one by one before sending its own `AckAll`. A future dropped at one of
//! those awaits (a timeout, a `select!`) left the marked deliveries neither acked nor released: leased until
//! `ack_timeout`, an hour here. Now every request (one `AckAll` per consumer that leased) is sent before the first
//! wait, so whatever point the future is dropped at after its first poll, every ack stands.

mod common;

use std::future::Future;
use std::task::{Context, Waker};
use std::time::Duration;

use walq::remote::{RemoteQueue, Sharing};
use walq::{Message, Offset, Queue};

#[test]
fn an_ack_all_async_dropped_after_its_first_poll_leaves_every_ack_standing() {
    let temp = tempfile::tempdir().unwrap();
    let owner =
        Queue::builder(temp.path()).sharing(Sharing::Serve).ack_timeout(Duration::from_secs(3_600)).open().unwrap();
    owner.append_batch(&(0..4).map(|i| Message::new(format!("m{i}"))).collect::<Vec<_>>()).unwrap();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let group = remote.group("g").unwrap();
    let (mine, other) = (group.consumer().unwrap(), group.consumer().unwrap());
    let mut deliveries = mine.try_recv_batch(2).unwrap();
    deliveries.extend(other.try_recv_batch(2).unwrap());
    assert_eq!(deliveries.len(), 4);

    let mut acking = Box::pin(mine.ack_all_async(deliveries));
    let polled = acking.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    assert!(polled.is_pending(), "the acks need the owner's replies");
    drop(acking);

    let group = owner.existing_group("g").unwrap();
    common::eventually("every ack of the dropped ack_all_async reached the owner", || {
        group.ack_floor() == Offset(4) && group.stats().in_flight == 0
    });
}
