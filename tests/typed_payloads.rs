//! Typed payloads (#22 item 6): `Message::json` / `Record::json` / `Delivery::json` round-trip a serde type, a value
//! of the wrong shape is a typed `Error::Json` that leaves the delivery leased, and `Delivery::take_value` moves the
//! value out without a copy while the delivery can still be acked.

mod common;

use common::*;
use walq::{Error, Message, Offset};

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Job {
    user: String,
    attempts_allowed: u32,
    payload: Vec<u8>,
}

fn job(i: u32) -> Job {
    Job { user: format!("user-{i}"), attempts_allowed: i, payload: vec![i as u8; i as usize] }
}

#[test]
fn json_round_trips_through_a_group_and_a_reader() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    for i in 0..10 {
        queue.append(Message::json(&job(i)).unwrap().key(format!("user-{i}"))).unwrap();
    }
    let consumer = queue.group("workers").unwrap().consumer();
    for i in 0..10 {
        let delivery = consumer.try_recv().unwrap().unwrap();
        assert_eq!(delivery.json::<Job>().unwrap(), job(i));
        delivery.ack().unwrap();
    }
    let stored: Vec<Job> = read_all(&queue).iter().map(|record| record.json().unwrap()).collect();
    assert_eq!(stored, (0..10).map(job).collect::<Vec<_>>());
}

#[test]
fn a_value_of_another_shape_is_a_typed_error_and_the_delivery_stays_leased() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    queue.append(Message::new(b"not json".to_vec())).unwrap();
    queue.append(Message::tombstone(b"k".to_vec())).unwrap();
    let consumer = queue.group("workers").unwrap().consumer();
    let delivery = consumer.try_recv().unwrap().unwrap();
    assert!(matches!(delivery.json::<Job>(), Err(Error::Json { .. })));
    // Still leased: it can be answered, and nothing else is handed out in its place.
    delivery.dead_letter().unwrap();
    let tombstone = consumer.try_recv().unwrap().unwrap();
    let err = tombstone.json::<Job>().unwrap_err();
    assert!(matches!(err, Error::Json { .. }), "{err}");
    tombstone.ack().unwrap();
    assert_eq!(queue.group("workers").unwrap().dead_letters().len(), 1);
}

#[test]
fn take_value_moves_the_value_out_and_the_delivery_is_still_answered() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..2);
    let consumer = queue.group("workers").unwrap().consumer();
    let mut delivery = consumer.try_recv().unwrap().unwrap();
    let value = delivery.take_value().unwrap();
    assert_eq!(Some(value.as_slice()), message(0).value_bytes());
    assert_eq!(delivery.take_value(), None, "taken once");
    assert!(delivery.message().is_tombstone(), "a taken value reads as none");
    assert!(matches!(delivery.json::<Job>(), Err(Error::Json { .. })));
    assert_eq!(delivery.offset(), Offset(0));
    delivery.ack().unwrap();
    assert_eq!(queue.group("workers").unwrap().ack_floor(), Offset(1));
    // The stored record is whole.
    assert_is_message(&read_all(&queue)[0], 0);
}
