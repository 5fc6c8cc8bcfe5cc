//! `walq produce` and `walq consume` in pipelines (#14 items 3, 4, 7, 8, 9, 14): nothing read is dropped
//! silently, a failure says what was appended and where it stopped, input is appended as it comes (not held for
//! a full batch), SIGINT closes cleanly after appending what was read, and `consume` acks a message only once its
//! line is written (a closed pipe stops it without acking), with `--no-ack` to peek.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use walq::{Message, Offset, Queue};

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_walq"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child, input: &[u8]) -> (i32, String, String) {
    let mut child = child;
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// The values stored, read without the lock (works while a producer holds the queue).
fn stored_values(dir: &Path) -> Vec<Vec<u8>> {
    let inspector = walq::inspect::Inspector::open(dir).unwrap();
    let records = inspector.records(Offset(0)).unwrap();
    records
        .filter_map(|scanned| match scanned.unwrap() {
            walq::inspect::Scanned::Record(record) => Some(record.value.unwrap_or_default()),
            _ => None, // the zeros after a live producer's last frame
        })
        .collect()
}

fn new_queue(dir: &Path) {
    small(dir).message_bytes_max(1024).open().unwrap().close().unwrap();
}

#[test]
fn a_record_too_large_stops_produce_after_appending_every_record_before_it() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    new_queue(&dir);
    let mut input = String::new();
    for i in 1..=1000 {
        input.push_str(&format!("line {i}\n"));
    }
    input.push_str(&"x".repeat(5000));
    input.push('\n');
    for i in 1002..=1500 {
        input.push_str(&format!("line {i}\n"));
    }
    // One batch holds all 1,500 lines: the records before the refused one are appended one by one.
    let args = ["produce", dir.to_str().unwrap(), "--batch", "5000"];
    let (code, stdout, stderr) = finish(spawn(&args), input.as_bytes());
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.contains("appended 1000 records (input records 1..=1000), offsets 0..=999"), "{stdout}");
    assert!(stderr.contains("over this queue's message_bytes_max of 1024 bytes"), "{stderr}");
    assert!(stderr.contains("stopped at input record 1001"), "{stderr}");
    assert!(stderr.contains("feed the input again from record 1001"), "{stderr}");
    let values = stored_values(&dir);
    assert_eq!(values.len(), 1000);
    assert_eq!(values[999], b"line 1000");
}

#[test]
fn length_delimited_input_cut_anywhere_appends_the_whole_records_and_fails() {
    let temp = tempfile::tempdir().unwrap();
    let mut whole = Vec::new();
    for record in [&b"first"[..], b"second", b"third"] {
        whole.extend_from_slice(&(record.len() as u32).to_be_bytes());
        whole.extend_from_slice(record);
    }
    let third_starts = whole.len() - 4 - 5;
    for cut in [third_starts + 2, third_starts + 4 + 3] {
        let dir = temp.path().join(format!("q{cut}"));
        new_queue(&dir);
        let (code, _, stderr) = finish(spawn(&["produce", dir.to_str().unwrap(), "--length-delimited"]), &whole[..cut]);
        assert_eq!(code, 1, "cut at {cut}: {stderr}");
        assert!(stderr.contains("stopped at input record 3: input ends"), "{stderr}");
        assert_eq!(stored_values(&dir), vec![b"first".to_vec(), b"second".to_vec()], "cut at {cut}");
    }
    // Whole input: all three, exit 0.
    let dir = temp.path().join("whole");
    new_queue(&dir);
    let (code, _, stderr) = finish(spawn(&["produce", dir.to_str().unwrap(), "--length-delimited"]), &whole);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stored_values(&dir).len(), 3);
}

#[test]
fn produce_appends_as_input_comes_and_sigint_appends_what_was_read_and_closes() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    new_queue(&dir);
    let mut child = spawn(&["produce", dir.to_str().unwrap()]);
    let mut stdin = child.stdin.take().unwrap();
    let before_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    stdin.write_all(b"a\nb\nc\n").unwrap();
    stdin.flush().unwrap();
    // Three lines, far below the batch of 1000, with the input still open: appended once the input pauses.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored_values(&dir).len() < 3 {
        assert!(Instant::now() < deadline, "three lines not appended while the input stays open");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Written and at once interrupted: d and e are in the pipe, the input thread's buffer or the channel, not
    // yet appended; the stop takes every whole record still arriving.
    stdin.write_all(b"d\ne\n").unwrap();
    stdin.flush().unwrap();
    // SAFETY: `kill` with a child's pid and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    drop(stdin);
    let queue = Queue::open(&dir).unwrap();
    assert!(queue.recovery_report().lost_nothing());
    let records = read_all(&queue);
    assert_eq!(records.iter().map(|r| r.value.clone().unwrap()).collect::<Vec<_>>(), [b"a", b"b", b"c", b"d", b"e"]);
    // Stamped when read, not when a batch filled.
    assert!(records.iter().all(|r| r.timestamp_ms >= before_ms));
    assert!(records[3].timestamp_ms > records[2].timestamp_ms, "d was read after a, b, c had been appended");
}

#[test]
fn consume_acks_only_what_it_wrote_and_peeks_with_no_ack() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let queue = small(&dir).open().unwrap();
    let total = 20_000u64;
    queue
        .append_batch(&(0..total).map(|i| Message::new(format!("message {i}").into_bytes())).collect::<Vec<_>>())
        .unwrap();
    queue.close().unwrap();
    let dir_str = dir.to_str().unwrap();

    // Peek: shows the next three, acks none, charges no attempt.
    let (code, stdout, _) =
        finish(spawn(&["consume", dir_str, "--group", "g", "--count", "3", "--no-ack", "--format", "json"]), b"");
    assert_eq!(code, 0);
    let peeked: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(peeked.iter().map(|l| l["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(peeked.iter().all(|l| l["attempt"] == 1));
    {
        // Given back uncounted: offset 0 comes again on its first attempt, and nothing was acked.
        let queue = Queue::open(&dir).unwrap();
        let group = queue.group("g").unwrap();
        assert_eq!(group.ack_floor(), Offset(0));
        let next = group.consumer().try_recv().unwrap().unwrap();
        assert_eq!((next.offset().0, next.attempt()), (0, 1));
        queue.close().unwrap(); // before `next` is dropped: a drop after close changes nothing
    }

    // `consume | head -1`: the reader leaves after one line; consume stops at the closed pipe.
    let mut child = spawn(&["consume", dir_str, "--group", "g"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert!(first.trim_start().starts_with("0 "), "no table header into a pipe: {first}");
    drop(lines);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let queue = Queue::open(&dir).unwrap();
    let recovered_clean = queue.recovery_report().lost_nothing();
    assert!(recovered_clean);
    let group = queue.group("g").unwrap();
    let floor = group.ack_floor().0;
    assert!(floor >= 1 && floor < total, "acked up to {floor}: what reached the pipe, not everything");
    // The message that could not be written was given back with no attempt counted.
    let next = group.consumer().try_recv().unwrap().unwrap();
    assert_eq!((next.offset().0, next.attempt()), (floor, 1));
}
