//! A job service on walq: the README's reference for running walq inside a service.
//!
//! - Request threads enqueue JSON jobs keyed by user (`Message::json`).
//! - A pool of workers takes them from one consumer group (`Consumer::iter`), parses them (`Delivery::json`),
//!   and answers each: `ack`, `fail(error)` for a transient error (retried after the queue's backoff), or
//!   `dead_letter_with(reason)` for a job that can never succeed.
//! - A job that keeps failing is dead-lettered after `max_deliveries`, with a reason walq writes.
//! - An operator inspects the dead letters (`Group::dead_letters`, `Queue::get`), redrives the ones a fix makes
//!   good again and discards the rest (`Group::redrive`, `Group::discard`).
//! - A health snapshot (`Queue::stats`, serializable) is printed as JSON.
//! - The service stops with `Queue::shutdown(grace)`: no new deliveries, the jobs running get `grace` to finish,
//!   interrupted ones are given back without an attempt counted. A restart picks up where it stopped.
//!
//! In a real service, `shutdown` runs on SIGTERM (a signal handler sets a flag that the main thread waits for),
//! and a supervisor answers `Error::Poisoned` with `queue.reopen()`.
//!
//! Run with `cargo run --release --example job_service`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use walq::{Delivery, Durability, Error, Message, Queue, QueueBuilder, RetryBackoff};

const USERS: u64 = 20;
const JOBS_PER_THREAD: u64 = 250;
const REQUEST_THREADS: u64 = 3;
const WORKERS: usize = 4;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Job {
    user: u64,
    kind: Kind,
    amount_cents: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
enum Kind {
    /// Always works.
    Invoice,
    /// Fails the first time it is tried (a flaky downstream), then works.
    Refund,
    /// Fails until the operator "deploys a fix" (`FIXED`); then works.
    Export,
}

/// Set by the operator once the export bug is fixed.
static FIXED: AtomicBool = AtomicBool::new(false);

fn builder(dir: &std::path::Path) -> QueueBuilder {
    Queue::builder(dir)
        .durability(Durability::GroupCommit) // an ack that returned is on disk
        .ack_timeout(Duration::from_secs(10))
        .max_deliveries(3)
        .retry_backoff(RetryBackoff::exponential(Duration::from_millis(5), Duration::from_millis(50)))
}

/// One job's work. `Err` is a transient failure, to be retried.
fn process(job: &Job, attempt: u32) -> Result<(), String> {
    match job.kind {
        Kind::Invoice => Ok(()),
        Kind::Refund if attempt == 1 => Err("payment provider timed out".to_string()),
        Kind::Refund => Ok(()),
        Kind::Export if FIXED.load(Ordering::Relaxed) => Ok(()),
        Kind::Export => Err(format!("export for user {} failed: template missing", job.user)),
    }
}

/// Answers one delivery as the service's rules say.
fn handle(delivery: Delivery, done: &AtomicU64) -> walq::Result<()> {
    let job: Job = match delivery.json() {
        Ok(job) => job,
        // A job that does not parse never will: set aside at once, with the reason.
        Err(error) => return delivery.dead_letter_with(format!("not a job: {error}")).map(drop),
    };
    match process(&job, delivery.attempt()) {
        Ok(()) => {
            delivery.ack()?;
            done.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => drop(delivery.fail(error)?), // retried after the backoff, or dead-lettered with this error
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("jobs");
    let queue = builder(&dir).open()?;
    let group = queue.group("workers")?;
    let done = Arc::new(AtomicU64::new(0));

    let requests: Vec<_> = (0..REQUEST_THREADS)
        .map(|thread| {
            let queue = queue.clone();
            std::thread::spawn(move || -> walq::Result<()> {
                for i in 0..JOBS_PER_THREAD {
                    let n = thread * JOBS_PER_THREAD + i;
                    let kind = [Kind::Invoice, Kind::Invoice, Kind::Refund, Kind::Export][(n % 4) as usize];
                    let kind = if n % 50 == 7 { Kind::Export } else { kind };
                    let job = Job { user: n % USERS, kind, amount_cents: 100 + n };
                    let message = if n == 333 {
                        Message::new(b"{ truncated".to_vec()) // a bad request slips through
                    } else {
                        Message::json(&job)?.key(format!("user-{}", job.user))
                    };
                    queue.append(message)?;
                }
                Ok(())
            })
        })
        .collect();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (consumer, done) = (group.consumer(), done.clone());
            std::thread::spawn(move || -> walq::Result<()> {
                for delivery in consumer.iter() {
                    handle(delivery?, &done)?; // `iter` ends when the queue shuts down
                }
                Ok(())
            })
        })
        .collect();
    for request in requests {
        request.join().expect("request thread")?;
    }
    let total = REQUEST_THREADS * JOBS_PER_THREAD;
    // Wait until every job is done or dead-lettered.
    while group.stats().lag > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{total} jobs: {} done, {} dead letters", done.load(Ordering::Relaxed), group.dead_letters().len());

    // The operator's view: why each dead letter failed, with the job read back by its offset.
    let dead = group.dead_letters();
    for letter in dead.iter().take(3) {
        let record = queue.get(letter.offset)?.expect("a dead letter stays stored");
        let job = record.json::<Job>().map(|job| format!("{job:?}")).unwrap_or_else(|_| "(not a job)".into());
        println!("  dead letter {}: {job}: {}", letter.offset, letter.reason.as_deref().unwrap_or("-"));
    }
    // The export bug is fixed: exports are redriven; what can never work is discarded (its segment can go).
    FIXED.store(true, Ordering::Relaxed);
    let (mut redriven, mut discarded) = (0, 0);
    for letter in &dead {
        let is_job = queue.get(letter.offset)?.is_some_and(|record| record.json::<Job>().is_ok());
        if is_job {
            redriven += u64::from(group.redrive(letter.offset)?);
        } else {
            discarded += u64::from(group.discard(letter.offset)?);
        }
    }
    while group.stats().lag > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("redrove {redriven}, discarded {discarded}; done now {}", done.load(Ordering::Relaxed));

    // Health, as a monitoring endpoint would serve it.
    println!("{}", serde_json::to_string_pretty(&queue.stats().groups[0])?);

    // A deploy: stop taking work, give running jobs 2 s, give back the rest, close.
    queue.append(Message::json(&Job { user: 1, kind: Kind::Invoice, amount_cents: 1 })?)?;
    let report = queue.shutdown(Duration::from_secs(2))?;
    for worker in workers {
        match worker.join().expect("worker thread") {
            Ok(()) | Err(Error::Closed) => {}
            Err(error) => return Err(error.into()),
        }
    }
    println!("shut down: {} interrupted, waited {} ms", report.interrupted, report.waited_ms);

    // The restart: everything not done is still there, and nothing done comes back.
    let queue = builder(&dir).open()?;
    let group = queue.existing_group("workers")?; // never creates a group by a typo
    let consumer = group.consumer();
    while let Some(delivery) = consumer.try_recv()? {
        handle(delivery, &done)?;
    }
    let stats = group.stats();
    println!(
        "after the restart: {} done in all, lag {}, {} dead letters",
        done.load(Ordering::Relaxed),
        stats.lag,
        stats.dead_letters
    );
    assert_eq!(done.load(Ordering::Relaxed) + discarded, total + 1, "every job done or discarded, once");
    queue.close()?;
    Ok(())
}
