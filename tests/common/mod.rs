//! Helpers shared by the integration tests: deterministic messages, reading everything back, file surgery.
#![allow(dead_code)] // each test file uses a different part

pub mod gated;
#[cfg(feature = "nats")]
pub mod nats;
pub mod tmpfs;

use std::path::{Path, PathBuf};

use walq::{Message, Offset, Preallocation, Queue, QueueBuilder, Record};

/// Bytes of a frame header (FORMAT.md): used to compute where frames end.
pub const FRAME_HEADER_BYTES: u64 = 44;
/// Bytes of a segment header (FORMAT.md).
pub const SEGMENT_HEADER_BYTES: u64 = 64;

/// Message number `i`: every field present and distinct, sizes varying with `i`.
pub fn message(i: u64) -> Message {
    let value = format!("value-{i}-{}", "x".repeat((i % 37) as usize));
    Message::new(value.into_bytes())
        .key(format!("key-{}", i % 11).into_bytes())
        .timestamp_ms(1_700_000_000_000 + i)
        .header("seq", i.to_le_bytes().to_vec())
}

/// The size of message `i`'s frame, by FORMAT.md.
pub fn frame_len(i: u64) -> u64 {
    let m = message(i);
    let headers: u64 = 6 + 3 + 8;
    FRAME_HEADER_BYTES + m.key_bytes().unwrap().len() as u64 + m.value_bytes().unwrap().len() as u64 + headers
}

/// Asserts that `record` is message `i` stored at offset `i`.
pub fn assert_is_message(record: &Record, i: u64) {
    let m = message(i);
    assert_eq!(record.offset, Offset(i), "offset");
    assert_eq!(record.key.as_deref(), m.key_bytes(), "key of {i}");
    assert_eq!(record.value.as_deref(), m.value_bytes(), "value of {i}");
    assert_eq!(record.timestamp_ms, 1_700_000_000_000 + i, "timestamp of {i}");
    assert_eq!(record.headers.len(), 1);
    assert_eq!(record.headers[0].name, "seq");
    assert_eq!(record.headers[0].value, i.to_le_bytes().to_vec());
}

/// Every record of the queue, failing the test on any error.
pub fn read_all(queue: &Queue) -> Vec<Record> {
    queue.read_from(Offset::EARLIEST).unwrap().collect::<Result<Vec<_>, _>>().unwrap()
}

/// A builder for small segments (many rolls) that grow as written (file length = data length).
pub fn small(dir: &Path) -> QueueBuilder {
    Queue::builder(dir).segment_bytes_max(64 * 1024).message_bytes_max(4096).preallocation(Preallocation::Grow)
}

/// The segment files of a queue directory, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    files_with_extension(dir, "seg")
}

/// Bytes of the segment files of a queue directory. A file the background maintenance deletes between the listing
/// and its `stat` counts as gone, not as an error.
pub fn segment_bytes(dir: &Path) -> u64 {
    segment_files(dir).iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

/// Waits up to 10 s for `condition`, then asserts it with `what`. For effects of the background maintenance: an
/// ack that moves a floor deletes consumed segments at once unless maintenance (a sweep) is running, in which case
/// the maintenance thread deletes them when it is done.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The index files of a queue directory, oldest first.
pub fn index_files(dir: &Path) -> Vec<PathBuf> {
    files_with_extension(dir, "idx")
}

fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// Copies a queue directory (files only) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Flips one bit of a file.
pub fn flip_bit(path: &Path, byte: u64, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[byte as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

/// Appends messages `range` one at a time.
pub fn append_range(queue: &Queue, range: std::ops::Range<u64>) {
    for i in range {
        assert_eq!(queue.append(message(i)).unwrap(), Offset(i));
    }
}

/// Every file of a directory with its bytes, to check that something changed nothing.
pub fn dir_snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
        .collect()
}

/// Runs the test named `test_name` of the current test binary in a child process with `env` set, stdout piped.
/// The child test checks the environment to know it is the child.
pub fn spawn_child(test_name: &str, env: &[(&str, String)]) -> std::process::Child {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", test_name, "--nocapture", "--test-threads=1"]);
    for (key, value) in env {
        command.env(key, value);
    }
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
}

/// Runs the child test `test_name` (see [`spawn_child`]), kills it with SIGKILL, and returns the lines it printed
/// that start with `prefix`, in order: what it reported before it died. The kill comes `then` after the child's
/// first such line when `wait_for_first_report`, or `then` after the start otherwise.
///
/// A kill proves nothing if the child was not working: the test fails if a child that was waited for makes no
/// report within 10 s, if the child exited before the kill, or if it printed a panic (its stderr is kept for the
/// message).
pub fn run_and_kill9(
    test_name: &str,
    env: &[(&str, String)],
    prefix: &'static str,
    wait_for_first_report: bool,
    then: std::time::Duration,
) -> Vec<String> {
    use std::io::{BufRead, Read};
    let mut child = spawn_child(test_name, env);
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(prefix) {
                let _ = first_tx.send(());
                lines.push(line);
            }
        }
        lines
    });
    let reported = !wait_for_first_report || first_rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok();
    if reported {
        std::thread::sleep(then);
    }
    let exited = child.try_wait().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let (lines, errors) = (reader.join().unwrap(), errors.join().unwrap());
    let tail = |text: &str| text.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect::<String>();
    assert!(reported, "child {test_name} made no report in 10 s; its stderr: {}", tail(&errors));
    assert!(exited.is_none(), "child {test_name} exited ({exited:?}) before the kill; its stderr: {}", tail(&errors));
    assert!(!errors.contains("panicked"), "child {test_name} panicked; its stderr: {}", tail(&errors));
    lines
}

/// The numbers of a report line after its first word: `"ACK 17 2 5"` gives `[17, 2, 5]`.
pub fn report_numbers(line: &str) -> Vec<u64> {
    line.split(' ').skip(1).filter_map(|f| f.parse().ok()).collect()
}

/// A keyed workload for compaction tests: message `i` has key `k{i % keys}` (none when `i % 7 == 3`), and is a
/// tombstone when `i % 11 == 5`. Values carry `i` so each record can be checked against the message it was.
pub fn keyed_message(i: u64, keys: u64) -> Message {
    let key = format!("k{}", i % keys).into_bytes();
    if i % 7 == 3 {
        return Message::new(format!("unkeyed-{i}").into_bytes()).timestamp_ms(i);
    }
    if i % 11 == 5 {
        return Message::tombstone(key).timestamp_ms(i);
    }
    Message::new(format!("v{i}-{}", "x".repeat((i % 50) as usize)).into_bytes()).key(key).timestamp_ms(i)
}

/// The latest-value-per-key map a sequence of records describes (a tombstone deletes its key).
pub fn latest_values<'a>(
    records: impl IntoIterator<Item = (Option<&'a [u8]>, Option<&'a [u8]>)>,
) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let mut map = std::collections::BTreeMap::new();
    for (key, value) in records {
        let Some(key) = key else { continue };
        match value {
            Some(value) => map.insert(key.to_vec(), value.to_vec()),
            None => map.remove(key),
        };
    }
    map
}

/// A number from the environment (`WALQ_SEED`, `WALQ_CRASH_AT`, ...), if set and numeric.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The `WALQ_SOAK` multiplier of CI counts (1 unless set).
pub fn soak() -> u64 {
    env_u64("WALQ_SOAK").unwrap_or(1).max(1)
}

/// One line of the reliability summary, printed and appended to `target/walq-reliability.txt` (test output is
/// captured): `.ci/reliability-table` turns those lines into the README's table, so the figures there are
/// printed by the suite, never typed in.
pub fn report(id: &str, what: &str, count: u64, unit: &str, violations: u64) {
    let line = format!("walq-reliability: {id} | {what} | {count} {unit} | {violations} violations\n");
    print!("{line}");
    // target/<profile>/deps/<test binary>: three levels up is the target directory.
    let exe = std::env::current_exe().unwrap();
    let Some(target) = exe.ancestors().nth(3) else { return };
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).open(target.join("walq-reliability.txt")).unwrap();
    // One write of one line: appends from test processes running at once do not interleave.
    std::io::Write::write_all(&mut file, line.as_bytes()).unwrap();
}

/// A hash of every file's name and bytes in a simulated file system: crash images that are the same (nothing was
/// unsynced at the crash point, or the random choices agreed) are checked and counted once.
pub fn image_hash(image: &walq::storage::FaultyStorage) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    image.snapshot().hash(&mut hasher);
    hasher.finish()
}

/// The power-cut images of `storage` for `seeds`, each with its seed, without repeats (see [`image_hash`]): an image
/// checked once proves nothing more the second time, and must not count twice.
pub fn distinct_crash_images(
    storage: &walq::storage::FaultyStorage,
    seeds: impl IntoIterator<Item = u64>,
) -> Vec<(u64, walq::storage::FaultyStorage)> {
    let mut seen = std::collections::HashSet::new();
    seeds
        .into_iter()
        .map(|seed| (seed, storage.crash_image(seed)))
        .filter(|(_, image)| seen.insert(image_hash(image)))
        .collect()
}

/// The queue directory inside a simulated file system.
pub const SIM_DIR: &str = "/sim/queue";

/// A builder on a simulated file system with 64 KiB segments that grow as written, keeping every segment.
pub fn sim_builder(storage: &walq::storage::FaultyStorage) -> QueueBuilder {
    Queue::builder(SIM_DIR)
        .storage(std::sync::Arc::new(storage.clone()) as std::sync::Arc<dyn walq::storage::Storage>)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .preallocation(Preallocation::Grow)
        .cleanup(walq::CleanupPolicy::KeepAll)
}

/// The path of file `name` of the simulated queue.
pub fn sim_path(name: &str) -> PathBuf {
    Path::new(SIM_DIR).join(name)
}

/// How reading a damaged queue ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Open refused it with this typed error.
    Refused(String),
    /// Open succeeded; `delivered` exact records came back before reading reported `Corrupt` (or ended).
    Read { delivered: u64, corrupt_reported: bool, recovery_lost_nothing: bool },
}

/// Opens a damaged copy and reads everything, checking that each record delivered is message `i` at offset `i`
/// (never wrong data) and that every error is a typed `Corrupt` (or, for a damaged manifest, another typed
/// refusal). Panics, with `context`, on wrong data or an untyped failure.
pub fn read_damaged(builder: QueueBuilder, context: &str) -> Outcome {
    let queue = match builder.open() {
        Ok(queue) => queue,
        Err(
            e @ (walq::Error::Corrupt { .. } | walq::Error::UnsupportedVersion { .. } | walq::Error::NotAQueue { .. }),
        ) => return Outcome::Refused(format!("{e}")),
        Err(other) => panic!("{context}: open failed with an untyped error: {other}"),
    };
    let recovery_lost_nothing = queue.recovery_report().lost_nothing();
    let mut delivered = 0;
    for record in queue.read_from(Offset::EARLIEST).unwrap() {
        match record {
            Ok(record) => {
                assert_eq!(record.offset, Offset(delivered), "{context}: a record at the wrong offset");
                let expected = message(delivered);
                assert_eq!(record.value.as_deref(), expected.value_bytes(), "{context}: wrong value delivered");
                assert_eq!(record.key.as_deref(), expected.key_bytes(), "{context}: wrong key delivered");
                assert_eq!(record.timestamp_ms, 1_700_000_000_000 + delivered, "{context}: wrong timestamp");
                assert_eq!(record.headers.len(), 1, "{context}: wrong headers");
                assert_eq!(record.headers[0].value, delivered.to_le_bytes().to_vec(), "{context}: wrong header");
                delivered += 1;
            }
            Err(walq::Error::Corrupt { .. }) => {
                return Outcome::Read { delivered, corrupt_reported: true, recovery_lost_nothing }
            }
            Err(other) => panic!("{context}: reading failed with another error than Corrupt: {other}"),
        }
    }
    Outcome::Read { delivered, corrupt_reported: false, recovery_lost_nothing }
}

/// A simulated queue of messages `0..` whose first segment is sealed (about 64 KiB) and a second one holding
/// `tail_messages`; returns the storage (closed, clean) and the number of messages.
pub fn sim_queue_with_sealed_segment(tail_messages: u64) -> (walq::storage::FaultyStorage, u64) {
    let storage = walq::storage::FaultyStorage::new();
    let queue = sim_builder(&storage).open().unwrap();
    let mut n = 0;
    while queue.stats().segments < 2 {
        queue.append(message(n)).unwrap();
        n += 1;
    }
    for _ in 1..tail_messages {
        queue.append(message(n)).unwrap();
        n += 1;
    }
    queue.close().unwrap();
    (storage.clean_image(), n)
}

/// The segment file names of a simulated queue, oldest first.
pub fn sim_segment_names(storage: &walq::storage::FaultyStorage) -> Vec<String> {
    let mut names: Vec<String> = storage
        .snapshot()
        .into_keys()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Copies a directory tree (a queue with its `groups/`) to `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// After a kill: drains group `g` of `queue` without acking and checks the group's promises against what the
/// killed child reported: no offset whose ack was acknowledged (`acked`) is delivered again, and every stored
/// offset is acked, possibly acked (`acking`: the child died inside the call), or delivered again (nothing
/// skipped). Closes the queue before the drained deliveries go (closed, they are not released one by one).
pub fn assert_group_accounts_for_everything(
    queue: Queue,
    acked: &std::collections::BTreeSet<u64>,
    acking: &std::collections::BTreeSet<u64>,
    context: &str,
) {
    let stats = queue.stats();
    let group = queue.group("g").unwrap();
    assert!(group.ack_floor() <= stats.next_offset, "{context}: D3: floor past the log's end");
    let consumer = group.consumer();
    let mut held = Vec::new();
    loop {
        let batch = consumer.try_recv_batch(10_000).unwrap_or_else(|e| panic!("{context}: {e}"));
        if batch.is_empty() {
            break;
        }
        for delivery in batch {
            let offset = delivery.offset().0;
            assert!(!acked.contains(&offset), "{context}: durably acked offset {offset} delivered again");
            held.push(delivery);
        }
    }
    let drained: std::collections::BTreeSet<u64> = held.iter().map(|d| d.offset().0).collect();
    for offset in stats.first_offset.0..stats.next_offset.0 {
        assert!(
            acked.contains(&offset) || acking.contains(&offset) || drained.contains(&offset),
            "{context}: offset {offset} neither acked nor delivered: skipped"
        );
    }
    queue.close().unwrap();
    drop(held);
}

/// The process's threads whose name starts with `prefix` (the kernel cuts thread names at 15 bytes: the
/// maintenance thread is "walq-maintenanc").
pub fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|task| {
            let comm = std::fs::read_to_string(task.as_ref().unwrap().path().join("comm")).unwrap_or_default();
            comm.starts_with(prefix)
        })
        .count()
}
