//! Other processes using a queue through its owner: producers and consumers in processes of their own, a client
//! killed with `kill -9` while it holds leases (the owner gives them to another consumer at once, not after
//! `ack_timeout`), and who may connect (another user is refused; a member of the group the owner names is served).
//!
//! The child processes are this test binary run again with `WALQ_REMOTE_ROLE` set (see `child`).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walq::remote::{RemoteQueue, Sharing};
use walq::{Error, Message, Offset, Queue};

const ROLE: &str = "WALQ_REMOTE_ROLE";
const DIR: &str = "WALQ_REMOTE_DIR";
/// An `ack_timeout` far longer than any wait of these tests: a message that comes back came back for another
/// reason than its lease's expiry.
const ACK_TIMEOUT: Duration = Duration::from_secs(3_600);

/// The roles a child process plays, chosen by `WALQ_REMOTE_ROLE`; prints what it did, one line each.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let dir = std::env::var(DIR).unwrap();
    match role.as_str() {
        "produce" => {
            let remote = RemoteQueue::connect(&dir).unwrap();
            let base: u64 = std::env::var("WALQ_REMOTE_BASE").unwrap().parse().unwrap();
            for i in base..base + 500 {
                let offset = remote.append(Message::new(i.to_le_bytes().to_vec())).unwrap();
                println!("APPENDED {i} {}", offset.0);
            }
        }
        "consume" => {
            let consumer = RemoteQueue::connect(&dir).unwrap().group("g").unwrap().consumer().unwrap();
            let done = Path::new(&dir).join("producers-done");
            loop {
                let Some(delivery) = consumer.recv_timeout(Duration::from_millis(500)).unwrap() else {
                    if done.exists() {
                        break;
                    }
                    continue;
                };
                let value = u64::from_le_bytes(delivery.message().value.as_deref().unwrap().try_into().unwrap());
                let offset = delivery.offset().0;
                delivery.ack().unwrap();
                println!("ACKED {value} {offset}");
            }
        }
        "hold" => {
            let consumer = RemoteQueue::connect(&dir).unwrap().group("g").unwrap().consumer().unwrap();
            let held = consumer.try_recv_batch(10).unwrap();
            let offsets: Vec<String> = held.iter().map(|d| d.offset().0.to_string()).collect();
            println!("HELD {}", offsets.join(" "));
            std::thread::sleep(Duration::from_secs(600)); // until killed
        }
        "connect" => match RemoteQueue::connect(&dir) {
            Ok(remote) => println!("SERVED {}", remote.append(Message::new("other user")).unwrap().0),
            Err(Error::Refused { .. }) => println!("REFUSED"),
            Err(Error::NotServed { .. }) => println!("NOT_SERVED"),
            Err(other) => panic!("{other:?}"),
        },
        other => panic!("unknown role {other}"),
    }
}

fn spawn(role: &str, dir: &Path, env: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "child", "--nocapture", "--test-threads=1"]).env(ROLE, role).env(DIR, dir);
    for (key, value) in env {
        command.env(key, value);
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// The lines a child printed that start with `prefix`, once it has exited successfully.
fn finish(child: Child, prefix: &str) -> Vec<String> {
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "child failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().filter_map(|l| reported(l, prefix)).collect()
}

/// The part of `line` from `prefix` on: libtest may print its own words before a child's first line.
fn reported(line: &str, prefix: &str) -> Option<String> {
    line.find(prefix).map(|at| line[at..].to_owned())
}

#[test]
fn producers_and_consumers_in_processes_of_their_own_share_one_queue() {
    let temp = tempfile::tempdir().unwrap();
    let owner = Queue::builder(temp.path()).sharing(Sharing::Serve).ack_timeout(ACK_TIMEOUT).open().unwrap();
    owner.group("g").unwrap();
    let consumers = [spawn("consume", temp.path(), &[]), spawn("consume", temp.path(), &[])];
    let producers = [0u64, 1_000].map(|base| spawn("produce", temp.path(), &[("WALQ_REMOTE_BASE", base.to_string())]));
    // Every append acknowledged to a producer is in the log, at the offset it was given, byte-exact.
    let mut appended = BTreeMap::new();
    for producer in producers {
        for line in finish(producer, "APPENDED ") {
            let [value, offset] = common::report_numbers(&line)[..] else { panic!("{line}") };
            assert!(appended.insert(offset, value).is_none(), "offset {offset} given twice");
        }
    }
    assert_eq!(appended.len(), 1_000);
    std::fs::write(temp.path().join("producers-done"), b"").unwrap();
    for (offset, value) in &appended {
        let record = owner.get(Offset(*offset)).unwrap().unwrap();
        assert_eq!(record.value.unwrap(), value.to_le_bytes());
    }
    // The two consumers shared the messages, each acked once (no lease expired, no consumer failed).
    let mut acked = BTreeMap::new();
    let mut per_consumer = Vec::new();
    for consumer in consumers {
        let lines = finish(consumer, "ACKED ");
        per_consumer.push(lines.len());
        for line in lines {
            let [value, offset] = common::report_numbers(&line)[..] else { panic!("{line}") };
            assert_eq!(appended.get(&offset), Some(&value), "offset {offset} delivered with another value");
            assert!(acked.insert(offset, value).is_none(), "offset {offset} acked twice");
        }
    }
    assert_eq!(acked, appended, "every message consumed once");
    assert!(per_consumer.iter().all(|&n| n > 0), "both consumers worked: {per_consumer:?}");
    assert_eq!(owner.existing_group("g").unwrap().ack_floor(), Offset(1_000));
}

#[test]
fn a_client_killed_holding_leases_gives_them_back_at_once() {
    let temp = tempfile::tempdir().unwrap();
    let owner = Queue::builder(temp.path()).sharing(Sharing::Serve).ack_timeout(ACK_TIMEOUT).open().unwrap();
    common::append_range(&owner, 0..20);
    let local = owner.group("g").unwrap().consumer();
    let mut holder = spawn("hold", temp.path(), &[]);
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let held = lines.find_map(|line| reported(&line.unwrap(), "HELD ")).expect("a HELD line");
    let held = held.strip_prefix("HELD ").unwrap();
    assert_eq!(held, "0 1 2 3 4 5 6 7 8 9");
    // While the holder lives, its ten are its own.
    let rest = local.try_recv_batch(100).unwrap();
    assert_eq!(rest.iter().map(|d| d.offset().0).collect::<Vec<_>>(), (10..20).collect::<Vec<_>>());
    local.ack_all(rest).unwrap();
    assert!(local.try_recv().unwrap().is_none());
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    // Given back when the connection ended, an hour before their leases would expire.
    let started = Instant::now();
    let mut again = Vec::new();
    while again.len() < 10 && started.elapsed() < Duration::from_secs(20) {
        again.extend(local.recv_batch_timeout(10, Duration::from_millis(200)).unwrap());
    }
    let mut offsets: Vec<(u64, u32)> = again.iter().map(|d| (d.offset().0, d.attempt())).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..10).map(|o| (o, 2)).collect::<Vec<_>>(), "each held message once more, attempt 2");
    local.ack_all(again).unwrap();
    assert_eq!(owner.existing_group("g").unwrap().ack_floor(), Offset(20));
}

/// Runs the `connect` role as user and group `nobody` (65534): needs root, which CI has.
fn connect_as_nobody(dir: &Path) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let exe = exe_for_nobody();
    let mut command = Command::new(exe);
    command.args(["--exact", "child", "--nocapture", "--test-threads=1"]).env(ROLE, "connect").env(DIR, dir);
    command.uid(65_534).gid(65_534);
    // ETXTBSY: a process forked by another test while the copy was open for writing still holds it until it
    // execs; that passes in moments.
    let output = (0..100)
        .find_map(|_| match command.output() {
            Err(error) if error.raw_os_error() == Some(26) => {
                std::thread::sleep(Duration::from_millis(20));
                None
            }
            other => Some(other.unwrap()),
        })
        .expect("the copied test binary stays busy");
    assert!(output.status.success(), "child failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout.lines().find_map(|l| ["NOT_SERVED", "REFUSED", "SERVED"].iter().find_map(|p| reported(l, p)))
}

/// This test binary, copied once where `nobody` may run it (the build directory may be closed to other users).
fn exe_for_nobody() -> &'static Path {
    static EXE: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> = std::sync::OnceLock::new();
    &EXE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("remote_processes");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        set_mode(dir.path(), 0o755);
        set_mode(&exe, 0o755);
        (dir, exe)
    })
    .1
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn another_user_is_refused_even_where_the_socket_lets_it_connect() {
    if !is_root() {
        eprintln!("SKIPPED: switching users needs root (CI runs as root)");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    set_mode(temp.path(), 0o755);
    let dir = temp.path().join("q");
    let owner = Queue::builder(&dir).sharing(Sharing::Serve).open().unwrap();
    set_mode(&dir, 0o755);
    // The socket's mode (0600) keeps other users out; opened up, the credentials check does.
    assert_eq!(connect_as_nobody(&dir).as_deref(), Some("NOT_SERVED"));
    set_mode(&dir.join(walq::remote::SOCKET_FILE), 0o666);
    assert_eq!(connect_as_nobody(&dir).as_deref(), Some("REFUSED"));
    assert_eq!(owner.stats().next_offset, Offset(0), "nothing was appended");
}

#[test]
fn members_of_the_named_group_are_served() {
    if !is_root() {
        eprintln!("SKIPPED: giving the socket to another group and switching users need root (CI runs as root)");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    set_mode(temp.path(), 0o755);
    let dir = temp.path().join("q");
    let owner = Queue::builder(&dir).sharing(Sharing::ServeGroup { gid: 65_534 }).open().unwrap();
    set_mode(&dir, 0o755);
    let socket = std::fs::metadata(dir.join(walq::remote::SOCKET_FILE)).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&socket.permissions()) & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&socket), 65_534);
    assert_eq!(connect_as_nobody(&dir).as_deref(), Some("SERVED 0"));
    assert_eq!(owner.get(Offset(0)).unwrap().unwrap().value.as_deref(), Some(&b"other user"[..]));
}
