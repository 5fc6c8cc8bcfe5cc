//! The `walq` binary on real queues: each subcommand in both output formats, exit codes on clean and corrupted
//! queues, `verify --dry-run` changing nothing, reading while another process appends, and clear failures on bad
//! arguments and on a directory that is not a queue.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use walq::{Message, Offset, Queue};

fn walq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walq")).args(args).env("NO_COLOR", "1").output().unwrap()
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    stdout(output).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// A closed queue of 2000 messages over several segments, with one group that acked 500.
fn build(dir: &Path) {
    let queue = small(dir).open().unwrap();
    queue.append_batch(&(0..2000).map(message).collect::<Vec<_>>()).unwrap();
    let consumer = queue.group("billing").unwrap().consumer();
    for _ in 0..500 {
        consumer.try_recv().unwrap().unwrap().ack().unwrap();
    }
    queue.close().unwrap();
}

fn dir_hash(dir: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    dir_snapshot(dir).hash(&mut hasher);
    hasher.finish()
}

#[test]
fn info_and_groups_in_both_formats() {
    let temp = tempfile::tempdir().unwrap();
    build(temp.path());
    let dir = temp.path().to_str().unwrap();
    let table = walq(&["info", dir]);
    assert_eq!(code(&table), 0, "{}", stderr(&table));
    assert!(stdout(&table).contains("next append gets 2000"), "{}", stdout(&table));
    assert!(stdout(&table).contains("billing"));
    let json = json_lines(&walq(&["info", dir, "--format", "json"]));
    assert_eq!(json[0]["next_offset"], 2000);
    assert!(json[0]["segments"].as_array().unwrap().len() > 2);

    let groups = walq(&["groups", dir]);
    assert_eq!(code(&groups), 0);
    assert!(stdout(&groups).lines().any(|l| l.starts_with("billing") && l.contains(" 500 ") && l.contains(" 1500 ")));
    let json = json_lines(&walq(&["groups", dir, "--format", "json"]));
    assert_eq!(
        (json[0]["name"].as_str(), json[0]["ack_floor"].as_u64(), json[0]["lag"].as_u64()),
        (Some("billing"), Some(500), Some(1500))
    );
}

#[test]
fn dump_selects_by_offset_time_and_key_in_both_formats() {
    let temp = tempfile::tempdir().unwrap();
    build(temp.path());
    let dir = temp.path().to_str().unwrap();
    let all = json_lines(&walq(&["dump", dir, "--format", "json"]));
    assert_eq!(all.len(), 2000);
    for (i, line) in all.iter().enumerate() {
        let expected = message(i as u64);
        assert_eq!(line["offset"], i as u64);
        assert_eq!(line["value"].as_str().unwrap().as_bytes(), expected.value_bytes().unwrap());
        assert_eq!(line["checksum"], "ok");
        assert!(line["position"].as_u64().unwrap() >= 64 && line["segment"].as_str().unwrap().ends_with(".seg"));
    }
    let range = json_lines(&walq(&["dump", dir, "--format", "json", "--from", "100", "--to", "104"]));
    assert_eq!(range.iter().map(|l| l["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![100, 101, 102, 103, 104]);
    let keyed = json_lines(&walq(&["dump", dir, "--format", "json", "--key", "key-3", "--limit", "5"]));
    assert_eq!(keyed.len(), 5);
    assert!(keyed.iter().all(|l| l["key"] == "key-3"));
    let timed = json_lines(&walq(&[
        "dump",
        dir,
        "--format",
        "json",
        "--since-ms",
        "1700000000010",
        "--until-ms",
        "1700000000012",
    ]));
    assert_eq!(timed.iter().map(|l| l["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![10, 11]);
    let hex = json_lines(&walq(&["dump", dir, "--format", "json", "--value", "hex", "--limit", "1"]));
    assert_eq!(hex[0]["key"], "6b65792d30"); // "key-0"
    let b64 = json_lines(&walq(&["dump", dir, "--format", "json", "--value", "base64", "--limit", "1"]));
    assert_eq!(b64[0]["key"], "a2V5LTA=");
    let none = json_lines(&walq(&["dump", dir, "--format", "json", "--value", "none", "--limit", "1"]));
    assert!(none[0]["value"].is_null());
    let table = walq(&["dump", dir, "--from", "7", "--to", "8"]);
    assert_eq!(code(&table), 0);
    let rows: Vec<String> = stdout(&table).lines().skip(1).map(String::from).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].trim_start().starts_with("7 ") && rows[0].contains("key-7") && rows[0].contains(" ok "));
}

#[test]
fn verify_exit_codes_on_clean_and_corrupted_queues() {
    let temp = tempfile::tempdir().unwrap();
    build(temp.path());
    let dir = temp.path().to_str().unwrap();
    let clean = walq(&["verify", dir]);
    assert_eq!(code(&clean), 0, "{}{}", stdout(&clean), stderr(&clean));
    assert!(stdout(&clean).starts_with("clean"));
    let json = json_lines(&walq(&["verify", dir, "--format", "json"]));
    assert_eq!(json.last().unwrap()["summary"]["clean"], true);
    assert_eq!(json.last().unwrap()["summary"]["records"], 2000);

    let segment = &segment_files(temp.path())[0];
    let frame_start: u64 = SEGMENT_HEADER_BYTES + (0..5).map(frame_len).sum::<u64>();
    flip_bit(segment, frame_start + FRAME_HEADER_BYTES + 3, 1);
    let name = segment.file_name().unwrap().to_str().unwrap();
    let corrupt = walq(&["verify", dir]);
    assert_eq!(code(&corrupt), 2, "{}", stdout(&corrupt));
    assert!(
        stderr(&corrupt).contains(name) && stderr(&corrupt).contains(&format!("at byte {frame_start}")),
        "{}",
        stderr(&corrupt)
    );
    let json = json_lines(&walq(&["verify", dir, "--format", "json"]));
    let problem = &json[0]["problem"];
    assert_eq!((problem["severity"].as_str(), problem["position"].as_u64()), (Some("corruption"), Some(frame_start)));
    assert!(problem["file"].as_str().unwrap().ends_with(name));
    let dump = walq(&["dump", dir]);
    assert_eq!(code(&dump), 2, "dump reports corruption too");
    assert_eq!(stdout(&dump).lines().count(), 1 + 5 + (2000 - (segment_len_records(temp.path()))) as usize);
}

/// Records outside the first segment (the damaged one stops being read at the damage).
fn segment_len_records(dir: &Path) -> u64 {
    let second = segment_files(dir)[1].file_stem().unwrap().to_str().unwrap().parse::<u64>().unwrap();
    second
}

#[test]
fn verify_dry_run_reports_the_cut_and_changes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    build(temp.path());
    let dir = temp.path().to_str().unwrap();
    let last = segment_files(temp.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new().append(true).open(&last).unwrap().write_all(&[0xAB; 300]).unwrap();
    let before = dir_hash(temp.path());
    let preview = walq(&["verify", "--dry-run", dir]);
    assert_eq!(code(&preview), 0, "{}", stderr(&preview));
    assert!(
        stdout(&preview).contains("would cut 300 bytes") && stdout(&preview).contains(&format!("at byte {len}")),
        "{}",
        stdout(&preview)
    );
    let json = json_lines(&walq(&["verify", "--dry-run", dir, "--format", "json"]));
    assert_eq!(json[0]["truncation"]["bytes"], 300);
    let full = walq(&["verify", dir]);
    assert_eq!(code(&full), 0, "a torn tail is a warning, not corruption: {}", stderr(&full));
    assert_eq!(dir_hash(temp.path()), before, "verify changed a file");
    let repair = walq(&["verify", "--repair", dir]);
    assert_eq!(code(&repair), 0);
    assert_eq!(std::fs::metadata(&last).unwrap().len(), len, "--repair ran recovery, which cut the tail");
    assert!(
        stdout(&repair).contains(&format!("cut 300 bytes from {} at byte {len}", last.display())),
        "{}",
        stdout(&repair)
    );
    assert!(stdout(&repair).contains("clean now"), "{}", stdout(&repair));
}

/// Issue #14 item 12: `verify --repair` on a damaged sealed segment exited 0 with a debug dump and left the
/// damage. Now it says in words what it did, that the damage remains (recovery never rewrites sealed segments)
/// and what a program can do, and exits 2; on a queue the default open refuses it points at `--skip-corrupt`.
#[test]
fn verify_repair_says_what_it_did_and_what_remains() {
    let temp = tempfile::tempdir().unwrap();
    build(temp.path());
    let dir = temp.path().to_str().unwrap();
    let first = segment_files(temp.path())[0].clone();
    flip_bit(&first, 5000, 3);
    let repair = walq(&["verify", "--repair", dir]);
    assert_eq!(code(&repair), 2, "{}", stdout(&repair));
    assert!(stdout(&repair).contains("nothing to repair at open"), "{}", stdout(&repair));
    assert!(stdout(&repair).contains("damage remains: 1 problems"), "{}", stdout(&repair));
    assert!(!stdout(&repair).contains("RecoveryReport {"), "no debug dump");

    // Damage to a durable frame of the last segment: the default open refuses; --skip-corrupt salvages.
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..50);
    queue.close().unwrap();
    let last = segment_files(temp.path()).pop().unwrap();
    // Inside the last frame, which the clean close recorded as durable: the open's tail scan finds damage.
    let len = std::fs::metadata(&last).unwrap().len();
    flip_bit(&last, len - 5, 0);
    let dir = temp.path().to_str().unwrap();
    let refused = walq(&["verify", "--repair", dir]);
    assert_eq!(code(&refused), 2);
    assert!(stderr(&refused).contains("--skip-corrupt"), "{}", stderr(&refused));
    let salvaged = walq(&["verify", "--repair", "--skip-corrupt", dir]);
    assert_eq!(code(&salvaged), 0, "{}", stdout(&salvaged));
    assert!(stdout(&salvaged).contains("a torn or damaged end: the messages in it are lost"), "{}", stdout(&salvaged));
    assert!(stdout(&salvaged).contains("clean now; the next append gets offset 49"), "{}", stdout(&salvaged));
    assert_eq!(code(&walq(&["verify", dir])), 0);
}

#[test]
fn tail_and_dump_while_another_process_appends() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    append_range(&queue, 0..10);
    let dir = temp.path().to_str().unwrap();
    let last = walq(&["tail", "-n", "3", dir, "--format", "json"]);
    assert_eq!(json_lines(&last).iter().map(|l| l["offset"].as_u64().unwrap()).collect::<Vec<_>>(), vec![7, 8, 9]);

    // `--from 10`, not `-n 0`: the appender starts before the follower has looked at the end of the log.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_walq"))
        .args(["tail", "--follow", "--from", "10", "--interval-ms", "20", "--format", "json", dir])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let appender = std::thread::spawn(move || {
        for i in 10..2500 {
            queue.append(message(i)).unwrap(); // rolls segments while the tool reads
        }
        queue
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 2490 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines_rx.recv_timeout(left) else { break };
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.push(line["offset"].as_u64().unwrap());
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
    assert_eq!(seen, (10..2500).collect::<Vec<_>>(), "tail --follow printed every new record once, in order");
    let queue = appender.join().unwrap();
    let during = walq(&["dump", dir, "--format", "json"]);
    assert_eq!(code(&during), 0);
    assert_eq!(json_lines(&during).len(), 2500);
    let verify = walq(&["verify", dir]);
    assert_eq!(code(&verify), 0, "verifying a live queue: {}", stderr(&verify));
    drop(queue);
}

#[test]
fn produce_and_consume_in_pipelines() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let dir_str = dir.to_str().unwrap();
    let mut produce = Command::new(env!("CARGO_BIN_EXE_walq"))
        .args(["produce", dir_str, "--key", "k", "--format", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    produce.stdin.take().unwrap().write_all(b"one\ntwo\r\nthree\n").unwrap();
    let output = produce.wait_with_output().unwrap();
    assert_eq!(code(&output), 0);
    assert_eq!(json_lines(&output)[0]["appended"], 3);

    let mut delimited = Command::new(env!("CARGO_BIN_EXE_walq"))
        .args(["produce", dir_str, "--length-delimited"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = Vec::new();
    for record in [&b"bin\x00ary"[..], b"", b"line\nbreak"] {
        input.extend_from_slice(&(record.len() as u32).to_be_bytes());
        input.extend_from_slice(record);
    }
    delimited.stdin.take().unwrap().write_all(&input).unwrap();
    assert_eq!(code(&delimited.wait_with_output().unwrap()), 0);

    let consumed = json_lines(&walq(&["consume", dir_str, "--group", "shell", "--count", "4", "--format", "json"]));
    assert_eq!(
        consumed.iter().map(|l| l["value"].as_str().unwrap()).collect::<Vec<_>>(),
        vec!["one", "two", "three", "bin\u{0}ary"]
    );
    let rest = json_lines(&walq(&["consume", dir_str, "--group", "shell", "--format", "json", "--value", "hex"]));
    assert_eq!(rest.iter().map(|l| l["value"].as_str().unwrap()).collect::<Vec<_>>(), vec!["", "6c696e650a627265616b"]);
    let queue = Queue::open(&dir).unwrap();
    assert_eq!(queue.group("shell").unwrap().ack_floor(), Offset(6), "consume acked what it printed");
    queue.append(Message::new(b"x".to_vec())).unwrap();
}

#[test]
fn bad_arguments_and_non_queues_fail_clearly() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::write(temp.path().join("notes.txt"), b"not a queue").unwrap();
    let dir = temp.path().to_str().unwrap();
    for args in [vec!["info", dir], vec!["dump", dir], vec!["verify", dir], vec!["groups", dir], vec!["tail", dir]] {
        let output = walq(&args);
        assert_eq!(code(&output), 1, "{args:?}");
        assert!(stderr(&output).contains("not a walq queue"), "{args:?}: {}", stderr(&output));
    }
    let missing = temp.path().join("missing");
    assert_eq!(code(&walq(&["info", missing.to_str().unwrap()])), 1);
    for args in
        [vec!["dump"], vec!["frobnicate", dir], vec!["dump", dir, "--value", "rot13"], vec!["dump", dir, "--from", "x"]]
    {
        let output = walq(&args);
        assert_eq!(code(&output), 1, "{args:?}");
        assert!(!stderr(&output).is_empty());
    }
    assert_eq!(code(&walq(&["--help"])), 0);
    assert_eq!(code(&walq(&["consume", dir, "--group", "../x"])), 1, "not a queue comes first");
    let queue_dir = temp.path().join("q");
    small(&queue_dir).open().unwrap().close().unwrap();
    let bad_group = walq(&["consume", queue_dir.to_str().unwrap(), "--group", "../x"]);
    assert_eq!(code(&bad_group), 1);
    assert!(stderr(&bad_group).contains("invalid group name"));
}

/// Regression: `walq dump DIR | head -1` panicked with "failed printing to stdout: Broken pipe", because
/// `println!` panics when the reader has closed the pipe. Every line now goes through one writer that ends the
/// program quietly (exit 0) on a closed pipe: the reader has all it wanted.
#[test]
fn a_closed_pipe_ends_dump_quietly() {
    let temp = tempfile::tempdir().unwrap();
    build(temp.path());
    let mut dump = Command::new(env!("CARGO_BIN_EXE_walq"))
        .args(["dump", temp.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(dump.stdout.take().unwrap()).read_line(&mut first).unwrap(); // then the pipe is closed
    let output = dump.wait_with_output().unwrap();
    assert!(first.contains("OFFSET"), "{first}");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}

/// What the engine makes of a queue directory: whether opening and reading everything reports corruption, and
/// how many records come back.
fn engine_view(dir: &Path) -> (bool, u64) {
    let queue = match small(dir).open() {
        Ok(queue) => queue,
        Err(walq::Error::Corrupt { .. }) => return (true, 0),
        Err(other) => panic!("{}: open failed with {other}", dir.display()),
    };
    let mut read = 0;
    for record in queue.read_from(Offset::EARLIEST).unwrap() {
        match record {
            Ok(_) => read += 1,
            Err(walq::Error::Corrupt { .. }) => return (true, read),
            Err(other) => panic!("{}: read failed with {other}", dir.display()),
        }
    }
    (false, read)
}

/// `walq verify`, `dump` and `info` agree with the engine about damage in the last segment (issue #21: a flip in
/// the middle of the only segment of a cleanly closed queue left 500 acknowledged records unreadable while verify
/// said "clean", exit 0; recovery started behind the damage, from an index entry, so its preview saw nothing).
/// A flip at each of a sample of positions of the last segment, of a cleanly closed queue and of a crashed one
/// (copied while open): verify exits 2 exactly when the engine reports corruption, and dump and info agree.
#[test]
fn verify_dump_and_info_agree_with_the_engine_about_the_last_segment() {
    for closed in [true, false] {
        let source = tempfile::tempdir().unwrap();
        let queue = small(source.path()).durability(walq::Durability::Sync).open().unwrap();
        // Ten batches, ten fsyncs: each batch's frames say (`durable_below`) the batches before were durable.
        for batch in 0..10 {
            queue.append_batch(&(batch * 100..batch * 100 + 100).map(message).collect::<Vec<_>>()).unwrap();
        }
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(source.path(), crashed.path()); // as a crash would leave it: no clean close recorded
        drop(queue);
        let pristine = if closed { source.path() } else { crashed.path() };
        let last = segment_files(pristine).pop().unwrap();
        let len = std::fs::metadata(&last).unwrap().len();
        let mut corrupt_cases = 0;
        for k in 0..24 {
            let position = 64 + (len - 64) * k / 24 + 7;
            let work = tempfile::tempdir().unwrap();
            copy_dir(pristine, work.path());
            let segment = work.path().join(last.file_name().unwrap());
            flip_bit(&segment, position, 3);
            let dir = work.path().to_str().unwrap();
            let context = format!("closed {closed}, flip at byte {position}");
            let verify = walq(&["verify", dir]);
            let dump = walq(&["dump", dir]);
            let info = walq(&["info", dir]);
            let (corrupt, read) = engine_view(work.path());
            let expected = if corrupt { 2 } else { 0 };
            assert_eq!(code(&verify), expected, "{context}: verify, engine read {read}: {}", stdout(&verify));
            assert_eq!(code(&dump), expected, "{context}: dump, engine read {read}");
            assert_eq!(code(&info), expected, "{context}: info, engine read {read}: {}", stdout(&info));
            corrupt_cases += u64::from(corrupt);
        }
        if closed {
            assert_eq!(corrupt_cases, 24, "every flip in a cleanly closed queue is damage to acknowledged data");
        } else {
            assert!(corrupt_cases > 0, "flips behind later durable frames are damage");
        }
    }
}

/// Issue #14 (items 2, 5, 6): `dump --limit 0` prints nothing; `consume` on a path that is not a queue creates
/// nothing (only `produce` creates a queue); a missing path, a file and an empty directory each get their own
/// message.
#[test]
fn limits_and_non_queues_are_answered_exactly() {
    let temp = tempfile::tempdir().unwrap();
    let queue_dir = temp.path().join("q");
    build(&queue_dir);
    let none = walq(&["dump", queue_dir.to_str().unwrap(), "--format", "json", "--limit", "0"]);
    assert_eq!((code(&none), json_lines(&none).len()), (0, 0));

    let missing = temp.path().join("missing");
    let consume = walq(&["consume", missing.to_str().unwrap(), "--group", "g"]);
    assert_eq!(code(&consume), 1);
    assert!(!missing.exists(), "consume created a queue at a mistyped path");
    let empty = temp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let file = temp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let messages: Vec<String> =
        [&missing, &empty, &file].iter().map(|p| stderr(&walq(&["info", p.to_str().unwrap()]))).collect();
    assert!(messages[0].contains("no such directory"), "{}", messages[0]);
    assert!(messages[1].contains("empty directory"), "{}", messages[1]);
    assert!(messages[2].contains("a file"), "{}", messages[2]);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "nothing was written into the empty directory");
}

/// Issue #14 (item 1): on a closed queue whose last segment was cut inside a frame (so the next open refuses it),
/// `info` reported "offsets 0 .. 0" and exit 0, and `groups` a lag of 0. Now `info` reports the offsets of the
/// valid frames and the damage (exit 2), `groups` counts lag to the same end, and `tail` reports the damage.
#[test]
fn a_queue_the_next_open_refuses_is_reported_as_such_everywhere() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).open().unwrap();
    queue.append_batch(&(0..300).map(message).collect::<Vec<_>>()).unwrap();
    queue.group("g").unwrap();
    queue.close().unwrap();
    let last = segment_files(temp.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(len - 10).unwrap();
    assert!(Queue::open(temp.path()).is_err(), "the next open refuses (the manifest records a clean close)");
    let dir = temp.path().to_str().unwrap();
    let info = walq(&["info", dir, "--format", "json"]);
    assert_eq!(code(&info), 2, "{}", stdout(&info));
    let summary = &json_lines(&info)[0];
    assert_eq!(summary["next_offset"], 299, "the offsets of the valid frames");
    let groups = json_lines(&walq(&["groups", dir, "--format", "json"]));
    assert_eq!(groups[0]["lag"], 299);
    let tail = walq(&["tail", "-n", "2", dir]);
    assert_eq!(code(&tail), 2);
}

/// Issue #14 item 15: with `--format json` an error is a JSON object on standard error; `info` on an empty queue
/// says no offsets are stored (it said "0 .. 0"); `produce` says "1 record", on standard output in both formats.
#[test]
fn output_says_what_is_true_in_each_format() {
    let temp = tempfile::tempdir().unwrap();
    let missing = temp.path().join("missing");
    let failed = walq(&["--format", "json", "info", missing.to_str().unwrap()]);
    assert_eq!(code(&failed), 1);
    let error: serde_json::Value = serde_json::from_str(stderr(&failed).trim()).expect("a JSON error");
    assert!(error["error"].as_str().unwrap().contains("not a walq queue"), "{error}");

    let dir = temp.path().join("q");
    small(&dir).open().unwrap().close().unwrap();
    let info = walq(&["info", dir.to_str().unwrap()]);
    assert!(stdout(&info).contains("offsets     none stored (next append gets 0)"), "{}", stdout(&info));
    let mut produce = Command::new(env!("CARGO_BIN_EXE_walq"))
        .args(["produce", dir.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    produce.stdin.take().unwrap().write_all(b"only\n").unwrap();
    let produced = produce.wait_with_output().unwrap();
    assert!(
        stdout(&produced).contains("appended 1 record (input records 1..=1), offsets 0..=0"),
        "{}",
        stdout(&produced)
    );
    let info = walq(&["info", dir.to_str().unwrap()]);
    assert!(stdout(&info).contains("offsets     0 ..= 0 (next append gets 1)"), "{}", stdout(&info));
}

/// Issue #14 item 16: `relay --until-idle` with no server retried for ever; now it gives up after
/// `--give-up-secs` without a connection, exits 1 and says what the network said. Nothing is acked.
#[cfg(feature = "nats")]
#[test]
fn relay_until_idle_gives_up_when_no_server_answers() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let queue = small(&dir).open().unwrap();
    queue.append(Message::new(b"x".to_vec())).unwrap();
    queue.close().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed again
    let server = format!("nats://127.0.0.1:{port}");
    let started = Instant::now();
    let args = ["relay", dir.to_str().unwrap(), "--group", "r", "--server", &server, "--subject", "s"];
    let output = walq(&[&args[..], &["--until-idle", "--give-up-secs", "2", "--progress-ms", "0"]].concat());
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(stderr(&output).contains("gave up"), "{}", stderr(&output));
    assert!(stderr(&output).to_lowercase().contains("refused"), "{}", stderr(&output));
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(20), "gave up after 2 s, not the default 30: {elapsed:?}");
    let queue = Queue::open(&dir).unwrap();
    assert_eq!(queue.group("r").unwrap().ack_floor(), Offset(0), "nothing relayed, nothing acked");
}

/// #18 item 1: `walq groups DIR --reset NAME --to earliest|end|OFFSET|time:MS` moves a group, and says where it now starts;
/// a missing group fails without changing anything.
#[test]
fn groups_reset_moves_a_group() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).cleanup(walq::CleanupPolicy::KeepAll).open().unwrap();
    queue.append_batch(&(0..30).map(message).collect::<Vec<_>>()).unwrap();
    let group = queue.group("g").unwrap();
    group.consumer().ack_all(group.consumer().try_recv_batch(20).unwrap()).unwrap();
    drop(group);
    queue.close().unwrap();
    let dir = temp.path().to_str().unwrap();
    let floor = |dir: &str| json_lines(&walq(&["groups", dir, "--format", "json"]))[0]["ack_floor"].clone();
    assert_eq!(floor(dir), 20);
    // message(i) is stamped 1_700_000_000_000 + i: time:...012 is offset 12, found by the time index.
    for (to, expected) in [("7", 7), ("end", 30), ("time:1700000000012", 12), ("earliest", 0)] {
        let reset = walq(&["groups", dir, "--reset", "g", "--to", to]);
        assert_eq!(code(&reset), 0, "{}", stderr(&reset));
        assert!(stderr(&reset).contains(&format!("next delivery from offset {expected}")), "{}", stderr(&reset));
        assert_eq!(floor(dir), expected);
    }
    let missing = walq(&["groups", dir, "--reset", "nope", "--to", "end"]);
    assert_ne!(code(&missing), 0);
    assert_eq!(floor(dir), 0);
    let bad = walq(&["groups", dir, "--reset", "g", "--to", "soon"]);
    assert_eq!(code(&bad), 1, "a bad --to is a usage error (1: 2 means corruption)");
    assert!(stderr(&bad).contains("not earliest, end, an offset or time:MS"), "{}", stderr(&bad));
}
