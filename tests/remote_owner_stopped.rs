//! An owner that is stopped (`SIGSTOP`, a debugger) still holds the queue's lock and its socket, and the kernel
//! puts a connection in the socket's backlog without the owner: connecting and sending the hello succeed, and the
//! welcome never comes. Opening through it must end with [`Error::OwnerNotAnswering`], not wait for ever; once the
//! owner runs again it serves as before.
//!
//! The owner is this test binary run again with `WALQ_STOPPED_ROLE` set (see `child`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use walq::remote::{RemoteQueue, SharedQueue, Sharing, CONNECT_TIMEOUT_MS};
use walq::{Error, Message, Offset, Queue};

const ROLE: &str = "WALQ_STOPPED_ROLE";
const DIR: &str = "WALQ_STOPPED_DIR";
/// Far past the connect timeout: a call that has not returned by then waits for ever.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// The owner's role: opens the queue serving the others, says so, and lives until killed.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else { return };
    assert_eq!(role, "own");
    let dir = std::env::var(DIR).unwrap();
    let queue = Queue::builder(&dir).sharing(Sharing::Serve).open().unwrap();
    queue.append(Message::new("before")).unwrap();
    println!("SERVING {}", std::process::id());
    std::thread::sleep(Duration::from_secs(600));
}

fn spawn_owner(dir: &Path) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "child", "--nocapture", "--test-threads=1"]).env(ROLE, "own").env(DIR, dir);
    let mut owner = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut lines = BufReader::new(owner.stdout.take().unwrap()).lines();
    assert!(lines.any(|line| line.unwrap().contains("SERVING ")), "the owner never served");
    owner
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Runs `call` on a thread of its own and returns what it returned, or fails the test if it waits past the guard.
fn within_guard<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || sender.send(call()));
    receiver.recv_timeout(HANG_GUARD).expect("the call still waits for a stopped owner")
}

#[test]
fn opening_through_a_stopped_owner_ends_with_a_typed_error_and_works_once_it_runs_again() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let mut owner = spawn_owner(&dir);
    signal(&owner, "STOP");

    let connect_dir = dir.clone();
    match within_guard(move || RemoteQueue::connect(&connect_dir)) {
        Err(Error::OwnerNotAnswering { dir: reported, waited_ms }) => {
            assert_eq!(reported, dir);
            assert_eq!(waited_ms, CONNECT_TIMEOUT_MS);
        }
        other => panic!("expected OwnerNotAnswering, got {other:?}"),
    }
    // The call that owns or connects reports the same (the lock is held: it cannot own).
    let open_dir = dir.clone();
    match within_guard(move || SharedQueue::open(Queue::builder(&open_dir)).map(|_| ())) {
        Err(Error::OwnerNotAnswering { .. }) => {}
        other => panic!("expected OwnerNotAnswering, got {other:?}"),
    }

    signal(&owner, "CONT");
    let remote = within_guard(move || RemoteQueue::connect(&dir)).expect("served once it runs again");
    assert_eq!(remote.append(Message::new("after")).unwrap(), Offset(1));
    let values: Vec<Vec<u8>> =
        remote.read_from(Offset(0)).unwrap().map(|record| record.unwrap().value.unwrap().to_vec()).collect();
    assert_eq!(values, [b"before".to_vec(), b"after".to_vec()]);
    owner.kill().unwrap();
    owner.wait().unwrap();
}
