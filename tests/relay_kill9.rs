//! Relay crash safety: `walq relay` is killed with SIGKILL at random points while it drains a growing queue, and
//! restarted. At every kill, everything the group acked is in the stream (nothing acked before JetStream's
//! acknowledgement); at the end every message is in the stream exactly once (the redelivered copies carried the
//! same Nats-Msg-Id and were dropped by the server).
#![cfg(feature = "nats")]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::nats::{read_stream, NatsServer};
use walq::{Message, Offset, Queue};

/// Kill cycles in CI (times `WALQ_SOAK`).
const CYCLES: u64 = 25;
/// Messages appended before each cycle: about 150 ms of relaying on a small machine, so kills land mid-stream.
const MESSAGES_PER_CYCLE: u64 = 10_000;

fn relay_command(dir: &std::path::Path, url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_walq"));
    command
        .arg("relay")
        .arg(dir)
        .args(["--group", "nats", "--server", url, "--subject", "orders", "--stream", "ORDERS", "--progress-ms", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// A deterministic generator for kill delays (xorshift64*), seeded by `WALQ_SEED`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn stream_message_count(url: &str) -> u64 {
    common::nats::runtime().block_on(async {
        let context = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        match context.get_stream("ORDERS").await {
            Ok(mut stream) => stream.info().await.unwrap().state.messages,
            Err(_) => 0, // the first relay was killed before it created the stream
        }
    })
}

#[test]
fn kill_9_at_random_points_loses_nothing_and_duplicates_nothing() {
    let seed = common::env_u64("WALQ_SEED").unwrap_or(0x05ee_d0f2_e1a7);
    println!("WALQ_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path());
    let dir = tempfile::tempdir().unwrap();
    let cycles = CYCLES * common::soak();
    let (mut appended, mut killed_mid_stream, mut floor_before) = (0u64, 0u64, 0u64);

    for cycle in 0..cycles {
        let queue = Queue::open(dir.path()).unwrap();
        let messages: Vec<Message> = (appended..appended + MESSAGES_PER_CYCLE)
            .map(|i| Message::new(format!("m-{i}")).key(format!("k{i}")))
            .collect();
        queue.append_batch(&messages).unwrap();
        appended += MESSAGES_PER_CYCLE;
        queue.close().unwrap();

        let mut relay = relay_command(dir.path(), &server.url()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(10 + rng.below(150)));
        relay.kill().unwrap(); // SIGKILL
        relay.wait().unwrap();

        let queue = Queue::open(dir.path()).unwrap();
        let floor = queue.group("nats").unwrap().ack_floor();
        queue.close().unwrap();
        let in_stream = stream_message_count(&server.url());
        assert!(
            in_stream >= floor.0,
            "cycle {cycle}: the group acked up to {floor} but the stream holds only {in_stream} messages"
        );
        // Not only as many: every offset the group acked is in the stream, with its value.
        if floor.0 > 0 {
            let stream = read_stream(&server.url(), "ORDERS");
            let offsets: std::collections::BTreeSet<u64> = stream.iter().map(|m| m.relayed.record.offset.0).collect();
            let missing: Vec<u64> = (0..floor.0).filter(|o| !offsets.contains(o)).take(5).collect();
            assert!(missing.is_empty(), "cycle {cycle}: acked up to {floor}, but not in the stream: {missing:?}");
            for message in &stream {
                let i = message.relayed.record.offset.0;
                assert_eq!(message.relayed.record.value.as_deref(), Some(format!("m-{i}").as_bytes()), "cycle {cycle}");
            }
        }
        // Mid-stream: this run relayed something and was killed with more to go.
        killed_mid_stream += u64::from(floor.0 > floor_before && floor.0 < appended);
        floor_before = floor.0;
    }
    assert!(
        killed_mid_stream * 2 >= cycles,
        "only {killed_mid_stream} of {cycles} kills landed while messages were outstanding: the test lost its point"
    );

    let status = relay_command(dir.path(), &server.url()).arg("--until-idle").status().unwrap();
    assert!(status.success(), "the last relay run failed: {status}");
    let stream = read_stream(&server.url(), "ORDERS");
    let mut copies: BTreeMap<u64, u32> = BTreeMap::new();
    for message in &stream {
        *copies.entry(message.relayed.record.offset.0).or_default() += 1;
        let i = message.relayed.record.offset.0;
        assert_eq!(message.relayed.record.value.as_deref(), Some(format!("m-{i}").as_bytes()));
    }
    let missing = (0..appended).filter(|i| !copies.contains_key(i)).count() as u64;
    let duplicated = copies.values().filter(|&&n| n > 1).count() as u64;
    let queue = Queue::open(dir.path()).unwrap();
    assert_eq!(queue.group("nats").unwrap().ack_floor(), Offset(appended));
    common::report(
        "N1",
        "relay kill -9 (walq relay -> nats-server): after each kill every acked offset is in the stream; in the end every message once",
        cycles,
        "kills",
        missing + duplicated,
    );
    assert_eq!(missing, 0, "messages never relayed");
    assert_eq!(duplicated, 0, "messages stored twice despite Nats-Msg-Id");
    println!("{killed_mid_stream} of {cycles} kills landed mid-stream; {appended} messages");
}
