//! A small real file system for full-disk tests: a tmpfs of a given size, mounted while the value lives. Needs
//! root (CI runs as root); elsewhere `mount` says why it cannot, and the tests that need it say so and skip.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted on drop.
pub struct SmallTmpfs {
    _temp: tempfile::TempDir,
    mount_point: PathBuf,
}

impl SmallTmpfs {
    /// Mounts a tmpfs of `size_bytes`, or says why this machine cannot.
    pub fn mount(size_bytes: u64) -> Result<SmallTmpfs, String> {
        let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mount_point = temp.path().join("mnt");
        std::fs::create_dir(&mount_point).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(&mount_point)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !output.status.success() {
            return Err(format!("mount -t tmpfs: {}", String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(SmallTmpfs { _temp: temp, mount_point })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_point).status();
    }
}

/// Mounts a tmpfs for the test `name`, or prints why it is skipped on this machine (not root) and returns `None`.
/// Under CI (`CI` set) a machine that cannot mount fails the test instead: CI runs as root.
pub fn mount_or_skip(name: &str, size_bytes: u64) -> Option<SmallTmpfs> {
    match SmallTmpfs::mount(size_bytes) {
        Ok(fs) => Some(fs),
        Err(why) if std::env::var_os("CI").is_none() => {
            println!("{name}: skipped: {why} (run as root to mount a small tmpfs)");
            None
        }
        Err(why) => panic!("{name}: cannot mount a tmpfs under CI: {why}"),
    }
}
