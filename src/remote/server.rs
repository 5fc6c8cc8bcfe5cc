//! The owner's side: a listener on [`SOCKET_FILE`] in the queue directory, a thread per connected process. Each
//! request is served by the owner's own [`Queue`] API, so a served call means exactly what the local call means.
//!
//! The server never keeps the queue open: its threads hold a [`WeakQueue`] and upgrade it per request, and the
//! deliveries a client took are kept as (group, offset, token), not as `Delivery` values. When a connection ends
//! (the client closed it, died, or sent a malformed frame), every delivery it still held is released at once, as a
//! dropped `Delivery` is.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::protocol::{
    self, Answer, GroupOp, Malformed, RefusalCode, Reply, Request, WireDelivery, BATCH_COUNT_MAX, FRAME_HEADER_BYTES,
    PROTOCOL_VERSION, PROTOCOL_VERSION_OLDEST, TAKE_WAIT_MS_MAX,
};
use super::{Sharing, SOCKET_FILE, SOCKET_PATH_BYTES_MAX};
use crate::error::{Error, Result};
use crate::group::LeaseToken;
use crate::message::Offset;
use crate::queue::{Queue, WeakQueue};

/// Most processes served at once; one more is refused at the handshake ([`Error::Refused`]).
pub(crate) const CLIENTS_MAX: usize = 256;

/// Most bytes of keys and values one read reply carries (at least one record is always sent).
const READ_REPLY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long a new connection may take to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes counted per record or delivery beyond its key and value, towards a reply's size.
const ITEM_OVERHEAD_BYTES: usize = 64;

/// The owner's server: stopped (and its socket removed) when the queue closes.
#[derive(Debug)]
pub(crate) struct Server {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    /// The queue directory, where the socket is removed on stop (by descriptor: the path may have changed).
    dir_file: File,
}

/// What the acceptor and the connection threads share.
#[derive(Debug)]
struct Shared {
    stopping: AtomicBool,
    listener: UnixListener,
    /// The live connections, to be shut down on stop (which ends their threads).
    connections: Mutex<HashMap<u64, UnixStream>>,
    next_connection: AtomicU64,
    access: Access,
    queue: WeakQueue,
    queue_id: String,
    dir: PathBuf,
}

/// Who may connect: the owner's user, and members (primary group) of one group if the builder named it.
#[derive(Debug, Clone, Copy)]
struct Access {
    uid: u32,
    gid: Option<u32>,
}

impl Access {
    fn permits(&self, peer: &rustix::net::UCred) -> bool {
        peer.uid.as_raw() == self.uid || self.gid.is_some_and(|gid| peer.gid.as_raw() == gid)
    }
}

impl Server {
    /// Binds the socket (mode 0600, or 0660 and the named group) and starts accepting. A stale socket of an owner
    /// that died is replaced: this open holds the queue's lock, so no other owner is alive.
    ///
    /// The socket is bound, restricted and given its group inside a new directory only this process may enter,
    /// then renamed into place: no one can swap it for a symlink between the bind and the `chmod`, and a client
    /// never finds a socket that is not yet restricted.
    pub(crate) fn start(dir: &Path, sharing: Sharing, queue: WeakQueue, queue_id: &str) -> Result<Server> {
        let dir_file = File::open(dir).map_err(|e| Error::io("open queue directory", dir, e))?;
        let gid = match sharing {
            Sharing::ServeGroup { gid } => Some(gid),
            _ => None,
        };
        remove_leftover_binds(dir, &dir_file);
        let private_name = format!("{SOCKET_FILE}.{}.{:016x}", std::process::id(), crate::ids::new_file_id());
        let bound = bind_privately(&dir_file, &private_name, &dir.join(&private_name), gid);
        remove_bind_directory(&dir_file, &private_name);
        let listener = bound.map_err(|e| Error::io("prepare the queue's socket", dir.join(SOCKET_FILE), e))?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            listener,
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            access: Access { uid: rustix::process::geteuid().as_raw(), gid },
            queue,
            queue_id: queue_id.to_owned(),
            dir: dir.to_path_buf(),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("walq-serve".into())
                .spawn(move || accept_loop(&shared))
                .map_err(|e| Error::io("start the queue's server thread", dir, e))?
        };
        Ok(Server { shared, acceptor: Some(acceptor), dir_file })
    }

    /// The connections served now.
    pub(crate) fn clients(&self) -> usize {
        lock(&self.shared.connections).len()
    }

    /// Stops serving: the socket is removed (a process that opens the queue from now on finds no owner), the
    /// acceptor ends, and every connection is shut down; their threads release what their clients held and end
    /// on their own (one may be the thread running this, dropping the queue's last handle). A request being
    /// served when this runs finishes first on its thread (it holds the queue while it runs; a take waits for
    /// messages without holding it).
    pub(crate) fn stop(mut self) {
        let _ = rustix::fs::unlinkat(&self.dir_file, SOCKET_FILE, rustix::fs::AtFlags::empty());
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor from `accept` (Linux: a listening socket shut down for reading returns EINVAL).
        let _ = rustix::net::shutdown(&self.shared.listener, rustix::net::Shutdown::Both);
        if let Some(acceptor) = self.acceptor.take() {
            if acceptor.thread().id() != std::thread::current().id() {
                let _ = acceptor.join();
            }
        }
        for stream in lock(&self.shared.connections).values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Removes the private directories (`walq.sock.<pid>.<hex>/`) of owners that died between binding their socket and
/// renaming it into place. Only an owner makes them, and this one holds the queue's lock: any found is a
/// leftover. Best effort: one that cannot be removed is in nobody's way.
fn remove_leftover_binds(dir: &Path, dir_file: &File) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str().filter(|name| is_bind_directory_name(name)) {
            remove_bind_directory(dir_file, name);
        }
    }
}

/// Whether `name` is exactly what an owner names its private bind directory: `walq.sock.<pid>.<16 hex digits>`.
fn is_bind_directory_name(name: &str) -> bool {
    let Some((pid, id)) = name.strip_prefix(SOCKET_FILE).and_then(|rest| rest.strip_prefix('.')?.split_once('.'))
    else {
        return false;
    };
    let pid_ok = !pid.is_empty() && pid.len() <= 10 && pid.bytes().all(|b| b.is_ascii_digit());
    pid_ok && id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes the bind directory `name` of the queue directory `dir_file` and the socket in it. Every step is
/// relative to a descriptor opened without following symlinks: whoever may write the queue directory (a member
/// of a served group) could otherwise swap the directory for a symlink and have the owner unlink another
/// queue's socket.
fn remove_bind_directory(dir_file: &File, name: &str) {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if let Ok(bind_dir) = rustix::fs::openat(dir_file, name, flags, Mode::empty()) {
        let _ = rustix::fs::unlinkat(&bind_dir, SOCKET_FILE, AtFlags::empty());
    }
    // `rmdir` of a symlink fails (ENOTDIR): nothing is removed through one.
    let _ = rustix::fs::unlinkat(dir_file, name, AtFlags::REMOVEDIR);
}

/// Binds a listener at `walq.sock` in a new directory `private_name` of mode 0700 in the queue directory `dir_file`,
/// restricts it (0600, or 0660 and group `gid`), and renames it to `walq.sock` in the queue directory.
///
/// Every step after the `mkdirat` goes through a descriptor of the private directory, opened without following
/// symlinks and checked to be this user's own 0700 directory: whoever may write the queue directory (a member of a
/// served group) can rename or replace entries there, but not enter this one, so the socket that is restricted and
/// renamed is the one bound here. The bind itself names the directory by `/proc/self/fd/N` (which also keeps a
/// long queue path within a socket address); `fallback`, the same directory by path, serves where `/proc` is not
/// mounted.
fn bind_privately(dir_file: &File, private_name: &str, fallback: &Path, gid: Option<u32>) -> io::Result<UnixListener> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    rustix::fs::mkdirat(dir_file, private_name, Mode::RWXU)?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let private = rustix::fs::openat(dir_file, private_name, flags, Mode::empty())?;
    let stat = rustix::fs::fstat(&private)?;
    if stat.st_uid != rustix::process::geteuid().as_raw() || (stat.st_mode & 0o077) != 0 {
        // Not the directory just made: someone replaced it between the two calls.
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the private bind directory was replaced"));
    }
    let listener = match UnixListener::bind(format!("/proc/self/fd/{}/{SOCKET_FILE}", private.as_raw_fd())) {
        Err(error) if error.kind() == io::ErrorKind::NotFound && fits_socket_address(fallback) => {
            UnixListener::bind(fallback.join(SOCKET_FILE))?
        }
        bound => bound?,
    };
    let bound = rustix::fs::statat(&private, SOCKET_FILE, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(bound.st_mode) != FileType::Socket {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the bound socket was replaced"));
    }
    let mode = if gid.is_some() { Mode::RUSR | Mode::WUSR | Mode::RGRP | Mode::WGRP } else { Mode::RUSR | Mode::WUSR };
    rustix::fs::chmodat(&private, SOCKET_FILE, mode, AtFlags::empty())?;
    if let Some(gid) = gid {
        let gid = rustix::process::Gid::from_raw(gid);
        rustix::fs::chownat(&private, SOCKET_FILE, None, Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
    }
    rustix::fs::renameat(&private, SOCKET_FILE, dir_file, SOCKET_FILE)?;
    Ok(listener)
}

/// Whether a socket `walq.sock` in `dir` has a path short enough for a socket address.
fn fits_socket_address(dir: &Path) -> bool {
    dir.as_os_str().len() + 1 + SOCKET_FILE.len() <= SOCKET_PATH_BYTES_MAX
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(shared: &Arc<Shared>) {
    loop {
        let accepted = shared.listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                // EMFILE and the like: nothing this loop can fix at once; retried after a pause, not spun on.
                tracing::warn!(dir = %shared.dir.display(), %error, "accepting a connection failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Refused before a thread or a buffer is spent on it. The refusal answers the hello the client sends
        // first; it is a few bytes, which a new socket's buffer always takes.
        let permitted = rustix::net::sockopt::socket_peercred(&stream).is_ok_and(|peer| shared.access.permits(&peer));
        let refusal = if !permitted {
            Some(RefusalCode::NotPermitted)
        } else if lock(&shared.connections).len() >= CLIENTS_MAX {
            Some(RefusalCode::TooManyClients)
        } else {
            None
        };
        if let Some(code) = refusal {
            let mut frame = Vec::new();
            protocol::encode_reply(&mut frame, &Reply::Refused { code, version: PROTOCOL_VERSION });
            let _ = stream.set_nonblocking(true);
            let _ = (&stream).write_all(&frame);
            continue;
        }
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let Ok(registered) = stream.try_clone() else { continue }; // out of descriptors: the client sees a close
        lock(&shared.connections).insert(id, registered);
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new().name("walq-serve-conn".into()).spawn(move || {
            serve_connection(&thread_shared, stream);
            lock(&thread_shared.connections).remove(&id);
        });
        if spawned.is_err() {
            lock(&shared.connections).remove(&id);
        }
    }
}

/// A connection's reading and writing, with the buffers it reuses.
struct Wire {
    /// Reads requests; its stream writes replies (`&UnixStream` writes).
    reader: BufReader<UnixStream>,
    body: Vec<u8>,
    out: Vec<u8>,
}

/// Buffer capacity a connection keeps between requests; a larger frame's buffer is given back after it.
const BUFFER_BYTES_KEPT: usize = 1024 * 1024;

impl Wire {
    /// Reads the next frame into `body`; its kind, or `Ok(None)` when the client closed the connection between
    /// frames (or an I/O error ended it). A header past the protocol's limits ends the connection. The body
    /// grows with the bytes that arrive, not with the length a header claims.
    fn next_frame(&mut self) -> std::result::Result<Option<u8>, Malformed> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if self.reader.read_exact(&mut header).is_err() {
            return Ok(None);
        }
        let (body_bytes, kind) = protocol::decode_frame_header(header)?;
        self.body.clear();
        let read = if body_bytes <= self.body.capacity() {
            // Room that bytes received earlier paid for: one exact read.
            self.body.resize(body_bytes, 0);
            self.reader.read_exact(&mut self.body)
        } else {
            (&mut self.reader).take(body_bytes as u64).read_to_end(&mut self.body).map(drop)
        };
        if read.is_err() || self.body.len() != body_bytes {
            return Ok(None);
        }
        Ok(Some(kind))
    }

    fn queue_reply(&mut self, reply: &Reply) {
        protocol::encode_reply(&mut self.out, reply);
    }

    /// Sends what is queued unless a whole next request is already read (pipelined requests share one write) and
    /// what is queued is still small. A request only partly read does not hold the replies before it: its rest may
    /// be long in coming.
    fn flush_if_idle(&mut self) -> io::Result<()> {
        if !next_frame_is_whole(self.reader.buffer()) || self.out.len() >= READ_REPLY_BYTES_MAX {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        super::send_all(self.reader.get_ref(), &self.out)?;
        self.out.clear();
        self.out.shrink_to(BUFFER_BYTES_KEPT);
        self.body.shrink_to(BUFFER_BYTES_KEPT);
        Ok(())
    }
}

/// Whether `buffered` starts with a whole frame (header and body), one a read would serve without waiting.
fn next_frame_is_whole(buffered: &[u8]) -> bool {
    let Some(header) = buffered.first_chunk::<FRAME_HEADER_BYTES>() else { return false };
    match protocol::decode_frame_header(*header) {
        Ok((body_bytes, _)) => buffered.len() - FRAME_HEADER_BYTES >= body_bytes,
        // Malformed: the read that follows ends the connection at once.
        Err(_) => true,
    }
}

/// The deliveries a connection holds, by group and offset: released when it ends.
#[derive(Default)]
struct Held {
    leases: HashMap<String, HashMap<u64, u128>>,
}

impl Held {
    /// Whether this connection holds the lease `token` on `offset`; it does not any more after this (an answer
    /// ends the hold whatever it does to the lease), unless `keep`.
    fn take(&mut self, group: &str, offset: u64, token: u128, keep: Keep) -> bool {
        let Some(leases) = self.leases.get_mut(group) else { return false };
        if leases.get(&offset) != Some(&token) {
            return false;
        }
        if keep == Keep::Release {
            leases.remove(&offset);
        }
        true
    }
}

/// Whether an answer ends a connection's hold on a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Hold,
    Release,
}

fn serve_connection(shared: &Shared, stream: UnixStream) {
    let mut wire = Wire { reader: BufReader::new(stream), body: Vec::new(), out: Vec::new() };
    if !handshake(shared, &mut wire) {
        return;
    }
    let mut held = Held::default();
    loop {
        let served = match wire.next_frame() {
            Ok(Some(kind)) => serve_frame(shared, kind, &mut held, &mut wire),
            Ok(None) => break,
            Err(malformed) => Err(malformed),
        };
        match served {
            Ok(true) => {}
            Ok(false) => break,
            Err(Malformed(what)) => {
                tracing::warn!(dir = %shared.dir.display(), what, "a client sent a malformed frame; its connection is closed");
                break;
            }
        }
        if wire.flush_if_idle().is_err() {
            break;
        }
    }
    release_all(shared, held);
}

/// Reads the client's hello (a frame of exactly its size, within [`HANDSHAKE_TIMEOUT`] a read: a hello is 11
/// bytes, so a client trickling them holds the thread a bounded time) and answers it; `false` ends the
/// connection. Credentials and the count of clients were checked when it was accepted.
fn handshake(shared: &Shared, wire: &mut Wire) -> bool {
    if wire.reader.get_ref().set_read_timeout(Some(HANDSHAKE_TIMEOUT)).is_err() {
        return false;
    }
    let mut hello = [0u8; FRAME_HEADER_BYTES + HELLO_BODY_BYTES];
    if wire.reader.read_exact(&mut hello).is_err() {
        return false;
    }
    let version = match protocol::decode_frame_header(*hello.first_chunk().expect("a header's bytes")) {
        Ok((HELLO_BODY_BYTES, kind)) => match protocol::decode_request(kind, &hello[FRAME_HEADER_BYTES..]) {
            Ok(Request::Hello { version }) => version,
            _ => return false,
        },
        _ => return false, // not a walq client
    };
    // Every version from the oldest on is served: what a later one added, an earlier client never sends.
    let served = (PROTOCOL_VERSION_OLDEST..=PROTOCOL_VERSION).contains(&version);
    let reply = if served {
        Reply::Welcome { version, owner_pid: std::process::id(), queue_id: shared.queue_id.clone() }
    } else {
        Reply::Refused { code: RefusalCode::Version, version: PROTOCOL_VERSION }
    };
    wire.queue_reply(&reply);
    let sent = wire.flush().is_ok();
    sent && served && wire.reader.get_ref().set_read_timeout(None).is_ok()
}

/// The body of a hello: magic and version.
const HELLO_BODY_BYTES: usize = 4 + 2;

/// Serves the frame in `wire.body`; `Ok(false)` once the queue is gone (every handle dropped).
fn serve_frame(shared: &Shared, kind: u8, held: &mut Held, wire: &mut Wire) -> std::result::Result<bool, Malformed> {
    if protocol::is_append(kind) {
        let Some(queue) = shared.queue.upgrade() else { return Ok(false) };
        // Appended from the frame's bytes: no copy of a message, no allocation per message.
        let appended = protocol::decode_append(&wire.body)?;
        let reply = match queue.append_parts(&appended.parts()) {
            Ok(first) => Reply::Appended { first: first.0 },
            Err(error) => Reply::Failed(error),
        };
        protocol::encode_reply(&mut wire.out, &reply);
        return Ok(true);
    }
    match protocol::decode_request(kind, &wire.body)? {
        // Upgrades the queue itself, only while it takes: its wait holds no strong reference.
        Request::Take { group, max, wait_ms } => Ok(take(shared, &group, max, wait_ms, held, wire)),
        Request::Read { from, max_count, max_bytes, wait_ms } if wait_ms > 0 => {
            Ok(read_waiting(shared, from, max_count, max_bytes, wait_ms, wire))
        }
        request => {
            let Some(queue) = shared.queue.upgrade() else { return Ok(false) };
            serve(&queue, request, held, wire);
            Ok(true)
        }
    }
}

/// Serves one request with the owner's queue; the reply (or replies) are queued on `wire`.
fn serve(queue: &Queue, request: Request, held: &mut Held, wire: &mut Wire) {
    let reply = match request {
        Request::Hello { .. } => Reply::Failed(Error::Io {
            operation: "a second handshake on one connection",
            path: queue.dir().to_path_buf(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        }),
        Request::Read { from, max_count, max_bytes, .. } => read(queue, from, max_count, max_bytes),
        Request::Stats => match serde_json::to_vec(&queue.stats()) {
            Ok(json) => Reply::StatsJson { json },
            Err(source) => Reply::Failed(Error::Json { source }),
        },
        Request::Append { .. } | Request::Take { .. } => unreachable!("served by serve_frame"),
        Request::Answer { group, offset, token, answer } => answer_one(queue, &group, offset, token, answer, held),
        Request::AckAll { group, leases } => ack_all(queue, &group, &leases, held),
        Request::GroupAdmin { group, op } => group_admin(queue, &group, op),
    };
    wire.queue_reply(&reply);
}

/// A read that waits up to `wait_ms` for a record at `from` or later when there is none yet (a follow's). The
/// queue is upgraded only while it reads: the wait, on the signal appends bump, holds no strong reference, so that
/// the owner's last handle still closes the queue. `false` once the queue is gone.
fn read_waiting(shared: &Shared, from: u64, max_count: u32, max_bytes: u32, wait_ms: u32, wire: &mut Wire) -> bool {
    let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms.min(TAKE_WAIT_MS_MAX)));
    loop {
        let Some(queue) = shared.queue.upgrade() else { return false };
        let signal = queue.append_signal();
        let seen = signal.current();
        let reply = read(&queue, from, max_count, max_bytes);
        let now = Instant::now();
        if !matches!(&reply, Reply::Records { records, .. } if records.is_empty()) || now >= deadline {
            wire.queue_reply(&reply);
            return true;
        }
        drop(queue);
        signal.wait_past(seen, deadline.min(now + TAKE_WAIT_SLICE));
    }
}

fn read(queue: &Queue, from: u64, max_count: u32, max_bytes: u32) -> Reply {
    let reader = match queue.read_from(Offset(from)) {
        Ok(reader) => reader,
        Err(error) => return Reply::Failed(error),
    };
    let budget_bytes = (max_bytes as usize).min(READ_REPLY_BYTES_MAX);
    let (mut records, mut used_bytes, mut next) = (Vec::new(), 0usize, from);
    for record in reader.take((max_count as usize).min(BATCH_COUNT_MAX)) {
        let record = match record {
            Ok(record) => record,
            Err(error) if records.is_empty() => return Reply::Failed(error),
            Err(_) => break, // what came before is sent; the next read reports the error
        };
        // One more would pass the budget: it is the next read's (a record alone always fits a frame).
        if !records.is_empty() && used_bytes + item_bytes(&record) > budget_bytes {
            break;
        }
        used_bytes += item_bytes(&record);
        next = record.offset.0 + 1;
        records.push(record);
    }
    Reply::Records { next, records }
}

fn item_bytes(record: &crate::Record) -> usize {
    let headers: usize = record.headers.iter().map(|h| h.name.len() + h.value.len() + 8).sum();
    record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len) + headers + ITEM_OVERHEAD_BYTES
}

/// Takes up to `max` deliveries, waiting up to `wait_ms` for the first without holding the queue (its last user
/// handle may go meanwhile, and closes it then), and sends them in as many frames as their size needs, each but the
/// last saying more follow: no frame passes the protocol's limit, and the frames go out as they fill.
fn take(shared: &Shared, group_name: &str, max: u32, wait_ms: u32, held: &mut Held, wire: &mut Wire) -> bool {
    let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms.min(TAKE_WAIT_MS_MAX)));
    let max = (max as usize).min(BATCH_COUNT_MAX);
    let (group, deliveries) = loop {
        let Some(queue) = shared.queue.upgrade() else { return false };
        let group = match queue.existing_group(group_name) {
            Ok(group) => group,
            Err(error) => {
                wire.queue_reply(&Reply::Failed(error));
                return true;
            }
        };
        let (signal, next_timer) = group.wake_source();
        let seen = signal.current();
        let deliveries = match group.consumer().try_recv_batch_within(max, TAKE_BYTES_MAX) {
            Ok(deliveries) => deliveries,
            Err(error) => {
                wire.queue_reply(&Reply::Failed(error));
                return true;
            }
        };
        let now = Instant::now();
        if !deliveries.is_empty() || now >= deadline {
            break (group, deliveries);
        }
        drop((group, queue));
        let wake = [Some(deadline), next_timer, Some(now + TAKE_WAIT_SLICE)].into_iter().flatten().min();
        signal.wait_past(seen, wake.expect("the deadline is always there"));
    };
    let max_deliveries = group.max_deliveries();
    let leases = held.leases.entry(group_name.to_owned()).or_default();
    let (mut frame, mut frame_bytes) = (Vec::new(), 0);
    for delivery in deliveries {
        let (record, attempt, token) = delivery.into_held();
        leases.insert(record.offset.0, token.to_u128());
        let bytes = item_bytes(&record);
        if !frame.is_empty() && frame_bytes + bytes > READ_REPLY_BYTES_MAX {
            wire.queue_reply(&Reply::Deliveries { deliveries: std::mem::take(&mut frame), more: true });
            frame_bytes = 0;
            if wire.flush().is_err() {
                return false; // the connection is gone: what it held is released
            }
        }
        frame_bytes += bytes;
        frame.push(WireDelivery { attempt, last_attempt: attempt >= max_deliveries, token: token.to_u128(), record });
    }
    wire.queue_reply(&Reply::Deliveries { deliveries: frame, more: false });
    true
}

/// Bytes of messages one take leases at most (the message that passes it is taken): a client asking for 100,000
/// messages of a megabyte each cannot make the owner hold 100 GB. The client's take returns fewer than it asked
/// for, as any take may.
const TAKE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Longest wait for messages between checks of the group's timers (as a local consumer's wait).
const TAKE_WAIT_SLICE: Duration = Duration::from_millis(50);

/// Answers a delivery. A lease this connection holds is answered as its `Delivery` would be (an ack after the
/// lease expired still counts); any other is answered as [`Group::ack`] and the answers by token are: an ack only
/// if the lease is current, and nothing else at all (nacks and dead letters report the lease ended, an extension
/// that it expired, a release nothing), so that no client changes another's deliveries.
fn answer_one(queue: &Queue, group_name: &str, offset: u64, token: u128, answer: Answer, held: &mut Held) -> Reply {
    let group = match queue.existing_group(group_name) {
        Ok(group) => group,
        Err(error) => return Reply::Failed(error),
    };
    let keep = if answer == Answer::ExtendLease { Keep::Hold } else { Keep::Release };
    let mine = held.take(group_name, offset, token, keep);
    let lease = LeaseToken::from_u128(token);
    let done = |result: Result<()>| match result {
        Ok(()) => Reply::Done,
        Err(error) => Reply::Failed(error),
    };
    let nacked = |result: Result<crate::Nacked>| match result {
        Ok(nacked) => Reply::Nacked(nacked),
        Err(error) => Reply::Failed(error),
    };
    match answer {
        Answer::Ack if mine => done(group.ack_held(offset, lease)),
        Answer::Ack => done(group.ack(Offset(offset), lease)),
        _ if !mine => match answer {
            Answer::ExtendLease => Reply::Failed(Error::LeaseExpired { offset: Offset(offset) }),
            Answer::Release => Reply::Done,
            _ => Reply::Nacked(crate::Nacked::LeaseEnded),
        },
        Answer::Nack { delay_ms } => {
            nacked(group.nack_held(offset, lease, Some(Duration::from_millis(delay_ms)), None))
        }
        Answer::Retry => nacked(group.nack_held(offset, lease, None, None)),
        Answer::Fail { reason } => nacked(group.nack_held(offset, lease, None, Some(reason))),
        Answer::DeadLetter { reason } => nacked(group.dead_letter_held(offset, lease, reason)),
        Answer::ExtendLease => done(group.extend_held(offset, lease)),
        Answer::Release => {
            group.release_held(offset, lease);
            Reply::Done
        }
    }
}

/// Acks many: the leases this connection holds in one commit, as `Consumer::ack_all`; any other only if its
/// lease is current (as [`Group::ack`]).
/// A lease on the wire: offset and token.
type Lease = (u64, u128);

fn ack_all(queue: &Queue, group_name: &str, leases: &[(u64, u128)], held: &mut Held) -> Reply {
    let group = match queue.existing_group(group_name) {
        Ok(group) => group,
        Err(error) => return Reply::Failed(error),
    };
    let holds = |offset: u64, token: u128| held.leases.get(group_name).is_some_and(|l| l.get(&offset) == Some(&token));
    let (mine, others): (Vec<Lease>, Vec<Lease>) = leases.iter().partition(|&&(offset, token)| holds(offset, token));
    // This connection's own first, in one commit; they leave its hold once that is done (a failure leaves them
    // held, to be released with the connection).
    let mut stale = Vec::new();
    let own: Vec<(u64, LeaseToken)> = mine.iter().map(|&(o, t)| (o, LeaseToken::from_u128(t))).collect();
    match group.ack_all_held(&own) {
        Ok(()) => {}
        Err(Error::StaleLeases { offsets }) => stale.extend(offsets),
        Err(error) => return Reply::Failed(error),
    }
    for &(offset, token) in &mine {
        held.take(group_name, offset, token, Keep::Release);
    }
    for (offset, token) in others {
        match group.ack(Offset(offset), LeaseToken::from_u128(token)) {
            Ok(()) => {}
            Err(Error::StaleLease { offset }) => stale.push(offset),
            Err(error) => return Reply::Failed(error),
        }
    }
    if stale.is_empty() {
        Reply::Done
    } else {
        stale.sort_unstable();
        Reply::Failed(Error::StaleLeases { offsets: stale })
    }
}

fn group_admin(queue: &Queue, name: &str, op: GroupOp) -> Reply {
    let value = match op {
        GroupOp::Delete => queue.delete_group(name).map(u64::from),
        GroupOp::Reset(to) => queue.reset_group(name, to).map(|floor| floor.0),
        GroupOp::Redrive { offset } => {
            queue.existing_group(name).and_then(|g| g.redrive(Offset(offset))).map(u64::from)
        }
        GroupOp::Discard { offset } => {
            queue.existing_group(name).and_then(|g| g.discard(Offset(offset))).map(u64::from)
        }
        GroupOp::Open => queue.group(name).map(|_| 0),
    };
    match value {
        Ok(value) => Reply::Value(value),
        Err(error) => Reply::Failed(error),
    }
}

/// Releases every delivery a connection still held, as dropping them would: each is delivered again at once.
fn release_all(shared: &Shared, held: Held) {
    if held.leases.values().all(HashMap::is_empty) {
        return;
    }
    let Some(queue) = shared.queue.upgrade() else { return }; // closed: delivered again after the next open
    for (name, leases) in held.leases {
        let Ok(group) = queue.existing_group(&name) else { continue }; // deleted: nothing to give back
        for (offset, token) in leases {
            group.release_held(offset, LeaseToken::from_u128(token));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_bind_directory_names_match() {
        assert!(is_bind_directory_name("walq.sock.4194303.00000000000000ab"));
        assert!(is_bind_directory_name("walq.sock.1.0123456789abcdef"));
        for name in [
            "walq.sock",
            "walq.sock.",
            "walq.sock.12",
            "walq.sock.12.abc",
            "walq.sock..0123456789abcdef",
            "walq.sock.x1.0123456789abcdef",
            "walq.sock.1.0123456789abcdeg",
            "walq.sock.1.0123456789abcdef0",
            "walq.sock.12345678901.0123456789abcdef",
            "walq.sockets.1.0123456789abcdef",
        ] {
            assert!(!is_bind_directory_name(name), "{name}");
        }
    }

    #[test]
    fn replies_wait_only_for_a_whole_next_request() {
        let mut two = Vec::new();
        protocol::encode_request(&mut two, &Request::Stats);
        let one_bytes = two.len();
        protocol::encode_request(&mut two, &Request::Stats);
        assert!(next_frame_is_whole(&two));
        assert!(next_frame_is_whole(&two[..one_bytes]));
        for cut in 0..one_bytes {
            assert!(!next_frame_is_whole(&two[..cut]), "{cut} bytes of a frame");
        }
        // A header that cannot be served is read at once (and ends the connection).
        assert!(next_frame_is_whole(&[0xff, 0xff, 0xff, 0xff, 1]));
    }
}
