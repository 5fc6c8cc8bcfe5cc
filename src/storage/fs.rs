//! The real file system, through `std` and `fs2`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{FilePart, LockGuard, OpenMode, Storage, StorageFile};

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

#[derive(Debug)]
struct FsFile {
    file: File,
    /// Where it was opened, for `allocate`'s free-space check.
    path: PathBuf,
}

#[derive(Debug)]
struct FsLock(#[allow(dead_code)] File); // the lock lives as long as the open file description

impl LockGuard for FsLock {}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    /// Opens the file for reading and hints on it; the read ahead goes on after the descriptor is closed.
    fn will_need(&self, path: &Path, part: FilePart) -> io::Result<()> {
        let file = FsFile { file: File::open(path)?, path: path.to_path_buf() };
        let (position, len_bytes) = match part {
            FilePart::Head { len_bytes } => (0, len_bytes),
            FilePart::Tail { len_bytes } => {
                let file_len = file.len_bytes()?;
                (file_len.saturating_sub(len_bytes), len_bytes.min(file_len))
            }
        };
        file.will_need(position, len_bytes)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            // Names that are not UTF-8 are not walq's; they still make a directory "not empty".
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::ReadOnly => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
        };
        Ok(Arc::new(FsFile { file: options.open(path)?, path: path.to_path_buf() }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        lock_exclusive(OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?)
    }

    fn try_lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        lock_exclusive(File::open(dir)?)
    }
}

/// Takes `flock(2)` on `file`: released by the kernel when the process dies, so a kill -9 never leaves a stale
/// lock. `Ok(None)` when another open file description holds it.
fn lock_exclusive(file: File) -> io::Result<Option<Box<dyn LockGuard>>> {
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => Ok(Some(Box::new(FsLock(file)))),
        Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// ENOSPC, for a failed `allocate` that the free space explains.
const ENOSPC: i32 = 28;

impl FsFile {
    /// The real cause of a failed `fs2::FileExt::allocate`. fs2 calls `posix_fallocate`, which returns its error
    /// instead of setting `errno`, and then reports `errno`: whatever an earlier call left there (often `NotFound`),
    /// so a full disk read as "file not found". When the file system has less room than the part not yet
    /// allocated, the failure was a full disk, and is reported as ENOSPC so that callers see `Error::DiskFull`.
    fn allocate_error(&self, reported: io::Error, len_bytes: u64) -> io::Error {
        let allocated = fs2::FileExt::allocated_size(&self.file).unwrap_or(0);
        let missing = len_bytes.saturating_sub(allocated);
        match fs2::available_space(&self.path) {
            Ok(available) if available < missing => io::Error::from_raw_os_error(ENOSPC),
            _ => reported,
        }
    }
}

impl StorageFile for FsFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.file.read_at(buf, position)
    }

    /// Through rustix, a system call without libc's wrapper: the wrapper's thread-cancellation bookkeeping cost
    /// about a tenth of a 100 B append.
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        let (mut written, mut position) = (0, position);
        while written < buf.len() {
            match rustix::io::pwrite(&self.file, &buf[written..], position) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(bytes) => {
                    written += bytes;
                    position += bytes as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.file.set_len(len_bytes)
    }

    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        fs2::FileExt::allocate(&self.file, len_bytes).map_err(|error| self.allocate_error(error, len_bytes))
    }

    fn start_writeback(&self, position: u64, len_bytes: u64) -> io::Result<()> {
        super::sys::start_writeback(&self.file, position, len_bytes)
    }

    /// `posix_fadvise(WILLNEED)`: the kernel queues the reads and returns. A length of 0 asks for nothing (for
    /// fadvise it would mean "to the end of the file").
    #[cfg(target_os = "linux")]
    fn will_need(&self, position: u64, len_bytes: u64) -> io::Result<()> {
        let Some(len_bytes) = std::num::NonZeroU64::new(len_bytes) else { return Ok(()) };
        rustix::fs::fadvise(&self.file, position, Some(len_bytes), rustix::fs::Advice::WillNeed)
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_hints_over_the_file_past_its_end_and_of_nothing_are_no_error_and_change_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("f");
        let file = FsStorage.open_file(&path, OpenMode::CreateNew).unwrap();
        file.write_all_at(&[7u8; 20_000], 0).unwrap();
        file.will_need(0, 64).unwrap();
        file.will_need(16_384, 4096).unwrap();
        file.will_need(1 << 40, 4096).unwrap();
        file.will_need(u64::MAX / 2, 0).unwrap();
        assert_eq!(file.len_bytes().unwrap(), 20_000, "a hint neither extends nor cuts the file");
        let mut buf = [0u8; 8];
        assert_eq!(file.read_at(&mut buf, 19_992).unwrap(), 8);
        assert_eq!(buf, [7u8; 8]);
    }
}
