//! Regression: `RemoteConsumer::ack_all` given a delivery of another group failed with `StaleLeases` and left
//! that delivery's message leased in its group.
//!
//! The cause: every lease went in one "ack all" request for the consumer's own group, where the owner takes an
//! ack only for a lease current in that group; another group's lease is not, so its message stayed leased until
//! its timeout, and the caller was told its lease had ended. The fix acks such a delivery through its own
//! connection and group, as `Consumer::ack_all` does locally.

use std::time::Duration;

use walq::remote::{RemoteQueue, Sharing};
use walq::{Message, Offset, Queue};

#[test]
fn ack_all_acks_deliveries_of_other_groups_and_connections_in_their_own() {
    let temp = tempfile::tempdir().unwrap();
    let owner =
        Queue::builder(temp.path()).sharing(Sharing::Serve).ack_timeout(Duration::from_secs(3_600)).open().unwrap();
    for i in 0..2 {
        owner.append(Message::new(format!("m{i}"))).unwrap();
    }
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let a = remote.group("a").unwrap().consumer().unwrap();
    let b = remote.group("b").unwrap().consumer().unwrap();
    let a_again = remote.group("a").unwrap().consumer().unwrap();
    let mut deliveries = a.try_recv_batch(1).unwrap();
    deliveries.extend(b.try_recv_batch(2).unwrap());
    deliveries.extend(a_again.try_recv_batch(1).unwrap());
    assert_eq!(deliveries.len(), 4);
    a.ack_all(deliveries).unwrap();
    for group in ["a", "b"] {
        let stats = owner.existing_group(group).unwrap().stats();
        assert_eq!((stats.in_flight, owner.existing_group(group).unwrap().ack_floor()), (0, Offset(2)), "{group}");
    }
}
