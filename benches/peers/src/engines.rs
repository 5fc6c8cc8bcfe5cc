//! Each engine used as a FIFO queue, behind one small trait: append a payload, read everything back with an ack
//! (or the engine's nearest equivalent) every `ack_every` messages, reopen.
//!
//! Engines that need `&mut self` to append sit behind a `Mutex`: that is their concurrency model, and it shows in
//! the four-thread workload.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use redb::ReadableDatabase as _;

/// The engines compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Raw,
    Walq,
    WalqBuffered,
    Yaque,
    QueueFile,
    Commitlog,
    Okaywal,
    Sled,
    Fjall,
    Redb,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Raw,
        Kind::Walq,
        Kind::WalqBuffered,
        Kind::Yaque,
        Kind::QueueFile,
        Kind::Commitlog,
        Kind::Okaywal,
        Kind::Sled,
        Kind::Fjall,
        Kind::Redb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw file",
            Kind::Walq => "walq",
            Kind::WalqBuffered => "walq-buffered",
            Kind::Yaque => "yaque 0.6",
            Kind::QueueFile => "queue-file 2",
            Kind::Commitlog => "commitlog 0.2",
            Kind::Okaywal => "okaywal 0.3",
            Kind::Sled => "sled 0.34",
            Kind::Fjall => "fjall 3",
            Kind::Redb => "redb 4",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name().split(' ').next() == Some(name))
    }

    /// How the engine's own "durable" setting is reached, as read in its source and checked with strace.
    pub fn durable_mode(self) -> &'static str {
        match self {
            Kind::Raw => "pwrite + fdatasync",
            Kind::Walq => "Durability::GroupCommit",
            Kind::WalqBuffered => "Durability::GroupCommit (the buffer is for the no-fsync columns only)",
            Kind::Yaque => "none: no fsync in the crate; measured with syncfs(2) after each send",
            Kind::QueueFile => "set_sync_writes(true)",
            Kind::Commitlog => "flush() is File::flush, no fsync; measured with syncfs(2) after each append",
            Kind::Okaywal => "commit() (always fsyncs)",
            Kind::Sled => "Db::flush() after each insert",
            Kind::Fjall => "persist(PersistMode::SyncData) after each insert",
            Kind::Redb => "Durability::Immediate per write transaction",
        }
    }

    /// Whether the engine can append without an fsync at all.
    pub fn has_no_sync_mode(self) -> bool {
        self != Kind::Okaywal
    }
}

/// Whether appends must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// No fsync (data reaches the OS by the end of the workload).
    No,
    /// Durable when `append` returns.
    Durable,
}

/// A FIFO queue on disk.
pub trait Fifo: Send + std::marker::Sync {
    fn append(&self, payload: &[u8]) -> io::Result<()>;
    /// Appends many, as the engine's batch API does (only to build big queues; not timed).
    fn append_many(&self, payloads: &[Vec<u8>]) -> io::Result<()> {
        payloads.iter().try_for_each(|p| self.append(p))
    }
    /// Makes every append reach the OS (buffered writers); part of the timed no-fsync workloads.
    fn finish(&self) -> io::Result<()> {
        Ok(())
    }
    /// Reads every message back, oldest first, acking every `ack_every`; returns how many.
    fn read_all(&self, ack_every: u64) -> io::Result<u64>;
}

pub fn open(kind: Kind, dir: &Path, sync: Sync) -> io::Result<Box<dyn Fifo>> {
    std::fs::create_dir_all(dir)?;
    Ok(match kind {
        Kind::Raw => Box::new(Raw::open(dir, sync)?),
        Kind::Walq => Box::new(Walq::open(dir, sync, 0)?),
        Kind::WalqBuffered => Box::new(Walq::open(dir, sync, WALQ_BUFFER_BYTES)?),
        Kind::Yaque => Box::new(Yaque::open(dir, sync)?),
        Kind::QueueFile => Box::new(QueueFileFifo::open(dir, sync)?),
        Kind::Commitlog => Box::new(Commitlog::open(dir, sync)?),
        Kind::Okaywal => Box::new(Okaywal::open(dir)?),
        Kind::Sled => Box::new(Sled::open(dir, sync)?),
        Kind::Fjall => Box::new(Fjall::open(dir, sync)?),
        Kind::Redb => Box::new(Redb::open(dir, sync)?),
    })
}

fn other(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

/// `syncfs(2)` of the file system holding `dir`: the durability an engine without fsync can be given from outside.
fn syncfs(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let handle = File::open(dir)?;
    // SAFETY: a valid open descriptor; syncfs only reads it.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------------------------------
/// Size of the raw baseline's pre-sized file in durable mode.
const RAW_DURABLE_BYTES: u64 = 64 << 20;

/// The baseline: `[len u32][crc32 u32][payload]` frames; a `BufWriter` without sync, `pwrite` + `fdatasync` with.
struct Raw {
    path: PathBuf,
    sync: Sync,
    writer: Mutex<(BufWriter<File>, u64)>,
}

impl Raw {
    fn open(dir: &Path, sync: Sync) -> io::Result<Raw> {
        let path = dir.join("raw.log");
        let mut file = OpenOptions::new().create(true).write(true).read(true).open(&path)?;
        let end = file.metadata()?.len();
        io::Seek::seek(&mut file, io::SeekFrom::End(0))?;
        if sync == Sync::Durable {
            // The disk's fdatasync rate: on a pre-sized file, an fdatasync flushes data, not a growing size.
            file.set_len(RAW_DURABLE_BYTES)?;
            file.sync_all()?;
        }
        Ok(Raw { path, sync, writer: Mutex::new((BufWriter::with_capacity(256 * 1024, file), end)) })
    }

    /// Scans and verifies every frame: what reopening a plain log takes.
    /// The first record's length, read from the start of the file (a raw log has no end marker to look up).
    pub fn first(dir: &Path) -> io::Result<usize> {
        let file = File::open(dir.join("raw.log"))?;
        let mut head = [0u8; 8];
        file.read_exact_at(&mut head, 0)?;
        let len = u32::from_le_bytes(head[0..4].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        file.read_exact_at(&mut payload, 8)?;
        if crc32fast::hash(&payload) != u32::from_le_bytes(head[4..8].try_into().unwrap()) {
            return Err(other("raw log: the first record fails its checksum"));
        }
        Ok(len)
    }

    pub fn scan(dir: &Path) -> io::Result<u64> {
        let mut bytes = Vec::new();
        File::open(dir.join("raw.log"))?.read_to_end(&mut bytes)?;
        let mut at = 0;
        let mut count = 0;
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
            let Some(payload) = bytes.get(at + 8..at + 8 + len).filter(|_| len > 0) else { break };
            if crc32fast::hash(payload) != crc {
                break;
            }
            at += 8 + len;
            count += 1;
        }
        Ok(count)
    }
}

impl Fifo for Raw {
    fn append(&self, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        let mut writer = self.writer.lock().unwrap();
        match self.sync {
            Sync::No => writer.0.write_all(&frame),
            Sync::Durable => {
                let at = writer.1;
                writer.0.get_ref().write_all_at(&frame, at)?;
                writer.1 += frame.len() as u64;
                writer.0.get_ref().sync_data()
            }
        }
    }

    fn finish(&self) -> io::Result<()> {
        self.writer.lock().unwrap().0.flush()
    }

    fn read_all(&self, _ack_every: u64) -> io::Result<u64> {
        Raw::scan(self.path.parent().unwrap())
    }
}

// ---------------------------------------------------------------------------------------------------------------
struct Walq {
    queue: walq::Queue,
}

/// walq's write buffer in the `walq-buffered` row: the raw baseline's `BufWriter` size.
const WALQ_BUFFER_BYTES: usize = 256 * 1024;

impl Walq {
    /// `buffer_bytes` applies without fsync only (durable modes refuse a write buffer).
    fn open(dir: &Path, sync: Sync, buffer_bytes: usize) -> io::Result<Walq> {
        let (durability, buffer_bytes) = match sync {
            Sync::No => (walq::Durability::None, buffer_bytes),
            Sync::Durable => (walq::Durability::GroupCommit, 0),
        };
        let queue = walq::Queue::builder(dir.join("walq"))
            .durability(durability)
            .write_buffer_bytes(buffer_bytes)
            .open()
            .map_err(other)?;
        Ok(Walq { queue })
    }
}

impl Fifo for Walq {
    fn append(&self, payload: &[u8]) -> io::Result<()> {
        self.queue.append_bytes(payload).map(drop).map_err(other)
    }

    fn append_many(&self, payloads: &[Vec<u8>]) -> io::Result<()> {
        let batch: Vec<walq::Message> = payloads.iter().map(|p| walq::Message::new(p.clone())).collect();
        self.queue.append_batch(&batch).map(drop).map_err(other)
    }

    /// Without fsync, what a write buffer holds reaches the OS once a reader waits for it.
    fn finish(&self) -> io::Result<()> {
        let next = self.queue.stats().next_offset.0;
        if next > 0 {
            self.queue.wait_for(walq::Offset(next - 1), std::time::Duration::ZERO);
        }
        Ok(())
    }

    fn read_all(&self, ack_every: u64) -> io::Result<u64> {
        let consumer = self.queue.group("bench").map_err(other)?.consumer();
        let mut count = 0;
        loop {
            let batch = consumer.try_recv_batch(ack_every as usize).map_err(other)?;
            if batch.is_empty() {
                return Ok(count);
            }
            count += batch.len() as u64;
            consumer.ack_all(batch).map_err(other)?;
        }
    }
}

impl Drop for Walq {
    fn drop(&mut self) {
        let _ = self.queue.close();
    }
}

// ---------------------------------------------------------------------------------------------------------------
struct Yaque {
    dir: PathBuf,
    sync: Sync,
    sender: Mutex<Option<yaque::Sender>>,
}

impl Yaque {
    fn open(dir: &Path, sync: Sync) -> io::Result<Yaque> {
        let dir = dir.join("yaque");
        Ok(Yaque { dir, sync, sender: Mutex::new(None) })
    }

    fn with_sender<T>(&self, f: impl FnOnce(&mut yaque::Sender) -> io::Result<T>) -> io::Result<T> {
        let mut sender = self.sender.lock().unwrap();
        if sender.is_none() {
            *sender = Some(yaque::Sender::open(&self.dir)?);
        }
        f(sender.as_mut().unwrap())
    }
}

impl Fifo for Yaque {
    fn append(&self, payload: &[u8]) -> io::Result<()> {
        self.with_sender(|sender| sender.try_send(payload).map_err(other))?;
        if self.sync == Sync::Durable {
            syncfs(&self.dir)?;
        }
        Ok(())
    }

    fn append_many(&self, payloads: &[Vec<u8>]) -> io::Result<()> {
        self.with_sender(|sender| sender.try_send_batch(payloads).map_err(other))
    }

    fn read_all(&self, ack_every: u64) -> io::Result<u64> {
        drop(self.sender.lock().unwrap().take()); // one process: close the sender first
        let mut receiver = yaque::Receiver::open(&self.dir)?;
        let mut count = 0;
        loop {
            match receiver.try_recv_batch_up_to(ack_every as usize) {
                Ok(batch) => {
                    count += batch.len() as u64;
                    batch.commit()?;
                }
                Err(yaque::TryRecvError::QueueEmpty) => return Ok(count),
                Err(yaque::TryRecvError::Io(error)) => return Err(error),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
struct QueueFileFifo {
    queue: Mutex<queue_file::QueueFile>,
}

impl QueueFileFifo {
    fn open(dir: &Path, sync: Sync) -> io::Result<QueueFileFifo> {
        let mut queue = queue_file::QueueFile::open(dir.join("queue-file")).map_err(other)?;
        queue.set_sync_writes(sync == Sync::Durable);
        Ok(QueueFileFifo { queue: Mutex::new(queue) })
    }
}

impl Fifo for QueueFileFifo {
    fn append(&self, payload: &[u8]) -> io::Result<()> {
        self.queue.lock().unwrap().add(payload).map_err(other)
    }

    fn append_many(&self, payloads: &[Vec<u8>]) -> io::Result<()> {
        self.queue.lock().unwrap().add_n(payloads).map_err(other)
    }

    fn read_all(&self, ack_every: u64) -> io::Result<u64> {
        let mut queue = self.queue.lock().unwrap();
        let mut count = 0;
        loop {
            let taken = queue.iter().take(ack_every as usize).map(|m| m.len()).count();
            if taken == 0 {
                return Ok(count);
            }
            count += taken as u64;
            queue.remove_n(taken).map_err(other)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
struct Commitlog {
    dir: PathBuf,
    sync: Sync,
    log: Mutex<commitlog::CommitLog>,
}

impl Commitlog {
    fn open(dir: &Path, sync: Sync) -> io::Result<Commitlog> {
        let dir = dir.join("commitlog");
        let mut options = commitlog::LogOptions::new(&dir);
        options.segment_max_bytes(64 << 20).message_max_bytes(64 << 10);
        let log = commitlog::CommitLog::new(options)?;
        Ok(Commitlog { dir, sync, log: Mutex::new(log) })
    }
}

impl Fifo for Commitlog {
    fn append(&self, payload: &[u8]) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        log.append_msg(payload).map_err(other)?;
        if self.sync == Sync::Durable {
            log.flush()?; // what the crate offers: File::flush, no fsync (strace shows none) ...
            syncfs(&self.dir)?; // ... so the real one comes from outside
        }
        Ok(())
    }

    fn finish(&self) -> io::Result<()> {
        self.log.lock().unwrap().flush()
    }

    /// commitlog keeps no consumer position: reading is by offset, and there is nothing to ack.
    fn read_all(&self, _ack_every: u64) -> io::Result<u64> {
        use commitlog::message::MessageSet;
        let log = self.log.lock().unwrap();
        let mut offset = 0;
        let mut count = 0;
        loop {
            let messages = match log.read(offset, commitlog::ReadLimit::max_bytes(1 << 20)) {
                Ok(messages) => messages,
                Err(commitlog::ReadError::NoSuchSegment) => return Ok(count),
                Err(error) => return Err(other(format!("{error:?}"))),
            };
            let mut last = None;
            for message in messages.iter() {
                std::hint::black_box(message.payload());
                last = Some(message.offset());
                count += 1;
            }
            match last {
                Some(last) => offset = last + 1,
                None => return Ok(count),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
/// okaywal is a write-ahead log, not a queue: readers address chunks by position, so the positions are kept in
/// memory; its checkpointer is the "ack", and a reopen replays what was not checkpointed.
struct Okaywal {
    wal: okaywal::WriteAheadLog,
    positions: Mutex<Vec<okaywal::ChunkRecord>>,
}

#[derive(Debug, Default)]
pub struct CountingManager {
    pub recovered: std::sync::Arc<AtomicU64>,
}

impl okaywal::LogManager for CountingManager {
    fn recover(&mut self, entry: &mut okaywal::Entry<'_>) -> io::Result<()> {
        if let Some(chunks) = entry.read_all_chunks()? {
            self.recovered.fetch_add(chunks.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn checkpoint_to(
        &mut self,
        _last_checkpointed_id: okaywal::EntryId,
        _checkpointed_entries: &mut okaywal::SegmentReader,
        _wal: &okaywal::WriteAheadLog,
    ) -> io::Result<()> {
        Ok(())
    }
}

impl Okaywal {
    fn open(dir: &Path) -> io::Result<Okaywal> {
        // Its automatic checkpoint recycles segment files whose chunks a queue reader still needs: the reader
        // checkpoints instead, once it has read them.
        let wal = okaywal::Configuration::default_for(dir.join("okaywal"))
            .checkpoint_after_bytes(u64::MAX)
            .open(CountingManager::default())?;
        Ok(Okaywal { wal, positions: Mutex::new(Vec::new()) })
    }

    pub fn reopen(dir: &Path) -> io::Result<u64> {
        let manager = CountingManager::default();
        let recovered = manager.recovered.clone();
        let wal =
            okaywal::Configuration::default_for(dir.join("okaywal")).checkpoint_after_bytes(u64::MAX).open(manager)?;
        drop(wal);
        Ok(recovered.load(Ordering::Relaxed))
    }
}

impl Fifo for Okaywal {
    fn append(&self, payload: &[u8]) -> io::Result<()> {
        let mut entry = self.wal.begin_entry()?;
        let record = entry.write_chunk(payload)?;
        entry.commit()?;
        self.positions.lock().unwrap().push(record);
        Ok(())
    }

    fn append_many(&self, payloads: &[Vec<u8>]) -> io::Result<()> {
        let mut entry = self.wal.begin_entry()?;
        let mut records = Vec::with_capacity(payloads.len());
        for payload in payloads {
            records.push(entry.write_chunk(payload)?);
        }
        entry.commit()?;
        self.positions.lock().unwrap().extend(records);
        Ok(())
    }

    /// A checkpoint covers the whole active segment file, unread messages included: it cannot ack every 1,000,
    /// so it is taken once, after everything was read.
    fn read_all(&self, _ack_every: u64) -> io::Result<u64> {
        let positions = std::mem::take(&mut *self.positions.lock().unwrap());
        let mut buffer = Vec::new();
        for record in &positions {
            let mut reader = self.wal.read_at(record.position)?;
            buffer.resize(record.length as usize, 0);
            reader.read_exact(&mut buffer)?;
        }
        self.wal.checkpoint_active()?;
        Ok(positions.len() as u64)
    }
}

// ---------------------------------------------------------------------------------------------------------------
/// Key-value stores as queues: keys are a big-endian sequence number, values the payloads; the "ack" is a write of
/// the consumer's position under a key of its own every `ack_every` messages.
struct Sled {
    db: sled::Db,
    queue: sled::Tree,
    next: AtomicU64,
    sync: Sync,
}

impl Sled {
    fn open(dir: &Path, sync: Sync) -> io::Result<Sled> {
        let db = sled::open(dir.join("sled")).map_err(other)?;
        let queue = db.open_tree("queue").map_err(other)?;
        let next =
            queue.last().map_err(other)?.map_or(0, |(k, _)| u64::from_be_bytes(k.as_ref().try_into().unwrap()) + 1);
        Ok(Sled { db, queue, next: AtomicU64::new(next), sync })
    }
}

impl Fifo for Sled {
    fn append(&self, payload: &[u8]) -> io::Result<()> {
        let key = self.next.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        self.queue.insert(key, payload).map_err(other)?;
        if self.sync == Sync::Durable {
            self.db.flush().map_err(other)?;
        }
        Ok(())
    }

    fn read_all(&self, ack_every: u64) -> io::Result<u64> {
        let mut count = 0u64;
        for item in self.queue.iter() {
            let (key, value) = item.map_err(other)?;
            std::hint::black_box(value);
            count += 1;
            if count % ack_every == 0 {
                self.db.insert(b"consumer-position", key).map_err(other)?;
            }
        }
        Ok(count)
    }
}

struct Fjall {
    db: fjall::Database,
    queue: fjall::Keyspace,
    next: AtomicU64,
    sync: Sync,
}

impl Fjall {
    fn open(dir: &Path, sync: Sync) -> io::Result<Fjall> {
        let db = fjall::Database::builder(dir.join("fjall")).open().map_err(other)?;
        let queue = db.keyspace("queue", fjall::KeyspaceCreateOptions::default).map_err(other)?;
        let next = match queue.last_key_value() {
            Some(guard) => u64::from_be_bytes(guard.key().map_err(other)?.as_ref().try_into().unwrap()) + 1,
            None => 0,
        };
        Ok(Fjall { db, queue, next: AtomicU64::new(next), sync })
    }
}

impl Fifo for Fjall {
    fn append(&self, payload: &[u8]) -> io::Result<()> {
        let key = self.next.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        self.queue.insert(key, payload).map_err(other)?;
        if self.sync == Sync::Durable {
            self.db.persist(fjall::PersistMode::SyncData).map_err(other)?;
        }
        Ok(())
    }

    fn read_all(&self, ack_every: u64) -> io::Result<u64> {
        let positions = self.db.keyspace("positions", fjall::KeyspaceCreateOptions::default).map_err(other)?;
        let mut count = 0u64;
        for guard in self.queue.iter() {
            let (key, value) = guard.into_inner().map_err(other)?;
            std::hint::black_box(value);
            count += 1;
            if count % ack_every == 0 {
                positions.insert("bench", key).map_err(other)?;
            }
        }
        Ok(count)
    }
}

const REDB_QUEUE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("queue");
const REDB_POSITIONS: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("positions");

struct Redb {
    db: redb::Database,
    next: AtomicU64,
    durability: redb::Durability,
}

impl Redb {
    fn open(dir: &Path, sync: Sync) -> io::Result<Redb> {
        let db = redb::Database::create(dir.join("redb")).map_err(other)?;
        let next = {
            let read = db.begin_read().map_err(other)?;
            match read.open_table(REDB_QUEUE) {
                Ok(table) => {
                    use redb::ReadableTable;
                    table.last().map_err(other)?.map_or(0, |(k, _)| k.value() + 1)
                }
                Err(_) => 0,
            }
        };
        let durability = match sync {
            Sync::No => redb::Durability::None,
            Sync::Durable => redb::Durability::Immediate,
        };
        Ok(Redb { db, next: AtomicU64::new(next), durability })
    }

    fn write(&self, payloads: &[&[u8]]) -> io::Result<()> {
        let mut txn = self.db.begin_write().map_err(other)?;
        txn.set_durability(self.durability).map_err(other)?;
        {
            let mut table = txn.open_table(REDB_QUEUE).map_err(other)?;
            for payload in payloads {
                let key = self.next.fetch_add(1, Ordering::Relaxed);
                table.insert(key, *payload).map_err(other)?;
            }
        }
        txn.commit().map_err(other)
    }
}

impl Fifo for Redb {
    fn append(&self, payload: &[u8]) -> io::Result<()> {
        self.write(&[payload])
    }

    fn append_many(&self, payloads: &[Vec<u8>]) -> io::Result<()> {
        self.write(&payloads.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    fn finish(&self) -> io::Result<()> {
        // Durability::None commits are lost on a crash until a durable one: make the last one durable.
        let mut txn = self.db.begin_write().map_err(other)?;
        txn.set_durability(redb::Durability::Immediate).map_err(other)?;
        txn.commit().map_err(other)
    }

    fn read_all(&self, ack_every: u64) -> io::Result<u64> {
        use redb::ReadableTable;
        let read = self.db.begin_read().map_err(other)?;
        let table = read.open_table(REDB_QUEUE).map_err(other)?;
        let mut count = 0u64;
        for item in table.iter().map_err(other)? {
            let (key, value) = item.map_err(other)?;
            std::hint::black_box(value.value());
            count += 1;
            if count % ack_every == 0 {
                let txn = self.db.begin_write().map_err(other)?;
                txn.open_table(REDB_POSITIONS).map_err(other)?.insert("bench", key.value()).map_err(other)?;
                txn.commit().map_err(other)?;
            }
        }
        Ok(count)
    }
}

/// Opens an existing queue as a user would after a restart and reads its first message (for engines that replay
/// what is unacknowledged on open, that replay is part of it): the reopen workload. Returns the first message's
/// length; the opened engine is dropped by the caller, so that its close is not part of the time.
pub fn reopen(kind: Kind, dir: &Path) -> io::Result<(Box<dyn std::any::Any>, usize)> {
    Ok(match kind {
        Kind::Raw => {
            let first = Raw::first(dir)?;
            (Box::new(()), first)
        }
        Kind::Walq | Kind::WalqBuffered => {
            let queue = walq::Queue::open(dir.join("walq")).map_err(other)?;
            let first = queue.read_from(walq::Offset(0)).map_err(other)?.next().transpose().map_err(other)?;
            let len = first.and_then(|r| r.value).map_or(0, |v| v.len());
            (Box::new(queue), len)
        }
        Kind::Yaque => {
            let mut receiver = yaque::Receiver::open(dir.join("yaque"))?;
            let len = match receiver.try_recv() {
                Ok(guard) => guard.len(), // dropped without commit: rolled back, as a reader that only looks
                Err(yaque::TryRecvError::QueueEmpty) => 0,
                Err(yaque::TryRecvError::Io(error)) => return Err(error),
            };
            (Box::new(receiver), len)
        }
        Kind::QueueFile => {
            let queue = queue_file::QueueFile::open(dir.join("queue-file")).map_err(other)?;
            let len = queue.peek().map_err(other)?.map_or(0, |m| m.len());
            (Box::new(queue), len)
        }
        Kind::Commitlog => {
            use commitlog::message::MessageSet;
            let log = commitlog::CommitLog::new(commitlog::LogOptions::new(dir.join("commitlog")))?;
            let messages = log.read(0, commitlog::ReadLimit::max_bytes(64 << 10)).map_err(|e| other(format!("{e:?}")))?;
            let len = messages.iter().next().map_or(0, |m| m.payload().len());
            (Box::new(log), len)
        }
        Kind::Okaywal => {
            // Its open replays every chunk not checkpointed: that is its first read.
            let recovered = Okaywal::reopen(dir)?;
            (Box::new(()), recovered as usize)
        }
        Kind::Sled => {
            let db = sled::open(dir.join("sled")).map_err(other)?;
            let first = db.open_tree("queue").map_err(other)?.first().map_err(other)?;
            let len = first.map_or(0, |(_, v)| v.len());
            (Box::new(db), len)
        }
        Kind::Fjall => {
            let db = fjall::Database::builder(dir.join("fjall")).open().map_err(other)?;
            let queue = db.keyspace("queue", fjall::KeyspaceCreateOptions::default).map_err(other)?;
            let len = queue.first_key_value().map(|kv| kv.value().map_or(0, |v| v.len())).unwrap_or(0);
            (Box::new((db, queue)), len)
        }
        Kind::Redb => {
            let db = redb::Database::create(dir.join("redb")).map_err(other)?;
            let len = {
                use redb::ReadableTable;
                let read = db.begin_read().map_err(other)?;
                let table = read.open_table(REDB_QUEUE).map_err(other)?;
                let first = table.first().map_err(other)?;
                first.map_or(0, |(_, v)| v.value().len())
            };
            (Box::new(db), len)
        }
    })
}
