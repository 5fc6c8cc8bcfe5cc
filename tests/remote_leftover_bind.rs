//! An owner killed between binding its socket (in a private directory) and renaming it into place leaves that
//! directory behind; the next owner removes it, and leaves everything else in the queue directory alone.

use std::os::unix::net::UnixListener;

use walq::remote::{RemoteQueue, Sharing, SOCKET_FILE};
use walq::{Message, Queue};

#[test]
fn the_next_owner_removes_a_dead_owners_bind_directory() {
    let temp = tempfile::tempdir().unwrap();
    drop(Queue::open(temp.path()).unwrap());
    let leftover = temp.path().join(format!("{SOCKET_FILE}.4194303.00000000000000ab"));
    std::fs::create_dir(&leftover).unwrap();
    drop(UnixListener::bind(leftover.join(SOCKET_FILE)).unwrap());
    let unrelated = temp.path().join("walq.sockets-of-the-user");
    std::fs::create_dir(&unrelated).unwrap();

    let owner = Queue::builder(temp.path()).sharing(Sharing::Serve).open().unwrap();
    assert!(!leftover.exists(), "the dead owner's bind directory is still there");
    assert!(unrelated.exists(), "a directory that is not a bind directory was removed");
    RemoteQueue::connect(temp.path()).unwrap().append(Message::new("served")).unwrap();
    drop(owner);
}

/// A name in the queue directory that looks like a bind directory but is a symlink is not followed: another
/// queue's socket behind it stays (the cleanup works relative to descriptors opened with `O_NOFOLLOW`).
#[test]
fn a_symlink_named_like_a_bind_directory_is_not_followed() {
    let temp = tempfile::tempdir().unwrap();
    let other_queue = tempfile::tempdir().unwrap();
    drop(Queue::open(temp.path()).unwrap());
    let victim = other_queue.path().join(SOCKET_FILE);
    drop(UnixListener::bind(&victim).unwrap());
    std::os::unix::fs::symlink(other_queue.path(), temp.path().join(format!("{SOCKET_FILE}.77.00000000000000cd")))
        .unwrap();
    let near_miss = temp.path().join(format!("{SOCKET_FILE}.77.cd"));
    std::fs::create_dir(&near_miss).unwrap();

    let owner = Queue::builder(temp.path()).sharing(Sharing::Serve).open().unwrap();
    assert!(victim.exists(), "the socket behind a symlink was removed");
    assert!(near_miss.exists(), "a directory not named exactly as a bind directory was removed");
    drop(owner);
}
