//! The real file system, with a gate that can hold chosen calls: while it is closed for a path fragment, a thread
//! that fsyncs a file whose path holds it, renames such a file, or fsyncs such a directory waits in that call until
//! the gate opens (as a slow or stalled disk would make it wait). Tests use it to prove who waits for whose I/O.

use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use walq::storage::{FsStorage, LockGuard, OpenMode, Storage, StorageFile};

/// Shared by a [`GatedStorage`] and the test that drives it.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Calls on paths holding this fragment wait while it is set.
    closed_for: Option<String>,
    /// Threads waiting in a held call now.
    waiting: usize,
    /// Calls held since the gate was created.
    held_total: u64,
}

impl Gate {
    /// Holds every later fsync, rename and directory fsync of a path holding `fragment`.
    pub fn close(&self, fragment: &str) {
        self.state.lock().unwrap().closed_for = Some(fragment.to_string());
    }

    /// Lets every held call go on, and holds nothing more.
    pub fn open(&self) {
        self.state.lock().unwrap().closed_for = None;
        self.changed.notify_all();
    }

    /// Threads waiting in a held call now.
    pub fn waiting(&self) -> usize {
        self.state.lock().unwrap().waiting
    }

    /// Calls held since the gate was created.
    pub fn held_total(&self) -> u64 {
        self.state.lock().unwrap().held_total
    }

    fn pass(&self, path: &Path) {
        let path = path.to_string_lossy();
        let holds = |state: &GateState| state.closed_for.as_deref().is_some_and(|fragment| path.contains(fragment));
        let mut state = self.state.lock().unwrap();
        if !holds(&state) {
            return;
        }
        state.waiting += 1;
        state.held_total += 1;
        while holds(&state) {
            state = self.changed.wait(state).unwrap();
        }
        state.waiting -= 1;
    }
}

/// [`FsStorage`] behind a [`Gate`].
#[derive(Debug, Clone, Default)]
pub struct GatedStorage {
    pub gate: Arc<Gate>,
}

impl Storage for GatedStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        FsStorage.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        FsStorage.list_dir(dir)
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let inner = FsStorage.open_file(path, mode)?;
        Ok(Arc::new(GatedFile { inner, path: path.to_path_buf(), gate: self.gate.clone() }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.gate.pass(from);
        FsStorage.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        FsStorage.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.gate.pass(dir);
        FsStorage.sync_dir(dir)
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        FsStorage.try_lock(path)
    }

    fn try_lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        FsStorage.try_lock_dir(dir)
    }
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn StorageFile>,
    path: std::path::PathBuf,
    gate: Arc<Gate>,
}

impl StorageFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.inner.read_at(buf, position)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, position)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.gate.pass(&self.path);
        self.inner.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.gate.pass(&self.path);
        self.inner.sync_all()
    }

    fn len_bytes(&self) -> io::Result<u64> {
        self.inner.len_bytes()
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.inner.set_len(len_bytes)
    }

    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        self.inner.allocate(len_bytes)
    }
}
