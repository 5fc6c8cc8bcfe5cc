//! Following the log and streaming deliveries through an owner: `RemoteQueue::follow` waits at the owner for
//! appends once caught up (a read that waits, protocol version 2), `RemoteConsumer::deliveries` / `iter` take one
//! message at a time, `SharedQueue::follow` and `SharedConsumer::deliveries` go on through a takeover, and a
//! client of an owner that speaks only version 1 connects at version 1 and is told a follow needs version 2.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use futures_util::StreamExt;
use walq::remote::{RemoteQueue, SharedQueue, Sharing, SOCKET_FILE};
use walq::{Error, Message, Offset, Queue};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_remote_follow_reads_what_is_stored_then_waits_at_the_owner_for_appends() {
    let temp = tempfile::tempdir().unwrap();
    let owner = Queue::builder(temp.path()).sharing(Sharing::Serve).open().unwrap();
    for i in 0..3 {
        owner.append(Message::new(format!("m{i}"))).unwrap();
    }
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let mut from_start = remote.follow(Offset::EARLIEST).unwrap();
    let mut from_now = remote.follow(Offset::LATEST).unwrap();
    let appender = {
        let owner = owner.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200)); // both follows are waiting at the owner
            owner.append(Message::new("later")).unwrap();
        })
    };
    runtime().block_on(async {
        for i in 0..3 {
            let record = from_start.next_record().await.unwrap().unwrap();
            assert_eq!((record.offset, record.value.as_deref()), (Offset(i), Some(format!("m{i}").as_bytes())));
        }
        let later = from_start.next().await.unwrap().unwrap(); // as a Stream
        assert_eq!((later.offset, later.value.as_deref()), (Offset(3), Some(&b"later"[..])));
        let only_new = from_now.next_record().await.unwrap().unwrap();
        assert_eq!(only_new.offset, Offset(3), "a follow from LATEST starts where the log ended when it was made");
        assert_eq!(from_start.next_offset(), Offset(4));
    });
    appender.join().unwrap();
    // The owner closes: the follow ends with ConnectionLost, then None.
    drop(owner);
    runtime().block_on(async {
        assert!(matches!(from_start.next_record().await, Some(Err(Error::ConnectionLost { .. }))));
        assert!(from_start.next_record().await.is_none());
    });
}

#[test]
fn remote_consumers_stream_and_iterate_deliveries() {
    let temp = tempfile::tempdir().unwrap();
    let owner = Queue::builder(temp.path()).sharing(Sharing::Serve).open().unwrap();
    owner.append_batch(&(0..4).map(|i| Message::new(format!("m{i}"))).collect::<Vec<_>>()).unwrap();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let group = remote.group("g").unwrap();
    let iterating = group.consumer().unwrap();
    let first = iterating.iter().next().unwrap().unwrap();
    assert_eq!(first.offset(), Offset(0));
    first.ack().unwrap();
    let mut stream = group.consumer().unwrap().deliveries();
    runtime().block_on(async {
        for i in 1..4 {
            let delivery = stream.next().await.unwrap().unwrap();
            assert_eq!(delivery.offset(), Offset(i));
            delivery.ack_async().await.unwrap();
        }
    });
    assert_eq!(owner.existing_group("g").unwrap().ack_floor(), Offset(4));
    // Deleted at the owner: the stream says so once, then ends.
    assert!(owner.delete_group("g").unwrap());
    runtime().block_on(async {
        assert!(matches!(stream.next().await, Some(Err(Error::GroupDeleted { .. } | Error::GroupNotFound { .. }))));
        assert!(stream.next().await.is_none());
    });
}

#[test]
fn a_shared_follow_and_a_shared_stream_go_on_through_a_takeover() {
    let temp = tempfile::tempdir().unwrap();
    let open = || SharedQueue::open(Queue::builder(temp.path()).ack_timeout(Duration::from_secs(3_600))).unwrap();
    let first = open();
    let second = open();
    assert!(!second.is_owner());
    for i in 0..2 {
        first.append(Message::new(format!("m{i}"))).unwrap();
    }
    let mut follow = second.follow(Offset::EARLIEST).unwrap();
    let mut deliveries = second.consumer("g").unwrap().deliveries();
    runtime().block_on(async {
        assert_eq!(follow.next_record().await.unwrap().unwrap().offset, Offset(0));
        let taken = deliveries.next().await.unwrap().unwrap();
        assert_eq!(taken.offset(), Offset(0));
        taken.ack_async().await.unwrap();
    });
    drop(first); // the second takes the queue over (its watch sees the owner go)
    common::eventually("the second handle took the queue over", || second.is_owner());
    assert_eq!(second.append(Message::new("m2")).unwrap(), Offset(2));
    runtime().block_on(async {
        for i in 1..3 {
            assert_eq!(follow.next_record().await.unwrap().unwrap().offset, Offset(i));
        }
        for i in 1..3 {
            let taken = deliveries.next().await.unwrap().unwrap();
            assert_eq!(taken.offset(), Offset(i));
            taken.ack_async().await.unwrap();
        }
    });
    assert!(second.is_owner());
}

/// A fake owner that speaks only protocol version 1: it refuses a hello of version 2 (saying 1), then welcomes
/// one of version 1 and answers its stats request.
#[test]
fn a_client_of_a_version_1_owner_speaks_version_1_and_cannot_follow() {
    let temp = tempfile::tempdir().unwrap();
    drop(Queue::open(temp.path()).unwrap());
    let listener = UnixListener::bind(temp.path().join(SOCKET_FILE)).unwrap();
    let owner = std::thread::spawn(move || {
        let (mut versions, mut served) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            let (mut stream, _) = listener.accept().unwrap();
            let mut hello = [0u8; 11];
            stream.read_exact(&mut hello).unwrap();
            let version = u16::from_le_bytes([hello[9], hello[10]]);
            versions.push(version);
            if version != 1 {
                stream.write_all(&frame(0xFE, &[3, 1, 0])).unwrap(); // refused: another version; I speak 1
                continue;
            }
            let mut welcome = vec![1, 0];
            welcome.extend_from_slice(&4242u32.to_le_bytes());
            welcome.extend_from_slice(&2u32.to_le_bytes());
            welcome.extend_from_slice(b"q1");
            stream.write_all(&frame(0x81, &welcome)).unwrap();
            served.push(std::thread::spawn(move || {
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest); // until the client closes
            }));
        }
        for connection in served {
            connection.join().unwrap();
        }
        versions
    });
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    assert_eq!(remote.owner_pid(), 4242);
    let refused = remote.follow(Offset::EARLIEST).unwrap_err();
    assert!(matches!(refused, Error::UnsupportedVersion { found: 1, supported: 2 }), "{refused:?}");
    drop(remote);
    assert_eq!(owner.join().unwrap(), [2, 1, 2, 1], "each connection asks for 2 first, then speaks 1");
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.push(kind);
    frame.extend_from_slice(body);
    frame
}
