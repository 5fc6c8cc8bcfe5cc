//! The only `unsafe` code of walq: read-only memory maps of sealed files.

use std::fs::File;
use std::io;

use super::ReadView;

struct Mapped(memmap2::Mmap);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Maps a whole file read-only.
///
/// Callers pass only files that walq never writes, truncates or rewrites in place again: sealed segments and
/// their indexes. Compaction replaces such a file by renaming a new one over its name, and cleanup unlinks it;
/// neither changes the mapped inode, so the mapping stays valid for as long as it lives.
pub(crate) fn map_sealed_file(file: &File) -> io::Result<ReadView> {
    if file.metadata()?.len() == 0 {
        return Ok(ReadView::from_vec(Vec::new()));
    }
    // SAFETY: memmap2 requires that the file is not modified or truncated while mapped, or reads could see
    // changing bytes or fault (SIGBUS). walq maps only sealed files, which no walq code writes or truncates after
    // sealing (see above); the `walq` tool never maps the segment being written. A process outside walq that
    // truncates a queue's files breaks the queue's contract, as deleting them would.
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(ReadView(std::sync::Arc::new(Mapped(map))))
}
