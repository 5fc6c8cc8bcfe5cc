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
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::protocol::{
    self, Answer, GroupOp, Malformed, RefusalCode, Reply, Request, WireDelivery, BATCH_COUNT_MAX, FRAME_BYTES_MAX,
    FRAME_HEADER_BYTES, PROTOCOL_VERSION, TAKE_WAIT_MS_MAX,
};
use super::{socket_address, Sharing, SOCKET_FILE};
use crate::error::{Error, Result};
use crate::group::{Group, LeaseToken};
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
    socket_path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    /// Keeps the directory open while its `/proc/self/fd` path names the socket (a directory path too long for a
    /// socket address).
    _dir: File,
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
    pub(crate) fn start(dir: &Path, sharing: Sharing, queue: WeakQueue, queue_id: &str) -> Result<Server> {
        let dir_file = File::open(dir).map_err(|e| Error::io("open queue directory", dir, e))?;
        let base = socket_address(dir, &dir_file);
        let temp = base.join(format!("{SOCKET_FILE}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&temp); // left by a process of this pid that died
        let listener = UnixListener::bind(&temp).map_err(|e| Error::io("bind the queue's socket", &temp, e))?;
        let gid = match sharing {
            Sharing::ServeGroup { gid } => Some(gid),
            _ => None,
        };
        let prepared = (|| {
            let mode = if gid.is_some() { 0o660 } else { 0o600 };
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
            if gid.is_some() {
                std::os::unix::fs::chown(&temp, None, gid)?;
            }
            // In place at once, whole: a client never finds a socket that is not yet restricted.
            std::fs::rename(&temp, base.join(SOCKET_FILE))
        })();
        if let Err(error) = prepared {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::io("prepare the queue's socket", dir.join(SOCKET_FILE), error));
        }
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
        Ok(Server { socket_path: base.join(SOCKET_FILE), shared, acceptor: Some(acceptor), _dir: dir_file })
    }

    /// Stops serving: the socket is removed (a process that opens the queue from now on finds no owner), the
    /// acceptor ends, and every connection is shut down; their threads release what their clients held and end
    /// on their own (one may be the thread running this, dropping the queue's last handle).
    pub(crate) fn stop(mut self) {
        let _ = std::fs::remove_file(&self.socket_path);
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
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let registered = stream.try_clone().map(|clone| lock(&shared.connections).insert(id, clone));
        if registered.is_err() {
            continue; // out of descriptors: the client sees its connection closed
        }
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
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    body: Vec<u8>,
    out: Vec<u8>,
}

impl Wire {
    /// Reads the next frame into `body`; its kind, or `Ok(None)` when the client closed the connection between
    /// frames (or an I/O error ended it). A header past the protocol's limits ends the connection.
    fn next_frame(&mut self) -> std::result::Result<Option<u8>, Malformed> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if self.reader.read_exact(&mut header).is_err() {
            return Ok(None);
        }
        let (body_bytes, kind) = protocol::decode_frame_header(header)?;
        self.body.resize(body_bytes, 0);
        if self.reader.read_exact(&mut self.body).is_err() {
            return Ok(None);
        }
        Ok(Some(kind))
    }

    /// The next request, decoded whole (see [`Wire::next_frame`]).
    fn next_request(&mut self) -> std::result::Result<Option<Request>, Malformed> {
        match self.next_frame()? {
            Some(kind) => protocol::decode_request(kind, &self.body).map(Some),
            None => Ok(None),
        }
    }

    fn queue_reply(&mut self, reply: &Reply) {
        protocol::encode_reply(&mut self.out, reply);
    }

    /// Sends what is queued once the client has nothing more in flight (pipelined requests share one write).
    fn flush_if_idle(&mut self) -> io::Result<()> {
        if self.reader.buffer().is_empty() || self.out.len() >= FRAME_BYTES_MAX {
            self.writer.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }
}

/// The deliveries a connection holds: released when it ends.
#[derive(Default)]
struct Held {
    leases: HashMap<(Arc<str>, u64), u128>,
}

fn serve_connection(shared: &Shared, stream: UnixStream) {
    let Ok(writer) = stream.try_clone() else { return };
    let mut wire = Wire { reader: BufReader::new(stream), writer, body: Vec::new(), out: Vec::new() };
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

/// Checks the peer's credentials and protocol version; `false` ends the connection. A client gets
/// [`HANDSHAKE_TIMEOUT`] to say hello, so that a silent connection does not hold a thread.
fn handshake(shared: &Shared, wire: &mut Wire) -> bool {
    let permitted = rustix::net::sockopt::socket_peercred(&wire.writer).is_ok_and(|peer| shared.access.permits(&peer));
    if wire.writer.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).is_err() {
        return false;
    }
    let version = match wire.next_request() {
        Ok(Some(Request::Hello { version })) => version,
        _ => return false, // not a walq client
    };
    let refusal = if !permitted {
        Some(RefusalCode::NotPermitted)
    } else if version != PROTOCOL_VERSION {
        Some(RefusalCode::Version)
    } else if lock(&shared.connections).len() > CLIENTS_MAX {
        Some(RefusalCode::TooManyClients)
    } else {
        None
    };
    let reply = match refusal {
        Some(code) => Reply::Refused { code, version: PROTOCOL_VERSION },
        None => Reply::Welcome {
            version: PROTOCOL_VERSION,
            owner_pid: std::process::id(),
            queue_id: shared.queue_id.clone(),
        },
    };
    wire.queue_reply(&reply);
    let sent = wire.flush_if_idle().is_ok();
    sent && refusal.is_none() && wire.writer.set_read_timeout(None).is_ok()
}

/// Serves the frame in `wire.body`; `Ok(false)` once the queue is gone (every handle dropped).
fn serve_frame(shared: &Shared, kind: u8, held: &mut Held, wire: &mut Wire) -> std::result::Result<bool, Malformed> {
    let Some(queue) = shared.queue.upgrade() else { return Ok(false) };
    if protocol::is_append(kind) {
        // Appended from the frame's bytes: no copy of a message, no allocation per message.
        let appended = protocol::decode_append(&wire.body)?;
        let reply = match queue.append_parts(&appended.parts()) {
            Ok(first) => Reply::Appended { first: first.0 },
            Err(error) => Reply::Failed(error),
        };
        protocol::encode_reply(&mut wire.out, &reply);
    } else {
        let request = protocol::decode_request(kind, &wire.body)?;
        serve(&queue, request, held, wire);
    }
    Ok(true)
}

/// Serves one request with the owner's queue; the reply (or replies) are queued on `wire`.
fn serve(queue: &Queue, request: Request, held: &mut Held, wire: &mut Wire) {
    let reply = match request {
        Request::Hello { .. } => Reply::Failed(Error::Io {
            operation: "a second handshake on one connection",
            path: queue.dir().to_path_buf(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        }),
        Request::Append { messages } => match queue.append_batch(&messages) {
            Ok(first) => Reply::Appended { first: first.0 },
            Err(error) => Reply::Failed(error),
        },
        Request::Read { from, max_count, max_bytes } => read(queue, from, max_count, max_bytes),
        Request::Stats => match serde_json::to_vec(&queue.stats()) {
            Ok(json) => Reply::StatsJson { json },
            Err(source) => Reply::Failed(Error::Json { source }),
        },
        Request::Take { group, max, wait_ms } => return take(queue, &group, max, wait_ms, held, wire),
        Request::Answer { group, offset, token, answer } => answer_one(queue, &group, offset, token, answer, held),
        Request::AckAll { group, leases } => ack_all(queue, &group, &leases, held),
        Request::GroupAdmin { group, op } => group_admin(queue, &group, op),
    };
    wire.queue_reply(&reply);
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
        used_bytes += item_bytes(&record);
        next = record.offset.0 + 1;
        records.push(record);
        if used_bytes >= budget_bytes {
            break;
        }
    }
    Reply::Records { next, records }
}

fn item_bytes(record: &crate::Record) -> usize {
    let headers: usize = record.headers.iter().map(|h| h.name.len() + h.value.len() + 8).sum();
    record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len) + headers + ITEM_OVERHEAD_BYTES
}

/// Takes up to `max` deliveries and sends them in as many frames as their size needs, each but the last saying
/// more follow: a batch of large messages never needs one frame larger than the protocol allows.
fn take(queue: &Queue, group_name: &str, max: u32, wait_ms: u32, held: &mut Held, wire: &mut Wire) {
    let taken = queue.group(group_name).and_then(|group| {
        let consumer = group.consumer();
        let max = (max as usize).min(BATCH_COUNT_MAX);
        let deliveries = match wait_ms.min(TAKE_WAIT_MS_MAX) {
            0 => consumer.try_recv_batch(max)?,
            wait_ms => consumer.recv_batch_timeout(max, Duration::from_millis(u64::from(wait_ms)))?,
        };
        Ok((group, deliveries))
    });
    let (group, deliveries) = match taken {
        Ok(taken) => taken,
        Err(error) => return wire.queue_reply(&Reply::Failed(error)),
    };
    let name: Arc<str> = Arc::from(group_name);
    let max_deliveries = group.max_deliveries();
    let mut frame = Vec::new();
    let mut frame_bytes = 0;
    let count = deliveries.len();
    for (index, delivery) in deliveries.into_iter().enumerate() {
        let (record, attempt, token) = delivery.into_held();
        held.leases.insert((name.clone(), record.offset.0), token.to_u128());
        frame_bytes += item_bytes(&record);
        frame.push(WireDelivery { attempt, last_attempt: attempt >= max_deliveries, token: token.to_u128(), record });
        let last = index + 1 == count;
        if !last && frame_bytes >= READ_REPLY_BYTES_MAX {
            wire.queue_reply(&Reply::Deliveries { deliveries: std::mem::take(&mut frame), more: true });
            frame_bytes = 0;
        }
    }
    wire.queue_reply(&Reply::Deliveries { deliveries: frame, more: false });
}

fn answer_one(queue: &Queue, group_name: &str, offset: u64, token: u128, answer: Answer, held: &mut Held) -> Reply {
    let group = match queue.existing_group(group_name) {
        Ok(group) => group,
        Err(error) => return Reply::Failed(error),
    };
    let lease = LeaseToken::from_u128(token);
    // Any answer ends this connection's hold, but for an extension: the lease is then the group's to judge.
    if answer != Answer::ExtendLease && held.leases.get(&(Arc::from(group_name), offset)) == Some(&token) {
        held.leases.remove(&(Arc::from(group_name), offset));
    }
    let done = |result: Result<()>| match result {
        Ok(()) => Reply::Done,
        Err(error) => Reply::Failed(error),
    };
    let nacked = |result: Result<crate::Nacked>| match result {
        Ok(nacked) => Reply::Nacked(nacked),
        Err(error) => Reply::Failed(error),
    };
    match answer {
        Answer::Ack => done(group.ack_held(offset, lease)),
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

fn ack_all(queue: &Queue, group_name: &str, leases: &[(u64, u128)], held: &mut Held) -> Reply {
    let group = match queue.existing_group(group_name) {
        Ok(group) => group,
        Err(error) => return Reply::Failed(error),
    };
    let name: Arc<str> = Arc::from(group_name);
    for &(offset, token) in leases {
        if held.leases.get(&(name.clone(), offset)) == Some(&token) {
            held.leases.remove(&(name.clone(), offset));
        }
    }
    let leases: Vec<(u64, LeaseToken)> =
        leases.iter().map(|&(offset, token)| (offset, LeaseToken::from_u128(token))).collect();
    match group.ack_all_held(&leases) {
        Ok(()) => Reply::Done,
        Err(error) => Reply::Failed(error),
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
    };
    match value {
        Ok(value) => Reply::Value(value),
        Err(error) => Reply::Failed(error),
    }
}

/// Releases every delivery a connection still held, as dropping them would: each is delivered again at once.
fn release_all(shared: &Shared, held: Held) {
    if held.leases.is_empty() {
        return;
    }
    let Some(queue) = shared.queue.upgrade() else { return }; // closed: delivered again after the next open
    let mut groups: HashMap<Arc<str>, Option<Group>> = HashMap::new();
    for ((name, offset), token) in held.leases {
        let group = groups.entry(name.clone()).or_insert_with(|| queue.existing_group(&name).ok());
        if let Some(group) = group {
            group.release_held(offset, LeaseToken::from_u128(token));
        }
    }
}
