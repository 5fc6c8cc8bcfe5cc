//! `Queue::shutdown(grace)` (#22, item 1): consumers stop being handed messages at once (a waiting `recv` is
//! woken with `Closed`), deliveries already out may be answered during the grace period, and those still out at
//! its end are given back without counting the attempt; nothing acked is delivered again after a reopen.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use walq::{Error, Offset};

#[test]
fn workers_finish_their_jobs_and_nothing_acked_comes_back() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..200);
    let group = queue.group("jobs").unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (consumer, started_tx) = (group.consumer(), started_tx.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for delivery in consumer.iter() {
                    let delivery = delivery.unwrap();
                    started_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(30)); // a job; shutdown comes in the middle of one
                    acked.push(delivery.offset().0);
                    delivery.ack().unwrap(); // answering during the grace period works
                }
                acked
            })
        })
        .collect();
    for _ in 0..6 {
        started_rx.recv().unwrap();
    }
    let report = queue.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(report.interrupted, 0, "every job in progress was answered within the grace period");
    let acked: BTreeSet<u64> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert!(acked.len() >= 6 && acked.len() < 200, "shutdown stopped the workers part-way: {}", acked.len());
    assert!(matches!(queue.append(message(999)), Err(Error::Closed)), "closed after the grace period");

    let queue = small(temp.path()).open().unwrap();
    let consumer = queue.group("jobs").unwrap().consumer();
    let mut rest = BTreeSet::new();
    while let Some(delivery) = consumer.try_recv().unwrap() {
        assert_eq!(delivery.attempt(), 1, "offset {}: never handed out before the shutdown", delivery.offset());
        rest.insert(delivery.offset().0);
        delivery.ack().unwrap();
    }
    assert!(acked.is_disjoint(&rest), "a message acked before the shutdown was delivered again");
    assert_eq!(acked.union(&rest).count(), 200, "every message delivered, once acked");
}

#[test]
fn a_delivery_still_out_at_the_end_of_grace_is_given_back_without_counting_the_attempt() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).max_deliveries(2).open().unwrap();
    append_range(&queue, 0..3);
    let consumer = queue.group("jobs").unwrap().consumer();
    // Offset 0 has failed once already: one attempt left before it is dead-lettered.
    consumer.try_recv().unwrap().unwrap().nack(Duration::ZERO).unwrap();
    let interrupted = consumer.try_recv().unwrap().unwrap();
    assert_eq!((interrupted.offset(), interrupted.attempt()), (Offset(0), 2));
    let second = consumer.try_recv().unwrap().unwrap();
    assert_eq!((second.offset(), second.attempt()), (Offset(1), 1));
    let started = Instant::now();
    let shutting = {
        let queue = queue.clone();
        std::thread::spawn(move || queue.shutdown(Duration::from_millis(300)))
    };
    eventually("shutdown began", || queue.stats().shutting_down);
    // Offset 2 is available, but nothing more is handed out; a delivery out can still be answered.
    assert!(matches!(consumer.try_recv(), Err(Error::Closed)), "a message handed out during the shutdown");
    second.extend_lease().unwrap();
    let report = shutting.join().unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "shutdown waited for the grace period");
    assert_eq!(report.interrupted, 2, "offsets 0 and 1 were still out");
    assert!(matches!(interrupted.ack(), Err(Error::Closed)), "an answer after the grace period is refused");
    drop(second);

    let queue = small(temp.path()).max_deliveries(2).open().unwrap();
    let consumer = queue.group("jobs").unwrap().consumer();
    let attempts: Vec<(u64, u32)> = std::iter::from_fn(|| consumer.try_recv().unwrap())
        .map(|d| {
            let seen = (d.offset().0, d.attempt());
            d.ack().unwrap();
            seen
        })
        .collect();
    // Offset 0 gets its last attempt again (not dead-lettered); offset 1 its first again.
    assert_eq!(attempts, vec![(0, 2), (1, 1), (2, 1)]);
    assert_eq!(queue.group("jobs").unwrap().stats().dead_letters, 0);
}

#[test]
fn a_consumer_waiting_in_recv_is_woken() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let consumer = queue.group("jobs").unwrap().consumer();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || tx.send(consumer.recv().map(|d| d.offset())).unwrap());
    std::thread::sleep(Duration::from_millis(50)); // the waiter is in recv, the queue empty
    let shutting = {
        let queue = queue.clone();
        std::thread::spawn(move || queue.shutdown(Duration::from_secs(5)))
    };
    // Under the 1 s a waiting recv sleeps between checks when nothing wakes it: the shutdown's notify did.
    let woken = rx.recv_timeout(Duration::from_millis(500)).expect("recv was not woken");
    assert!(matches!(woken, Err(Error::Closed)), "{woken:?}");
    waiter.join().unwrap();
    assert_eq!(shutting.join().unwrap().unwrap().interrupted, 0);
}
