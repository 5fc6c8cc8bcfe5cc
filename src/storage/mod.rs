//! All file I/O of walq goes through the [`Storage`] trait, so that tests can swap the real file system for
//! `FaultyStorage`, which simulates power loss, torn writes and I/O errors. That fault model is test support, not a
//! file system to run on: it is built only with the cargo feature `fault-injection` (this crate's tests turn it on;
//! an embedder's crash tests can too).
//!
//! The trait is deliberately small: positional reads and writes, fsync, length changes, and the directory
//! operations walq's file protocols need (create, rename, unlink, directory fsync). Nothing above this module opens
//! a file any other way.

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

#[cfg(feature = "fault-injection")]
mod faulty;
mod fs;
mod sys;

#[cfg(feature = "fault-injection")]
pub use faulty::{FaultKind, FaultPlan, FaultRng, FaultyStorage};
pub use fs::FsStorage;

/// How [`Storage::open_file`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading only.
    ReadOnly,
    /// An existing file, for reading and writing.
    ReadWrite,
    /// A new file for reading and writing; fails if the name exists.
    CreateNew,
}

/// A part of a file that [`Storage::will_need`] asks to have read ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilePart {
    /// The first `len_bytes` bytes (fewer if the file is shorter).
    Head {
        /// How many bytes.
        len_bytes: u64,
    },
    /// The last `len_bytes` bytes (the whole file if it is shorter).
    Tail {
        /// How many bytes.
        len_bytes: u64,
    },
}

/// A file system as walq uses it. Implementations must be usable from many threads at once.
pub trait Storage: Send + Sync + Debug {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names (not paths) of the entries of `dir`. A missing directory is `ErrorKind::NotFound`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens or creates a file.
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Renames `from` to `to` atomically, replacing `to`. Durable only after [`Storage::sync_dir`].
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file's name. Durable only after [`Storage::sync_dir`].
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the file at `path` (created if missing) for as long as the guard lives.
    /// `Ok(None)` means someone else holds it. The lock must vanish when the holding process dies.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>>;
    /// Takes an exclusive lock on the directory `dir` itself, as [`Storage::try_lock`] does on a file. A lock file
    /// can be unlinked and created anew under a running owner; the directory cannot be swapped while it is open.
    fn try_lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn LockGuard>>>;
    /// Asks the OS to start reading `part` of the file at `path` into its cache, without waiting, as
    /// [`StorageFile::will_need`] does for an open file: a hint, for a file the caller will open and read soon.
    /// The default does nothing, and a fault model must not count it as an operation (its opens and lengths
    /// included), or planned faults would land on a hint, which ignores them.
    fn will_need(&self, path: &Path, part: FilePart) -> io::Result<()> {
        let _ = (path, part);
        Ok(())
    }
    /// The length of the file at `path` (a `stat`), for figures such as metrics, never for a decision. A fault
    /// model does not count it as an operation: a metrics thread must not shift where a planned fault lands.
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.open_file(path, OpenMode::ReadOnly)?.len_bytes()
    }
}

/// An open file.
pub trait StorageFile: Send + Sync + Debug {
    /// Reads into `buf` from `position`; returns how many bytes were read (0 at the end of the file).
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `position`, extending the file if needed. Durable only after a sync.
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    /// Makes the file's data (and the size needed to read it) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable: `fsync`.
    fn sync_all(&self) -> io::Result<()>;
    /// The file's current length in bytes.
    fn len_bytes(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) the file to `len_bytes`.
    fn set_len(&self, len_bytes: u64) -> io::Result<()>;
    /// Reserves disk space so that the file is at least `len_bytes` long, zero-filled; may fail with ENOSPC.
    fn allocate(&self, len_bytes: u64) -> io::Result<()>;
    /// Asks the OS to start writing `len_bytes` from `position` to disk, without waiting: a hint that makes a
    /// later sync shorter, never a promise of durability. The default does nothing (a storage model has no
    /// writeback to start, and a hint must not count as an operation where faults are planned).
    fn start_writeback(&self, position: u64, len_bytes: u64) -> io::Result<()> {
        let _ = (position, len_bytes);
        Ok(())
    }
    /// Asks the OS to start reading `len_bytes` from `position` into its cache, without waiting: a hint, so that
    /// reads made one after another (each waiting for the last) find their pages on the way when nothing is
    /// cached. The default does nothing (a storage model has no cache to fill, and a hint must not count as an
    /// operation where faults are planned).
    fn will_need(&self, position: u64, len_bytes: u64) -> io::Result<()> {
        let _ = (position, len_bytes);
        Ok(())
    }
}

/// Marker for a held lock; dropping it releases the lock.
pub trait LockGuard: Send + Sync + Debug {}

/// Reads until `buf` is full or the file ends; returns the number of bytes read.
pub(crate) fn read_up_to(file: &dyn StorageFile, buf: &mut [u8], position: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], position + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads `len_bytes` from `position`, or fewer if the file ends first.
pub(crate) fn read_range(file: &dyn StorageFile, position: u64, len_bytes: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len_bytes];
    let n = read_up_to(file, &mut buf, position)?;
    buf.truncate(n);
    Ok(buf)
}
