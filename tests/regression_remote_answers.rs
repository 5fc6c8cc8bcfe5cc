//! Regression: a client could change deliveries it never held, and revive a deleted group.
//!
//! The bugs: the owner answered any (offset, token) a client sent as the `Delivery` it stands for would be
//! answered, where an ack after the lease ended still counts, so an ack of an offset never delivered to anyone was
//! taken; and a nack, dead letter or release of another connection's live lease went through. A remote take opened
//! its group with `Queue::group`, which creates a missing one: a consumer idle across a delete brought the group back
//! at the oldest message and delivered the whole log again.
//!
//! The fix: a connection keeps the leases its takes gave it; its answers to those are a delivery's answers, and any
//! other is answered as `Group::ack` answers by token (only a current lease) or not at all. Takes use the existing
//! group; only an explicit open (`RemoteQueue::group`) creates one. Both are checked here through raw frames
//! (PROTOCOL.md), as a hostile client would send them.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use walq::remote::{RemoteQueue, Sharing, SOCKET_FILE};
use walq::{Error, Offset, Queue};

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    [&(body.len() as u32).to_le_bytes()[..], &[kind], body].concat()
}

fn text(value: &str) -> Vec<u8> {
    [&(value.len() as u32).to_le_bytes()[..], value.as_bytes()].concat()
}

/// A raw connection past its handshake.
fn connect(dir: &std::path::Path) -> UnixStream {
    let mut stream = UnixStream::connect(dir.join(SOCKET_FILE)).unwrap();
    stream.write_all(&frame(0x01, &[&b"WALQ"[..], &1u16.to_le_bytes()].concat())).unwrap();
    read_frame(&mut stream);
    stream
}

fn read_frame(stream: &mut UnixStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(header[..4].try_into().unwrap()) as usize];
    stream.read_exact(&mut body).unwrap();
    (header[4], body)
}

/// Sends an answer (kind 0x21) and returns the reply's kind and body.
fn answer(stream: &mut UnixStream, offset: u64, token: u128, answer: &[u8]) -> (u8, Vec<u8>) {
    let body = [&text("g")[..], &offset.to_le_bytes(), &token.to_le_bytes(), answer].concat();
    stream.write_all(&frame(0x21, &body)).unwrap();
    read_frame(stream)
}

#[test]
fn a_client_changes_only_the_deliveries_it_holds() {
    let temp = tempfile::tempdir().unwrap();
    let owner =
        Queue::builder(temp.path()).sharing(Sharing::Serve).ack_timeout(Duration::from_secs(3_600)).open().unwrap();
    common::append_range(&owner, 0..10);
    let group = owner.group("g").unwrap();
    let holder = RemoteQueue::connect(temp.path()).unwrap().group("g").unwrap().consumer().unwrap();
    let held = holder.try_recv().unwrap().unwrap();
    assert_eq!(held.offset(), Offset(0));
    let token = held.token().to_u128();
    let mut other = connect(temp.path());
    // An ack of an offset never delivered, with a token of this open's epoch: refused, nothing acked.
    let (kind, body) = answer(&mut other, 5, token + 100, &[0]);
    assert_eq!((kind, &body[..2]), (0xFF, &8u16.to_le_bytes()[..]), "StaleLease");
    // A nack, a dead letter and a release of the holder's live lease change nothing.
    assert_eq!(answer(&mut other, 0, token, &[1, 0, 0, 0, 0, 0, 0, 0, 0]), (0xA2, vec![2]), "LeaseEnded");
    assert_eq!(answer(&mut other, 0, token, &[4, 0]), (0xA2, vec![2]), "LeaseEnded");
    assert_eq!(answer(&mut other, 0, token, &[6]).0, 0xA1);
    assert_eq!(group.stats().in_flight, 1, "the holder's lease stands");
    assert!(group.dead_letters().is_empty());
    assert_eq!(group.ack_floor(), Offset(0));
    held.ack().unwrap();
    assert_eq!(group.ack_floor(), Offset(1));
}

#[test]
fn a_take_does_not_bring_back_a_deleted_group() {
    let temp = tempfile::tempdir().unwrap();
    let owner = Queue::builder(temp.path()).sharing(Sharing::Serve).open().unwrap();
    common::append_range(&owner, 0..10);
    let consumer = RemoteQueue::connect(temp.path()).unwrap().group("g").unwrap().consumer().unwrap();
    consumer.ack_all(consumer.try_recv_batch(10).unwrap()).unwrap();
    assert!(owner.delete_group("g").unwrap());
    match consumer.try_recv() {
        Err(Error::GroupNotFound { name }) => assert_eq!(name, "g"),
        other => panic!("{other:?}"),
    }
    assert!(owner.groups().is_empty(), "the take created nothing");
}
