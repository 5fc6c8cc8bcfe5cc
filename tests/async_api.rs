//! The async API under tokio (current-thread and multi-thread runtimes) and under a second executor
//! (`futures-executor`, which has no timer or I/O driver of its own): appends, takes, answers and follows resolve,
//! waits end on appends from another thread and on walq's own timers, and streams end when the queue closes.

mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use walq::{Durability, Error, Message, Nacked, Offset, Queue};

fn modes() -> [Durability; 4] {
    [Durability::None, Durability::Interval(Duration::from_millis(5)), Durability::GroupCommit, Durability::Sync]
}

/// Appends, takes and acks 50 messages in every durability mode, then checks the group's floor and the log.
async fn round_trip(queue: Queue) {
    let consumer = queue.group("g").unwrap().consumer();
    for i in 0..50u64 {
        let offset = queue.append_async(common::message(i)).await.unwrap();
        assert_eq!(offset, Offset(i));
    }
    let first = queue.append_batch_async(&[Message::new("b0"), Message::new("b1")]).await.unwrap();
    assert_eq!(first, Offset(50));
    let mut seen = 0;
    while seen < 52 {
        let batch = consumer.recv_batch_async(7).await.unwrap();
        assert!(!batch.is_empty() && batch.len() <= 7);
        for delivery in &batch {
            assert_eq!(delivery.offset(), Offset(seen));
            seen += 1;
        }
        if seen % 2 == 0 {
            consumer.ack_all_async(batch).await.unwrap();
        } else {
            for delivery in batch {
                delivery.ack_async().await.unwrap();
            }
        }
    }
    assert_eq!(queue.group("g").unwrap().ack_floor(), Offset(52));
    let stats = queue.stats();
    assert_eq!(stats.async_waits_pending, 0);
    if queue.durability().acknowledges_durable() {
        assert_eq!(stats.durable_offset, Offset(52), "acknowledged async appends are durable");
    }
}

#[test]
fn round_trips_on_a_current_thread_tokio_runtime() {
    for mode in modes() {
        let temp = tempfile::tempdir().unwrap();
        let queue = Queue::builder(temp.path()).durability(mode).open().unwrap();
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(round_trip(queue));
    }
}

#[test]
fn round_trips_on_a_multi_thread_tokio_runtime() {
    for mode in modes() {
        let temp = tempfile::tempdir().unwrap();
        let queue = Queue::builder(temp.path()).durability(mode).open().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move { tokio::spawn(round_trip(queue)).await.unwrap() });
    }
}

#[test]
fn round_trips_on_futures_executor() {
    for mode in modes() {
        let temp = tempfile::tempdir().unwrap();
        let queue = Queue::builder(temp.path()).durability(mode).open().unwrap();
        futures_executor::block_on(round_trip(queue));
    }
}

#[test]
fn a_waiting_recv_wakes_for_an_append_from_another_thread() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::GroupCommit).open().unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            queue.append(Message::new("late")).unwrap()
        })
    };
    let started = Instant::now();
    let delivery = futures_executor::block_on(consumer.recv_async()).unwrap();
    let waited = started.elapsed();
    assert_eq!(delivery.message().value.as_deref(), Some(&b"late"[..]));
    assert_eq!(producer.join().unwrap(), delivery.offset());
    // Woken by the append, not found by the once-a-second re-check a lost wake-up would fall back on.
    assert!(waited < Duration::from_millis(700), "woken {waited:?} after the wait began");
}

#[test]
fn a_nacked_message_comes_back_at_its_time_without_a_runtime_timer() {
    // futures-executor has no timer: the wake-up at the retry delay's end comes from walq's own.
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::open(temp.path()).unwrap();
    queue.append(Message::new("retry me")).unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    futures_executor::block_on(async {
        let first = consumer.recv_async().await.unwrap();
        let nacked_at = Instant::now();
        assert_eq!(first.nack_async(Duration::from_millis(200)).await.unwrap(), Nacked::Retry);
        let again = consumer.recv_async().await.unwrap();
        let waited = nacked_at.elapsed();
        assert!(waited >= Duration::from_millis(200), "delivered {waited:?} after the nack");
        // By walq's timer at the delay's end, not by the once-a-second re-check.
        assert!(waited < Duration::from_millis(800), "delivered {waited:?} after the nack");
        assert_eq!(again.attempt(), 2);
        again.ack_async().await.unwrap();
    });
}

#[test]
fn a_lease_that_ends_wakes_a_waiting_consumer() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).ack_timeout(Duration::from_millis(150)).open().unwrap();
    queue.append(Message::new("slow")).unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    futures_executor::block_on(async {
        let held = consumer.recv_async().await.unwrap();
        let taken_at = Instant::now();
        let again = consumer.recv_async().await.unwrap(); // only once `held`'s lease has ended
        let waited = taken_at.elapsed();
        assert!(waited < Duration::from_millis(750), "woken {waited:?} after the lease's 150 ms");
        assert_eq!((again.offset(), again.attempt()), (held.offset(), 2));
        assert!(matches!(held.ack_async().await, Err(Error::StaleLease { .. })));
        again.ack_async().await.unwrap();
    });
}

#[test]
fn receives_dropped_while_appends_race_them_take_nothing() {
    // A producer thread appends while the consumer's receives are dropped by timeouts as short as the appends'
    // spacing: a receive that took a message and was then dropped would leave it leased (or deliver it again as a
    // second attempt). Every message must come exactly once, on its first attempt.
    const MESSAGES: u64 = 2_000;
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::None).open().unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            for i in 0..MESSAGES {
                queue.append(common::message(i)).unwrap();
                // Every 50th gap outlasts every timeout (tokio's timer ticks by the millisecond, so a 0-300 us
                // timeout may last 1 ms): receives are dropped whatever the machine's speed.
                let gap_us = if i % 50 == 49 { 5_000 } else { 150 };
                std::thread::sleep(Duration::from_micros(gap_us));
            }
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (received, dropped) = runtime.block_on(async {
        let (mut received, mut dropped) = (0, 0u64);
        let mut rng = walq::storage::FaultRng::new(17);
        while received < MESSAGES {
            let wait = Duration::from_micros(rng.below(300));
            match tokio::time::timeout(wait, consumer.recv_async()).await {
                Ok(delivery) => {
                    let delivery = delivery.unwrap();
                    assert_eq!((delivery.offset().0, delivery.attempt()), (received, 1));
                    delivery.ack_async().await.unwrap();
                    received += 1;
                }
                Err(_) => dropped += 1,
            }
        }
        (received, dropped)
    });
    producer.join().unwrap();
    assert_eq!(received, MESSAGES);
    assert!(dropped > 0, "no receive was dropped: the test proved nothing");
    assert_eq!(queue.group("g").unwrap().stats().in_flight, 0);
}

#[test]
fn an_answer_future_dropped_before_its_first_poll_releases_the_delivery() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::GroupCommit).open().unwrap();
    queue.append(Message::new("m")).unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    let delivery = consumer.try_recv().unwrap().unwrap();
    drop(delivery.ack_async()); // never polled: as if the delivery were dropped
    let again = consumer.try_recv().unwrap().expect("delivered again at once");
    assert_eq!(again.attempt(), 2);
    // Polled once and dropped: the ack stands, and becomes durable without the future.
    let mut ack = Box::pin(again.ack_async());
    let _ = futures_util::FutureExt::now_or_never(&mut ack);
    drop(ack);
    common::eventually("the dropped ack's fsync", || queue.stats().async_waits_pending == 0);
    assert_eq!(queue.group("g").unwrap().ack_floor(), Offset(1));
    assert!(consumer.try_recv().unwrap().is_none());
}

#[test]
fn an_append_future_appends_from_its_first_poll_on() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::GroupCommit).open().unwrap();
    drop(queue.append_async(Message::new("never polled")));
    assert_eq!(queue.stats().next_offset, Offset(0), "nothing appended before the first poll");
    let mut append = Box::pin(queue.append_async(Message::new("polled once")));
    let _ = futures_util::FutureExt::now_or_never(&mut append);
    drop(append);
    assert_eq!(queue.stats().next_offset, Offset(1), "written at the first poll");
    common::eventually("the dropped append's fsync", || queue.stats().async_waits_pending == 0);
    assert_eq!(queue.stats().durable_offset, Offset(1), "made durable without its future");
    let reopened = queue.reopen().unwrap();
    assert_eq!(reopened.get(Offset(0)).unwrap().unwrap().value.as_deref(), Some(&b"polled once"[..]));
}

#[test]
fn follow_reads_the_past_waits_for_appends_and_ends_at_close() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::GroupCommit).open().unwrap();
    common::append_range(&queue, 0..10);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut follow = queue.follow(Offset(5)).unwrap();
        for i in 5..10 {
            common::assert_is_message(&follow.next_record().await.unwrap().unwrap(), i);
        }
        let producer = {
            let queue = queue.clone();
            tokio::spawn(async move {
                for i in 10..20 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    queue.append_async(common::message(i)).await.unwrap();
                }
            })
        };
        let followed: Vec<_> = follow.by_ref().take(10).collect().await;
        for (record, i) in followed.into_iter().zip(10..) {
            common::assert_is_message(&record.unwrap(), i);
        }
        producer.await.unwrap();
        assert_eq!(follow.next_offset(), Offset(20));
        let closer = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                queue.close().unwrap();
            })
        };
        assert!(follow.next_record().await.is_none(), "the follow ends when the queue closes");
        closer.join().unwrap();
    });
}

#[test]
fn follow_sees_appends_held_in_the_write_buffer() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::None).write_buffer_bytes(1 << 20).open().unwrap();
    let mut follow = queue.follow(Offset::EARLIEST).unwrap();
    queue.append(common::message(0)).unwrap();
    let record = futures_executor::block_on(follow.next_record()).unwrap().unwrap();
    common::assert_is_message(&record, 0);
}

#[test]
fn the_deliveries_stream_ends_when_the_queue_closes() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::open(temp.path()).unwrap();
    common::append_range(&queue, 0..3);
    let consumer = queue.group("g").unwrap().consumer();
    let closer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            // Once the three are acked, so that no ack meets the close.
            common::eventually("three acks", || queue.group("g").unwrap().ack_floor() == Offset(3));
            queue.close().unwrap();
        })
    };
    let offsets = futures_executor::block_on(async {
        let mut stream = consumer.deliveries();
        let mut offsets = Vec::new();
        while let Some(delivery) = stream.next().await {
            let delivery = delivery.unwrap();
            offsets.push(delivery.offset().0);
            delivery.ack_async().await.unwrap();
        }
        offsets
    });
    closer.join().unwrap();
    assert_eq!(offsets, [0, 1, 2]);
}

#[test]
fn many_tasks_share_fsyncs() {
    // 64 tasks appending on one current-thread runtime: walq's sync thread covers them with far fewer fsyncs than
    // appends (group commit for tasks), whatever the machine's speed.
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::GroupCommit).open().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let fsyncs_before = queue.stats().fsyncs;
    runtime.block_on(async {
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    for n in 0..20u64 {
                        queue.append_async(common::message(t * 1000 + n)).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let fsyncs = queue.stats().fsyncs - fsyncs_before;
    assert_eq!(queue.stats().durable_offset, Offset(64 * 20));
    assert!(fsyncs * 4 < 64 * 20, "{fsyncs} fsyncs for {} appends", 64 * 20);
}
