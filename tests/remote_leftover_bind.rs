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
