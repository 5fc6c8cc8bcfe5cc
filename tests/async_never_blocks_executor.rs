//! The async API never runs an fsync on its executor. Every fsync of the log's segments (then of a group's
//! journal) is held at a gate, as a stalled disk would hold it; a current-thread tokio runtime, one thread for
//! all its tasks, must go on running its other tasks (a ticker, appends and takes that need no fsync) while an
//! async append or ack waits for the held fsync, and the waiting future must resolve once the gate opens. A call
//! that ran the fsync on the runtime's thread would stop the ticker: the test would fail, not hang (the runtime
//! runs on a thread of its own; the test thread opens the gate after its verdict).
//!
//! The same run on a current-thread runtime with 1,000 tasks appending and consuming in `GroupCommit` checks that
//! a watchdog task keeps ticking throughout (no task holds the thread for long).

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gated::GatedStorage;
use walq::{Durability, Message, Offset, Queue};

/// Ticks the ticker must make while the fsync is held.
const TICKS: u32 = 50;

/// Runs `work` (which must wait for a held fsync) beside a ticker on a current-thread runtime of its own thread;
/// returns whether the ticker made [`TICKS`] ticks while `work` was still waiting, then opens the gate and
/// returns `work`'s output.
fn ticks_while_held<T: Send + 'static>(
    storage: &GatedStorage,
    work: impl std::future::Future<Output = T> + Send + 'static,
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
    common::eventually("the held fsync is waiting at the gate", || storage.gate.waiting() > 0 || !verdict);
    storage.gate.open();
    (verdict, runtime_thread.join().unwrap())
}

fn gated_queue(dir: &std::path::Path, durability: Durability) -> (GatedStorage, Queue) {
    let storage = GatedStorage::default();
    let queue = Queue::builder(dir).storage(Arc::new(storage.clone())).durability(durability).open().unwrap();
    (storage, queue)
}

#[test]
fn an_append_waiting_for_a_held_fsync_leaves_the_runtime_running() {
    for durability in [Durability::GroupCommit, Durability::Sync] {
        let temp = tempfile::tempdir().unwrap();
        let (storage, queue) = gated_queue(temp.path(), durability);
        storage.gate.close(".seg");
        let appending = queue.clone();
        let (ticked, offset) =
            ticks_while_held(&storage, async move { appending.append_async(Message::new("held")).await });
        assert!(ticked, "{durability:?}: the runtime stopped while an async append waited for its fsync");
        assert_eq!(offset.unwrap(), Offset(0));
        assert_eq!(queue.stats().durable_offset, Offset(1));
    }
}

#[test]
fn an_append_that_starts_a_segment_leaves_the_runtime_running() {
    // Starting a segment seals the full one and creates the next, each with an fsync: held at the gate, they must
    // hold walq's sync thread, not the runtime's.
    for durability in [Durability::None, Durability::GroupCommit, Durability::Sync] {
        let temp = tempfile::tempdir().unwrap();
        let storage = GatedStorage::default();
        let queue = Queue::builder(temp.path())
            .storage(Arc::new(storage.clone()))
            .durability(durability)
            .segment_bytes_max(64 * 1024)
            .message_bytes_max(4096)
            .open()
            .unwrap();
        let value = vec![7u8; 4000];
        let mut appended = 0;
        while queue.stats().segments == 1 {
            queue.append(Message::new(value.clone())).unwrap();
            appended += 1;
        }
        let per_segment = appended - 1; // the last one started the second segment
        for _ in 1..per_segment {
            queue.append(Message::new(value.clone())).unwrap(); // the second segment full: the next append rolls
        }
        assert_eq!(queue.stats().segments, 2);
        storage.gate.close(".seg");
        let appending = queue.clone();
        let (ticked, offset) =
            ticks_while_held(&storage, async move { appending.append_async(Message::new(vec![8u8; 4000])).await });
        let offset = offset.unwrap();
        assert!(ticked, "{durability:?}: the runtime stopped while an async append started a segment");
        assert_eq!(queue.stats().segments, 3, "{durability:?}: the append started a segment");
        assert_eq!(queue.get(offset).unwrap().unwrap().value, Some(vec![8u8; 4000]));
    }
}

#[test]
fn an_ack_waiting_for_a_held_journal_fsync_leaves_the_runtime_running() {
    for durability in [Durability::GroupCommit, Durability::Sync] {
        let temp = tempfile::tempdir().unwrap();
        let (storage, queue) = gated_queue(temp.path(), durability);
        queue.append(Message::new("m")).unwrap();
        let consumer = queue.group("g").unwrap().consumer();
        let delivery = consumer.try_recv().unwrap().unwrap();
        storage.gate.close(".journal");
        let (ticked, acked) = ticks_while_held(&storage, delivery.ack_async());
        assert!(ticked, "{durability:?}: the runtime stopped while an async ack waited for its fsync");
        acked.unwrap();
        assert_eq!(queue.group("g").unwrap().ack_floor(), Offset(1));
    }
}

#[test]
fn a_watchdog_ticks_throughout_while_1000_tasks_append_and_consume() {
    const TASKS: u64 = 1_000;
    const MESSAGES_PER_TASK: u64 = 10;
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::GroupCommit).open().unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (longest_gap, ticks, elapsed, consumed) = runtime.block_on(async {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = {
            let done = done.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_millis(10));
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let (mut last, mut longest, mut ticks) = (Instant::now(), Duration::ZERO, 0u64);
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    interval.tick().await;
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                    ticks += 1;
                }
                (longest, ticks)
            })
        };
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (queue, consumer) = (queue.clone(), consumer.clone());
            tasks.push(tokio::spawn(async move {
                let mut consumed = 0;
                for n in 0..MESSAGES_PER_TASK {
                    queue.append_async(common::message(t * 100 + n)).await.unwrap();
                    if let Some(delivery) = consumer.recv_batch_async(1).await.unwrap().pop() {
                        delivery.ack_async().await.unwrap();
                        consumed += 1;
                    }
                }
                consumed
            }));
        }
        let mut consumed = 0;
        for task in tasks {
            consumed += task.await.unwrap();
        }
        let elapsed = started.elapsed();
        done.store(true, std::sync::atomic::Ordering::Release);
        let (longest, ticks) = watchdog.await.unwrap();
        (longest, ticks, elapsed, consumed)
    });
    println!("{TASKS} tasks: {consumed} consumed in {elapsed:?}; watchdog {ticks} ticks, longest gap {longest_gap:?}");
    assert_eq!(consumed, TASKS * MESSAGES_PER_TASK, "every append was taken by some task");
    assert!(elapsed < Duration::from_millis(100) || ticks > 0, "the watchdog never ran");
    // Ticks every 10 ms; the bound leaves room for a loaded CI machine's scheduler, not for an fsync or a stall.
    assert!(longest_gap < Duration::from_millis(250), "the runtime stalled for {longest_gap:?}");
}
