//! The async API through an owner (`RemoteQueue`, `RemoteConsumer`, `RemoteDelivery`, and `SharedQueue` over
//! them): the same calls as the local async API, whose waits for the owner's reply never run on the executor. A
//! current-thread tokio runtime (one thread for all its tasks) must keep a ticker running while an async append
//! waits for an owner's held fsync, and while an async receive waits at the owner for a message; a cancelled
//! receive releases what its take leased; a `SharedQueue` consumer goes on through a takeover.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::gated::GatedStorage;
use walq::remote::{RemoteQueue, SharedQueue, Sharing};
use walq::{Durability, Message, Nacked, Offset, Queue};

/// Ticks the ticker must make while the remote call waits.
const TICKS: u32 = 50;

/// Runs `work` beside a ticker on a current-thread runtime of its own thread. Returns whether the ticker made
/// [`TICKS`] ticks of 1 ms while `work` was still waiting; `release` (run by the test thread after that verdict)
/// lets `work` finish; then `work`'s output.
fn ticks_while_waiting<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
    release: impl FnOnce(),
) -> (bool, T) {
    let (ticked_tx, ticked_rx) = mpsc::channel();
    let runtime_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let work = tokio::spawn(work);
            for _ in 0..TICKS {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let _ = ticked_tx.send(!work.is_finished());
            work.await.unwrap()
        })
    });
    let verdict = ticked_rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false);
    release();
    (verdict, runtime_thread.join().unwrap())
}

#[test]
fn remote_calls_waiting_for_the_owner_leave_the_runtime_running() {
    let temp = tempfile::tempdir().unwrap();
    let storage = GatedStorage::default();
    let owner = Queue::builder(temp.path())
        .storage(Arc::new(storage.clone()))
        .durability(Durability::GroupCommit)
        .sharing(Sharing::Serve)
        .open()
        .unwrap();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    // An append whose owner holds it for a held fsync.
    storage.gate.close(".seg");
    let appending = remote.clone();
    let (ticked, offset) =
        ticks_while_waiting(async move { appending.append_async(Message::new("held")).await }, || {
            common::eventually("the owner's fsync is held", || storage.gate.waiting() > 0);
            storage.gate.open();
        });
    assert!(ticked, "the runtime stopped while a remote append waited for the owner");
    assert_eq!(offset.unwrap(), Offset(0));
    // A receive that waits at the owner for a message (the owner holds a take up to a second).
    let consumer = remote.group("g").unwrap().consumer().unwrap();
    let first = consumer.try_recv().unwrap().unwrap();
    first.ack().unwrap();
    let appender = owner.clone();
    let (ticked, delivery) = ticks_while_waiting(
        async move {
            let delivery = consumer.recv_async().await.unwrap();
            (delivery.offset(), delivery.ack_async().await)
        },
        move || {
            appender.append(Message::new("later")).unwrap();
        },
    );
    assert!(ticked, "the runtime stopped while a remote receive waited for a message");
    assert_eq!((delivery.0, delivery.1.is_ok()), (Offset(1), true));
    assert_eq!(owner.existing_group("g").unwrap().ack_floor(), Offset(2));
}

#[test]
fn a_large_async_batch_is_written_off_the_runtime_while_the_owner_reads_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let storage = GatedStorage::default();
    let _owner = Queue::builder(temp.path())
        .storage(Arc::new(storage.clone()))
        .durability(Durability::GroupCommit)
        .sharing(Sharing::Serve)
        .open()
        .unwrap();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    storage.gate.close(".seg");
    // The owner serves the first append and waits in its held fsync, reading nothing more from this connection:
    // an 8 MiB frame written on the task would stop it once the socket is full.
    let batch: Vec<Message> = (0..64).map(|i| Message::new(vec![i as u8; 128 * 1024])).collect();
    let (ticked, offsets) = ticks_while_waiting(
        async move { tokio::join!(remote.append_async(Message::new("held")), remote.append_batch_async(&batch)) },
        || {
            common::eventually("the owner's fsync is held", || storage.gate.waiting() > 0);
            storage.gate.open();
        },
    );
    assert!(ticked, "the runtime stopped while a large batch was written to an owner that read nothing");
    assert_eq!((offsets.0.unwrap(), offsets.1.unwrap()), (Offset(0), Offset(1)));
}

#[test]
fn async_remote_appends_takes_and_answers() {
    let temp = tempfile::tempdir().unwrap();
    let owner = Queue::builder(temp.path())
        .sharing(Sharing::Serve)
        .ack_timeout(Duration::from_secs(3_600))
        .max_deliveries(5)
        .open()
        .unwrap();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let batch: Vec<Message> = (0..100).map(|i| Message::new(format!("m{i}"))).collect();
        assert_eq!(remote.append_batch_async(&batch).await.unwrap(), Offset(0));
        assert_eq!(remote.append_async(Message::new("m100")).await.unwrap(), Offset(100));
        let consumer = remote.group("g").unwrap().consumer().unwrap();
        let mut taken = consumer.recv_batch_async(1_000).await.unwrap();
        assert_eq!(taken.len(), 101);
        assert_eq!(taken[7].message().value.as_deref(), Some(&b"m7"[..]));
        let dead = taken.pop().unwrap();
        let failed = taken.pop().unwrap();
        let nacked = taken.pop().unwrap();
        let acked = taken.pop().unwrap();
        acked.ack_async().await.unwrap();
        assert_eq!(nacked.nack_async(Duration::from_secs(3_600)).await.unwrap(), Nacked::Retry);
        assert_eq!(failed.fail_async("boom").await.unwrap(), Nacked::Retry);
        assert!(matches!(dead.dead_letter_async("poison").await.unwrap(), Nacked::DeadLettered));
        consumer.ack_all_async(taken).await.unwrap();
        // The failed one comes back at once; the nacked one waits its hour.
        let again = consumer.recv_async().await.unwrap();
        assert_eq!((again.offset(), again.attempt()), (Offset(99), 2));
        again.ack_async().await.unwrap();
    });
    let group = owner.existing_group("g").unwrap();
    assert_eq!(group.ack_floor(), Offset(98), "98 is nacked for an hour");
    assert_eq!((group.stats().dead_letters, group.stats().in_flight), (1, 0));
}

#[test]
fn a_cancelled_async_receive_releases_what_its_take_leased() {
    let temp = tempfile::tempdir().unwrap();
    let owner =
        Queue::builder(temp.path()).sharing(Sharing::Serve).ack_timeout(Duration::from_secs(3_600)).open().unwrap();
    let local = owner.group("g").unwrap().consumer();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let consumer = remote.group("g").unwrap().consumer().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // The take waits at the owner (up to a second); the receive is given up after 50 ms.
        let given_up = tokio::time::timeout(Duration::from_millis(50), consumer.recv_async()).await;
        assert!(given_up.is_err());
    });
    // The message appended now goes to the take still waiting at the owner, whose reply finds no receiver: the
    // lease is released at once, not after the hour of `ack_timeout`.
    owner.append(Message::new("for whoever asks")).unwrap();
    let group = owner.existing_group("g").unwrap();
    common::eventually("the cancelled take leased the message and released it", || {
        let stats = group.stats();
        (stats.deliveries, stats.dropped, stats.in_flight) == (1, 1, 0)
    });
    let delivery = local.try_recv().unwrap().expect("released by the cancelled take");
    assert_eq!((delivery.offset(), delivery.attempt()), (Offset(0), 2), "leased by the cancelled take, released");
    delivery.ack().unwrap();
    assert_eq!(owner.existing_group("g").unwrap().stats().in_flight, 0);
}

#[test]
fn a_shared_queue_consumer_goes_on_through_a_takeover_without_blocking_its_runtime() {
    let temp = tempfile::tempdir().unwrap();
    let open = || SharedQueue::open(Queue::builder(temp.path()).ack_timeout(Duration::from_secs(3_600))).unwrap();
    let first = open();
    let second = open();
    assert!(first.is_owner() && !second.is_owner());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        assert_eq!(second.append_async(Message::new("zero")).await.unwrap(), Offset(0));
        let consumer = second.consumer("g").unwrap();
        let delivery = consumer.recv_async().await.unwrap();
        assert_eq!(delivery.offset(), Offset(0));
        delivery.ack_async().await.unwrap();
        // The owner goes while the consumer waits: the wait goes on at the next owner (this handle).
        let waiting = consumer.recv_async();
        let appended = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(first);
            // The takeover is the watcher's: wait for it, then append at the new owner.
            while !second.is_owner() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            second.append_async(Message::new("one")).await.unwrap()
        };
        let (delivery, offset) = tokio::join!(waiting, appended);
        let delivery = delivery.unwrap();
        assert_eq!((offset, delivery.offset()), (Offset(1), Offset(1)));
        consumer.ack_all_async(vec![delivery]).await.unwrap();
    });
    assert!(second.is_owner());
    assert_eq!(second.stats().unwrap().next_offset, Offset(2));
}
