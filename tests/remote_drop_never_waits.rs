//! Dropping an unanswered `RemoteDelivery` releases it without waiting for the owner's reply: the release is sent
//! before the drop returns (so a take sent after it finds the message again), and its reply is dropped when read.
//! Before, a drop waited a round trip, behind whatever its connection was waiting for: here an ack held at the
//! owner by a stalled journal fsync, for as long as the disk stalls (and on an async task, the executor with it).

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::gated::GatedStorage;
use walq::remote::{RemoteQueue, Sharing};
use walq::{Durability, Message, Offset, Queue};

#[test]
fn a_dropped_delivery_is_released_without_waiting_behind_its_connections_calls() {
    let temp = tempfile::tempdir().unwrap();
    let storage = GatedStorage::default();
    let owner = Queue::builder(temp.path())
        .storage(Arc::new(storage.clone()))
        .durability(Durability::GroupCommit)
        .ack_timeout(Duration::from_secs(3_600))
        .sharing(Sharing::Serve)
        .open()
        .unwrap();
    owner.append_batch(&[Message::new("acked"), Message::new("dropped")]).unwrap();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let consumer = remote.group("g").unwrap().consumer().unwrap();
    let mut taken = consumer.try_recv_batch(2).unwrap();
    let (dropped, acked) = (taken.pop().unwrap(), taken.pop().unwrap());

    // The ack waits at the owner for the journal's fsync, which the gate holds: the connection's next request is
    // not read until it is done.
    storage.gate.close(".journal");
    let acking = std::thread::spawn(move || acked.ack());
    common::eventually("the ack's fsync is held", || storage.gate.waiting() > 0);
    let (returned_tx, returned_rx) = mpsc::channel();
    let dropping = std::thread::spawn(move || {
        drop(dropped);
        returned_tx.send(()).unwrap();
    });
    let returned = returned_rx.recv_timeout(Duration::from_secs(10)).is_ok();
    storage.gate.open();
    assert!(returned, "the drop waited for the owner, behind a held ack");
    dropping.join().unwrap();
    acking.join().unwrap().unwrap();

    let again = consumer.recv_timeout(Duration::from_secs(10)).unwrap().expect("the dropped message was released");
    assert_eq!((again.offset(), again.attempt()), (Offset(1), 2));
    again.ack().unwrap();
    assert_eq!(owner.existing_group("g").unwrap().ack_floor(), Offset(2));
}
