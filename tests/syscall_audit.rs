//! R11: system-call audit. Five workloads run in a child process (this test binary re-executed) under
//! `strace -f -y`; the child prints a marker after every call whose success promises durability (an append or
//! an ack returned under `GroupCommit`, a compaction pass or a close returned). The trace is replayed in order and
//! checked:
//!
//! - at every marker, no file of the queue holds a write (or truncation, or allocation) not yet followed by an
//!   fsync/fdatasync of that file, and no creation, rename or removal in the queue's directories is waiting for
//!   a directory fsync (sparse index files excepted: a cache, never fsynced by design);
//! - a file is renamed into place only after it was fsynced (manifest, journals, compacted segments);
//! - a segment is unlinked, or a rewritten one renamed into place, only after every group journal's last write
//!   was fsynced (the floors and acks that allow it are durable);
//! - a new queue directory's parent is fsynced after the `mkdir`.
//!
//! Counts are of audited calls, markers not included. Each workload must show what it exists for (a roll, a
//! deleted segment, a renamed compacted segment, a recovery cut, a dirty file made clean by an fsync), and the
//! appends trace with its directory fsyncs removed must fail the audit (the negative control: it panics inside
//! the test, which prints that panic and passes). The recovery workload marks the moment open returns, before any
//! append whose own fdatasync would make an unsynced cut durable after the fact.
//!
//! Needs `strace` (`.ci/run` installs it); prints `SKIPPED: reason` where it cannot run.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{keyed_message, message, report};
use walq::{CleanupPolicy, Durability, Maintenance, Offset, Preallocation, Queue, QueueBuilder};

const CHILD_WORKLOAD: &str = "WALQ_AUDIT_WORKLOAD";
const CHILD_DIR: &str = "WALQ_AUDIT_DIR";
const MARKER: &str = "WALQ-AUDIT-MARK";
const SYSCALLS: &str =
    "openat,creat,mkdir,mkdirat,write,writev,pwrite64,pwritev,pwritev2,ftruncate,fallocate,fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat";

fn builder(dir: &Path) -> QueueBuilder {
    Queue::builder(dir)
        .segment_bytes_max(64 * 1024)
        .message_bytes_max(4096)
        .durability(Durability::GroupCommit)
        .preallocation(Preallocation::Reserve)
}

fn mark(what: &str) {
    // One write(2) of a whole line: the marker shows in the trace exactly where the call returned.
    println!("{MARKER} {what}");
}

/// The child: runs one workload, marking each durable promise.
#[test]
fn syscall_audit_child() {
    let (Ok(workload), Ok(dir)) = (std::env::var(CHILD_WORKLOAD), std::env::var(CHILD_DIR)) else { return };
    let dir = PathBuf::from(dir);
    match workload.as_str() {
        "appends" => {
            let queue = builder(&dir).open().unwrap();
            for i in 0..1500 {
                queue.append(message(i)).unwrap();
                mark("append");
            }
            queue.append_batch(&(1500..1700).map(message).collect::<Vec<_>>()).unwrap();
            mark("batch");
            queue.close().unwrap();
            mark("close");
        }
        "acks" => {
            // Manual: the ack deletes what it consumed itself, in order with its own journal writes. (The
            // maintenance thread deletes while later acks write: a journal is then dirty at the unlink with
            // records the floor it used does not depend on, which a trace cannot tell apart.)
            let queue =
                builder(&dir).cleanup(CleanupPolicy::DeleteConsumed).maintenance(Maintenance::Manual).open().unwrap();
            queue.append_batch(&(0..1500).map(message).collect::<Vec<_>>()).unwrap();
            mark("batch");
            let consumer = queue.group("billing").unwrap().consumer();
            while let Some(delivery) = consumer.try_recv().unwrap() {
                delivery.ack().unwrap(); // acks past segment ends delete consumed segments
                mark("ack");
            }
            queue.close().unwrap();
            mark("close");
        }
        "compaction" => {
            // Manual: the maintenance thread would compact after the rolls, and under strace often first.
            let queue = builder(&dir)
                .cleanup(CleanupPolicy::Compact)
                .tombstone_retention(Duration::ZERO)
                .maintenance(Maintenance::Manual)
                .open()
                .unwrap();
            queue.append_batch(&(0..4000).map(|i| keyed_message(i, 10)).collect::<Vec<_>>()).unwrap();
            mark("batch");
            assert!(queue.compact().unwrap().segments_rewritten > 0);
            mark("compact");
            queue.close().unwrap();
            mark("close");
        }
        "sweep" => {
            // Durability::None: acks write the journal without fsyncing it; the sweep must fsync every journal
            // before it renames a rewritten segment into place (the floors it relied on must be durable).
            let queue = builder(&dir)
                .durability(Durability::None)
                .cleanup(CleanupPolicy::DeleteConsumed)
                .maintenance(Maintenance::Manual)
                .open()
                .unwrap();
            queue.append_batch(&(0..3000).map(message).collect::<Vec<_>>()).unwrap();
            queue.flush().unwrap();
            mark("flush");
            let consumer = queue.group("billing").unwrap().consumer();
            let held = consumer.try_recv().unwrap().unwrap(); // a long job: pins offset 0, and its segment
            while let Some(delivery) = consumer.try_recv().unwrap() {
                delivery.ack().unwrap();
            }
            assert!(queue.compact().unwrap().segments_rewritten > 0, "nothing swept");
            mark("sweep");
            held.ack().unwrap();
            queue.close().unwrap();
            mark("close");
        }
        "recovery" => {
            // A queue left with a torn tail (garbage after the last frame), reopened: the cut must be durable
            // before the first new append is acknowledged.
            let queue = builder(&dir).preallocation(Preallocation::Grow).open().unwrap();
            common::append_range(&queue, 0..100);
            queue.close().unwrap();
            // The test's own unsynced write (no O_CREAT, no marker after it): garbage after the 100 durable frames,
            // a torn tail that open cuts.
            let segment = common::segment_files(&dir).pop().unwrap();
            let mut file = std::fs::OpenOptions::new().append(true).open(&segment).unwrap();
            std::io::Write::write_all(&mut file, &[0x5A; 777]).unwrap();
            drop(file);
            let queue = builder(&dir).preallocation(Preallocation::Grow).open().unwrap();
            // Here, before any append: the cut must already be durable (the next append's own fdatasync would
            // otherwise make it durable too, and hide a recovery that never fsyncs its cut).
            mark("recovered");
            assert_eq!(queue.recovery_report().truncations.len(), 1);
            for i in 100..130 {
                assert_eq!(queue.append(message(i)).unwrap(), Offset(i));
                mark("append");
            }
            queue.close().unwrap();
            mark("close");
        }
        other => panic!("unknown workload {other}"),
    }
}

/// One completed system call: its name, the paths it names (fd paths from `-y`, then quoted paths), its result.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    fd_paths: Vec<String>,
    quoted: Vec<String>,
    ok: bool,
    text: String,
}

fn parse_call(text: &str) -> Option<Call> {
    let name = text.split('(').next()?.trim().to_string();
    // strace pads short calls with spaces before ` = `: split on the last ` = ` after the closing parenthesis.
    let (call, result) = text.rsplit_once(" = ")?;
    if !call.trim_end().ends_with(')') {
        return None;
    }
    let result = result.trim();
    let ok = !result.starts_with('-');
    let mut fd_paths = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start + 1..].find('>') else { break };
        fd_paths.push(rest[start + 1..start + 1 + len].to_string());
        rest = &rest[start + 1 + len..];
    }
    let quoted: Vec<String> = text.split('"').skip(1).step_by(2).map(str::to_string).collect();
    Some(Call { name, fd_paths, quoted, ok, text: text.to_string() })
}

/// The completed calls of a trace, in completion order (`<unfinished ...>` joined with its `resumed>` part).
fn calls(trace: &str) -> Vec<Call> {
    let mut pending: HashMap<&str, String> = HashMap::new();
    let mut calls = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else { continue };
        let rest = rest.trim_start();
        let whole = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            pending.insert(pid, head.to_string());
            continue;
        } else if rest.starts_with("<...") {
            let Some((_, tail)) = rest.split_once("resumed>") else { continue };
            match pending.remove(pid) {
                Some(head) => head + tail,
                None => continue,
            }
        } else {
            rest.to_string()
        };
        if let Some(call) = parse_call(&whole) {
            calls.push(call);
        }
    }
    calls
}

/// Whether `path` is a sparse index (or its temporary), which is a cache and never fsynced by design.
fn is_index(path: &str) -> bool {
    path.contains(".idx")
}

/// What an audit saw besides its checks: the positive controls that prove the trace holds what the workload must
/// have done (a trace missing the calls would pass every rule).
#[derive(Debug, Default)]
struct Seen {
    /// Audited calls (markers not included).
    checked: u64,
    markers: u64,
    segments_created: u64,
    segments_unlinked: u64,
    segments_renamed: u64,
    segments_truncated: u64,
    /// fsyncs that made a dirty file clean.
    cleaned: u64,
}

/// Replays the calls that touch `dir` and checks the rules of the file's doc.
fn audit(calls: &[Call], dir: &Path, workload: &str) -> Seen {
    let dir = dir.to_string_lossy().to_string();
    let parent = Path::new(&dir).parent().unwrap().to_string_lossy().to_string();
    let in_queue = |p: &str| p.starts_with(&dir);
    let mut dirty: BTreeSet<String> = BTreeSet::new(); // files with writes not yet fsynced
    let mut entries_unsynced: BTreeMap<String, Vec<String>> = BTreeMap::new(); // directory -> operations
    let mut mkdir_unsynced = false;
    let mut seen = Seen::default();
    let parent_of = |p: &str| Path::new(p).parent().unwrap().to_string_lossy().to_string();
    for call in calls.iter().filter(|c| c.ok) {
        let context = || format!("{workload}: at `{}`", call.text);
        match call.name.as_str() {
            "write" if call.quoted.first().is_some_and(|q| q.starts_with(MARKER)) => {
                seen.markers += 1;
                assert!(dirty.is_empty(), "{}: a promise with unsynced writes to {dirty:?}", context());
                assert!(
                    entries_unsynced.is_empty(),
                    "{}: a promise before a directory fsync: {entries_unsynced:?}",
                    context()
                );
                assert!(!mkdir_unsynced, "{}: the new queue directory's parent was never fsynced", context());
                continue; // a marker is not an audited call
            }
            "mkdir" | "mkdirat" if call.quoted.first().is_some_and(|p| p == &dir) => mkdir_unsynced = true,
            "mkdir" | "mkdirat" => {
                let Some(path) = call.quoted.first().filter(|p| in_queue(p)) else { continue };
                entries_unsynced.entry(parent_of(path)).or_default().push(format!("mkdir {path}"));
            }
            "openat" | "creat" if call.text.contains("O_CREAT") => {
                let Some(path) = call.quoted.first().filter(|p| in_queue(p) && !is_index(p)) else { continue };
                if !path.ends_with("LOCK") {
                    entries_unsynced.entry(parent_of(path)).or_default().push(format!("create {path}"));
                }
                seen.segments_created += u64::from(path.ends_with(".seg"));
            }
            "write" | "writev" | "pwrite64" | "pwritev" | "pwritev2" | "ftruncate" | "fallocate" => {
                let Some(path) = call.fd_paths.first().filter(|p| in_queue(p) && !is_index(p)) else { continue };
                dirty.insert(path.clone());
                seen.segments_truncated += u64::from(call.name == "ftruncate" && path.ends_with(".seg"));
            }
            "fsync" | "fdatasync" => {
                let Some(path) = call.fd_paths.first() else { continue };
                seen.cleaned += u64::from(dirty.remove(path));
                entries_unsynced.remove(path);
                if *path == parent {
                    mkdir_unsynced = false;
                }
            }
            "rename" | "renameat" | "renameat2" => {
                let (Some(from), Some(to)) = (call.quoted.first(), call.quoted.get(1)) else { continue };
                if !in_queue(to) || is_index(to) {
                    continue;
                }
                assert!(!dirty.contains(from), "{}: {from} renamed into place before it was fsynced", context());
                if to.ends_with(".seg") {
                    // A rewrite (compaction, sweep) removes what the groups' floors and acks allow.
                    let journals: Vec<_> = dirty.iter().filter(|p| p.ends_with(".journal")).collect();
                    assert!(
                        journals.is_empty(),
                        "{}: a segment rewritten before the floors were durable: {journals:?}",
                        context()
                    );
                }
                entries_unsynced.entry(parent_of(to)).or_default().push(format!("rename {from} -> {to}"));
                seen.segments_renamed += u64::from(to.ends_with(".seg"));
            }
            "unlink" | "unlinkat" => {
                let Some(path) = call.quoted.first().filter(|p| in_queue(p) && !is_index(p)) else { continue };
                if path.ends_with(".seg") {
                    let journals: Vec<_> = dirty.iter().filter(|p| p.ends_with(".journal")).collect();
                    assert!(
                        journals.is_empty(),
                        "{}: a segment deleted before the floors were durable: {journals:?}",
                        context()
                    );
                }
                entries_unsynced.entry(parent_of(path)).or_default().push(format!("unlink {path}"));
                seen.segments_unlinked += u64::from(path.ends_with(".seg"));
            }
            _ => continue,
        }
        seen.checked += 1;
    }
    assert!(seen.markers > 0, "{workload}: no marker seen: is the trace complete?");
    assert!(seen.cleaned > 0, "{workload}: no fsync of a written file seen: is the trace complete? {seen:?}");
    seen
}

fn strace_or_skip() -> bool {
    match Command::new("strace").arg("-V").output() {
        Ok(output) if output.status.success() => true,
        _ => {
            println!("SKIPPED: system-call audit: strace is not installed");
            false
        }
    }
}

/// A workload's audit: what it saw, and its trace (for the negative control).
struct Audited {
    seen: Seen,
    calls: Vec<Call>,
    dir: PathBuf,
    _temp: tempfile::TempDir,
}

fn run_audited(workload: &str) -> Option<Audited> {
    if !strace_or_skip() {
        return None;
    }
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("queue");
    let trace = temp.path().join("trace.txt");
    let output = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "48", "-e", &format!("trace={SYSCALLS}"), "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "syscall_audit_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_WORKLOAD, workload)
        .env(CHILD_DIR, &dir)
        .output()
        .unwrap();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("PTRACE") || stderr.contains("ptrace") {
            println!("SKIPPED: system-call audit: ptrace is not permitted here: {stderr}");
            return None;
        }
        panic!("{workload}: the audited child failed: {stderr}\n{}", String::from_utf8_lossy(&output.stdout));
    }
    let calls = calls(&std::fs::read_to_string(&trace).unwrap());
    let seen = audit(&calls, &dir, workload);
    println!(
        "R11 {workload}: {} file-system calls checked at {} durability promises, 0 violations; {seen:?}",
        seen.checked, seen.markers
    );
    Some(Audited { seen, calls, dir, _temp: temp })
}

#[test]
fn audit_appends_and_segment_rolls() {
    let Some(audited) = run_audited("appends") else { return };
    assert!(audited.seen.segments_created >= 2, "no segment roll in the trace: {:?}", audited.seen);
    // Negative control: the same trace without its directory fsyncs must fail the audit, or the audit proves
    // nothing about them.
    let dir = audited.dir.to_string_lossy().to_string();
    let without: Vec<Call> = audited
        .calls
        .iter()
        .filter(|c| !(matches!(c.name.as_str(), "fsync" | "fdatasync") && c.fd_paths.first() == Some(&dir)))
        .cloned()
        .collect();
    assert!(without.len() < audited.calls.len(), "the trace holds no directory fsync");
    let failed = std::panic::catch_unwind(|| audit(&without, &audited.dir, "appends without directory fsyncs"));
    assert!(failed.is_err(), "the audit passed a trace whose directory fsyncs were removed");
    report(
        "R11 appends",
        "strace: appends and rolls fsync files and directory before acknowledging (the trace without its directory fsyncs fails)",
        audited.seen.checked,
        "calls",
        0,
    );
}

#[test]
fn audit_group_acks_and_cleanup() {
    let Some(audited) = run_audited("acks") else { return };
    assert!(audited.seen.segments_unlinked >= 1, "no consumed segment deleted in the trace: {:?}", audited.seen);
    report(
        "R11 acks",
        "strace: journal creation and acks durable before acknowledged; floors before deletion",
        audited.seen.checked,
        "calls",
        0,
    );
}

#[test]
fn audit_compaction() {
    let Some(audited) = run_audited("compaction") else { return };
    assert!(audited.seen.segments_renamed >= 1, "no compacted segment renamed in the trace: {:?}", audited.seen);
    report(
        "R11 compaction",
        "strace: a compacted segment is fsynced before its rename, the directory after",
        audited.seen.checked,
        "calls",
        0,
    );
}

#[test]
fn audit_sweep() {
    let Some(audited) = run_audited("sweep") else { return };
    assert!(audited.seen.segments_renamed >= 1, "no swept segment renamed in the trace: {:?}", audited.seen);
    // Negative control: without the journal fsyncs the sweep runs before its renames, the rename rule must fire.
    let without: Vec<Call> = audited
        .calls
        .iter()
        .filter(|c| !(matches!(c.name.as_str(), "fsync" | "fdatasync") && is_journal(c.fd_paths.first())))
        .cloned()
        .collect();
    assert!(without.len() < audited.calls.len(), "the trace holds no journal fsync");
    let failed = std::panic::catch_unwind(|| audit(&without, &audited.dir, "sweep without journal fsyncs"));
    let message = failed.expect_err("the audit passed a sweep whose journal fsyncs were removed");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("rewritten before the floors were durable"), "failed for another reason: {message}");
    report(
        "R11 sweep",
        "strace: every group journal fsynced before a swept segment is renamed in (the trace without them fails)",
        audited.seen.checked,
        "calls",
        0,
    );
}

fn is_journal(path: Option<&String>) -> bool {
    path.is_some_and(|p| p.ends_with(".journal"))
}

#[test]
fn audit_recovery() {
    let Some(audited) = run_audited("recovery") else { return };
    assert!(audited.seen.segments_truncated >= 1, "no recovery cut in the trace: {:?}", audited.seen);
    report(
        "R11 recovery",
        "strace: a recovery cut is fsynced before open returns (checked before any append)",
        audited.seen.checked,
        "calls",
        0,
    );
}
