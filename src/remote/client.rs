//! The client's side: a [`RemoteQueue`] is a connection to the queue's owner, and each [`RemoteConsumer`] has a
//! connection of its own, so that its leases end with it (the owner releases a connection's deliveries when it
//! closes) and a consumer waiting for messages never holds up the queue's other calls.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::protocol::{
    self, Answer, GroupOp, RefusalCode, Reply, Request, WireDelivery, BATCH_COUNT_MAX, FRAME_BYTES_MAX,
    FRAME_HEADER_BYTES, PROTOCOL_VERSION, PROTOCOL_VERSION_OLDEST, TAKE_WAIT_MS_MAX,
};
use super::{socket_address, Refusal, SOCKET_FILE};
use crate::error::{Error, Result};
use crate::group::{self, LeaseToken, Nacked};
use crate::message::{AsParts, Message, Offset, Record};
use crate::nonblocking::{Completion, Syncer};
use crate::queue::Stats;

/// Records one read request asks for (the iterator of [`RemoteQueue::read_from`] asks again as it goes).
const READ_BATCH_RECORDS: u32 = 1_000;
/// Bytes of keys and values one read request asks for.
const READ_BATCH_BYTES: u32 = 1024 * 1024;
/// Longest wait to connect and be welcomed. A live owner answers in microseconds; one that is stopped (`SIGSTOP`,
/// a debugger) or hung still holds the lock and its socket's backlog takes the connection, so without a bound an
/// open would wait for it forever.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// One connection to the owner. Requests may be pipelined: each is sent with a sequence number, and the owner
/// answers in order; whoever waits for a reply reads the replies before it too and keeps them for their callers
/// (one reader at a time).
///
/// No caller ever waits to write: a request the socket does not take at once goes to an outbox that a walq thread
/// of the connection writes (holding no lock while it does). A thread that must read a reply, so that the owner
/// can go on writing replies and then reading requests, is therefore never stuck behind a write.
#[derive(Debug)]
struct Connection {
    dir: PathBuf,
    owner_pid: u32,
    queue_id: String,
    /// The protocol version this connection speaks: this build's, or an older owner's.
    version: u16,
    /// The socket's writing side; its sender state; and whether the stream is broken. Shared with the flusher.
    outgoing: Arc<Outgoing>,
    receive: Mutex<Receiver>,
    /// Replies read for callers that have not come for them yet, requests whose replies no one will come for,
    /// and whether a thread is reading. Apart from `receive`, which that one reader holds while it waits on the
    /// socket: the other waiters wait on `replies_changed`, so a reply read for one of them reaches it at once.
    replies: Mutex<Replies>,
    replies_changed: Condvar,
    /// Replies read so far (the receiver's `next`), for senders to bound what is in flight.
    replies_read: AtomicU64,
    /// The thread that waits for the replies of async calls (started by the first), so that no task's executor
    /// waits for the owner.
    waiter: Syncer,
}

/// Most requests sent and not yet answered on one connection. A sender past it first reads replies ahead (kept
/// for their callers): the owner, which writes replies before it reads more requests, must never block on a
/// client that writes without reading. The kernel counts each small write to a Unix socket at about 768 bytes
/// against the default 208 KiB buffer; 64 unread replies stay far below it. It also bounds the outbox: at most
/// this many requests (each at most a frame) wait in it.
const IN_FLIGHT_MAX: u64 = 64;
/// Most bytes of requests sent and not yet answered on one connection (one larger request goes alone). With
/// [`IN_FLIGHT_MAX`] it bounds the outbox, which holds only unanswered requests, whatever their sizes: 64 frames of
/// a largest message each would be over a gigabyte held for an owner that reads slowly.
const IN_FLIGHT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Capacity a connection's encode and frame buffers keep between calls: one large frame does not hold its size for
/// the connection's life.
const BUFFER_KEEP_BYTES: usize = 1024 * 1024;

/// What writing needs, shared by the connection's callers and its flusher.
#[derive(Debug)]
struct Outgoing {
    /// Written to at once under the `send` lock while the outbox is empty and no flush runs, else only by the
    /// flusher while it holds bytes of the outbox.
    socket: UnixStream,
    send: Mutex<Sender>,
    /// A call failed midway: what the owner did with it is unknown, and the stream is out of step.
    broken: AtomicBool,
}

/// The sending side of a connection: what is sent and not yet answered (`Default`: a new connection).
#[derive(Debug, Default)]
struct Sender {
    out: Vec<u8>,
    /// The sequence number of the next request sent.
    next: u64,
    /// Bytes of requests (counted in `next`, in order) the socket has not taken yet.
    outbox: Vec<u8>,
    /// The flusher holds bytes taken from the outbox and writes them: nothing else is written meanwhile.
    flushing: bool,
    /// The sequence number and size of each request sent and maybe not answered yet, oldest first (answered ones
    /// are dropped as replies are counted), and their total size.
    unanswered: std::collections::VecDeque<(u64, usize)>,
    unanswered_bytes: usize,
}

impl Sender {
    /// The request whose reply must be read before one of `frame_bytes` may be sent, or `None` if it may go now.
    fn must_wait_for(&mut self, replies_read: u64, frame_bytes: usize) -> Option<u64> {
        while let Some(&(seq, bytes)) = self.unanswered.front() {
            if seq >= replies_read {
                break;
            }
            self.unanswered.pop_front();
            self.unanswered_bytes -= bytes;
        }
        let count_left = self.next - replies_read < IN_FLIGHT_MAX;
        let bytes_left = self.unanswered_bytes + frame_bytes <= IN_FLIGHT_BYTES_MAX;
        match self.unanswered.front() {
            Some(&(oldest, _)) if !(count_left && bytes_left) => Some(oldest),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Receiver {
    reader: BufReader<UnixStream>,
    body: Vec<u8>,
    /// The sequence number of the next reply read.
    next: u64,
}

#[derive(Debug, Default)]
struct Replies {
    ready: HashMap<u64, Reply>,
    /// Requests whose replies are dropped when read (a dropped delivery's release, a dropped pending append).
    discarded: std::collections::HashSet<u64>,
    /// A thread is reading the socket (holding `receive`): the others wait for it, not for the socket.
    reading: bool,
}

impl Connection {
    /// Connects speaking this build's protocol version, or the owner's if it is older and still spoken here.
    fn open(dir: &Path) -> Result<Connection> {
        match Connection::open_speaking(dir, PROTOCOL_VERSION) {
            Err(Error::UnsupportedVersion { found, .. })
                if (u32::from(PROTOCOL_VERSION_OLDEST)..u32::from(PROTOCOL_VERSION)).contains(&found) =>
            {
                Connection::open_speaking(dir, found as u16)
            }
            other => other,
        }
    }

    fn open_speaking(dir: &Path, version: u16) -> Result<Connection> {
        let not_served = |source| Error::NotServed { dir: dir.to_path_buf(), source };
        let dir_file = File::open(dir).map_err(not_served)?;
        // A long path is reached through the descriptor, open only while connecting.
        let address = socket_address(dir, &dir_file, SOCKET_FILE.len()).join(SOCKET_FILE);
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let stream = connect_within(&address, timeout).map_err(|source| match source.kind() {
            std::io::ErrorKind::WouldBlock => not_answering(dir),
            _ => not_served(source),
        })?;
        check_owner(dir, &dir_file, &stream)?;
        drop(dir_file);
        let socket = stream.try_clone().map_err(|e| Error::io("connect to the queue's owner", dir, e))?;
        let connection = Connection {
            dir: dir.to_path_buf(),
            owner_pid: 0,
            queue_id: String::new(),
            version,
            outgoing: Arc::new(Outgoing {
                socket,
                send: Mutex::new(Sender::default()),
                broken: AtomicBool::new(false),
            }),
            receive: Mutex::new(Receiver { reader: BufReader::new(stream), body: Vec::new(), next: 0 }),
            replies: Mutex::new(Replies::default()),
            replies_changed: Condvar::new(),
            replies_read: AtomicU64::new(0),
            waiter: Syncer::default(),
        };
        // An owner that refuses writes its refusal and closes before reading the hello: a hello that cannot be
        // sent still has the refusal to read.
        let sent = connection.send(encoder(&Request::Hello { version }));
        let welcome = match sent {
            Ok(seq) => connection.wait(seq),
            Err(_) => connection.receive.lock().unwrap_or_else(|p| p.into_inner()).read_reply(dir),
        };
        let welcome = welcome?;
        // From here a read waits as long as its call does (a take waits at the owner, a follow for new records).
        let untimed = [rustix::net::sockopt::Timeout::Recv, rustix::net::sockopt::Timeout::Send]
            .into_iter()
            .try_for_each(|which| rustix::net::sockopt::set_socket_timeout(&connection.outgoing.socket, which, None));
        untimed.map_err(|e| Error::io("connect to the queue's owner", dir, e.into()))?;
        match welcome {
            Reply::Welcome { owner_pid, queue_id, .. } => Ok(Connection { owner_pid, queue_id, ..connection }),
            Reply::Refused { code: RefusalCode::Version, version } => {
                Err(Error::UnsupportedVersion { found: u32::from(version), supported: u32::from(PROTOCOL_VERSION) })
            }
            Reply::Refused { code, .. } => {
                let reason = match code {
                    RefusalCode::TooManyClients => Refusal::TooManyClients,
                    _ => Refusal::NotPermitted,
                };
                Err(Error::Refused { dir: dir.to_path_buf(), reason })
            }
            _ => Err(Error::Protocol { detail: "the owner did not answer the handshake" }),
        }
    }

    fn lost(&self) -> Error {
        Error::ConnectionLost { dir: self.dir.clone() }
    }

    /// Sends the request `encode` writes; returns its sequence number. An encoder that fails sends nothing. With
    /// [`IN_FLIGHT_MAX`] requests or [`IN_FLIGHT_BYTES_MAX`] unanswered, it first reads replies ahead (kept for
    /// their callers).
    fn send(&self, encode: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<u64> {
        let mut sender = self.lock_sender();
        let mut out = std::mem::take(&mut sender.out);
        out.clear();
        encode(&mut out)?;
        while let Some(oldest) = sender.must_wait_for(self.replies_read.load(Ordering::SeqCst), out.len()) {
            drop(sender);
            self.read_ahead(oldest)?;
            sender = self.lock_sender();
        }
        let sent = self.push_frame(&mut sender, &out);
        if out.capacity() <= BUFFER_KEEP_BYTES {
            sender.out = out;
        }
        sent
    }

    /// Sends an encoded request unless [`IN_FLIGHT_MAX`] requests or [`IN_FLIGHT_BYTES_MAX`] are unanswered (then
    /// `None`, nothing sent): it never waits for the owner.
    fn try_send(&self, frame: &[u8]) -> Result<Option<u64>> {
        let mut sender = self.lock_sender();
        if sender.must_wait_for(self.replies_read.load(Ordering::SeqCst), frame.len()).is_some() {
            return Ok(None);
        }
        self.push_frame(&mut sender, frame).map(Some)
    }

    fn lock_sender(&self) -> std::sync::MutexGuard<'_, Sender> {
        self.outgoing.lock_sender()
    }

    fn is_broken(&self) -> bool {
        self.outgoing.broken.load(Ordering::SeqCst)
    }

    /// The stream is out of step for good: every later call fails, and the socket is shut down so that a thread
    /// reading or flushing is woken and the owner releases what this connection held at once.
    fn set_broken(&self) {
        self.outgoing.set_broken();
    }

    /// Gives `frame` its sequence number and writes what the socket takes at once (`MSG_DONTWAIT`); the rest goes
    /// to the outbox, after anything already there, for the flusher.
    fn push_frame(&self, sender: &mut Sender, frame: &[u8]) -> Result<u64> {
        use rustix::net::SendFlags;
        if self.is_broken() {
            return Err(self.lost());
        }
        let socket = &self.outgoing.socket;
        let mut written = 0;
        if sender.outbox.is_empty() && !sender.flushing {
            while written < frame.len() {
                match rustix::net::send(socket, &frame[written..], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                    Ok(bytes) => written += bytes,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(_) => {
                        // Part of a frame may be out: the stream is out of step for good.
                        self.set_broken();
                        return Err(self.lost());
                    }
                }
            }
        }
        if written < frame.len() {
            sender.outbox.extend_from_slice(&frame[written..]);
            if !sender.flushing {
                // A thread of its own, not joined: a connection dropped with requests in its outbox still sends
                // them (an append sent stands) without the drop waiting for an owner that reads slowly.
                let outgoing = self.outgoing.clone();
                let spawned =
                    std::thread::Builder::new().name("walq-flush".into()).spawn(move || outgoing.flush_outbox());
                if spawned.is_err() {
                    // Part of the frame may be out and nothing will write the rest: out of step for good.
                    sender.outbox.clear();
                    self.set_broken();
                    return Err(self.lost());
                }
                sender.flushing = true;
            }
        }
        sender.unanswered.push_back((sender.next, frame.len()));
        sender.unanswered_bytes += frame.len();
        sender.next += 1;
        Ok(sender.next - 1)
    }

    /// The async call: sends the encoded request `frame` and resolves with `decode` of its reply (an error reply
    /// is the owner's error), without the polling task ever waiting for the owner. The request is sent at once
    /// (see [`push_frame`](Connection::push_frame)), unless [`IN_FLIGHT_MAX`] are unanswered: then the
    /// connection's waiter thread sends it. The reply is read on that thread, and `decode` runs there too, so that
    /// what it makes (deliveries) is dropped there, released, if the future went meanwhile. Either way the
    /// request goes out whether or not the completion is awaited.
    fn call_async<T: Send + 'static>(
        self: &Arc<Self>,
        frame: Vec<u8>,
        decode: impl FnOnce(&Arc<Connection>, Reply) -> Result<T> + Send + 'static,
    ) -> Completion<T> {
        // The frame is kept only until it is sent, not until its reply.
        let sent = match self.try_send(&frame) {
            Ok(Some(seq)) => Ok(seq),
            Ok(None) => Err(frame),
            Err(error) => return Completion::ready(Err(error)),
        };
        let connection = self.clone();
        self.waiter.run(move || {
            let seq = match sent {
                Ok(seq) => seq,
                Err(frame) => connection.send(|out| {
                    out.extend_from_slice(&frame);
                    Ok(())
                })?,
            };
            match connection.wait(seq)? {
                Reply::Failed(error) => Err(error),
                reply => decode(&connection, reply),
            }
        })
    }

    /// Reads replies (keeping them for their callers) until the one to request `target` is read.
    fn read_ahead(&self, target: u64) -> Result<()> {
        let mut replies = self.lock_replies();
        while self.replies_read.load(Ordering::SeqCst) <= target {
            if self.is_broken() {
                return Err(self.lost());
            }
            let (guard, read) = self.read_or_wait(replies, None);
            replies = guard;
            read?;
        }
        Ok(())
    }

    /// Reads the next reply off the socket (the receive lock held).
    fn read_next(&self, receiver: &mut Receiver) -> Result<(u64, Reply)> {
        let reply = receiver.read_reply(&self.dir).inspect_err(|_| self.set_broken())?;
        let read = receiver.next;
        receiver.next += 1;
        self.replies_read.store(receiver.next, Ordering::SeqCst);
        Ok((read, reply))
    }

    fn lock_replies(&self) -> MutexGuard<'_, Replies> {
        self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One step of waiting for a reply: reads the next reply off the socket if no other thread is reading, and
    /// returns it if it answers `seq` (otherwise keeps it for its caller, or drops it if no one will come for it);
    /// or, while another thread reads, waits until it has read one. Only one thread waits on the socket: a caller
    /// whose reply another thread read is woken at once, not when that thread's own reply comes.
    fn read_or_wait<'a>(
        &'a self,
        mut replies: MutexGuard<'a, Replies>,
        seq: Option<u64>,
    ) -> (MutexGuard<'a, Replies>, Result<Option<Reply>>) {
        if replies.reading {
            let replies = self.replies_changed.wait(replies).unwrap_or_else(|p| p.into_inner());
            return (replies, Ok(None));
        }
        replies.reading = true;
        drop(replies);
        let read = self.read_next(&mut self.receive.lock().unwrap_or_else(|p| p.into_inner()));
        let mut replies = self.lock_replies();
        replies.reading = false;
        // The waiters run once this guard is dropped, after the reply is kept below.
        self.replies_changed.notify_all();
        let read = match read {
            Ok((read, reply)) if Some(read) == seq => Ok(Some(reply)),
            Ok((read, reply)) => {
                if !replies.discarded.remove(&read) {
                    replies.ready.insert(read, reply);
                }
                Ok(None)
            }
            Err(error) => Err(error),
        };
        (replies, read)
    }

    /// No one will come for the reply to request `seq`: it is dropped when read (or now, if it was).
    fn discard(&self, seq: u64) {
        let mut replies = self.lock_replies();
        if replies.ready.remove(&seq).is_none() {
            replies.discarded.insert(seq);
        }
    }

    /// The reply to request `seq`, reading (and keeping for their callers) the replies before it.
    fn wait(&self, seq: u64) -> Result<Reply> {
        let mut replies = self.lock_replies();
        loop {
            if let Some(reply) = replies.ready.remove(&seq) {
                return Ok(reply);
            }
            if self.is_broken() {
                return Err(self.lost());
            }
            let (guard, read) = self.read_or_wait(replies, Some(seq));
            replies = guard;
            if let Some(reply) = read? {
                return Ok(reply);
            }
        }
    }

    /// Sends one request and returns its reply; an error reply is the owner's error.
    fn call(&self, encode: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<Reply> {
        match self.wait(self.send(encode)?)? {
            Reply::Failed(error) => Err(error),
            reply => Ok(reply),
        }
    }

    fn call_done(&self, request: &Request) -> Result<()> {
        done(self, self.call(encoder(request))?)
    }

    fn group_admin(&self, group: &str, op: GroupOp) -> Result<u64> {
        match self.call(encoder(&Request::GroupAdmin { group: group.to_owned(), op }))? {
            Reply::Value(value) => Ok(value),
            _ => Err(self.unexpected()),
        }
    }

    fn call_nacked(&self, request: &Request) -> Result<Nacked> {
        nacked(self, self.call(encoder(request))?)
    }

    /// A reply of the wrong kind: the connection cannot be trusted further.
    fn unexpected(&self) -> Error {
        self.set_broken();
        Error::Protocol { detail: "a reply of the wrong kind" }
    }
}

impl Outgoing {
    fn lock_sender(&self) -> std::sync::MutexGuard<'_, Sender> {
        self.send.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// See [`Connection::set_broken`].
    fn set_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Writes the outbox until it is empty, taking its bytes under the send lock and writing them without it.
    fn flush_outbox(&self) {
        loop {
            let chunk = {
                let mut sender = self.lock_sender();
                if sender.outbox.is_empty() {
                    sender.flushing = false;
                    return;
                }
                std::mem::take(&mut sender.outbox)
            };
            if super::send_all(&self.socket, &chunk).is_err() {
                // The stream is out of step for good; readers waiting for replies that will not come are woken.
                self.set_broken();
                let mut sender = self.lock_sender();
                sender.outbox.clear();
                sender.flushing = false;
                return;
            }
        }
    }
}

impl Receiver {
    /// The next reply: one frame, or for a take every frame of it (merged).
    fn read_reply(&mut self, dir: &Path) -> Result<Reply> {
        let mut taken = Vec::new();
        loop {
            match self.read_frame(dir)? {
                Reply::Deliveries { deliveries, more: true } => taken.extend(deliveries),
                Reply::Deliveries { deliveries, more: false } => {
                    taken.extend(deliveries);
                    return Ok(Reply::Deliveries { deliveries: taken, more: false });
                }
                _ if !taken.is_empty() => return Err(Error::Protocol { detail: "a take's reply cut short" }),
                reply => return Ok(reply),
            }
        }
    }

    fn read_frame(&mut self, dir: &Path) -> Result<Reply> {
        // Only the handshake reads with a timeout: past it the owner is there (it holds the socket) but silent.
        let lost = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => not_answering(dir),
            _ => Error::ConnectionLost { dir: dir.to_path_buf() },
        };
        let mut header = [0u8; FRAME_HEADER_BYTES];
        self.reader.read_exact(&mut header).map_err(lost)?;
        let (body_bytes, kind) = protocol::decode_frame_header(header).map_err(|m| Error::Protocol { detail: m.0 })?;
        self.body.resize(body_bytes, 0);
        self.reader.read_exact(&mut self.body).map_err(lost)?;
        let reply = protocol::decode_reply(kind, &self.body, dir).map_err(|m| Error::Protocol { detail: m.0 });
        if self.body.capacity() > BUFFER_KEEP_BYTES {
            self.body = Vec::new();
        }
        reply
    }
}

/// Connects to the socket at `address`, waiting at most `timeout` for room in its backlog (Linux bounds a
/// blocking connect by the send timeout) and leaving that timeout and the same receive timeout on the stream for
/// the handshake. `WouldBlock` when the time ran out.
fn connect_within(address: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use rustix::net::{sockopt, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_timeout(&socket, sockopt::Timeout::Send, Some(timeout))?;
    sockopt::set_socket_timeout(&socket, sockopt::Timeout::Recv, Some(timeout))?;
    rustix::net::connect(&socket, &SocketAddrUnix::new(address)?)?;
    Ok(UnixStream::from(socket))
}

fn not_answering(dir: &Path) -> Error {
    Error::OwnerNotAnswering { dir: dir.to_path_buf(), waited_ms: CONNECT_TIMEOUT_MS }
}

/// Refuses a server that is neither this process's user nor the queue directory's owner: whoever can write to a
/// shared queue directory could put a socket of theirs at `walq.sock`, to receive what clients send.
fn check_owner(dir: &Path, dir_file: &File, stream: &UnixStream) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let server = rustix::net::sockopt::socket_peercred(stream)
        .map_err(|e| Error::io("check the queue's owner", dir, e.into()))?;
    let dir_owner = dir_file.metadata().map_err(|e| Error::io("check the queue's owner", dir, e))?.uid();
    let uid = server.uid.as_raw();
    if uid == rustix::process::geteuid().as_raw() || uid == dir_owner {
        Ok(())
    } else {
        Err(Error::Refused { dir: dir.to_path_buf(), reason: Refusal::NotTheOwner })
    }
}

/// A connection that only waits for the owner to go away: its reads end when the owner closes the queue, exits or
/// dies (the kernel closes its socket), or when [`OwnerWatch::stop`] shuts it down.
#[derive(Debug)]
pub(super) struct OwnerWatch {
    stream: UnixStream,
    owner_pid: u32,
}

impl OwnerWatch {
    pub(super) fn open(dir: &Path) -> Result<OwnerWatch> {
        let connection = Connection::open(dir)?;
        let owner_pid = connection.owner_pid;
        let stream =
            connection.outgoing.socket.try_clone().map_err(|e| Error::io("watch the queue's owner", dir, e))?;
        Ok(OwnerWatch { stream, owner_pid })
    }

    /// The process this watch watches.
    pub(super) fn owner_pid(&self) -> u32 {
        self.owner_pid
    }

    /// Blocks until the owner's end of the connection is gone (or `stop`).
    pub(super) fn wait_for_owner_gone(&self) {
        let mut buffer = [0u8; 64];
        // The owner sends nothing on this connection: any read that returns, returns at its end.
        while let Ok(read) = (&self.stream).read(&mut buffer) {
            if read == 0 {
                return;
            }
        }
    }

    /// A handle that ends the wait from another thread.
    pub(super) fn stopper(&self) -> Result<UnixStream> {
        self.stream.try_clone().map_err(|e| Error::io("watch the queue's owner", "", e))
    }
}

/// The encoder of `request`, for `call`.
fn encoder(request: &Request) -> impl FnOnce(&mut Vec<u8>) -> Result<()> + '_ {
    move |out| {
        protocol::encode_request(out, request);
        Ok(())
    }
}

/// A queue another process owns and serves ([`Sharing`](super::Sharing)), used through that process: appends,
/// reads, statistics and consumer groups, each call served by the owner's own queue. Clone it to share it between
/// threads (calls on one handle take turns on its connection; each consumer has a connection of its own).
///
/// When the owner closes the queue or dies, calls return [`Error::ConnectionLost`]: a call in flight then may or
/// may not have taken effect (an append may be stored; treat it as at-least-once), and nothing the owner
/// acknowledged is lost.
#[derive(Debug, Clone)]
pub struct RemoteQueue {
    connection: Arc<Connection>,
}

impl RemoteQueue {
    /// Connects to the owner of the queue in `dir`. [`Error::NotServed`] if no process serves it (nobody has it
    /// open, or its owner does not share it), [`Error::Refused`] if the owner does not permit this process.
    pub fn connect(dir: impl AsRef<Path>) -> Result<RemoteQueue> {
        Ok(RemoteQueue { connection: Arc::new(Connection::open(dir.as_ref())?) })
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.connection.dir
    }

    /// The queue's identity, as [`Queue::queue_id`](crate::Queue::queue_id).
    pub fn queue_id(&self) -> &str {
        &self.connection.queue_id
    }

    /// The process id of the owner serving this handle.
    pub fn owner_pid(&self) -> u32 {
        self.connection.owner_pid
    }

    /// As [`Queue::append`](crate::Queue::append), through the owner.
    pub fn append(&self, message: Message) -> Result<Offset> {
        self.append_batch(std::slice::from_ref(&message))
    }

    /// As [`Queue::append_batch`](crate::Queue::append_batch), through the owner: one request, one commit. A batch
    /// of more than 100,000 messages, or larger than one request carries (a little over the largest message a
    /// queue allows), is [`Error::BatchTooLarge`] and sends nothing: split it.
    pub fn append_batch(&self, messages: &[Message]) -> Result<Offset> {
        if messages.len() > BATCH_COUNT_MAX {
            return Err(Error::BatchTooLarge { count: messages.len(), size_bytes: 0 });
        }
        check_messages(messages)?;
        let reply = self.connection.call(|out| {
            protocol::encode_append(out, messages);
            check_frame(out, messages.len())
        });
        appended(&self.connection, reply?)
    }

    /// As [`append`](RemoteQueue::append), without blocking a thread: as
    /// [`Queue::append_async`](crate::Queue::append_async), through the owner. Runs on any executor.
    ///
    /// The request is sent when the future is first polled: what the socket takes at once is written on the
    /// polling task (`MSG_DONTWAIT`), the rest by a walq thread of this connection; the reply is waited for on
    /// another, never on the executor. Cancel
    /// safety: dropped before its first poll, nothing is sent; dropped later, the append stands (the owner stores
    /// it and acknowledges it as its durability mode says), and only its offset and any error are lost.
    pub async fn append_async(&self, message: Message) -> Result<Offset> {
        self.append_batch_async(std::slice::from_ref(&message)).await
    }

    /// As [`append_batch`](RemoteQueue::append_batch), without blocking a thread; as
    /// [`append_async`](RemoteQueue::append_async) for where it waits and cancel safety.
    pub async fn append_batch_async(&self, messages: &[Message]) -> Result<Offset> {
        if messages.len() > BATCH_COUNT_MAX {
            return Err(Error::BatchTooLarge { count: messages.len(), size_bytes: 0 });
        }
        check_messages(messages)?;
        let mut frame = Vec::new();
        protocol::encode_append(&mut frame, messages);
        check_frame(&frame, messages.len())?;
        self.connection.call_async(frame, |c, reply| appended(c, reply)).await
    }

    /// Sends an append without waiting for its reply: several can be in flight on one connection (pipelined), so
    /// that one thread's single appends are not each a round trip to the owner. [`PendingAppend::wait`] returns
    /// the message's offset, as [`append`](RemoteQueue::append) would; appends are stored in the order sent.
    ///
    /// ```
    /// # use walq::remote::{RemoteQueue, Sharing};
    /// # fn main() -> walq::Result<()> {
    /// # let temp = tempfile::tempdir().unwrap();
    /// # let _owner = walq::Queue::builder(temp.path()).sharing(Sharing::Serve).open()?;
    /// let remote = RemoteQueue::connect(temp.path())?;
    /// let pending: Vec<_> =
    ///     (0..100).map(|i| remote.append_nowait(&walq::Message::new(format!("event {i}")))).collect::<Result<_, _>>()?;
    /// for (i, append) in pending.into_iter().enumerate() {
    ///     assert_eq!(append.wait()?, walq::Offset(i as u64));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn append_nowait(&self, message: &Message) -> Result<PendingAppend> {
        check_messages(std::slice::from_ref(message))?;
        let seq = self.connection.send(|out| {
            protocol::encode_append(out, std::slice::from_ref(message));
            check_frame(out, 1)
        })?;
        Ok(PendingAppend { connection: self.connection.clone(), seq: Some(seq) })
    }

    /// The records from `offset` on, as [`Queue::read_from`](crate::Queue::read_from) reads them (oldest stored
    /// first if `offset` is older), fetched from the owner in batches; the iterator ends at the end of the log as
    /// it was when the last batch was fetched.
    pub fn read_from(&self, offset: Offset) -> Result<RemoteReader> {
        Ok(RemoteReader {
            connection: self.connection.clone(),
            next: offset.0,
            batch: Vec::new().into_iter(),
            end: false,
        })
    }

    /// The records from `offset` on, waiting at the owner for new ones once caught up: as
    /// [`Queue::follow`](crate::Queue::follow), through the owner, on a connection of its own.
    /// [`Error::UnsupportedVersion`] if the owner is an older walq that cannot wait in a read (protocol
    /// version 1).
    pub fn follow(&self, offset: Offset) -> Result<RemoteFollow> {
        let connection = Connection::open(&self.connection.dir)?;
        if connection.version < 2 {
            return Err(Error::UnsupportedVersion { found: u32::from(connection.version), supported: 2 });
        }
        // `LATEST` is where the log ends now, once: each read asking for it would skip what came meanwhile.
        let from = if offset == Offset::LATEST { self.stats()?.next_offset.0 } else { offset.0 };
        Ok(RemoteFollow {
            connection: Arc::new(connection),
            read_from: from,
            batch: Vec::new().into_iter(),
            next_offset: from,
            reading: None,
            ended: false,
        })
    }

    /// The record at `offset`, as [`Queue::get`](crate::Queue::get).
    pub fn get(&self, offset: Offset) -> Result<Option<Record>> {
        let records = read_batch(&self.connection, offset.0, 1, 1)?.1;
        Ok(records.into_iter().next().filter(|record| record.offset == offset))
    }

    /// The owner's [`Queue::stats`](crate::Queue::stats).
    pub fn stats(&self) -> Result<Stats> {
        match self.connection.call(encoder(&Request::Stats))? {
            Reply::StatsJson { json } => {
                serde_json::from_slice(&json).map_err(|_| Error::Protocol { detail: "statistics that do not parse" })
            }
            _ => Err(self.connection.unexpected()),
        }
    }

    /// The consumer group `name`, created if missing, as [`Queue::group`](crate::Queue::group).
    pub fn group(&self, name: &str) -> Result<RemoteGroup> {
        group::validate_name(name)?;
        self.connection.group_admin(name, GroupOp::Open)?;
        Ok(RemoteGroup { connection: self.connection.clone(), name: Arc::from(name) })
    }

    /// The existing group `name`, as [`Queue::existing_group`](crate::Queue::existing_group):
    /// [`Error::GroupNotFound`] (nothing created) if there is none.
    pub fn existing_group(&self, name: &str) -> Result<RemoteGroup> {
        group::validate_name(name)?;
        // A redrive of no offset's dead letter: answers whether the group exists, and changes nothing.
        self.connection.group_admin(name, GroupOp::Redrive { offset: u64::MAX })?;
        Ok(RemoteGroup { connection: self.connection.clone(), name: Arc::from(name) })
    }

    /// As [`Queue::delete_group`](crate::Queue::delete_group), on the owner's queue.
    pub fn delete_group(&self, name: &str) -> Result<bool> {
        Ok(self.connection.group_admin(name, GroupOp::Delete)? == 1)
    }

    /// As [`Queue::reset_group`](crate::Queue::reset_group), on the owner's queue.
    pub fn reset_group(&self, name: &str, to: crate::StartAt) -> Result<Offset> {
        Ok(Offset(self.connection.group_admin(name, GroupOp::Reset(to))?))
    }
}

/// The first offset of an append's reply.
fn appended(connection: &Connection, reply: Reply) -> Result<Offset> {
    match reply {
        Reply::Appended { first } => Ok(Offset(first)),
        _ => Err(connection.unexpected()),
    }
}

/// The reply that says an answer (or an ack of many) is done.
fn done(connection: &Connection, reply: Reply) -> Result<()> {
    match reply {
        Reply::Done => Ok(()),
        _ => Err(connection.unexpected()),
    }
}

/// The outcome of a nack, retry, fail or dead letter.
fn nacked(connection: &Connection, reply: Reply) -> Result<Nacked> {
    match reply {
        Reply::Nacked(nacked) => Ok(nacked),
        _ => Err(connection.unexpected()),
    }
}

/// The request `request`, encoded whole (for an async call).
fn encoded(request: &Request) -> Vec<u8> {
    let mut frame = Vec::new();
    protocol::encode_request(&mut frame, request);
    frame
}

/// Checks messages against the limits every queue has, before anything is sent: the same typed errors as a local
/// append, where the owner would otherwise find the request malformed and close the connection. (The queue's own
/// `message_bytes_max` is checked by the owner.)
fn check_messages(messages: &[Message]) -> Result<()> {
    for message in messages {
        let parts = message.parts();
        crate::record::check_headers(parts).map_err(|reason| Error::InvalidHeader { reason })?;
        let size = crate::record::payload_len(parts);
        if size > crate::limits::MESSAGE_BYTES_LIMIT {
            return Err(Error::MessageTooLarge { size, max: crate::limits::MESSAGE_BYTES_LIMIT });
        }
    }
    Ok(())
}

/// Refuses an encoded append of `count` messages larger than a frame may be (nothing is sent).
fn check_frame(out: &[u8], count: usize) -> Result<()> {
    let size_bytes = out.len() - FRAME_HEADER_BYTES;
    if size_bytes > FRAME_BYTES_MAX {
        return Err(Error::BatchTooLarge { count, size_bytes });
    }
    Ok(())
}

/// An append sent to the owner whose reply has not been read ([`RemoteQueue::append_nowait`]). Dropping it
/// ignores the reply (dropped when read) without waiting for it.
#[derive(Debug)]
pub struct PendingAppend {
    connection: Arc<Connection>,
    /// `None` once waited for.
    seq: Option<u64>,
}

impl PendingAppend {
    /// The message's offset once the owner's durability mode acknowledged it; errors as
    /// [`RemoteQueue::append`].
    pub fn wait(mut self) -> Result<Offset> {
        let seq = self.seq.take().expect("waited for once");
        match self.connection.wait(seq)? {
            Reply::Appended { first } => Ok(Offset(first)),
            Reply::Failed(error) => Err(error),
            _ => Err(self.connection.unexpected()),
        }
    }
}

impl Drop for PendingAppend {
    fn drop(&mut self) {
        if let Some(seq) = self.seq.take() {
            self.connection.discard(seq); // its reply must not stay behind in the connection
        }
    }
}

fn read_batch(connection: &Connection, from: u64, max_count: u32, max_bytes: u32) -> Result<(u64, Vec<Record>)> {
    match connection.call(encoder(&Request::Read { from, max_count, max_bytes, wait_ms: 0 }))? {
        Reply::Records { next, records } => Ok((next, records)),
        _ => Err(connection.unexpected()),
    }
}

/// The records of a [`RemoteQueue`] from an offset on, fetched in batches.
#[derive(Debug)]
pub struct RemoteReader {
    connection: Arc<Connection>,
    next: u64,
    batch: std::vec::IntoIter<Record>,
    end: bool,
}

impl Iterator for RemoteReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if let Some(record) = self.batch.next() {
                return Some(Ok(record));
            }
            if self.end {
                return None;
            }
            match read_batch(&self.connection, self.next, READ_BATCH_RECORDS, READ_BATCH_BYTES) {
                Ok((_, records)) if records.is_empty() => self.end = true,
                Ok((next, records)) => {
                    self.next = next;
                    self.batch = records.into_iter();
                }
                Err(error) => {
                    self.end = true;
                    return Some(Err(error));
                }
            }
        }
    }
}

/// The records of a [`RemoteQueue`] from an offset on, waiting for new appends once it has caught up: as
/// [`Follow`](crate::Follow), through the owner (made by [`RemoteQueue::follow`]). Its reads wait at the owner, up
/// to a second each, on a connection of its own, so they never hold up the queue handle's other calls; they are
/// waited for on that connection's walq thread, never on the executor.
///
/// It ends after an error: [`Error::ConnectionLost`] when the owner closes the queue or goes (follow again from
/// [`next_offset`](RemoteFollow::next_offset), on the next owner).
#[derive(Debug)]
pub struct RemoteFollow {
    connection: Arc<Connection>,
    /// Where the next read starts.
    read_from: u64,
    batch: std::vec::IntoIter<Record>,
    /// One past the last record returned.
    next_offset: u64,
    reading: Option<Completion<(u64, Vec<Record>)>>,
    ended: bool,
}

impl RemoteFollow {
    /// The next record, waiting for it if the follow has caught up; `None` after an error was returned.
    pub async fn next_record(&mut self) -> Option<Result<Record>> {
        std::future::poll_fn(|cx| self.poll_record(cx)).await
    }

    /// The offset this follow looks for next (one past the last record returned).
    pub fn next_offset(&self) -> Offset {
        Offset(self.next_offset)
    }

    fn poll_record(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<Record>>> {
        use std::task::Poll;
        loop {
            if let Some(record) = self.batch.next() {
                self.next_offset = record.offset.0 + 1;
                return Poll::Ready(Some(Ok(record)));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            let reading = self.reading.get_or_insert_with(|| {
                let read = Request::Read {
                    from: self.read_from,
                    max_count: READ_BATCH_RECORDS,
                    max_bytes: READ_BATCH_BYTES,
                    wait_ms: TAKE_WAIT_MS_MAX,
                };
                self.connection.call_async(encoded(&read), |connection, reply| match reply {
                    Reply::Records { next, records } => Ok((next, records)),
                    _ => Err(connection.unexpected()),
                })
            });
            let Poll::Ready(read) = std::future::Future::poll(std::pin::Pin::new(reading), cx) else {
                return Poll::Pending;
            };
            self.reading = None;
            match read {
                // Nothing came within the owner's wait: ask again (each read waits up to a second there).
                Ok((_, records)) if records.is_empty() => {}
                Ok((next, records)) => {
                    self.read_from = next;
                    self.batch = records.into_iter();
                }
                Err(error) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }
}

impl futures_core::Stream for RemoteFollow {
    type Item = Result<Record>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Record>>> {
        self.get_mut().poll_record(cx)
    }
}

impl futures_core::FusedStream for RemoteFollow {
    fn is_terminated(&self) -> bool {
        self.ended && self.batch.len() == 0
    }
}

/// A consumer group of a [`RemoteQueue`].
#[derive(Debug, Clone)]
pub struct RemoteGroup {
    connection: Arc<Connection>,
    name: Arc<str>,
}

impl RemoteGroup {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// As [`Group::redrive`](crate::Group::redrive), on the owner's queue.
    pub fn redrive(&self, offset: Offset) -> Result<bool> {
        Ok(self.connection.group_admin(&self.name, GroupOp::Redrive { offset: offset.0 })? == 1)
    }

    /// As [`Group::discard`](crate::Group::discard), on the owner's queue.
    pub fn discard(&self, offset: Offset) -> Result<bool> {
        Ok(self.connection.group_admin(&self.name, GroupOp::Discard { offset: offset.0 })? == 1)
    }

    /// A new consumer, on a connection of its own: its deliveries are released when it is dropped (or its process
    /// dies), each delivered again at once to another consumer.
    pub fn consumer(&self) -> Result<RemoteConsumer> {
        Ok(RemoteConsumer { connection: Arc::new(Connection::open(&self.connection.dir)?), group: self.name.clone() })
    }
}

/// A consumer of a group of a [`RemoteQueue`], competing with the group's other consumers (local or remote).
#[derive(Debug)]
pub struct RemoteConsumer {
    connection: Arc<Connection>,
    group: Arc<str>,
}

impl RemoteConsumer {
    /// A message if one is available now.
    pub fn try_recv(&self) -> Result<Option<RemoteDelivery>> {
        Ok(self.try_recv_batch(1)?.into_iter().next())
    }

    /// Up to `max` messages available now.
    pub fn try_recv_batch(&self, max: usize) -> Result<Vec<RemoteDelivery>> {
        self.take(max, 0)
    }

    /// Waits up to `timeout` for a message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<RemoteDelivery>> {
        Ok(self.recv_batch_timeout(1, timeout)?.into_iter().next())
    }

    /// Waits up to `timeout` for at least one message, then returns up to `max` available at that moment.
    pub fn recv_batch_timeout(&self, max: usize, timeout: Duration) -> Result<Vec<RemoteDelivery>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
            // The owner waits at most `TAKE_WAIT_MS_MAX` per request; a longer wait asks again.
            let wait_ms = left.as_millis().min(u128::from(TAKE_WAIT_MS_MAX)) as u32;
            let taken = self.take(max, wait_ms)?;
            if !taken.is_empty() || wait_ms == 0 || left.is_zero() {
                return Ok(taken);
            }
        }
    }

    /// Waits for the next message; [`Error::Closed`] once the queue is closed or shutting down.
    pub fn recv(&self) -> Result<RemoteDelivery> {
        loop {
            if let Some(delivery) = self.recv_timeout(Duration::from_millis(u64::from(TAKE_WAIT_MS_MAX)))? {
                return Ok(delivery);
            }
        }
    }

    /// Waits for the next message without blocking a thread: as [`Consumer::recv_async`](crate::Consumer::recv_async),
    /// through the owner. Runs on any executor: the owner's reply is waited for on a walq thread of this
    /// consumer's connection.
    ///
    /// Cancel safety: dropped while a take is in flight, what that take leases is released as soon as its reply
    /// arrives (on that thread): delivered again at once, the attempt counted, as for a dropped delivery. Nothing
    /// is lost.
    pub async fn recv_async(&self) -> Result<RemoteDelivery> {
        loop {
            if let Some(delivery) = self.recv_batch_async(1).await?.pop() {
                return Ok(delivery);
            }
        }
    }

    /// Waits without blocking a thread for at least one message, then returns up to `max` available at that
    /// moment; as [`recv_async`](RemoteConsumer::recv_async) for cancel safety.
    pub async fn recv_batch_async(&self, max: usize) -> Result<Vec<RemoteDelivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        loop {
            let taken = self.take_async(max, TAKE_WAIT_MS_MAX).await?;
            if !taken.is_empty() {
                return Ok(taken);
            }
        }
    }

    /// As [`ack_all`](RemoteConsumer::ack_all), without blocking a thread (the replies are waited for on the
    /// connections' walq threads). Cancel safety: dropped after its first poll, every ack stands (all requests
    /// are sent before the first wait).
    pub async fn ack_all_async(&self, deliveries: impl IntoIterator<Item = RemoteDelivery>) -> Result<()> {
        ack_all_started(deliveries).await
    }

    /// One take of up to `max` messages, waiting up to `wait_ms` at the owner; the deliveries are made on the
    /// connection's thread (see `call_async`).
    async fn take_async(&self, max: usize, wait_ms: u32) -> Result<Vec<RemoteDelivery>> {
        self.take_started(max, wait_ms).await
    }

    /// The take of `take_async`, sent now (see `call_async`).
    fn take_started(&self, max: usize, wait_ms: u32) -> Completion<Vec<RemoteDelivery>> {
        let max = max.min(BATCH_COUNT_MAX) as u32;
        let frame = encoded(&Request::Take { group: self.group.to_string(), max, wait_ms });
        let group = self.group.clone();
        let decode = move |connection: &Arc<Connection>, reply| match reply {
            Reply::Deliveries { deliveries, .. } => {
                Ok(deliveries.into_iter().map(|d| RemoteDelivery::new(connection, &group, d)).collect())
            }
            _ => Err(connection.unexpected()),
        };
        self.connection.call_async(frame, decode)
    }

    /// A blocking iterator over deliveries, as [`Consumer::iter`](crate::Consumer::iter). It ends when the owner
    /// closes the queue, and after an error that does not clear (the owner went: [`Error::ConnectionLost`]; the
    /// group deleted).
    pub fn iter(&self) -> impl Iterator<Item = Result<RemoteDelivery>> + '_ {
        iter_until_end(|| self.recv())
    }

    /// The stream of deliveries, as [`Consumer::deliveries`](crate::Consumer::deliveries): each item a message
    /// taken for this consumer, the owner's reply waited for on the connection's walq thread. It ends as
    /// [`iter`](RemoteConsumer::iter) does. Dropped while a take waits at the owner, what that take leases is
    /// released when its reply arrives.
    pub fn deliveries(self) -> RemoteDeliveries {
        RemoteDeliveries { consumer: self, taking: None, ended: false }
    }

    /// Acks many deliveries of this consumer in one request and one commit, as
    /// [`Consumer::ack_all`](crate::Consumer::ack_all). Deliveries of another consumer (another connection or
    /// group) are acked through theirs, one request per consumer; the first error is returned once all were
    /// tried.
    pub fn ack_all(&self, deliveries: impl IntoIterator<Item = RemoteDelivery>) -> Result<()> {
        ack_all_blocking(deliveries)
    }

    fn take(&self, max: usize, wait_ms: u32) -> Result<Vec<RemoteDelivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = max.min(BATCH_COUNT_MAX) as u32;
        let request = Request::Take { group: self.group.to_string(), max, wait_ms };
        match self.connection.call(encoder(&request))? {
            Reply::Deliveries { deliveries, .. } => Ok(deliveries.into_iter().map(|d| self.delivery(d)).collect()),
            _ => Err(self.connection.unexpected()),
        }
    }

    fn delivery(&self, delivery: WireDelivery) -> RemoteDelivery {
        RemoteDelivery::new(&self.connection, &self.group, delivery)
    }
}

/// The leases (offset, token) one consumer (a connection and a group) acks in one `AckAll`.
type ConsumerLeases = (Arc<Connection>, Arc<str>, Vec<(u64, u128)>);

/// The leases of `deliveries`, marked answered, by the connection and group that leased them: one `AckAll` each.
fn leases_by_consumer(deliveries: impl IntoIterator<Item = RemoteDelivery>) -> Vec<ConsumerLeases> {
    let mut by_consumer: Vec<ConsumerLeases> = Vec::new();
    for mut delivery in deliveries {
        delivery.answered = true;
        let lease = (delivery.record.offset.0, delivery.token.to_u128());
        // A linear search: one ack_all holds the deliveries of one or a few consumers.
        let same = |(connection, group, _): &&mut ConsumerLeases| {
            Arc::ptr_eq(connection, &delivery.connection) && *group == delivery.group
        };
        match by_consumer.iter_mut().find(same) {
            Some((_, _, leases)) => leases.push(lease),
            None => by_consumer.push((delivery.connection.clone(), delivery.group.clone(), vec![lease])),
        }
    }
    by_consumer
}

/// Acks `deliveries` in one request per consumer (connection and group) that leased them, each sent before this
/// returns: a caller that stops waiting for the returned future leaves every ack standing, never a delivery marked
/// answered whose ack was not sent. It resolves with the first error once all were waited for.
pub(crate) fn ack_all_started(
    deliveries: impl IntoIterator<Item = RemoteDelivery>,
) -> impl std::future::Future<Output = Result<()>> {
    let started: Vec<Completion<()>> = leases_by_consumer(deliveries)
        .into_iter()
        .map(|(connection, group, leases)| {
            let frame = encoded(&Request::AckAll { group: group.to_string(), leases });
            connection.call_async(frame, |c, r| done(c, r))
        })
        .collect();
    async move {
        let mut first_error = None;
        for completion in started {
            if let Err(error) = completion.await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Acks `deliveries` in one request per consumer (connection and group) that leased them; the first error once
/// all were tried.
pub(crate) fn ack_all_blocking(deliveries: impl IntoIterator<Item = RemoteDelivery>) -> Result<()> {
    // Every request sent before the first wait: the consumers' owners commit them side by side.
    let sent: Vec<_> = leases_by_consumer(deliveries)
        .into_iter()
        .map(|(connection, group, leases)| {
            let request = Request::AckAll { group: group.to_string(), leases };
            let seq = connection.send(encoder(&request));
            (connection, seq)
        })
        .collect();
    let mut first_error = None;
    for (connection, seq) in sent {
        let answered = seq.and_then(|seq| connection.wait(seq)).and_then(|reply| match reply {
            Reply::Failed(error) => Err(error),
            reply => done(&connection, reply),
        });
        if let Err(error) = answered {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The blocking iterator of `recv`: it ends at [`Error::Closed`], and after an error that does not clear (said
/// once; a loop over it must not spin on it).
pub(crate) fn iter_until_end<T>(mut recv: impl FnMut() -> Result<T>) -> impl Iterator<Item = Result<T>> {
    let mut ended = false;
    std::iter::from_fn(move || {
        if ended {
            return None;
        }
        match recv() {
            Ok(item) => Some(Ok(item)),
            Err(Error::Closed) => None,
            Err(error) => {
                ended = ends_the_stream(&error);
                Some(Err(error))
            }
        }
    })
}

/// Whether `error` from a take never clears: a loop over deliveries must end on it, not spin.
pub(crate) fn ends_the_stream(error: &Error) -> bool {
    matches!(
        error,
        Error::GroupDeleted { .. }
            | Error::GroupNotFound { .. }
            | Error::Poisoned
            | Error::ConnectionLost { .. }
            | Error::Protocol { .. }
    )
}

/// The stream of [`RemoteConsumer::deliveries`].
#[derive(Debug)]
pub struct RemoteDeliveries {
    consumer: RemoteConsumer,
    taking: Option<Completion<Vec<RemoteDelivery>>>,
    ended: bool,
}

impl futures_core::Stream for RemoteDeliveries {
    type Item = Result<RemoteDelivery>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<RemoteDelivery>>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let consumer = &this.consumer;
            let taking = this.taking.get_or_insert_with(|| consumer.take_started(1, TAKE_WAIT_MS_MAX));
            let Poll::Ready(taken) = std::future::Future::poll(std::pin::Pin::new(taking), cx) else {
                return Poll::Pending;
            };
            this.taking = None;
            match taken {
                Ok(mut taken) => {
                    if let Some(delivery) = taken.pop() {
                        return Poll::Ready(Some(Ok(delivery)));
                    }
                    // Nothing within the owner's wait: take again.
                }
                Err(Error::Closed) => this.ended = true,
                Err(error) => {
                    this.ended = ends_the_stream(&error);
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }
}

impl futures_core::FusedStream for RemoteDeliveries {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

/// A message leased to a [`RemoteConsumer`]: answered as a [`Delivery`](crate::Delivery) is, through the owner.
/// Dropping it unanswered gives it back at once, as does the end of its consumer's connection.
#[derive(Debug)]
pub struct RemoteDelivery {
    connection: Arc<Connection>,
    group: Arc<str>,
    record: Record,
    attempt: u32,
    last_attempt: bool,
    token: LeaseToken,
    answered: bool,
}

impl RemoteDelivery {
    /// The message.
    pub fn message(&self) -> &Record {
        &self.record
    }

    /// The message's offset.
    pub fn offset(&self) -> Offset {
        self.record.offset
    }

    /// The value, deserialized from JSON, as [`Delivery::json`](crate::Delivery::json).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        self.record.json()
    }

    /// Moves the value out, as [`Delivery::take_value`](crate::Delivery::take_value).
    pub fn take_value(&mut self) -> Option<Vec<u8>> {
        self.record.value.take()
    }

    /// Which delivery of this message this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether this is the message's last allowed attempt.
    pub fn is_last_attempt(&self) -> bool {
        self.last_attempt
    }

    /// This delivery's lease.
    pub fn token(&self) -> LeaseToken {
        self.token
    }

    fn new(connection: &Arc<Connection>, group: &Arc<str>, delivery: WireDelivery) -> RemoteDelivery {
        RemoteDelivery {
            connection: connection.clone(),
            group: group.clone(),
            record: delivery.record,
            attempt: delivery.attempt,
            last_attempt: delivery.last_attempt,
            token: LeaseToken::from_u128(delivery.token),
            answered: false,
        }
    }

    /// Sends `answer` now (see `call_async`) and returns what resolves with `decode` of its reply.
    fn start<T: Send + 'static>(
        mut self,
        answer: Answer,
        decode: impl FnOnce(&Arc<Connection>, Reply) -> Result<T> + Send + 'static,
    ) -> Completion<T> {
        let frame = encoded(&self.answer(answer));
        self.connection.call_async(frame, decode)
    }

    fn answer(&mut self, answer: Answer) -> Request {
        self.answered = true;
        Request::Answer {
            group: self.group.to_string(),
            offset: self.record.offset.0,
            token: self.token.to_u128(),
            answer,
        }
    }

    /// As [`Delivery::ack`](crate::Delivery::ack).
    pub fn ack(mut self) -> Result<()> {
        let request = self.answer(Answer::Ack);
        self.connection.call_done(&request)
    }

    /// As [`Delivery::nack`](crate::Delivery::nack).
    pub fn nack(mut self, delay: Duration) -> Result<Nacked> {
        let request = self.answer(Answer::Nack { delay_ms: delay.as_millis().min(u128::from(u64::MAX)) as u64 });
        self.connection.call_nacked(&request)
    }

    /// As [`Delivery::retry`](crate::Delivery::retry).
    pub fn retry(mut self) -> Result<Nacked> {
        let request = self.answer(Answer::Retry);
        self.connection.call_nacked(&request)
    }

    /// As [`Delivery::fail`](crate::Delivery::fail).
    pub fn fail(mut self, error: impl std::fmt::Display) -> Result<Nacked> {
        let request = self.answer(Answer::Fail { reason: error.to_string() });
        self.connection.call_nacked(&request)
    }

    /// As [`Delivery::extend_lease`](crate::Delivery::extend_lease).
    pub fn extend_lease(&self) -> Result<()> {
        let request = Request::Answer {
            group: self.group.to_string(),
            offset: self.record.offset.0,
            token: self.token.to_u128(),
            answer: Answer::ExtendLease,
        };
        self.connection.call_done(&request)
    }

    /// As [`Delivery::dead_letter`](crate::Delivery::dead_letter).
    pub fn dead_letter(mut self) -> Result<Nacked> {
        let request = self.answer(Answer::DeadLetter { reason: None });
        self.connection.call_nacked(&request)
    }

    /// As [`Delivery::dead_letter_with`](crate::Delivery::dead_letter_with).
    pub fn dead_letter_with(mut self, reason: impl std::fmt::Display) -> Result<Nacked> {
        let request = self.answer(Answer::DeadLetter { reason: Some(reason.to_string()) });
        self.connection.call_nacked(&request)
    }
}

/// The async answers: each is sent when its future is first polled (what the socket takes at once written on the
/// polling task, the rest by a walq thread of the connection) and its reply waited for on a walq thread of the delivery's connection, never on the executor. Cancel safety: a
/// future dropped before its first poll drops the delivery unanswered (released: delivered again at once); dropped
/// later, the answer stands.
impl RemoteDelivery {
    /// As [`ack`](RemoteDelivery::ack), without blocking a thread.
    pub async fn ack_async(self) -> Result<()> {
        self.start(Answer::Ack, |c, r| done(c, r)).await
    }

    /// As [`nack`](RemoteDelivery::nack), without blocking a thread.
    pub async fn nack_async(self, delay: Duration) -> Result<Nacked> {
        let delay_ms = delay.as_millis().min(u128::from(u64::MAX)) as u64;
        self.start(Answer::Nack { delay_ms }, |c, r| nacked(c, r)).await
    }

    /// As [`fail`](RemoteDelivery::fail), without blocking a thread.
    pub async fn fail_async(self, error: impl std::fmt::Display) -> Result<Nacked> {
        self.start(Answer::Fail { reason: error.to_string() }, |c, r| nacked(c, r)).await
    }

    /// As [`dead_letter_with`](RemoteDelivery::dead_letter_with), without blocking a thread.
    pub async fn dead_letter_async(self, reason: impl std::fmt::Display) -> Result<Nacked> {
        self.start(Answer::DeadLetter { reason: Some(reason.to_string()) }, |c, r| nacked(c, r)).await
    }
}

/// Dropped unanswered, a delivery is released: the release is sent before the drop returns (a take sent after
/// it on the same connection finds the message again) and its reply dropped when read, so that a drop never waits
/// for the owner (deliveries dropped on an async task included). Only on a connection with 64
/// requests unanswered is the release sent by the connection's walq thread, after the requests that wait.
impl Drop for RemoteDelivery {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let frame = encoded(&self.answer(Answer::Release));
        match self.connection.try_send(&frame) {
            Ok(Some(seq)) => self.connection.discard(seq),
            // A lost connection released it already.
            Ok(None) => drop(self.connection.call_async(frame, |_, _| Ok(()))),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Sender {
        Sender::default()
    }

    fn sent(sender: &mut Sender, bytes: usize) {
        sender.unanswered.push_back((sender.next, bytes));
        sender.unanswered_bytes += bytes;
        sender.next += 1;
    }

    #[test]
    fn requests_wait_for_replies_past_the_count_bound() {
        let mut sender = sender();
        for _ in 0..IN_FLIGHT_MAX {
            assert_eq!(sender.must_wait_for(0, 10), None);
            sent(&mut sender, 10);
        }
        assert_eq!(sender.must_wait_for(0, 10), Some(0));
        assert_eq!(sender.must_wait_for(1, 10), None, "one answered, one may go");
        assert_eq!(sender.unanswered.len() as u64, IN_FLIGHT_MAX - 1);
    }

    #[test]
    fn requests_wait_for_replies_past_the_byte_bound_and_a_large_one_goes_alone() {
        let mut sender = sender();
        let quarter = IN_FLIGHT_BYTES_MAX / 4;
        for _ in 0..4 {
            assert_eq!(sender.must_wait_for(0, quarter), None);
            sent(&mut sender, quarter);
        }
        assert_eq!(sender.must_wait_for(0, 1), Some(0), "the bytes are spent");
        assert_eq!(sender.must_wait_for(2, 1), None, "two answered: half the bytes back");
        assert_eq!(sender.unanswered_bytes, 2 * quarter);
        // A frame over the whole bound waits for every unanswered request, then goes alone.
        assert_eq!(sender.must_wait_for(2, IN_FLIGHT_BYTES_MAX + 1), Some(2));
        assert_eq!(sender.must_wait_for(3, IN_FLIGHT_BYTES_MAX + 1), Some(3));
        assert_eq!(sender.must_wait_for(4, IN_FLIGHT_BYTES_MAX + 1), None);
        assert_eq!(sender.unanswered_bytes, 0);
    }
}
