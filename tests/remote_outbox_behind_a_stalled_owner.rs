//! A client's requests to an owner that has stopped reading them: the socket takes part of a large frame, the rest
//! waits in the connection's outbox (written by its flusher thread), later requests queue behind it, a dropped
//! request's reply is discarded, and a call waits for its reply meanwhile. Nothing the caller does waits to write,
//! and once the owner reads again every reply reaches the request it answers, in order, byte-exact.
//!
//! The owner stops reading because its connection thread serves an append whose segment fsync a gate holds (one
//! thread per connection, requests served in order). A 4 MiB frame is far more than a Unix socket's buffer.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::gated::GatedStorage;
use walq::remote::{RemoteQueue, Sharing};
use walq::{Durability, Message, Offset, Queue};

const LARGE_VALUE_BYTES: usize = 4 * 1024 * 1024;

fn large_value() -> Vec<u8> {
    (0..LARGE_VALUE_BYTES).map(|i| (i % 251) as u8).collect()
}

#[test]
fn requests_queued_behind_a_partly_written_frame_are_answered_in_order() {
    let temp = tempfile::tempdir().unwrap();
    let storage = GatedStorage::default();
    let owner = Queue::builder(temp.path())
        .storage(Arc::new(storage.clone()))
        .durability(Durability::GroupCommit)
        .message_bytes_max(8 * 1024 * 1024)
        .sharing(Sharing::Serve)
        .open()
        .unwrap();
    let remote = Arc::new(RemoteQueue::connect(temp.path()).unwrap());

    storage.gate.close(".seg");
    let held = {
        let remote = remote.clone();
        std::thread::spawn(move || remote.append(Message::new("held")))
    };
    common::eventually("the first append's fsync is held at the owner", || storage.gate.waiting() > 0);

    // Everything below is sent while the owner reads nothing: none of it may wait for the owner.
    let (sent_tx, sent_rx) = mpsc::channel();
    let sender = {
        let remote = remote.clone();
        std::thread::spawn(move || {
            let small = remote.append_nowait(&Message::new("small")).unwrap();
            let large = remote.append_nowait(&Message::new(large_value())).unwrap();
            let behind = remote.append_nowait(&Message::new("behind the large frame")).unwrap();
            drop(remote.append_nowait(&Message::new("dropped before its reply")).unwrap());
            sent_tx.send(()).unwrap();
            (small, large, behind)
        })
    };
    let sent = sent_rx.recv_timeout(Duration::from_secs(10)).is_ok();
    // A call whose reply comes while the flusher still writes the large frame.
    let reading = {
        let remote = remote.clone();
        std::thread::spawn(move || remote.get(Offset(1)))
    };
    std::thread::sleep(Duration::from_millis(50)); // lets the read's request join the queue while the gate holds
    storage.gate.open();
    assert!(sent, "a pipelined append waited for an owner that reads nothing");

    assert_eq!(held.join().unwrap().unwrap(), Offset(0));
    let (small, large, behind) = sender.join().unwrap();
    assert_eq!(small.wait().unwrap(), Offset(1));
    assert_eq!(large.wait().unwrap(), Offset(2));
    assert_eq!(behind.wait().unwrap(), Offset(3));
    let read = reading.join().unwrap().unwrap().expect("offset 1 was appended before the read was sent");
    assert_eq!(read.value.as_deref(), Some(&b"small"[..]));
    // The connection goes on: the dropped append's reply was read and discarded, not taken for another's.
    assert_eq!(remote.append(Message::new("after")).unwrap(), Offset(5));

    let values: Vec<Vec<u8>> = owner.read_from(Offset(0)).unwrap().map(|r| r.unwrap().value.unwrap()).collect();
    let expected: Vec<Vec<u8>> = vec![
        b"held".to_vec(),
        b"small".to_vec(),
        large_value(),
        b"behind the large frame".to_vec(),
        b"dropped before its reply".to_vec(),
        b"after".to_vec(),
    ];
    assert_eq!(values.len(), expected.len());
    assert!(values == expected, "the log holds every request's message, in the order sent, byte-exact");
}
