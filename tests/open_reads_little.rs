//! Opening a queue after a clean close costs the same whatever its size (issue #15, cold open): it reads the
//! manifest, the last segment's header, the newest entries of its index and the frames after the newest one, and
//! writes, truncates, reserves and fsyncs nothing. The first read of the oldest segment reads no index. What open
//! leaves unread is read when a lookup needs it, and lookups still land exactly; the index the reopened segment
//! goes on writing stays valid (`walq verify` finds nothing).
//!
//! Every segment and index byte that open and the first read go on to read was asked for first, in read-ahead
//! hints issued together: on a cold cache the reads, each waiting for the one before, then find their pages on
//! the way instead of making a disk round trip each.
//!
//! The counts come from a `Storage` that wraps the real file system and counts, per file kind, the bytes read and
//! the calls that change a file, and logs reads and hints in order.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{append_range, assert_is_message};
use walq::inspect::Inspector;
use walq::storage::{FilePart, FsStorage, LockGuard, OpenMode, Storage, StorageFile};
use walq::{Durability, Offset, Preallocation, Queue, QueueBuilder};

/// Per file extension ("seg", "idx", "json", ...): bytes read, calls that change a file (writes, length
/// changes, reservations, syncs), and syncs alone.
#[derive(Debug, Default, Clone, PartialEq)]
struct Counts {
    read_bytes: BTreeMap<String, u64>,
    changes: BTreeMap<String, u64>,
    syncs: BTreeMap<String, u64>,
    /// Reads (of the bytes returned) and read-ahead hints, in order.
    accesses: Vec<Access>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccessKind {
    Read,
    Hint,
}

#[derive(Debug, Clone, PartialEq)]
struct Access {
    kind: AccessKind,
    file: String,
    range: std::ops::Range<u64>,
}

#[derive(Debug, Default)]
struct Counting {
    inner: FsStorage,
    counts: Arc<Mutex<Counts>>,
}

impl Counting {
    fn take(&self) -> Counts {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn StorageFile>,
    kind: String,
    name: String,
    counts: Arc<Mutex<Counts>>,
}

impl CountingFile {
    fn log(&self, kind: AccessKind, position: u64, len_bytes: u64) {
        let access = Access { kind, file: self.name.clone(), range: position..position + len_bytes };
        self.counts.lock().unwrap().accesses.push(access);
    }
    fn changed(&self) {
        *self.counts.lock().unwrap().changes.entry(self.kind.clone()).or_default() += 1;
    }
    fn synced(&self) {
        self.changed();
        *self.counts.lock().unwrap().syncs.entry(self.kind.clone()).or_default() += 1;
    }
}

impl StorageFile for CountingFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, position)?;
        *self.counts.lock().unwrap().read_bytes.entry(self.kind.clone()).or_default() += n as u64;
        if n > 0 {
            self.log(AccessKind::Read, position, n as u64);
        }
        Ok(n)
    }
    fn will_need(&self, position: u64, len_bytes: u64) -> io::Result<()> {
        self.log(AccessKind::Hint, position, len_bytes);
        self.inner.will_need(position, len_bytes)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.changed();
        self.inner.write_all_at(buf, position)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.synced();
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.synced();
        self.inner.sync_all()
    }
    fn len_bytes(&self) -> io::Result<u64> {
        self.inner.len_bytes()
    }
    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.changed();
        self.inner.set_len(len_bytes)
    }
    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        self.changed();
        self.inner.allocate(len_bytes)
    }
}

impl Storage for Counting {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let inner = self.inner.open_file(path, mode)?;
        let kind = path.extension().map_or_else(String::new, |e| e.to_string_lossy().into_owned());
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        Ok(Arc::new(CountingFile { inner, kind, name, counts: self.counts.clone() }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        *self.counts.lock().unwrap().changes.entry("rename".into()).or_default() += 1;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        self.inner.try_lock(path)
    }
    fn try_lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        self.inner.try_lock_dir(dir)
    }
    fn will_need(&self, path: &Path, part: FilePart) -> io::Result<()> {
        let file_len = std::fs::metadata(path)?.len();
        let range = match part {
            FilePart::Head { len_bytes } => 0..len_bytes,
            FilePart::Tail { len_bytes } => file_len.saturating_sub(len_bytes)..file_len,
        };
        let file = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        self.counts.lock().unwrap().accesses.push(Access { kind: AccessKind::Hint, file, range });
        self.inner.will_need(path, part)
    }
}

fn builder(dir: &Path, storage: &Arc<Counting>) -> QueueBuilder {
    Queue::builder(dir)
        .segment_bytes_max(16 << 20)
        .durability(Durability::None)
        .preallocation(Preallocation::Reserve)
        .storage(storage.clone())
}

/// Bytes of index and segment an open reads at most: the newest index entries (512 B) and a chunk or two of
/// frames after the newest of them.
const OPEN_INDEX_BYTES_MAX: u64 = 1024;
const OPEN_SEGMENT_BYTES_MAX: u64 = 64 * 1024;
/// Bytes open asks to have read ahead, at most: a header, a tail and the first chunk of a segment, an index tail.
const HINTED_BYTES_MAX: u64 = 64 * 1024;

#[test]
fn open_after_a_clean_close_reads_a_bounded_tail_and_writes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let storage = Arc::new(Counting::default());
    let mut count = 0;
    // Two sizes of last segment, the second with an index 30 times longer: open reads the same.
    for target in [2_000u64, 60_000] {
        let queue = builder(temp.path(), &storage).open().unwrap();
        append_range(&queue, count..target);
        count = target;
        queue.close().unwrap();
        let index_bytes = std::fs::metadata(temp.path().join("00000000000000000000.idx")).unwrap().len();
        storage.take();

        let queue = builder(temp.path(), &storage).open().unwrap();
        let opened = storage.take();
        let read = |kind: &str| opened.read_bytes.get(kind).copied().unwrap_or(0);
        assert!(read("idx") <= OPEN_INDEX_BYTES_MAX, "index of {index_bytes} B: open read {opened:?}");
        assert!(read("seg") <= OPEN_SEGMENT_BYTES_MAX, "open read {opened:?}");
        assert!(opened.changes.is_empty(), "open changed files: {opened:?}");

        // The first read from the start reads the segment's first frames, and no index.
        let mut reader = queue.read_from(Offset(0)).unwrap();
        assert_is_message(&reader.next().unwrap().unwrap(), 0);
        let first_read = storage.take();
        assert_eq!(first_read.read_bytes.get("idx"), None, "{first_read:?}");
        drop(reader);
        // A close after only reading: the manifest already says it all, the segment is trimmed and synced.
        queue.close().unwrap();
        let closed = storage.take();
        assert!(closed.changes.is_empty(), "a close after only reading changed files: {closed:?}");
    }
    assert!(std::fs::metadata(temp.path().join("00000000000000000000.idx")).unwrap().len() > 16 * 1024);
}

#[test]
fn open_and_the_first_read_read_only_what_open_hinted_before_its_first_segment_read() {
    let temp = tempfile::tempdir().unwrap();
    let storage = Arc::new(Counting::default());
    let small =
        |storage: &Arc<Counting>| builder(temp.path(), storage).segment_bytes_max(1 << 20).message_bytes_max(4096);
    let queue = small(&storage).open().unwrap();
    append_range(&queue, 0..30_000);
    assert!(queue.stats().segments >= 3, "the oldest segment is not the last one");
    queue.close().unwrap();
    storage.take();

    let queue = small(&storage).open().unwrap();
    let mut reader = queue.read_from(Offset(0)).unwrap();
    assert_is_message(&reader.next().unwrap().unwrap(), 0);
    let accesses = storage.take().accesses;
    let is_log_file = |a: &&Access| a.file.ends_with(".seg") || a.file.ends_with(".idx");
    let first_read = accesses.iter().position(|a| a.kind == AccessKind::Read && is_log_file(&a)).expect("reads");
    let hints: Vec<&Access> = accesses[..first_read].iter().filter(|a| a.kind == AccessKind::Hint).collect();
    let reads: Vec<&Access> = accesses.iter().filter(|a| a.kind == AccessKind::Read).filter(is_log_file).collect();
    let oldest = "00000000000000000000.seg";
    assert!(reads.iter().any(|r| r.file == oldest), "the first read reads the oldest segment: {reads:?}");
    assert!(reads.iter().any(|r| r.file.ends_with(".idx")), "open reads the index's tail: {reads:?}");
    for read in &reads {
        let hinted = hints
            .iter()
            .any(|h| h.file == read.file && h.range.start <= read.range.start && read.range.end <= h.range.end);
        assert!(hinted, "{read:?} was not hinted before the first read; hints: {hints:?}");
    }
    // And little more than that: a hint of a whole file would fetch a segment for one frame.
    let hinted_bytes: u64 = hints.iter().map(|h| h.range.end - h.range.start).sum();
    assert!(hinted_bytes <= HINTED_BYTES_MAX, "{hinted_bytes} B hinted: {hints:?}");
    drop(reader);
    queue.close().unwrap();
}

/// Groups too: their journals end with a close marker after a clean close, which proves their records durable, so
/// the reopen neither writes them again nor fsyncs (it did both, for every group, on every open). The groups then
/// go on where they were, and the records written after the marker survive the next reopen.
#[test]
fn a_reopen_after_a_clean_close_writes_and_syncs_no_group_journal() {
    let temp = tempfile::tempdir().unwrap();
    let storage = Arc::new(Counting::default());
    let take_and_ack = |queue: &Queue, group: &str, count: usize| {
        let consumer = queue.group(group).unwrap().consumer();
        let deliveries = consumer.try_recv_batch(count).unwrap();
        assert_eq!(deliveries.len(), count);
        let first = deliveries[0].offset();
        consumer.ack_all(deliveries).unwrap();
        first
    };
    let queue = builder(temp.path(), &storage).open().unwrap();
    append_range(&queue, 0..1_000);
    for (i, group) in ["a", "b", "c"].iter().enumerate() {
        take_and_ack(&queue, group, 100 * (i + 1));
    }
    queue.close().unwrap();
    storage.take();

    for round in 0..2u64 {
        let queue = builder(temp.path(), &storage).open().unwrap();
        let opened = storage.take();
        assert!(opened.changes.is_empty(), "round {round}: open changed files: {opened:?}");
        assert_eq!(take_and_ack(&queue, "a", 10), Offset(100 + 10 * round), "group a goes on where it was");
        queue.close().unwrap();
        let closed = storage.take();
        assert!(closed.syncs.get("journal").is_some_and(|&n| n >= 1), "the acks made durable: {closed:?}");
    }
    let queue = builder(temp.path(), &storage).open().unwrap();
    assert_eq!(take_and_ack(&queue, "b", 1), Offset(200));
    assert_eq!(take_and_ack(&queue, "c", 1), Offset(300));
    assert_eq!(take_and_ack(&queue, "a", 1), Offset(120), "the records written over the markers were kept");
    queue.close().unwrap();
    // A crash before the markers were written: the next open makes every journal's records durable itself.
    for group in ["a", "b", "c"] {
        let path = temp.path().join("groups").join(format!("{group}.journal"));
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(file.metadata().unwrap().len() - 40).unwrap();
    }
    storage.take();
    let queue = builder(temp.path(), &storage).open().unwrap();
    let opened = storage.take();
    assert_eq!(opened.syncs.get("journal"), Some(&3), "{opened:?}");
    assert_eq!(take_and_ack(&queue, "a", 1), Offset(121));
    assert_eq!(take_and_ack(&queue, "b", 1), Offset(201));
    queue.close().unwrap();
}

/// The other side of a close that writes nothing: appends no fsync covered yet (`Durability::None`) are synced by
/// the close, and the manifest records the new durable end once.
#[test]
fn a_close_after_unsynced_appends_syncs_them_and_records_the_end() {
    let temp = tempfile::tempdir().unwrap();
    let storage = Arc::new(Counting::default());
    let queue = builder(temp.path(), &storage).open().unwrap();
    append_range(&queue, 0..100);
    queue.close().unwrap();
    let queue = builder(temp.path(), &storage).open().unwrap();
    append_range(&queue, 100..150);
    storage.take();
    queue.close().unwrap();
    let closed = storage.take();
    assert!(closed.syncs.get("seg").copied().unwrap_or(0) >= 1, "{closed:?}");
    assert_eq!(closed.changes.get("rename"), Some(&1), "{closed:?}");
    let text = std::fs::read_to_string(temp.path().join("MANIFEST.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(manifest["durable_end_offset"].as_u64(), Some(150), "{text}");
}

#[test]
fn lookups_below_the_index_tail_land_exactly_and_the_continued_index_verifies() {
    let temp = tempfile::tempdir().unwrap();
    let storage = Arc::new(Counting::default());
    let mut count = 0u64;
    for round in 0..4u64 {
        let queue = builder(temp.path(), &storage).segment_bytes_max(1 << 20).message_bytes_max(4096).open().unwrap();
        // Every kind of start: the first frame, below the index entries open read (the rest of the index is read
        // then), among them, past them.
        for start in (0..count).step_by(97).chain([count.saturating_sub(1)]).filter(|&s| s < count) {
            let mut reader = queue.read_from(Offset(start)).unwrap();
            assert_is_message(&reader.next().unwrap().unwrap(), start);
        }
        append_range(&queue, count..count + 9_000 + round * 1_000);
        count += 9_000 + round * 1_000;
        for start in (0..count).step_by(101) {
            let mut reader = queue.read_from(Offset(start)).unwrap();
            assert_is_message(&reader.next().unwrap().unwrap(), start);
        }
        queue.close().unwrap();
    }
    assert!(common::segment_files(temp.path()).len() >= 2, "the queue rolled: sealed indexes were continued ones");
    let report = Inspector::open(temp.path()).unwrap().verify(&mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn damage_to_the_index_open_left_unread_is_repaired() {
    let temp = tempfile::tempdir().unwrap();
    let storage = Arc::new(Counting::default());
    let small =
        |storage: &Arc<Counting>| builder(temp.path(), storage).segment_bytes_max(1 << 20).message_bytes_max(4096);
    let queue = small(&storage).open().unwrap();
    append_range(&queue, 0..6_000);
    queue.close().unwrap();
    let index_path = temp.path().join("00000000000000000000.idx");
    let mut index = std::fs::read(&index_path).unwrap();
    assert!(index.len() > 32 + 100 * 16, "more entries than open reads");
    index[0] ^= 0xff; // the header, which open does not read
    index[32 + 10 * 16 + 2] ^= 0xff; // entry 10, which open does not read
    std::fs::write(&index_path, &index).unwrap();

    let queue = small(&storage).open().unwrap();
    for start in (0..6_000).step_by(89) {
        let mut reader = queue.read_from(Offset(start)).unwrap();
        assert_is_message(&reader.next().unwrap().unwrap(), start);
    }
    // Once the segment is sealed, maintenance rebuilds its index (the header was written again meanwhile).
    append_range(&queue, 6_000..20_000);
    assert!(queue.stats().segments >= 2);
    common::eventually("the damaged index is rebuilt", || {
        Inspector::open(temp.path()).unwrap().verify(&mut |_, _| {}).unwrap().problems.is_empty()
    });
    queue.close().unwrap();
}
