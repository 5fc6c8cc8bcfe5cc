//! The one system call the standard library and rustix do not offer: `sync_file_range(2)`, to start writing a
//! file's dirty pages back without waiting for them. The crate's only `unsafe` code; everything else goes through
//! `std`, rustix and fs2.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;

/// Starts writeback of `len_bytes` from `position` of `file` (`SYNC_FILE_RANGE_WRITE`: queue the dirty pages for
/// writing, wait for nothing). A hint: nothing is durable because of it. Elsewhere than Linux, nothing.
#[cfg(target_os = "linux")]
pub(super) fn start_writeback(file: &File, position: u64, len_bytes: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(position), Ok(len_bytes)) = (i64::try_from(position), i64::try_from(len_bytes)) else {
        return Ok(()); // past the end of any file: nothing to write back
    };
    // SAFETY: `sync_file_range` takes integers only and touches no memory of this process; the descriptor is open
    // for the whole call, borrowed from `file`. An invalid range is reported as an error, never undefined behaviour.
    let done = unsafe { libc::sync_file_range(file.as_raw_fd(), position, len_bytes, libc::SYNC_FILE_RANGE_WRITE) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn start_writeback(_file: &File, _position: u64, _len_bytes: u64) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    #[test]
    fn writeback_of_written_pages_starts_and_of_a_range_past_the_end_is_no_error() {
        let temp = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(temp.path().join("f")).unwrap();
        file.write_all_at(&[1u8; 64 * 1024], 0).unwrap();
        super::start_writeback(&file, 0, 64 * 1024).unwrap();
        super::start_writeback(&file, 1 << 40, 4096).unwrap();
        super::start_writeback(&file, u64::MAX, 1).unwrap();
    }
}
