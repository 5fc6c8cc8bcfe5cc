//! Every field of every message comes back unchanged: across segment rolls, across reopen, for tombstones,
//! empty values, binary keys and many headers.

mod common;

use common::*;
use walq::{Message, Offset, Preallocation, Queue};

#[test]
fn fields_survive_rolls_and_reopen() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let queue = small(&dir).open().unwrap();
    append_range(&queue, 0..3000);
    assert!(segment_files(&dir).len() > 3, "the workload must roll segments");
    let records = read_all(&queue);
    assert_eq!(records.len(), 3000);
    records.iter().enumerate().for_each(|(i, r)| assert_is_message(r, i as u64));
    queue.close().unwrap();

    let reopened = small(&dir).open().unwrap();
    assert!(reopened.recovery_report().lost_nothing(), "{:?}", reopened.recovery_report());
    assert_eq!(reopened.stats().next_offset, Offset(3000));
    let records = read_all(&reopened);
    assert_eq!(records.len(), 3000);
    records.iter().enumerate().for_each(|(i, r)| assert_is_message(r, i as u64));
    append_range(&reopened, 3000..3100);
    assert_eq!(read_all(&reopened).len(), 3100);
}

#[test]
fn special_messages_round_trip() {
    let temp = tempfile::tempdir().unwrap();
    let messages = vec![
        Message::tombstone(b"gone".to_vec()),
        Message::new(Vec::new()),
        Message::new(Vec::new()).key(Vec::new()),
        Message::new(vec![0u8, 255, 0, 1]).key(vec![0u8; 3]),
        (0..64).fold(Message::new(b"h".to_vec()), |m, i| m.header(format!("h{i}"), vec![i as u8; i])),
        Message::new(vec![7u8; 4000]).timestamp_ms(0),
    ];
    let queue = Queue::builder(temp.path()).preallocation(Preallocation::Reserve).open().unwrap();
    let first = queue.append_batch(&messages).unwrap();
    assert_eq!(first, Offset(0));
    queue.close().unwrap();
    let queue = Queue::open(temp.path()).unwrap();
    let records = read_all(&queue);
    assert_eq!(records.len(), messages.len());
    for (record, message) in records.iter().zip(&messages) {
        assert_eq!(record.key.as_deref(), message.key_bytes());
        assert_eq!(record.value.as_deref(), message.value_bytes());
    }
    assert!(records[0].is_tombstone());
    assert!(!records[1].is_tombstone());
    assert_eq!(records[2].key.as_deref(), Some(&[][..]));
    assert_eq!(records[4].headers.len(), 64);
    assert_eq!(records[4].headers[63].value, vec![63u8; 63]);
    assert_eq!(records[5].timestamp_ms, 0);
    assert!(records[1].timestamp_ms > 1_600_000_000_000, "unset timestamps are the append time");
}

#[test]
fn batches_span_segments_with_consecutive_offsets() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let batch: Vec<_> = (0..2000).map(message).collect();
    assert_eq!(queue.append_batch(&batch).unwrap(), Offset(0));
    assert!(queue.stats().segments > 2);
    let records = read_all(&queue);
    records.iter().enumerate().for_each(|(i, r)| assert_is_message(r, i as u64));
    assert_eq!(queue.append_batch(&[]).unwrap(), Offset(2000));
}

#[test]
fn reader_sees_appends_made_after_it_caught_up() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    let mut reader = queue.read_from(Offset::EARLIEST).unwrap();
    assert!(reader.next().is_none());
    append_range(&queue, 0..1500);
    let mut seen = 0;
    for record in reader.by_ref() {
        assert_is_message(&record.unwrap(), seen);
        seen += 1;
    }
    assert_eq!(seen, 1500);
    append_range(&queue, 1500..1501);
    assert_is_message(&reader.next().unwrap().unwrap(), 1500);
    let mut latest = queue.read_from(Offset::LATEST).unwrap();
    assert!(latest.next().is_none());
    append_range(&queue, 1501..1502);
    assert_is_message(&latest.next().unwrap().unwrap(), 1501);
}
