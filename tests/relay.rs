//! The NATS relay against a real nats-server: the stream's content equals the queue's, message for message;
//! keys as subject tokens; a rejected message becomes a dead letter; a server that is not there yet is waited for.
#![cfg(feature = "nats")]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::nats::{read_stream, NatsServer};
use walq::relay::{Relay, RelayConfig, StopWhen, SubjectMode};
use walq::{Message, Offset, Queue};

/// Message `i` of the relay tests: keys printable and binary, tombstones, headers that travel verbatim and not.
fn relay_message(i: u64) -> Message {
    let key: Vec<u8> = match i % 4 {
        0 => format!("order-{}", i % 97).into_bytes(),
        1 => vec![0, 0xff, (i % 251) as u8],
        2 => b"a.b c".to_vec(),
        _ => return Message::new(format!("keyless-{i}")).timestamp_ms(1_700_000_000_000 + i),
    };
    if i % 50 == 0 {
        return Message::tombstone(key).timestamp_ms(1_700_000_000_000 + i);
    }
    Message::new(format!("value-{i}-{}", "v".repeat((i % 300) as usize)))
        .key(key)
        .timestamp_ms(1_700_000_000_000 + i)
        .header("trace", format!("t-{i}"))
        .header("bin", i.to_le_bytes().to_vec())
}

fn relay_until_idle(queue: &Queue, group: &str, config: RelayConfig) -> walq::relay::RelayStats {
    let relay = Relay::new(queue, group, config.stop_when(StopWhen::Idle)).unwrap();
    relay.run_blocking().unwrap()
}

#[test]
fn a_hundred_thousand_messages_arrive_once_each_and_intact() {
    const COUNT: u64 = 100_000;
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path());
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let batch: Vec<Message> = (0..COUNT).map(relay_message).collect();
    for chunk in batch.chunks(1_000) {
        queue.append_batch(chunk).unwrap();
    }

    let stats = relay_until_idle(&queue, "nats", RelayConfig::new(server.url(), "orders").create_stream("ORDERS"));

    assert_eq!((stats.relayed, stats.duplicates, stats.rejected, stats.lag), (COUNT, 0, 0, 0));
    assert_eq!(queue.group("nats").unwrap().ack_floor(), Offset(COUNT));
    let stream = read_stream(&server.url(), "ORDERS");
    assert_eq!(stream.len() as u64, COUNT);
    let stored = common::read_all(&queue);
    for (message, record) in stream.iter().zip(&stored) {
        assert_eq!(message.subject, "orders");
        assert_eq!(message.relayed.queue_id, queue.queue_id());
        assert_eq!(&message.relayed.record, record, "stream sequence {}", message.sequence);
    }
}

#[test]
fn keys_become_subject_tokens() {
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path());
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    for i in 0..8 {
        queue.append(relay_message(i)).unwrap();
    }
    let config = RelayConfig::new(server.url(), "orders").subject_mode(SubjectMode::KeyToken).create_stream("BYKEY");
    relay_until_idle(&queue, "nats", config);

    let subjects: Vec<String> = read_stream(&server.url(), "BYKEY").into_iter().map(|m| m.subject).collect();
    assert_eq!(
        subjects,
        [
            "orders.order-0",
            "orders.=00ff01",
            "orders.=612e622063",
            "orders.=",
            "orders.order-4",
            "orders.=00ff05",
            "orders.=612e622063",
            "orders.="
        ]
    );
}

#[test]
fn a_message_the_server_rejects_becomes_a_dead_letter_and_the_rest_flows() {
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path());
    common::nats::runtime().block_on(async {
        let context = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: "SMALL".into(),
                subjects: vec!["small".into()],
                max_message_size: 1_024,
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::builder(dir.path()).max_deliveries(2).open().unwrap();
    for i in 0..10u64 {
        let size = if i == 3 { 4_096 } else { 10 };
        queue.append(Message::new(vec![b'x'; size])).unwrap();
    }

    let config = RelayConfig::new(server.url(), "small").reject_delay(Duration::from_millis(10));
    let relay = Relay::new(&queue, "nats", config).unwrap();
    let handle = relay.handle();
    let group = queue.group("nats").unwrap();
    let thread = std::thread::spawn(move || relay.run_blocking());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while group.ack_floor() < Offset(10) {
        assert!(std::time::Instant::now() < deadline, "relay did not finish: {:?}", handle.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.stop();
    let stats = thread.join().unwrap().unwrap();

    assert_eq!(stats.rejected, 2, "two attempts, then a dead letter");
    assert_eq!(stats.relayed, 9);
    let dead: Vec<u64> = group.dead_letters().iter().map(|d| d.offset.0).collect();
    assert_eq!(dead, vec![3]);
    let offsets: Vec<u64> = read_stream(&server.url(), "SMALL").iter().map(|m| m.relayed.record.offset.0).collect();
    assert_eq!(offsets, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn a_server_that_is_not_up_yet_is_waited_for_and_nothing_is_acked_meanwhile() {
    let store = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(store.path());
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    for i in 0..1_000 {
        queue.append(relay_message(i)).unwrap();
    }
    let config = RelayConfig::new(server.url(), "orders")
        .create_stream("LATE")
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .publish_timeout(Duration::from_millis(500))
        .stop_when(StopWhen::Idle);
    let relay = Relay::new(&queue, "nats", config).unwrap();
    let handle = relay.handle();
    let thread = std::thread::spawn(move || relay.run_blocking());

    std::thread::sleep(Duration::from_secs(2));
    let group = queue.group("nats").unwrap();
    assert_eq!(group.ack_floor(), Offset(0), "nothing acked while the server is down");
    assert!(!handle.stats().connected);
    server.restart();
    let stats = thread.join().unwrap().unwrap();

    assert_eq!(stats.relayed, 1_000);
    assert_eq!(group.ack_floor(), Offset(1_000));
    let offsets: HashSet<u64> = read_stream(&server.url(), "LATE").iter().map(|m| m.relayed.record.offset.0).collect();
    assert_eq!(offsets.len(), 1_000);
}

#[test]
fn bad_settings_are_refused_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    for subject in ["", "a.*", "a..b", "with space"] {
        let error = Relay::new(&queue, "g", RelayConfig::new("nats://127.0.0.1:1", subject)).unwrap_err();
        assert!(matches!(error, walq::relay::RelayError::InvalidSubject { .. }), "{subject:?}: {error}");
    }
    let error = Relay::new(&queue, "g", RelayConfig::new("nats://127.0.0.1:1", "s").window(0)).unwrap_err();
    assert!(matches!(error, walq::relay::RelayError::InvalidWindow { window: 0, .. }), "{error}");
    let error = Relay::new(&queue, "bad/group", RelayConfig::new("nats://127.0.0.1:1", "s")).unwrap_err();
    assert!(matches!(error, walq::relay::RelayError::Queue(walq::Error::InvalidGroupName { .. })), "{error}");
}

/// Regression (#12, item 3): the deduplication id reused offsets. It was `<queue id>:<offset>`; after a power cut
/// took the tail in `None`/`Interval`, new messages reused the lost offsets, JetStream dropped them as duplicates
/// of the lost ones it had received, and the relay acked them: silent loss. The id now carries a checksum of the
/// content. The test: 10 messages relayed; the queue as a power cut leaves it (copied while open, its last 3
/// frames cut); 3 new messages at those offsets are relayed into the same stream, and all 3 are stored.
#[test]
fn new_messages_at_offsets_a_power_cut_freed_are_not_taken_for_duplicates() {
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path());
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::builder(dir.path()).durability(walq::Durability::None).open().unwrap();
    for i in 0..10 {
        queue.append(Message::new(format!("first-{i}"))).unwrap();
    }
    let config = || RelayConfig::new(server.url(), "cut").create_stream("CUT");
    assert_eq!(relay_until_idle(&queue, "nats", config()).relayed, 10);

    let crashed = tempfile::tempdir().unwrap();
    common::copy_tree(dir.path(), crashed.path());
    drop(queue);
    let cut_at = walq::inspect::Inspector::open(crashed.path())
        .unwrap()
        .records(Offset(7))
        .unwrap()
        .find_map(|scanned| match scanned.unwrap() {
            walq::inspect::Scanned::Record(record) => Some(record.position),
            _ => None,
        })
        .unwrap();
    let segment = common::segment_files(crashed.path()).pop().unwrap();
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(cut_at).unwrap();

    let queue = Queue::open(crashed.path()).unwrap();
    for i in 7..10 {
        assert_eq!(queue.append(Message::new(format!("second-{i}"))).unwrap(), Offset(i));
    }
    let stats = relay_until_idle(&queue, "nats", config());
    assert_eq!((stats.relayed, stats.duplicates), (3, 0), "{stats:?}");
    let values: Vec<String> = read_stream(&server.url(), "CUT")
        .into_iter()
        .map(|m| String::from_utf8(m.relayed.record.value.unwrap()).unwrap())
        .collect();
    assert_eq!(values.len(), 13, "{values:?}");
    assert_eq!(&values[10..], ["second-7", "second-8", "second-9"]);
}
