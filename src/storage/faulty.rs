//! A simulated file system that keeps what is durable apart from what is only written, for crash and fault tests.
//!
//! Model (after SQLite's crash VFS and TigerBeetle's storage fault model):
//! - Each file (inode) has its live bytes, its durable bytes, and the writes and length changes since its last
//!   fsync. `sync_data`/`sync_all` make the live bytes durable.
//! - Each name (create, rename, unlink, and a new directory) is live at once and durable only after `sync_dir` of
//!   its directory; a directory lost in a crash takes the files in it along.
//! - [`FaultyStorage::crash_image`] builds the state after a power cut: durable bytes, plus each unsynced write
//!   dropped whole or kept per 512-byte sector as new, old, zero or garbage bytes; each unsynced length change kept
//!   or dropped; each unsynced directory operation applied or dropped.
//! - A [`FaultPlan`] makes the n-th operation fail (EIO, ENOSPC, a short write), once or from then on, or "crashes"
//!   the process at the n-th operation: that operation and every later one fail without touching any state.
//!
//! Operations are counted in the order they are called, so a single-threaded workload sees the same numbering on
//! every run and a failure reproduces from its seed and operation number.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{LockGuard, OpenMode, Storage, StorageFile};

/// The errno of a failed I/O (`FaultKind::Eio`).
const EIO: i32 = 5;

/// Sector size at which simulated writes tear.
pub const SECTOR_BYTES: usize = 512;

/// A small deterministic random number generator (SplitMix64), so that every crash image and fault schedule
/// reproduces from a seed.
#[derive(Debug, Clone)]
pub struct FaultRng(u64);

impl FaultRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> FaultRng {
        FaultRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        self.next_u64() % bound
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

/// Which failure a [`FaultPlan`] injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The operation fails with EIO.
    Eio,
    /// The next write or allocation at or after the chosen operation fails with ENOSPC.
    Enospc,
    /// The next allocation (preallocation of a new segment) at or after the chosen operation fails with ENOSPC.
    EnospcOnAllocate,
    /// The next write at or after the chosen operation writes half its bytes, then fails with ENOSPC.
    ShortWrite,
    /// The process "dies" at the chosen operation: it and all later operations fail and change nothing.
    Crash,
    /// The next file fsync at or after the chosen operation panics, changing nothing: a bug in the thread that
    /// syncs (the interval flusher), for the tests of what a panicking background thread does.
    PanicOnSync,
}

/// When and how [`FaultyStorage`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// The operation number (counting from 0) at which the fault becomes due.
    pub at_op: u64,
    /// What happens.
    pub kind: FaultKind,
    /// Whether every later eligible operation fails too (a dead disk) or only the first (a transient error).
    pub persistent: bool,
}

#[derive(Debug, Clone)]
enum FileOp {
    Write { position: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
}

#[derive(Debug, Clone)]
enum DirOp {
    Create {
        path: PathBuf,
        inode: usize,
    },
    /// The inode is the one `from` named when the rename ran: a rename moves that file, whatever `from` names
    /// in a crash image where other unsynced operations on it were dropped.
    Rename {
        from: PathBuf,
        to: PathBuf,
        inode: usize,
    },
    /// The inode is the one `path` named when the removal ran (see `Rename`).
    Remove {
        path: PathBuf,
        inode: usize,
    },
    /// A directory created: durable once its parent is fsynced, like a file's name.
    MakeDir {
        path: PathBuf,
    },
}

impl DirOp {
    fn touches_dir(&self, dir: &Path) -> bool {
        match self {
            DirOp::Create { path, .. } | DirOp::Remove { path, .. } | DirOp::MakeDir { path } => {
                path.parent() == Some(dir)
            }
            DirOp::Rename { from, to, .. } => from.parent() == Some(dir) || to.parent() == Some(dir),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>, dirs: &mut BTreeSet<PathBuf>) {
        match self {
            DirOp::MakeDir { path } => {
                dirs.insert(path.clone());
            }
            DirOp::Create { path, inode } => {
                names.insert(path.clone(), *inode);
            }
            DirOp::Rename { from, to, inode } => {
                if names.get(from) == Some(inode) {
                    names.remove(from);
                }
                names.insert(to.clone(), *inode);
            }
            DirOp::Remove { path, inode } => {
                if names.get(path) == Some(inode) {
                    names.remove(path);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    live_names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    pending_dir_ops: Vec<DirOp>,
    dirs: BTreeSet<PathBuf>,
    /// The directories a power cut keeps (`dirs` minus creations whose parent was not fsynced since).
    durable_dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    op_count: u64,
    plan: Option<FaultPlan>,
    fired: bool,
    crashed: bool,
    faults_injected: u64,
}

/// What kind of operation is being counted, for deciding which faults apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Allocate,
    Sync,
    Other,
}

impl State {
    /// Counts one operation and returns the error to inject, if any. Every storage call passes through here.
    fn begin(&mut self, op: Op) -> Result<Option<FaultKind>, io::Error> {
        let number = self.op_count;
        self.op_count += 1;
        if self.crashed {
            return Err(crashed_error());
        }
        let Some(plan) = self.plan else {
            return Ok(None);
        };
        if number < plan.at_op || (self.fired && !plan.persistent) {
            return Ok(None);
        }
        let applies = match plan.kind {
            FaultKind::Eio | FaultKind::Crash => true,
            FaultKind::Enospc => matches!(op, Op::Write | Op::Allocate),
            FaultKind::EnospcOnAllocate => op == Op::Allocate,
            FaultKind::ShortWrite => op == Op::Write,
            FaultKind::PanicOnSync => op == Op::Sync,
        };
        if !applies {
            return Ok(None);
        }
        self.fired = true;
        self.faults_injected += 1;
        match plan.kind {
            FaultKind::Crash => {
                self.crashed = true;
                Err(crashed_error())
            }
            FaultKind::Eio => Err(io::Error::from_raw_os_error(EIO)),
            FaultKind::Enospc | FaultKind::EnospcOnAllocate => Err(io::Error::from_raw_os_error(28)),
            FaultKind::ShortWrite => Ok(Some(FaultKind::ShortWrite)),
            FaultKind::PanicOnSync => Ok(Some(FaultKind::PanicOnSync)),
        }
    }

    fn inode_of(&self, path: &Path) -> io::Result<usize> {
        self.live_names.get(path).copied().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated crash: the process is dead")
}

/// A simulated file system for crash and fault tests. Cloning gives another handle to the same state.
#[derive(Debug, Clone, Default)]
pub struct FaultyStorage {
    state: Arc<Mutex<State>>,
}

impl FaultyStorage {
    /// An empty file system with no faults planned.
    pub fn new() -> FaultyStorage {
        FaultyStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a bug in this module; keep the state usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Plans a fault (replacing any earlier plan). Operation numbers count from the creation of this storage.
    pub fn set_plan(&self, plan: Option<FaultPlan>) {
        let mut state = self.lock();
        state.plan = plan;
        state.fired = false;
    }

    /// How many operations have been called so far.
    pub fn op_count(&self) -> u64 {
        self.lock().op_count
    }

    /// How many faults have been injected so far.
    pub fn faults_injected(&self) -> u64 {
        self.lock().faults_injected
    }

    /// Whether a planned crash has happened.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The live contents of every named file, as a program would read them now.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let state = self.lock();
        state.live_names.iter().map(|(path, &inode)| (path.clone(), state.inodes[inode].live.clone())).collect()
    }

    /// Replaces the live contents of a file (which must exist) without counting an operation, as a test's
    /// stand-in for bit rot or an outside writer. The new bytes are durable at once.
    pub fn corrupt_file(&self, path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut state = self.lock();
        let inode = state.live_names[path];
        let node = &mut state.inodes[inode];
        edit(&mut node.live);
        node.durable = node.live.clone();
        node.pending.clear();
    }

    /// The file system as it would be found after a power cut now, chosen by `seed`. The image has no faults
    /// planned, no locks held, and everything in it is durable.
    pub fn crash_image(&self, seed: u64) -> FaultyStorage {
        let mut rng = FaultRng::new(seed);
        let pending = self.pending_dir_ops();
        let kept: Vec<bool> = (0..pending).map(|_| rng.chance(1, 2)).collect();
        self.image(&kept, &mut rng)
    }

    /// How many directory operations (creations, renames, removals) are not yet durable: a power cut may keep
    /// any subset of them.
    pub fn pending_dir_ops(&self) -> usize {
        self.lock().pending_dir_ops.len()
    }

    /// The power-cut image that keeps exactly the pending directory operations whose bit is set in `kept` (bit
    /// `i`: the `i`-th pending operation, oldest first), with unsynced file contents chosen by `seed` as in
    /// [`crash_image`](FaultyStorage::crash_image). For enumerating every subset (R2).
    pub fn crash_image_keeping(&self, kept: u64, seed: u64) -> FaultyStorage {
        let pending = self.pending_dir_ops();
        assert!(pending <= 64, "at most 64 pending directory operations can be enumerated");
        let kept: Vec<bool> = (0..pending).map(|i| kept >> i & 1 == 1).collect();
        self.image(&kept, &mut FaultRng::new(seed))
    }

    fn image(&self, kept: &[bool], rng: &mut FaultRng) -> FaultyStorage {
        let state = self.lock();
        let (mut names, mut dirs) = (state.durable_names.clone(), state.durable_dirs.clone());
        for (op, _) in state.pending_dir_ops.iter().zip(kept).filter(|(_, &keep)| keep) {
            op.apply(&mut names, &mut dirs);
        }
        // A directory whose creation was lost takes its files with it (and a lost parent its subdirectories).
        let kept_dirs = dirs.clone();
        dirs.retain(|d| d.ancestors().skip(1).all(|a| a.parent().is_none() || kept_dirs.contains(a)));
        names.retain(|path, _| path.parent().is_some_and(|dir| dirs.contains(dir)));
        let mut image = State { durable_dirs: dirs.clone(), dirs, ..State::default() };
        let mut remap = BTreeMap::new();
        for (path, inode) in names {
            let new_inode = *remap.entry(inode).or_insert_with(|| {
                let bytes = crash_bytes(&state.inodes[inode], rng);
                image.inodes.push(Inode { live: bytes.clone(), durable: bytes, pending: Vec::new() });
                image.inodes.len() - 1
            });
            image.live_names.insert(path.clone(), new_inode);
            image.durable_names.insert(path, new_inode);
        }
        FaultyStorage { state: Arc::new(Mutex::new(image)) }
    }

    /// The file system as it would be found if every write had been synced: the live state, made durable.
    pub fn clean_image(&self) -> FaultyStorage {
        let state = self.lock();
        let mut image = State { dirs: state.dirs.clone(), durable_dirs: state.dirs.clone(), ..State::default() };
        for (path, &inode) in &state.live_names {
            let bytes = state.inodes[inode].live.clone();
            image.inodes.push(Inode { live: bytes.clone(), durable: bytes, pending: Vec::new() });
            image.live_names.insert(path.clone(), image.inodes.len() - 1);
        }
        image.durable_names = image.live_names.clone();
        FaultyStorage { state: Arc::new(Mutex::new(image)) }
    }
}

/// The bytes of one file after a power cut: its durable bytes with each unsynced operation dropped, or kept torn.
fn crash_bytes(inode: &Inode, rng: &mut FaultRng) -> Vec<u8> {
    let mut bytes = inode.durable.clone();
    for op in &inode.pending {
        match op {
            FileOp::SetLen(len) => {
                if rng.chance(1, 2) {
                    bytes.resize(*len as usize, 0);
                }
            }
            FileOp::Write { position, data } => {
                if rng.chance(1, 4) {
                    continue; // the whole write was lost
                }
                tear_write(&mut bytes, *position as usize, data, rng);
            }
        }
    }
    bytes
}

/// Applies one write sector by sector, each sector landing whole, not at all, zeroed or as garbage.
fn tear_write(bytes: &mut Vec<u8>, position: usize, data: &[u8], rng: &mut FaultRng) {
    let end = position + data.len();
    let mut start = position;
    while start < end {
        let sector_end = ((start / SECTOR_BYTES) + 1) * SECTOR_BYTES;
        let chunk_end = sector_end.min(end);
        let new = &data[start - position..chunk_end - position];
        let choice = rng.below(100);
        if bytes.get(start..chunk_end) == Some(new) {
            // Rewriting bytes with what they already hold (recovery does, after a failed writeback): a torn write
            // of identical bytes leaves identical bytes; zeros or garbage here would be media failure, which the
            // bit-flip and corruption suites model on their own.
        } else if choice < 20 {
            // Old bytes stay: nothing to do (a sector past the old end stays absent).
        } else {
            if bytes.len() < chunk_end {
                bytes.resize(chunk_end, 0); // the size grew, the gap reads as zeros
            }
            let target = &mut bytes[start..chunk_end];
            match choice {
                20..=34 => target.fill(0),
                35..=49 => target.iter_mut().for_each(|b| *b = rng.next_u64() as u8),
                _ => target.copy_from_slice(new),
            }
        }
        start = chunk_end;
    }
}

#[derive(Debug)]
struct FaultyFile {
    storage: FaultyStorage,
    inode: usize,
}

#[derive(Debug)]
struct FaultyLock {
    storage: FaultyStorage,
    path: PathBuf,
}

impl LockGuard for FaultyLock {}

impl Drop for FaultyLock {
    fn drop(&mut self) {
        self.storage.lock().locks.remove(&self.path);
    }
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(Op::Other)?;
        // The directory asked for is durable once its parent is fsynced, as on a real file system; missing
        // ancestors above it (the user's part of the tree) are created durably.
        for ancestor in dir.ancestors().skip(1) {
            state.dirs.insert(ancestor.to_path_buf());
            state.durable_dirs.insert(ancestor.to_path_buf());
        }
        if state.dirs.insert(dir.to_path_buf()) {
            state.pending_dir_ops.push(DirOp::MakeDir { path: dir.to_path_buf() });
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut state = self.lock();
        state.begin(Op::Other)?;
        if !state.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let files = state.live_names.keys().filter(|p| p.parent() == Some(dir));
        let subdirs = state.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files.chain(subdirs).filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect())
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let state = self.lock(); // not an operation: no fault lands here, and the count stays the workload's
        let inode = state.inode_of(path)?;
        Ok(state.inodes[inode].live.len() as u64)
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.lock();
        state.begin(Op::Other)?;
        let inode = match mode {
            OpenMode::ReadOnly | OpenMode::ReadWrite => state.inode_of(path)?,
            OpenMode::CreateNew => {
                if state.live_names.contains_key(path) {
                    return Err(io::ErrorKind::AlreadyExists.into());
                }
                if !path.parent().is_some_and(|dir| state.dirs.contains(dir)) {
                    return Err(io::ErrorKind::NotFound.into());
                }
                state.inodes.push(Inode::default());
                let inode = state.inodes.len() - 1;
                state.live_names.insert(path.to_path_buf(), inode);
                state.pending_dir_ops.push(DirOp::Create { path: path.to_path_buf(), inode });
                inode
            }
        };
        Ok(Arc::new(FaultyFile { storage: self.clone(), inode }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(Op::Other)?;
        let inode = state.inode_of(from)?;
        state.live_names.remove(from);
        state.live_names.insert(to.to_path_buf(), inode);
        state.pending_dir_ops.push(DirOp::Rename { from: from.to_path_buf(), to: to.to_path_buf(), inode });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(Op::Other)?;
        let inode = state.inode_of(path)?;
        state.live_names.remove(path);
        state.pending_dir_ops.push(DirOp::Remove { path: path.to_path_buf(), inode });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(Op::Other)?;
        let (synced, kept): (Vec<DirOp>, Vec<DirOp>) =
            std::mem::take(&mut state.pending_dir_ops).into_iter().partition(|op| op.touches_dir(dir));
        let State { durable_names, durable_dirs, .. } = &mut *state;
        for op in &synced {
            op.apply(durable_names, durable_dirs);
        }
        state.pending_dir_ops = kept;
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        let mut state = self.lock();
        state.begin(Op::Other)?;
        if !state.live_names.contains_key(path) {
            // The lock file's own creation is made durable at once: it carries no data.
            state.inodes.push(Inode::default());
            let inode = state.inodes.len() - 1;
            state.live_names.insert(path.to_path_buf(), inode);
            state.durable_names.insert(path.to_path_buf(), inode);
        }
        if !state.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(Box::new(FaultyLock { storage: self.clone(), path: path.to_path_buf() })))
    }

    fn try_lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        let mut state = self.lock();
        state.begin(Op::Other)?;
        if !state.locks.insert(dir.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(Box::new(FaultyLock { storage: self.clone(), path: dir.to_path_buf() })))
    }
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        let mut state = self.storage.lock();
        state.begin(Op::Other)?;
        let live = &state.inodes[self.inode].live;
        let start = (position as usize).min(live.len());
        let n = buf.len().min(live.len() - start);
        buf[..n].copy_from_slice(&live[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        let mut state = self.storage.lock();
        let fault = state.begin(Op::Write)?;
        let data = match fault {
            Some(FaultKind::ShortWrite) => &buf[..buf.len() / 2],
            _ => buf,
        };
        let node = &mut state.inodes[self.inode];
        let start = position as usize;
        if node.live.len() < start + data.len() {
            node.live.resize(start + data.len(), 0);
        }
        node.live[start..start + data.len()].copy_from_slice(data);
        node.pending.push(FileOp::Write { position, data: data.to_vec() });
        match fault {
            Some(FaultKind::ShortWrite) => Err(io::Error::from_raw_os_error(28)),
            _ => Ok(()),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync_all()
    }

    fn sync_all(&self) -> io::Result<()> {
        let mut state = self.storage.lock();
        let fault = match state.begin(Op::Sync) {
            Ok(fault) => fault,
            Err(error) => {
                if error.raw_os_error() == Some(EIO) {
                    // fsyncgate: Linux marks the pages of a failed writeback clean, so a later fsync returns 0
                    // without writing them. They stay readable (live) but never become durable.
                    state.inodes[self.inode].pending.clear();
                }
                return Err(error);
            }
        };
        if fault == Some(FaultKind::PanicOnSync) {
            drop(state);
            panic!("injected panic in fsync (FaultKind::PanicOnSync)");
        }
        // What becomes durable is what was written since the last sync, not the whole live content: writes a
        // failed fsync dropped (above) stay out for good, as on Linux.
        let node = &mut state.inodes[self.inode];
        for op in std::mem::take(&mut node.pending) {
            match op {
                FileOp::SetLen(len) => node.durable.resize(len as usize, 0),
                FileOp::Write { position, data } => {
                    let end = position as usize + data.len();
                    if node.durable.len() < end {
                        node.durable.resize(end, 0);
                    }
                    node.durable[position as usize..end].copy_from_slice(&data);
                }
            }
        }
        Ok(())
    }

    fn len_bytes(&self) -> io::Result<u64> {
        let mut state = self.storage.lock();
        state.begin(Op::Other)?;
        Ok(state.inodes[self.inode].live.len() as u64)
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        let mut state = self.storage.lock();
        state.begin(Op::Other)?;
        let node = &mut state.inodes[self.inode];
        node.live.resize(len_bytes as usize, 0);
        node.pending.push(FileOp::SetLen(len_bytes));
        Ok(())
    }

    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        let mut state = self.storage.lock();
        state.begin(Op::Allocate)?;
        let node = &mut state.inodes[self.inode];
        if (node.live.len() as u64) < len_bytes {
            node.live.resize(len_bytes as usize, 0);
            node.pending.push(FileOp::SetLen(len_bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> PathBuf {
        Path::new("/q").join(name)
    }

    /// `/q`, made durable (its parent fsynced).
    fn queue_dir(fs: &FaultyStorage) {
        fs.create_dir_all(Path::new("/q")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
    }

    #[test]
    fn unsynced_create_can_vanish_and_synced_data_survives() {
        let fs = FaultyStorage::new();
        queue_dir(&fs);
        let file = fs.open_file(&path("a"), OpenMode::CreateNew).unwrap();
        file.write_all_at(b"durable", 0).unwrap();
        file.sync_all().unwrap();
        fs.sync_dir(Path::new("/q")).unwrap();
        file.write_all_at(b"-lost?", 7).unwrap();
        let other = fs.open_file(&path("b"), OpenMode::CreateNew).unwrap();
        other.write_all_at(b"x", 0).unwrap();
        let mut saw_b_missing = false;
        for seed in 0..64 {
            let image = fs.crash_image(seed).snapshot();
            assert_eq!(&image[&path("a")][..7], b"durable");
            saw_b_missing |= !image.contains_key(&path("b"));
        }
        assert!(saw_b_missing, "an unsynced create must be droppable");
    }

    #[test]
    fn a_directory_is_durable_only_once_its_parent_is_fsynced() {
        let fs = FaultyStorage::new();
        fs.create_dir_all(Path::new("/q/groups")).unwrap(); // `/q` is the user's: durable; `groups` is not yet
        let file = fs.open_file(Path::new("/q/groups/g"), OpenMode::CreateNew).unwrap();
        file.write_all_at(b"state", 0).unwrap();
        file.sync_all().unwrap();
        fs.sync_dir(Path::new("/q/groups")).unwrap();
        // The file and its name are durable, but the directory holding them may not be.
        let image = fs.crash_image_keeping(0, 7).snapshot();
        assert!(!image.contains_key(Path::new("/q/groups/g")), "without an fsync of `/q`, `groups` and all in it go");
        let kept = (0..32).filter(|&seed| fs.crash_image(seed).snapshot().contains_key(Path::new("/q/groups/g")));
        assert!(kept.count() < 32, "a power cut may drop the unsynced directory");
        fs.sync_dir(Path::new("/q")).unwrap();
        for seed in 0..32 {
            assert_eq!(fs.crash_image(seed).snapshot()[Path::new("/q/groups/g")], b"state");
        }
    }

    #[test]
    fn writes_a_failed_fsync_dropped_never_become_durable() {
        // fsyncgate: after a failed fsync, Linux marks the pages clean; a later fsync succeeds without them.
        let fs = FaultyStorage::new();
        queue_dir(&fs);
        let file = fs.open_file(&path("a"), OpenMode::CreateNew).unwrap();
        file.write_all_at(b"old", 0).unwrap();
        file.sync_all().unwrap();
        fs.sync_dir(Path::new("/q")).unwrap();
        file.write_all_at(b"new", 0).unwrap();
        fs.set_plan(Some(FaultPlan { at_op: fs.op_count(), kind: FaultKind::Eio, persistent: false }));
        assert!(file.sync_all().is_err());
        file.write_all_at(b"!", 3).unwrap();
        file.sync_all().unwrap();
        assert_eq!(fs.snapshot()[&path("a")], b"new!", "the page cache still has the write");
        for seed in 0..16 {
            assert_eq!(fs.crash_image(seed).snapshot()[&path("a")], b"old!", "the lost write stays lost");
        }
    }

    #[test]
    fn crash_plan_stops_every_later_operation() {
        let fs = FaultyStorage::new();
        queue_dir(&fs); // operations 0 and 1
        fs.set_plan(Some(FaultPlan { at_op: 3, kind: FaultKind::Crash, persistent: false }));
        let file = fs.open_file(&path("a"), OpenMode::CreateNew).unwrap();
        assert!(file.write_all_at(b"x", 0).is_err());
        assert!(file.sync_all().is_err());
        assert!(fs.crashed());
        assert_eq!(fs.snapshot()[&path("a")], b"");
    }

    #[test]
    fn enospc_waits_for_a_write() {
        let fs = FaultyStorage::new();
        queue_dir(&fs);
        fs.set_plan(Some(FaultPlan { at_op: 0, kind: FaultKind::Enospc, persistent: false }));
        let file = fs.open_file(&path("a"), OpenMode::CreateNew).unwrap();
        let err = file.write_all_at(b"x", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28));
        file.write_all_at(b"y", 0).unwrap();
    }
}
