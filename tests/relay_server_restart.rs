//! The NATS server stops and restarts (clean SIGTERM, same port and store) while the relay drains 100,000
//! messages: the relay retries with backoff, acks nothing it could not publish, resumes by itself, and the stream
//! ends with every message exactly once.
#![cfg(feature = "nats")]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::nats::{read_stream, NatsServer};
use walq::relay::{Relay, RelayConfig, StopWhen};
use walq::{Message, Offset, Queue};

const COUNT: u64 = 100_000;
/// Server stops during the run.
const RESTARTS: u32 = 3;

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_relay_rides_out_server_restarts_without_loss_or_duplicates() {
    let store = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(store.path());
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let messages: Vec<Message> = (0..COUNT).map(|i| Message::new(format!("m-{i}"))).collect();
    for chunk in messages.chunks(1_000) {
        queue.append_batch(chunk).unwrap();
    }
    let config = RelayConfig::new(server.url(), "orders")
        .create_stream("ORDERS")
        .window(256)
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .publish_timeout(Duration::from_secs(1))
        .stop_when(StopWhen::Idle);
    let relay = Relay::new(&queue, "nats", config).unwrap();
    let handle = relay.handle();
    let group = queue.group("nats").unwrap();
    let thread = std::thread::spawn(move || relay.run_blocking());

    for restart in 1..=RESTARTS {
        let target = COUNT * u64::from(restart) / u64::from(RESTARTS + 1);
        wait_until("the relay makes progress", Duration::from_secs(60), || group.ack_floor().0 >= target);
        server.stop();
        let floor_at_stop = group.ack_floor();
        std::thread::sleep(Duration::from_millis(1_500));
        // Acks of publishes acknowledged before the stop may still land; nothing beyond what the server stored.
        let floor_while_down = group.ack_floor();
        server.restart();
        let stored = read_stream(&server.url(), "ORDERS").len() as u64;
        assert!(
            floor_while_down.0 <= stored,
            "restart {restart}: acked up to {floor_while_down} (at stop {floor_at_stop}) but the stream holds {stored}"
        );
    }
    let stats = thread.join().unwrap().unwrap();

    assert_eq!(group.ack_floor(), Offset(COUNT));
    assert!(stats.retries > 0, "the stops were noticed: {stats:?}");
    let mut copies: BTreeMap<u64, u32> = BTreeMap::new();
    for message in read_stream(&server.url(), "ORDERS") {
        *copies.entry(message.relayed.record.offset.0).or_default() += 1;
    }
    assert_eq!(copies.len() as u64, COUNT, "every message arrived");
    assert!(copies.values().all(|&n| n == 1), "no message stored twice");
    println!("{stats:?}; final: {:?}", handle.stats());
}
