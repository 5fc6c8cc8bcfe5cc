//! Dropping an unanswered `RemoteDelivery` releases it without waiting for the owner's reply: the release is
//! written before the drop returns (so a take sent after it finds the message again), and its reply is read on the
//! connection's walq thread. Before, a drop waited a round trip, behind whatever its connection was waiting for:
//! here a take held at the owner for up to 20 s, and on an async task, the whole executor with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use walq::remote::{RemoteQueue, Sharing};
use walq::{Message, Offset, Queue};

#[test]
fn a_dropped_delivery_is_released_without_waiting_behind_its_connections_take() {
    let temp = tempfile::tempdir().unwrap();
    let owner =
        Queue::builder(temp.path()).sharing(Sharing::Serve).ack_timeout(Duration::from_secs(3_600)).open().unwrap();
    owner.append(Message::new("dropped")).unwrap();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let consumer = Arc::new(remote.group("g").unwrap().consumer().unwrap());
    let dropped = consumer.try_recv().unwrap().unwrap();

    // A take that waits at the owner until something is appended (nothing is, until after the drop).
    let take_returned = Arc::new(AtomicBool::new(false));
    let taking = {
        let (consumer, take_returned) = (consumer.clone(), take_returned.clone());
        std::thread::spawn(move || {
            let taken = consumer.recv_timeout(Duration::from_secs(20)).unwrap();
            take_returned.store(true, Ordering::SeqCst);
            taken.map(|delivery| delivery.offset())
        })
    };
    std::thread::sleep(Duration::from_millis(300)); // the take is at the owner
    drop(dropped);
    assert!(!take_returned.load(Ordering::SeqCst), "the drop waited for the take ahead of its release");

    owner.append(Message::new("for the take")).unwrap();
    assert_eq!(taking.join().unwrap(), Some(Offset(1)));
    let local = owner.group("g").unwrap().consumer();
    let again = local.recv_timeout(Duration::from_secs(10)).unwrap().expect("the dropped message was released");
    assert_eq!((again.offset(), again.attempt()), (Offset(0), 2));
}
