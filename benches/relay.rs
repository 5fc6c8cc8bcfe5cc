//! Relay throughput against a plain pipelined JetStream publisher, both measured in the same run against the same
//! nats-server (started here on a loopback port, JetStream file store in a temporary directory):
//!
//! - `publisher`: async-nats publishing 100 B messages with the same window of outstanding acknowledgements
//!   (512) and a `Nats-Msg-Id` each, awaiting the oldest acknowledgement when the window is full;
//! - `relay`: `walq::relay` draining a group of a queue holding the same messages, into the same stream: it also
//!   reads each message from the log, leases it in the group, maps key and headers, and acks it (batched) after
//!   JetStream's acknowledgement.
//!
//! Run with `cargo bench --features nats --bench relay` (needs nats-server: `apt-get install nats-server`).

#[allow(dead_code)]
#[path = "../tests/common/nats.rs"]
mod nats;

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walq::relay::{Relay, RelayConfig, StopWhen, WINDOW_DEFAULT};
use walq::{Durability, Message, Queue};

/// Messages per measured run.
const MESSAGES: u64 = 20_000;
const PAYLOAD_BYTES: usize = 100;

fn purge(runtime: &tokio::runtime::Runtime, url: &str) {
    runtime.block_on(async {
        let context = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        context
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "BENCH".into(),
                subjects: vec!["bench".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .purge()
            .await
            .unwrap();
    });
}

/// What the publisher sends with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headers {
    /// `Nats-Msg-Id` only.
    MessageId,
    /// The relay's full set (`walq::relay::mapping::headers_for`): separates the cost of the headers (on client
    /// and server) from walq's own work.
    Relay,
}

fn publisher(runtime: &tokio::runtime::Runtime, url: &str, run: u64, headers: Headers) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        let context = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD_BYTES]);
        let mut window = VecDeque::with_capacity(WINDOW_DEFAULT);
        for i in 0..MESSAGES {
            if window.len() == WINDOW_DEFAULT {
                let ack: async_nats::jetstream::context::PublishAckFuture = window.pop_front().unwrap();
                ack.into_future().await.unwrap();
            }
            let message = async_nats::jetstream::message::PublishMessage::build().payload(payload.clone());
            let message = match headers {
                Headers::MessageId => message.message_id(format!("bench-{run}:{i}")),
                Headers::Relay => {
                    let record = walq::Record {
                        offset: walq::Offset(i),
                        timestamp_ms: 1_700_000_000_000 + i,
                        key: None,
                        value: Some(payload.to_vec()),
                        headers: Vec::new(),
                    };
                    message.headers(walq::relay::mapping::headers_for(&format!("bench-{run}"), &record))
                }
            };
            window.push_back(context.send_publish("bench", message).await.unwrap());
        }
        for ack in window {
            ack.into_future().await.unwrap();
        }
        start.elapsed()
    })
}

fn relay(url: &str) -> Duration {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path().join("q")).durability(Durability::GroupCommit).open().unwrap();
    let batch: Vec<Message> = (0..1_000).map(|_| Message::new(vec![b'x'; PAYLOAD_BYTES])).collect();
    for _ in 0..MESSAGES / 1_000 {
        queue.append_batch(&batch).unwrap();
    }
    let config = RelayConfig::new(url, "bench").stop_when(StopWhen::Idle);
    let relay = Relay::new(&queue, "bench", config).unwrap();
    let start = Instant::now();
    let stats = relay.run_blocking().unwrap();
    let elapsed = start.elapsed();
    assert_eq!(stats.relayed, MESSAGES);
    // StopWhen::Idle notices idleness after one empty wait; that wait is not relaying.
    elapsed.saturating_sub(Duration::from_millis(100))
}

fn bench_relay(c: &mut Criterion) {
    let store = tempfile::tempdir().unwrap();
    let server = nats::NatsServer::start(store.path());
    let url = server.url();
    let runtime = nats::runtime();
    let mut group = c.benchmark_group("relay 100 B");
    group.throughput(Throughput::Elements(MESSAGES)).sample_size(10).measurement_time(Duration::from_secs(10));
    let mut run = 0;
    for (name, headers) in [("publisher", Headers::MessageId), ("publisher, relay headers", Headers::Relay)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        purge(&runtime, &url);
                        run += 1;
                        publisher(&runtime, &url, run, headers)
                    })
                    .sum()
            })
        });
    }
    group.bench_function("relay", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    purge(&runtime, &url);
                    relay(&url)
                })
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_relay);
criterion_main!(benches);
