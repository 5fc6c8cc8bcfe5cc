//! The write buffer (`QueueBuilder::write_buffer_bytes`): appends collect in the process and reach the file in few
//! writes; readers and consumers still see every acknowledged append at once; close, flush and the linger ticker
//! write it out; a full disk keeps what was buffered; and it is refused where every append is fsynced.

mod common;

use std::time::{Duration, Instant};

use common::*;
use walq::storage::{FaultKind, FaultPlan, FaultyStorage};
use walq::{Durability, Error, Offset, Preallocation, Queue};

#[test]
fn buffered_appends_are_read_back_at_once_and_survive_close() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let queue = small(&dir).durability(Durability::None).write_buffer_bytes(16 * 1024).open().unwrap();
    append_range(&queue, 0..10);
    // Ten small appends fit the buffer; a reader that catches up with them makes them go out.
    let records = read_all(&queue);
    assert_eq!(records.len(), 10, "a reader sees every acknowledged append, buffered or not");
    append_range(&queue, 10..2_000); // many rolls of 64 KiB segments
    let records = read_all(&queue);
    assert_eq!(records.len(), 2_000);
    for (i, record) in records.iter().enumerate() {
        assert_is_message(record, i as u64);
    }
    append_range(&queue, 2_000..2_005);
    queue.close().unwrap();
    let queue = small(&dir).durability(Durability::None).open().unwrap();
    let records = read_all(&queue);
    assert_eq!(records.len(), 2_005, "close writes the buffer out");
    assert_is_message(&records[2_004], 2_004);
}

#[test]
fn a_blocked_consumer_receives_a_buffered_message() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::None).write_buffer_bytes(1 << 20).open().unwrap();
    let consumer = queue.group("g").unwrap().consumer();
    let waiting = std::thread::spawn(move || consumer.recv_timeout(Duration::from_secs(20)).unwrap());
    std::thread::sleep(Duration::from_millis(20));
    queue.append(message(0)).unwrap();
    let delivery = waiting.join().unwrap().expect("the consumer gets the buffered message");
    assert_is_message(delivery.message(), 0);
    delivery.ack().unwrap();
}

#[test]
fn the_ticker_writes_a_buffer_that_does_not_fill() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let queue = small(&dir).durability(Durability::None).write_buffer_bytes(1 << 20).open().unwrap();
    queue.append(message(0)).unwrap();
    let segment = &segment_files(&dir)[0];
    let expected = SEGMENT_HEADER_BYTES + frame_len(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    // Files grow as written here, so the file's length says what reached the OS. No reader looks.
    while std::fs::metadata(segment).unwrap().len() < expected {
        assert!(Instant::now() < deadline, "the buffered append never reached the file");
        std::thread::sleep(walq::WRITE_BUFFER_LINGER);
    }
    assert_eq!(std::fs::metadata(segment).unwrap().len(), expected);
    drop(queue);
}

fn sim_storage_builder(storage: &FaultyStorage, buffer_bytes: usize) -> walq::QueueBuilder {
    sim_builder(storage).durability(Durability::None).write_buffer_bytes(buffer_bytes)
}

/// Operations the fault model counted while `n` appends ran.
fn ops_for_appends(buffer_bytes: usize, n: u64) -> u64 {
    let storage = FaultyStorage::new();
    let queue = sim_storage_builder(&storage, buffer_bytes).open().unwrap();
    let before = storage.op_count();
    append_range(&queue, 0..n);
    let ops = storage.op_count() - before;
    queue.close().unwrap();
    ops
}

#[test]
fn buffered_appends_take_few_writes() {
    let unbuffered = ops_for_appends(0, 1_000);
    let buffered = ops_for_appends(32 * 1024, 1_000);
    assert!(unbuffered >= 1_000, "one write per append without a buffer: {unbuffered} operations");
    // 1,000 frames of about 100 B fill a 32 KiB buffer a few times; the 5 ms ticker adds one write per tick.
    assert!(buffered < unbuffered / 4, "a buffer must save writes: {buffered} operations against {unbuffered}");
}

#[test]
fn a_full_disk_keeps_the_buffered_appends() {
    let storage = FaultyStorage::new();
    let queue = sim_storage_builder(&storage, 4 * 1024).open().unwrap();
    append_range(&queue, 0..20);
    storage.set_plan(Some(FaultPlan { at_op: storage.op_count(), kind: FaultKind::Enospc, persistent: true }));
    let mut acked = 20;
    let error = loop {
        match queue.append(message(acked)) {
            Ok(offset) => {
                assert_eq!(offset, Offset(acked));
                acked += 1;
            }
            Err(error) => break error,
        }
        assert!(acked < 1_000, "a full disk must be reported once the buffer has to be written");
    };
    assert!(matches!(error, Error::DiskFull), "{error:?}");
    assert!(matches!(queue.flush(), Err(Error::DiskFull)));
    storage.set_plan(None); // space freed
    append_range(&queue, acked..acked + 100);
    queue.close().unwrap();
    let queue = sim_storage_builder(&storage, 0).open().unwrap();
    let records = read_all(&queue);
    assert_eq!(records.len() as u64, acked + 100, "every acknowledged append is kept, none twice");
    for (i, record) in records.iter().enumerate() {
        assert_is_message(record, i as u64);
    }
}

#[test]
fn a_buffer_is_refused_where_every_append_is_fsynced() {
    let temp = tempfile::tempdir().unwrap();
    for durability in [Durability::Sync, Durability::GroupCommit] {
        let dir = temp.path().join(format!("{durability:?}"));
        let error = Queue::builder(&dir).durability(durability).write_buffer_bytes(4096).open().unwrap_err();
        assert!(matches!(error, Error::InvalidOption { option: "write_buffer_bytes", .. }), "{error:?}");
        assert!(!dir.exists(), "a refused open creates nothing");
    }
    let dir = temp.path().join("too-big");
    let error = Queue::builder(&dir)
        .durability(Durability::None)
        .write_buffer_bytes(walq::WRITE_BUFFER_BYTES_MAX + 1)
        .open()
        .unwrap_err();
    assert!(matches!(error, Error::InvalidOption { option: "write_buffer_bytes", .. }), "{error:?}");
    // Interval mode takes one; a stored GroupCommit queue reopened with a buffer is refused too.
    let dir = temp.path().join("interval");
    let queue = Queue::builder(&dir)
        .durability(Durability::Interval(Duration::from_millis(10)))
        .write_buffer_bytes(4096)
        .open()
        .unwrap();
    append_range(&queue, 0..3);
    queue.close().unwrap();
    let stored = temp.path().join("stored");
    Queue::builder(&stored).durability(Durability::GroupCommit).open().unwrap().close().unwrap();
    let error = Queue::builder(&stored).write_buffer_bytes(4096).open().unwrap_err();
    assert!(matches!(error, Error::InvalidOption { option: "write_buffer_bytes", .. }), "{error:?}");
}

#[test]
fn interval_mode_makes_buffered_appends_durable() {
    let storage = FaultyStorage::new();
    let queue = sim_builder(&storage)
        .durability(Durability::Interval(Duration::from_millis(5)))
        .write_buffer_bytes(64 * 1024)
        .preallocation(Preallocation::Grow)
        .open()
        .unwrap();
    append_range(&queue, 0..50);
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue.stats().durable_offset < Offset(50) {
        assert!(Instant::now() < deadline, "the flusher never wrote and synced the buffer");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A power cut now keeps all fifty: they were written and fsynced.
    let image = storage.crash_image(7);
    drop(queue);
    let queue = sim_builder(&image).durability(Durability::None).open().unwrap();
    assert_eq!(read_all(&queue).len(), 50);
}

/// Operations the fault model counted while `n` messages were received and acked one by one.
fn ops_for_acks(buffer_bytes: usize, n: u64) -> u64 {
    let storage = FaultyStorage::new();
    let queue = sim_storage_builder(&storage, buffer_bytes).open().unwrap();
    append_range(&queue, 0..n);
    let consumer = queue.group("g").unwrap().consumer();
    queue.flush().unwrap();
    let before = storage.op_count();
    for i in 0..n {
        let delivery = consumer.try_recv().unwrap().expect("a message");
        assert_eq!(delivery.offset(), Offset(i));
        delivery.ack().unwrap();
    }
    let ops = storage.op_count() - before;
    queue.close().unwrap();
    ops
}

#[test]
fn buffered_group_progress_takes_few_writes() {
    let unbuffered = ops_for_acks(0, 1_000);
    let buffered = ops_for_acks(32 * 1024, 1_000);
    assert!(unbuffered >= 2_000, "a journal write per delivery and per ack without a buffer: {unbuffered}");
    assert!(buffered < unbuffered / 4, "a buffer must save journal writes: {buffered} operations against {unbuffered}");
}

#[test]
fn buffered_acks_are_kept_by_close_and_a_process_crash_skips_nothing() {
    let storage = FaultyStorage::new();
    let queue = sim_storage_builder(&storage, 64 * 1024).open().unwrap();
    append_range(&queue, 0..200);
    let consumer = queue.group("g").unwrap().consumer();
    for i in 0..120 {
        let delivery = consumer.try_recv().unwrap().expect("a message");
        assert_eq!(delivery.offset(), Offset(i));
        delivery.ack().unwrap();
    }
    // A process crash now keeps what reached the OS: buffered acks may be lost, so acked messages may come again.
    let crashed = storage.clean_image();
    queue.close().unwrap();
    let reopened = sim_storage_builder(&storage, 0).open().unwrap();
    assert_eq!(reopened.group("g").unwrap().ack_floor(), Offset(120), "close writes the buffered acks");
    drop(reopened);
    let after_crash = sim_storage_builder(&crashed, 0).open().unwrap();
    let group = after_crash.group("g").unwrap();
    let floor = group.ack_floor().0;
    assert!(floor <= 120, "no ack that was never made: floor {floor}");
    let consumer = group.consumer();
    for i in floor..200 {
        let delivery = consumer.try_recv().unwrap().expect("nothing is skipped");
        assert_eq!(delivery.offset(), Offset(i));
        delivery.ack().unwrap();
    }
    assert!(consumer.try_recv().unwrap().is_none());
}

#[test]
fn reading_from_latest_skips_buffered_appends() {
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::None).write_buffer_bytes(1 << 20).open().unwrap();
    append_range(&queue, 0..5);
    let mut reader = queue.read_from(Offset::LATEST).unwrap();
    assert_eq!(reader.next_offset(), Offset(5), "acknowledged appends are not new, buffered or not");
    assert!(reader.next().is_none());
    queue.append(message(5)).unwrap();
    assert_is_message(&reader.next().expect("the new append").unwrap(), 5);
}

/// R8 with the write buffer: the n-th storage operation fails (EIO, ENOSPC, a short write), once or for good, for
/// every n of a workload that appends through a 2 KiB buffer (rolling 64 KiB segments) and flushes every 100
/// messages. Buffered appends are
/// not promised to survive a failure that poisons the queue (as they are not promised to survive a process crash),
/// but everything acknowledged before a successful flush is, through the fault and a power cut after it; and
/// nothing stored is altered, reordered or invented.
#[test]
fn an_error_at_every_operation_keeps_what_was_flushed() {
    let reference = FaultyStorage::new();
    let (_, _, gave_up) = flushing_workload(&reference);
    assert!(!gave_up);
    let total_ops = reference.op_count();
    let mut cases = 0;
    for persistent in [false, true] {
        for kind in [FaultKind::Eio, FaultKind::Enospc, FaultKind::ShortWrite] {
            for at_op in 0..total_ops {
                let context = format!("at op {at_op} ({kind:?}, persistent: {persistent})");
                let storage = FaultyStorage::new();
                storage.set_plan(Some(FaultPlan { at_op, kind, persistent }));
                let (attempted, flushed, _) = flushing_workload(&storage);
                storage.set_plan(None);
                check_flushed(&storage, &attempted, &flushed, &context);
                check_flushed(&storage.crash_image(at_op), &attempted, &flushed, &format!("{context}, power cut"));
                cases += 1;
            }
        }
    }
    println!("write buffer under I/O errors: {cases} cases, 0 violations");
    common::report(
        "R8 write buffer",
        "EIO, ENOSPC, short write at every operation through the write buffer: everything flushed kept",
        cases,
        "cases",
        0,
    );
}

const FLUSH_EVERY: u64 = 100;
const BUFFERED_MESSAGES: u64 = 1_000;

/// Returns the messages attempted, those acknowledged before a successful flush, and whether it gave up.
fn flushing_workload(storage: &FaultyStorage) -> (Vec<u64>, Vec<u64>, bool) {
    let open = || sim_storage_builder(storage, 2048).open();
    let (mut attempted, mut acked, mut flushed) = (Vec::new(), Vec::new(), Vec::new());
    let mut failures = 0;
    let Ok(mut queue) = open() else { return (attempted, flushed, true) };
    let mut i = 0;
    let mut flush_due = false;
    while i < BUFFERED_MESSAGES || flush_due {
        if failures > 5 {
            return (attempted, flushed, true);
        }
        let result = if flush_due {
            queue.flush().map(|()| {
                flushed.clone_from(&acked);
                flush_due = false;
            })
        } else {
            if attempted.last() != Some(&i) {
                attempted.push(i);
            }
            queue.append(message(i)).map(|_| {
                acked.push(i);
                flush_due = i % FLUSH_EVERY == FLUSH_EVERY - 1;
                i += 1;
            })
        };
        match result {
            Ok(()) => {}
            Err(Error::DiskFull) => failures += 1, // the same step again
            Err(Error::Poisoned | Error::Io { .. }) => {
                failures += 1;
                drop(queue);
                // What the poisoned handle had buffered is gone with it: a later flush covers none of it.
                acked.clone_from(&flushed);
                match open() {
                    Ok(reopened) => queue = reopened,
                    Err(_) => return (attempted, flushed, true),
                }
                if !flush_due {
                    i += 1; // the failed message may or may not be stored; go on with the next
                }
                flush_due = false;
            }
            Err(error) => panic!("step at message {i}: {error}"),
        }
    }
    (attempted, flushed, false)
}

fn check_flushed(storage: &FaultyStorage, attempted: &[u64], flushed: &[u64], context: &str) {
    let queue = sim_storage_builder(storage, 0).open().unwrap_or_else(|e| panic!("{context}: open: {e}"));
    let mut found = Vec::new();
    for record in queue.read_from(Offset::EARLIEST).unwrap() {
        let record = record.unwrap_or_else(|e| panic!("{context}: read: {e}"));
        let seq = u64::from_le_bytes(record.headers[0].value[..8].try_into().unwrap());
        assert_eq!(record.value.as_deref(), message(seq).value_bytes(), "{context}: altered message {seq}");
        assert!(attempted.contains(&seq), "{context}: message {seq} was never appended");
        assert!(found.last().is_none_or(|&last| seq > last), "{context}: order broken at {seq}");
        found.push(seq);
    }
    let lost: Vec<_> = flushed.iter().filter(|seq| !found.contains(seq)).collect();
    assert!(lost.is_empty(), "{context}: flushed messages lost: {lost:?}");
}
