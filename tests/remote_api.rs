//! A queue served by its owner, used through `RemoteQueue` (here from the same process; tests/remote_processes.rs
//! crosses processes): each call does what the owner's local call does, and says so with the same typed errors.

mod common;

use std::time::Duration;

use walq::remote::{RemoteQueue, Sharing, SOCKET_FILE};
use walq::{Error, Message, Nacked, Offset, Queue};

fn served(dir: &std::path::Path) -> Queue {
    Queue::builder(dir).sharing(Sharing::Serve).max_deliveries(2).open().unwrap()
}

#[test]
fn appends_and_reads_through_the_owner_are_the_owners() {
    let temp = tempfile::tempdir().unwrap();
    let owner = served(temp.path());
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    assert_eq!(remote.queue_id(), owner.queue_id());
    assert_eq!(remote.owner_pid(), std::process::id());
    assert_eq!(remote.append(common::message(0)).unwrap(), Offset(0));
    let batch: Vec<Message> = (1..2_500).map(common::message).collect();
    assert_eq!(remote.append_batch(&batch).unwrap(), Offset(1));
    common::append_range(&owner, 2_500..2_600);
    // Read back through the owner (more than one read request), byte-exact; and locally.
    let remote_records: Vec<_> = remote.read_from(Offset(0)).unwrap().collect::<walq::Result<_>>().unwrap();
    assert_eq!(remote_records.len(), 2_600);
    for (i, record) in remote_records.iter().enumerate() {
        common::assert_is_message(record, i as u64);
    }
    assert_eq!(common::read_all(&owner), remote_records);
    assert_eq!(remote.get(Offset(7)).unwrap().unwrap(), remote_records[7]);
    assert_eq!(remote.get(Offset(99_999)).unwrap(), None);
    let stats = remote.stats().unwrap();
    assert_eq!(stats.next_offset, Offset(2_600));
    assert_eq!(stats.appends, 2_600);
}

#[test]
fn remote_consumers_compete_with_local_ones_and_answer_as_deliveries_do() {
    let temp = tempfile::tempdir().unwrap();
    let owner = served(temp.path());
    common::append_range(&owner, 0..10);
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let group = remote.group("workers").unwrap();
    assert_eq!(group.name(), "workers");
    let consumer = group.consumer().unwrap();
    let local = owner.existing_group("workers").unwrap().consumer();
    let taken = consumer.try_recv_batch(4).unwrap();
    assert_eq!(taken.iter().map(|d| d.offset().0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    common::assert_is_message(taken[2].message(), 2);
    assert_eq!(local.try_recv().unwrap().unwrap().offset(), Offset(4)); // dropped: ready again at once
    let mut taken = taken.into_iter();
    taken.next().unwrap().ack().unwrap();
    let second = taken.next().unwrap();
    second.extend_lease().unwrap();
    assert_eq!(second.nack(Duration::from_secs(3600)).unwrap(), Nacked::Retry);
    let third = taken.next().unwrap();
    assert_eq!(third.attempt(), 1);
    assert!(!third.is_last_attempt());
    assert_eq!(third.dead_letter_with("bad input").unwrap(), Nacked::DeadLettered);
    drop(taken); // offset 3 released unanswered: delivered again at once
    let group_now = owner.existing_group("workers").unwrap();
    assert_eq!(group_now.ack_floor(), Offset(1));
    assert_eq!(group_now.dead_letters()[0].offset, Offset(2));
    assert_eq!(group_now.dead_letters()[0].reason.as_deref(), Some("bad input"));
    // 3 (released) and 4 (dropped by the local consumer) come again, now on their second and last attempt.
    let again = consumer.recv_batch_timeout(2, Duration::from_secs(5)).unwrap();
    assert_eq!(again.iter().map(|d| (d.offset().0, d.attempt())).collect::<Vec<_>>(), vec![(3, 2), (4, 2)]);
    assert!(again.iter().all(|d| d.is_last_attempt()));
    consumer.ack_all(again).unwrap();
    let rest = consumer.recv_batch_timeout(100, Duration::from_secs(5)).unwrap();
    assert_eq!(rest.iter().map(|d| d.offset().0).collect::<Vec<_>>(), (5..10).collect::<Vec<_>>());
    consumer.ack_all(rest).unwrap();
    // 1 waits for its hour; the others are done.
    assert_eq!(group_now.ack_floor(), Offset(1));
    assert_eq!(group_now.stats().acked, 8);
    assert!(consumer.try_recv().unwrap().is_none());
}

#[test]
fn a_blocking_receive_waits_for_an_append_past_one_request() {
    let temp = tempfile::tempdir().unwrap();
    let owner = served(temp.path());
    let consumer = RemoteQueue::connect(temp.path()).unwrap().group("g").unwrap().consumer().unwrap();
    let appender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_500)); // longer than one take request waits at the owner
        owner.append(Message::new("late")).unwrap();
        owner
    });
    let delivery = consumer.recv_timeout(Duration::from_secs(30)).unwrap().expect("the late message");
    assert_eq!(delivery.message().value.as_deref(), Some(&b"late"[..]));
    delivery.ack().unwrap();
    drop(appender.join().unwrap());
}

#[test]
fn errors_come_back_typed() {
    let temp = tempfile::tempdir().unwrap();
    let owner = Queue::builder(temp.path()).sharing(Sharing::Serve).message_bytes_max(1024).open().unwrap();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    match remote.append(Message::new(vec![0u8; 4096])) {
        Err(Error::MessageTooLarge { size, max }) => assert!(size > max && max == 1024),
        other => panic!("{other:?}"),
    }
    assert!(matches!(remote.group("bad/name"), Err(Error::InvalidGroupName { .. })));
    // An ack from a lease that is no longer current: typed, and nothing acked.
    owner.append(Message::new("x")).unwrap();
    let consumer = remote.group("g").unwrap().consumer().unwrap();
    let delivery = consumer.try_recv().unwrap().unwrap();
    let token = delivery.token();
    drop(delivery); // the release is sent; the drop does not wait for the owner to serve it
    let group = owner.existing_group("g").unwrap();
    let again = group.consumer().recv_timeout(std::time::Duration::from_secs(10)).unwrap().unwrap();
    assert!(matches!(group.ack(Offset(0), token), Err(Error::StaleLease { offset: Offset(0) })));
    again.ack().unwrap();
    // Nobody serves a directory without an owner; the owner's close ends the service.
    assert!(matches!(RemoteQueue::connect(temp.path().join("nothing")), Err(Error::NotServed { .. })));
    owner.close().unwrap();
    assert!(!temp.path().join(SOCKET_FILE).exists(), "the socket is removed on close");
    assert!(matches!(remote.append(Message::new("y")), Err(Error::ConnectionLost { .. })));
    assert!(matches!(RemoteQueue::connect(temp.path()), Err(Error::NotServed { .. })));
}

#[test]
fn a_private_queue_has_no_socket_and_a_served_one_is_the_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let temp = tempfile::tempdir().unwrap();
    let private = Queue::open(temp.path().join("private")).unwrap();
    assert!(!temp.path().join("private").join(SOCKET_FILE).exists());
    assert!(matches!(RemoteQueue::connect(private.dir()), Err(Error::NotServed { .. })));
    let _owner = served(&temp.path().join("served"));
    let mode = std::fs::metadata(temp.path().join("served").join(SOCKET_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn dropping_the_owners_last_handle_closes_the_queue_even_with_clients_connected() {
    let temp = tempfile::tempdir().unwrap();
    let owner = served(temp.path());
    owner.append(Message::new("x")).unwrap();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let consumer = remote.group("g").unwrap().consumer().unwrap();
    let held = consumer.try_recv().unwrap().unwrap(); // a lease the client holds does not keep the queue open
    drop(owner);
    let reopened = Queue::open(temp.path()).expect("the lock was released");
    assert!(matches!(held.ack(), Err(Error::ConnectionLost { .. })));
    assert_eq!(reopened.existing_group("g").unwrap().ack_floor(), Offset(0));
}

#[test]
fn a_long_directory_path_is_served_too() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("d".repeat(90)).join("e".repeat(40));
    let owner = served(&dir);
    assert!(dir.join(SOCKET_FILE).as_os_str().len() > 108);
    let remote = RemoteQueue::connect(&dir).unwrap();
    assert_eq!(remote.append(Message::new("far")).unwrap(), Offset(0));
    assert_eq!(owner.get(Offset(0)).unwrap().unwrap().value.as_deref(), Some(&b"far"[..]));
}

#[test]
fn pipelined_appends_far_past_the_in_flight_bound_neither_block_nor_reorder() {
    let temp = tempfile::tempdir().unwrap();
    let owner = served(temp.path());
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    // 5,000 sent before any reply is asked for: the client reads replies ahead past 64 in flight.
    let pending: Vec<_> = (0..5_000).map(|i| remote.append_nowait(&common::message(i)).unwrap()).collect();
    // Other threads' calls on the same connection meanwhile get their own replies.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| assert!(remote.stats().unwrap().next_offset.0 >= 1));
        }
    });
    for (i, append) in pending.into_iter().enumerate() {
        assert_eq!(append.wait().unwrap(), Offset(i as u64));
    }
    let dropped = remote.append_nowait(&common::message(5_000)).unwrap();
    drop(dropped); // waited for on drop: the next call's reply is its own
    assert_eq!(remote.append(common::message(5_001)).unwrap(), Offset(5_001));
    let records = common::read_all(&owner);
    assert_eq!(records.len(), 5_002);
    for (i, record) in records.iter().enumerate() {
        common::assert_is_message(record, i as u64);
    }
}
