//! A client that breaks the protocol (garbage, an absurd length, a frame cut off, silence) loses its connection and
//! nothing else: the owner allocates nothing for the claimed length, releases what that client held, and goes on
//! serving the others.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use walq::remote::{RemoteQueue, Sharing, SOCKET_FILE};
use walq::{Message, Offset, Queue};

/// Whether the owner closed `stream` (reads end) within a few seconds.
fn closed_by_owner(stream: &mut UnixStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue, // a reply (the welcome) before the close
            Err(error) => return error.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn hello() -> Vec<u8> {
    let mut frame = 6u32.to_le_bytes().to_vec();
    frame.push(0x01);
    frame.extend_from_slice(b"WALQ");
    frame.extend_from_slice(&1u16.to_le_bytes());
    frame
}

#[test]
fn broken_clients_are_disconnected_and_the_queue_goes_on() {
    let temp = tempfile::tempdir().unwrap();
    let owner =
        Queue::builder(temp.path()).sharing(Sharing::Serve).ack_timeout(Duration::from_secs(3_600)).open().unwrap();
    common::append_range(&owner, 0..5);
    let socket = temp.path().join(SOCKET_FILE);
    let good = RemoteQueue::connect(temp.path()).unwrap();
    // A raw client takes a delivery of group "g" (PROTOCOL.md: take = 0x20, group, max, wait_ms).
    owner.group("g").unwrap();
    let mut holder = UnixStream::connect(&socket).unwrap();
    let take = [&13u32.to_le_bytes()[..], &[0x20], &1u32.to_le_bytes(), b"g", &1u32.to_le_bytes(), &0u32.to_le_bytes()];
    holder.write_all(&[&hello()[..], &take.concat()].concat()).unwrap();
    let local = owner.existing_group("g").unwrap().consumer();
    let mut waited = 0;
    while owner.existing_group("g").unwrap().stats().in_flight == 0 && waited < 1_000 {
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    assert_eq!(owner.existing_group("g").unwrap().stats().in_flight, 1, "the raw client holds offset 0");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not a walq client", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("a length of 4 GiB", [&hello()[..], &[0xff, 0xff, 0xff, 0xff, 0x10]].concat()),
        ("an unknown request", [&hello()[..], &[0, 0, 0, 0, 0x7f]].concat()),
        ("a count past its frame", [&hello()[..], &[4, 0, 0, 0, 0x10], &u32::MAX.to_le_bytes()].concat()),
        ("a frame cut off", [&hello()[..], &[100, 0, 0, 0, 0x10, 1, 2, 3]].concat()),
    ];
    for (what, bytes) in cases {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(&bytes).unwrap();
        if what == "a frame cut off" {
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert!(closed_by_owner(&mut stream), "{what}: the owner kept the connection");
        assert_eq!(good.append(Message::new(what)).unwrap().0 as usize, 5 + cases_done(what));
    }
    // The holder breaks the protocol too: its lease on 0 goes back at once, an hour before it would expire.
    holder.write_all(b"garbage!").unwrap();
    assert!(closed_by_owner(&mut holder));
    let again = local.recv_timeout(Duration::from_secs(10)).unwrap().expect("the held message, released");
    assert_eq!((again.offset(), again.attempt()), (Offset(0), 2));
    assert_eq!(owner.stats().next_offset, Offset(10));
}

fn cases_done(what: &str) -> usize {
    ["not a walq client", "a length of 4 GiB", "an unknown request", "a count past its frame", "a frame cut off"]
        .iter()
        .position(|w| *w == what)
        .unwrap()
}
