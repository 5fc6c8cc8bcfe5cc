//! Many processes, one queue: the process that opened a queue (its owner) can serve others over a Unix socket in
//! the queue directory, and another process uses the queue through a [`RemoteQueue`].
//!
//! The owner opts in with [`QueueBuilder::sharing`](crate::QueueBuilder::sharing). Every served call runs on the
//! owner's own [`Queue`](crate::Queue) API: an `Ok` means what it means there (the owner's durability mode
//! acknowledged it). A client's deliveries are leases held for its connection: when the connection ends (the
//! client drops it, exits or dies), the owner releases them at once and they go to other consumers.
//!
//! Who may connect: the socket is created with mode 0600 (0660 with [`Sharing::ServeGroup`]), and the owner checks
//! each peer's credentials (`SO_PEERCRED`): its own user, and the named group's members (primary group). The wire
//! protocol is specified in PROTOCOL.md at the root of the project.
//!
//! ```
//! use walq::remote::{RemoteQueue, Sharing};
//! use walq::{Message, Queue};
//! # fn main() -> walq::Result<()> {
//! # let temp = tempfile::tempdir().unwrap();
//! # let dir = temp.path();
//! // The owner (a service) opens the queue and serves it:
//! let owner = Queue::builder(dir).sharing(Sharing::Serve).open()?;
//! // Another process (here the same one) uses it through the owner:
//! let remote = RemoteQueue::connect(dir)?;
//! let offset = remote.append(Message::new("from a worker process"))?;
//! assert_eq!(owner.get(offset)?.unwrap().value.as_deref(), Some(&b"from a worker process"[..]));
//! let consumer = remote.group("billing")?.consumer()?;
//! let delivery = consumer.try_recv()?.unwrap();
//! delivery.ack()?;
//! assert_eq!(owner.existing_group("billing")?.ack_floor(), walq::Offset(1));
//! # Ok(()) }
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

mod client;
pub(crate) mod protocol;
pub(crate) mod server;
mod shared;

pub use client::{
    PendingAppend, RemoteConsumer, RemoteDeliveries, RemoteDelivery, RemoteFollow, RemoteGroup, RemoteQueue,
    RemoteReader, CONNECT_TIMEOUT_MS,
};
pub use shared::{
    SharedConsumer, SharedDeliveries, SharedDelivery, SharedFollow, SharedGroup, SharedQueue, SharedReader, OWNER_WAIT,
};

/// The owner's socket, in the queue directory.
pub const SOCKET_FILE: &str = "walq.sock";

/// Longest socket path the kernel takes (`sun_path` less its terminating zero), in bytes.
const SOCKET_PATH_BYTES_MAX: usize = 107;

/// Whether an open queue serves other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Sharing {
    /// Only this process uses the queue: other processes that open it get [`Error::Locked`](crate::Error::Locked).
    #[default]
    Private,
    /// Processes of this user may use the queue through this one ([`RemoteQueue::connect`]).
    Serve,
    /// As `Serve`, and processes whose (primary) group is `gid`; the socket is then mode 0660, of that group.
    ServeGroup {
        /// The group id whose members may connect.
        gid: u32,
    },
}

/// Why an owner refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The connecting process is not of the owner's user, nor of the group the owner serves.
    NotPermitted,
    /// The owner serves as many processes as it allows (`CLIENTS_MAX`, 256); retry later.
    TooManyClients,
    /// The process serving the socket is neither this process's user nor the owner of the queue directory: a
    /// socket someone else put there. Nothing was sent to it.
    NotTheOwner,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NotPermitted => "this process's user and group are not permitted by the owner",
            Refusal::TooManyClients => "the owner serves as many processes as it allows; retry later",
            Refusal::NotTheOwner => "the socket is served by another user than this one or the directory's owner",
        })
    }
}

/// Writes all of `bytes` to `socket`, blocking, with `MSG_NOSIGNAL`: a peer gone midway is an error here, not a
/// `SIGPIPE` that kills a host process which does not ignore it (the owner's and a client's writes alike).
fn send_all(socket: &std::os::unix::net::UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    use rustix::net::SendFlags;
    while !bytes.is_empty() {
        match rustix::net::send(socket, bytes, SendFlags::NOSIGNAL) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// The directory part of the socket's address: the directory's own path, or, when a path of `name_bytes` more
/// bytes in it would be longer than a socket address holds, `/proc/self/fd/N` of `dir_file` (an open descriptor of
/// the directory), which names the same directory in few bytes.
fn socket_address(dir: &Path, dir_file: &File, name_bytes: usize) -> PathBuf {
    if dir.as_os_str().len() + 1 + name_bytes <= SOCKET_PATH_BYTES_MAX {
        dir.to_path_buf()
    } else {
        PathBuf::from(format!("/proc/self/fd/{}", dir_file.as_raw_fd()))
    }
}
