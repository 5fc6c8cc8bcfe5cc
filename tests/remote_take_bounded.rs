//! A client's take is bounded in bytes as well as in count: asking for many large messages, it gets those that fit
//! in 64 MiB (the one that passes it included), and the rest on its next take. The owner never holds more than
//! that for one take, whatever the client asks.

use walq::remote::{RemoteQueue, Sharing};
use walq::{Message, Offset, Queue};

#[test]
fn a_take_of_large_messages_stops_at_its_byte_budget() {
    let temp = tempfile::tempdir().unwrap();
    let owner = Queue::builder(temp.path()).sharing(Sharing::Serve).open().unwrap();
    let value = vec![7u8; 512 * 1024];
    let batch: Vec<Message> = (0..200).map(|_| Message::new(value.clone())).collect();
    owner.append_batch(&batch).unwrap();
    let remote = RemoteQueue::connect(temp.path()).unwrap();
    let consumer = remote.group("g").unwrap().consumer().unwrap();
    let first = consumer.try_recv_batch(1_000).unwrap();
    assert_eq!(first.len(), 128, "64 MiB of 512 KiB messages");
    assert!(first.iter().all(|d| d.message().value.as_deref() == Some(&value[..])));
    consumer.ack_all(first).unwrap();
    let rest = consumer.try_recv_batch(1_000).unwrap();
    assert_eq!((rest.len(), rest[0].offset()), (72, Offset(128)));
    consumer.ack_all(rest).unwrap();
    assert_eq!(owner.existing_group("g").unwrap().ack_floor(), Offset(200));
}
