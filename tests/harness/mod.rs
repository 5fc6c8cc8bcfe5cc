//! The fuzz harnesses of R9, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and by the replay of the saved
//! corpus in plain `cargo test` (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes, puts them where walq reads
//! stored bytes (a sealed segment's frames, the last segment's tail, a group journal, the manifest) or reads them
//! as a sequence of operations, and drives the public API on the in-memory fault-injecting file system. A harness
//! fails (panics) on a panic inside walq, on an untyped error where a typed one is promised, or, for operation
//! sequences, when the queue disagrees with a model.

#![allow(dead_code)] // each fuzz target uses one harness

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::{Durability, Error, Message, Offset, Preallocation, Queue, QueueBuilder};

const DIR: &str = "/fuzz/queue";
/// The largest input worth reading: a 64 KiB segment.
const INPUT_BYTES_MAX: usize = 64 * 1024;

fn builder(storage: &FaultyStorage) -> QueueBuilder {
    Queue::builder(DIR)
        .storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(Durability::GroupCommit)
        .preallocation(Preallocation::Grow)
}

fn path(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

fn message(i: u64) -> Message {
    Message::new(format!("value-{i}").into_bytes()).key(format!("k{}", i % 5).into_bytes()).timestamp_ms(i)
}

/// A closed queue with a sealed first segment, a second (last) segment, and a group with some acks; built once.
fn base() -> &'static FaultyStorage {
    static BASE: OnceLock<FaultyStorage> = OnceLock::new();
    BASE.get_or_init(|| {
        let storage = FaultyStorage::new();
        let queue = builder(&storage).open().expect("a new queue opens");
        let mut i = 0;
        while queue.stats().segments < 2 {
            queue.append(message(i)).expect("append");
            i += 1;
        }
        let consumer = queue.group("g").expect("group").consumer();
        for _ in 0..10 {
            consumer.try_recv().expect("recv").expect("a message").ack().expect("ack");
        }
        queue.close().expect("close");
        storage.clean_image()
    })
}

fn segment_names(storage: &FaultyStorage) -> Vec<String> {
    let mut names: Vec<String> = storage
        .snapshot()
        .into_keys()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| p.file_name().expect("a name").to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Opens and reads everything; every failure must be a typed error, never a panic.
fn open_and_read(storage: &FaultyStorage) {
    let queue = match builder(storage).open() {
        Ok(queue) => queue,
        Err(Error::Corrupt { .. } | Error::UnsupportedVersion { .. } | Error::NotAQueue { .. }) => return,
        Err(other) => panic!("open failed with an untyped error: {other}"),
    };
    for record in queue.read_from(Offset::EARLIEST).expect("a reader") {
        match record {
            Ok(_) => {}
            Err(Error::Corrupt { .. }) => break,
            Err(other) => panic!("read failed with an untyped error: {other}"),
        }
    }
    if let Ok(group) = queue.group("g") {
        let consumer = group.consumer();
        for _ in 0..20 {
            match consumer.try_recv() {
                Ok(Some(delivery)) => delivery.ack().expect("ack on a healthy disk"),
                Ok(None) | Err(Error::Corrupt { .. }) => break,
                Err(other) => panic!("consume failed with an untyped error: {other}"),
            }
        }
    }
}

/// Frame decoding: the bytes replace the frames of a sealed segment, which readers decode frame by frame.
pub fn frame_decoding(data: &[u8]) {
    let image = base().clean_image();
    let sealed = segment_names(&image).remove(0);
    image.corrupt_file(&path(&sealed), |bytes| {
        bytes.truncate(64);
        bytes.extend_from_slice(&data[..data.len().min(INPUT_BYTES_MAX)]);
    });
    let _ = image.remove_file(&path(&sealed.replace(".seg", ".idx")));
    open_and_read(&image);
}

/// Segment recovery: the bytes follow the last segment's header, as a crash or damage may leave them.
pub fn segment_recovery(data: &[u8]) {
    let image = base().clean_image();
    let last = segment_names(&image).pop().expect("a last segment");
    image.corrupt_file(&path(&last), |bytes| {
        bytes.truncate(64);
        bytes.extend_from_slice(&data[..data.len().min(INPUT_BYTES_MAX)]);
    });
    open_and_read(&image);
}

/// Group-state decoding: the bytes are the group's journal file.
pub fn group_state(data: &[u8]) {
    let image = base().clean_image();
    image.corrupt_file(&path("groups/g.journal"), |bytes| {
        bytes.clear();
        bytes.extend_from_slice(&data[..data.len().min(INPUT_BYTES_MAX)]);
    });
    open_and_read(&image);
}

/// Manifest decoding: the bytes are `MANIFEST.json`.
pub fn manifest(data: &[u8]) {
    let image = base().clean_image();
    image.corrupt_file(&path("MANIFEST.json"), |bytes| {
        bytes.clear();
        bytes.extend_from_slice(&data[..data.len().min(INPUT_BYTES_MAX)]);
    });
    open_and_read(&image);
}

/// Operation sequences against a model: each byte is an operation (append, batch, read back, consume and ack,
/// reopen, power cut). Under `GroupCommit` every acknowledged append and ack survives everything, so after each
/// reopen the log must equal the model and the group must resume exactly at its acked count.
pub fn operations(data: &[u8]) {
    let mut storage = FaultyStorage::new();
    let mut queue = builder(&storage).open().expect("a new queue opens");
    let mut model: Vec<Vec<u8>> = Vec::new();
    let mut acked = 0u64;
    for (step, &op) in data.iter().take(256).enumerate() {
        let n = u64::from(op >> 3);
        match op & 7 {
            0 | 1 => {
                let value = format!("m{}-{}", model.len(), n).into_bytes();
                let offset = queue.append(Message::new(value.clone())).expect("append on a healthy disk");
                assert_eq!(offset, Offset(model.len() as u64), "step {step}: offsets are dense");
                model.push(value);
            }
            2 => {
                let batch: Vec<Message> =
                    (0..n % 8 + 1).map(|k| Message::new(format!("b{}-{k}", model.len()).into_bytes())).collect();
                let first = queue.append_batch(&batch).expect("batch on a healthy disk");
                assert_eq!(first, Offset(model.len() as u64), "step {step}: a batch continues the offsets");
                model.extend(batch.iter().map(|m| m.value_bytes().expect("a value").to_vec()));
            }
            3 => check_log(&queue, &model, step),
            4 => {
                let consumer = queue.group("g").expect("group").consumer();
                for _ in 0..n % 4 + 1 {
                    let Some(delivery) = consumer.try_recv().expect("recv") else { break };
                    assert_eq!(delivery.offset(), Offset(acked), "step {step}: the group resumes at its acked count");
                    delivery.ack().expect("ack");
                    acked += 1;
                }
            }
            5 => {
                queue.close().expect("close");
                queue = builder(&storage).open().expect("reopen");
                check_log(&queue, &model, step);
            }
            _ => {
                // A power cut: nothing more reaches the disk; what was acknowledged must survive.
                storage.set_plan(Some(FaultPlan {
                    at_op: storage.op_count(),
                    kind: FaultKind::Crash,
                    persistent: true,
                }));
                drop(queue);
                storage = storage.crash_image(u64::from(op) << 8 | step as u64);
                queue = builder(&storage).open().expect("open after a power cut");
                check_log(&queue, &model, step);
            }
        }
    }
    let floor = queue.group("g").expect("group").ack_floor();
    assert_eq!(floor, Offset(acked), "the ack floor is the acked count");
}

fn check_log(queue: &Queue, model: &[Vec<u8>], step: usize) {
    let records: Vec<_> = queue
        .read_from(Offset::EARLIEST)
        .expect("a reader")
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("step {step}: read failed: {e}"));
    assert_eq!(records.len(), model.len(), "step {step}: the log has every acknowledged append and nothing else");
    for (record, value) in records.iter().zip(model) {
        assert_eq!(record.value.as_deref(), Some(value.as_slice()), "step {step}: a value differs");
    }
}
