//! An async service on walq: the README's reference for walq inside tokio.
//!
//! - A TCP service (tokio) takes orders, one per line; each request handler appends the order with
//!   `Queue::append_async` and answers with its offset once the order is durable (`GroupCommit`: the fsync runs on
//!   walq's sync thread, shared by every handler waiting meanwhile; the runtime's threads never wait for a disk).
//! - A pool of async workers consumes one group with `Consumer::recv_async` and answers with `ack_async`; one
//!   worker is broken and fails every order it takes (`fail_async`): walq delivers each of those again, after the
//!   queue's retry backoff, to whichever worker takes it next.
//! - An audit task follows the log (`Queue::follow`, a `Stream`) independently of the group.
//! - Clients connect concurrently and place their orders; when every order is processed, the service stops:
//!   `Queue::shutdown` (a blocking call, so on `spawn_blocking`) ends the workers' `recv_async` with
//!   `Error::Closed`.
//!
//! Run with `cargo run --release --example async_service`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use walq::{Durability, Error, Message, Offset, Queue, RetryBackoff};

const CLIENTS: u64 = 8;
const ORDERS_PER_CLIENT: u64 = 50;
const WORKERS: u64 = 4;
/// This worker fails every order it takes.
const BROKEN_WORKER: u64 = 3;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Order {
    client: u64,
    number: u64,
    amount_cents: u64,
}

#[derive(Default)]
struct Tally {
    processed: BTreeSet<(u64, u64)>,
    failed_attempts: u64,
    duplicates: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let queue = Queue::builder(temp.path())
        .durability(Durability::GroupCommit)
        .max_deliveries(20) // the broken worker may take an order a few times before a healthy one does
        .retry_backoff(RetryBackoff::exponential(Duration::from_millis(1), Duration::from_millis(20)))
        .open()?;
    let group = queue.group("fulfilment")?;

    // The service: one task per connection; every line is an order.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let service = {
        let queue = queue.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(handle_connection(queue.clone(), stream));
            }
        })
    };

    // The workers.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> =
        (0..WORKERS).map(|worker| tokio::spawn(work(group.consumer(), worker, tally.clone()))).collect();

    // The audit trail: every order as appended, in offset order.
    let audit = {
        let mut follow = queue.follow(Offset::EARLIEST)?;
        tokio::spawn(async move {
            let mut seen = 0u64;
            while let Some(record) = follow.next().await {
                record.expect("a stored order reads back");
                seen += 1;
                if seen == CLIENTS * ORDERS_PER_CLIENT {
                    return seen;
                }
            }
            seen
        })
    };

    // The clients.
    let clients: Vec<_> = (0..CLIENTS).map(|client| tokio::spawn(place_orders(address, client))).collect();
    let mut offsets = BTreeSet::new();
    for client in clients {
        offsets.extend(client.await??);
    }
    println!("{} orders placed, each durable when its client heard back", offsets.len());
    assert_eq!(offsets.len() as u64, CLIENTS * ORDERS_PER_CLIENT, "every order got an offset of its own");

    // Wait for the workers to get through everything (an order the broken worker happened to take 20 times would
    // be a dead letter), then stop the service.
    while tally.lock().unwrap().processed.len() + group.stats().dead_letters < offsets.len() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("the audit trail followed {} orders", audit.await?);
    service.abort();
    let stopping = queue.clone();
    let report = tokio::task::spawn_blocking(move || stopping.shutdown(Duration::from_secs(5))).await??;
    for worker in workers {
        worker.await?;
    }
    let tally = tally.lock().unwrap();
    println!(
        "{} orders processed by the healthy workers; the broken worker failed {} attempts, each delivered again; \
         {} orders processed twice; shutdown interrupted {} deliveries",
        tally.processed.len(),
        tally.failed_attempts,
        tally.duplicates,
        report.interrupted
    );
    assert_eq!(tally.processed.len() + group.stats().dead_letters, offsets.len());
    assert_eq!(tally.duplicates, 0, "an acked order is never delivered again");

    let reopened = Queue::open(temp.path())?;
    println!("after a restart the group's floor is {} of {}", reopened.group("fulfilment")?.ack_floor(), offsets.len());
    Ok(())
}

/// One connection: each line `<client> <number> <amount>` is appended as an order; the answer is its offset.
async fn handle_connection(queue: Queue, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let fields: Vec<u64> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
        let answer = match fields[..] {
            [client, number, amount_cents] => {
                let order = Order { client, number, amount_cents };
                match Message::json(&order) {
                    // Durable when this resolves: the fsync ran on walq's thread, not this runtime's.
                    Ok(message) => match queue.append_async(message.key(format!("client-{client}"))).await {
                        Ok(offset) => format!("queued {}\n", offset.0),
                        Err(error) => format!("error {error}\n"),
                    },
                    Err(error) => format!("error {error}\n"),
                }
            }
            _ => "error expected: <client> <number> <amount>\n".to_string(),
        };
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A client: places its orders one at a time and returns the offsets it was given.
async fn place_orders(address: std::net::SocketAddr, client: u64) -> std::io::Result<Vec<u64>> {
    let stream = TcpStream::connect(address).await?;
    let (read, mut write) = stream.into_split();
    let mut answers = BufReader::new(read).lines();
    let mut offsets = Vec::new();
    for number in 0..ORDERS_PER_CLIENT {
        write.write_all(format!("{client} {number} {}\n", 100 + number * 7).as_bytes()).await?;
        let answer = answers.next_line().await?.unwrap_or_default();
        let offset = answer.strip_prefix("queued ").and_then(|o| o.parse().ok());
        offsets.push(offset.ok_or_else(|| std::io::Error::other(format!("order refused: {answer}")))?);
    }
    Ok(offsets)
}

/// A worker: takes orders until the queue shuts down.
async fn work(consumer: walq::Consumer, worker: u64, tally: Arc<Mutex<Tally>>) {
    loop {
        let delivery = match consumer.recv_async().await {
            Ok(delivery) => delivery,
            Err(Error::Closed) => return, // shut down
            Err(error) => panic!("worker {worker}: {error}"),
        };
        let order: Order = delivery.json().expect("orders are JSON");
        if worker == BROKEN_WORKER {
            tally.lock().unwrap().failed_attempts += 1;
            delivery.fail_async("worker 3 is broken").await.expect("the failure is recorded");
            continue;
        }
        tokio::time::sleep(Duration::from_micros(200)).await; // the order's work
        let acked = delivery.ack_async().await; // durable when this resolves
        match acked {
            Ok(()) => {
                let mut tally = tally.lock().unwrap();
                if !tally.processed.insert((order.client, order.number)) {
                    tally.duplicates += 1;
                }
            }
            Err(Error::Closed) => return,
            Err(error) => panic!("worker {worker}: {error}"),
        }
    }
}
