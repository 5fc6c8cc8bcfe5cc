//! Why and when each dead letter was set aside: `groups/<name>.dead_letters`, beside the group's journal.
//!
//! The journal's records are fixed-size and hold what delivery depends on; a dead letter's reason is free text, of
//! use to people, so it lives in a file of its own. Notes are advisory: a group opens and works without its notes
//! file, and a note lost to a crash leaves its dead letter without a reason, never a message without a state.
//!
//! ```text
//! header, 32 bytes:
//! 0   magic     [u8; 8]  "WALQDLN\0"
//! 8   version   u16      1
//! 10  reserved  u16      zero
//! 12  file_id   u64      random, never zero, new for every file; inside every record's CRC
//! 20  reserved  u64      zero
//! 28  crc32     u32      CRC-32 of bytes 0..28
//! records, 32 bytes + the reason:
//! 0   crc32       u32   CRC-32 of file_id (8 bytes, LE) followed by bytes 4..32 + reason_len
//! 4   kind        u8    1 Set (the offset was dead-lettered for this reason), 2 Cleared (it was redriven)
//! 5   reserved    u8    zero
//! 6   reason_len  u16   at most DEAD_LETTER_REASON_BYTES_MAX (1024); zero for Cleared
//! 8   offset      u64
//! 16  at_ms       u64   when, in ms since the Unix epoch; zero for Cleared
//! 24  reserved    u64   zero
//! 32  reason      UTF-8, reason_len bytes
//! ```
//!
//! A note is written (and, in `Sync` and `GroupCommit`, fsynced) before the journal records the dead letter, so a
//! durable dead letter has a durable note; a note whose dead letter never reached the journal is ignored, because
//! only notes of offsets the journal holds as dead letters are kept. Replay keeps the valid run of records and
//! stops at the first invalid one (a torn tail, or damage: either is reported and cut). The file is rewritten
//! whole (temporary file, fsync, rename, directory fsync) on open when it holds anything else, and while running
//! when it outgrows four times its size after the last rewrite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{io_err, CorruptionKind, Error, Result};
use crate::ids::new_file_id;
use crate::limits::DEAD_LETTER_REASON_BYTES_MAX;
use crate::record::CrcSeed;
use crate::storage::{read_range, OpenMode, Storage, StorageFile};

/// The notes file's name: `<group name>` followed by this, in the groups directory.
pub(crate) const NOTES_SUFFIX: &str = ".dead_letters";
const NOTES_MAGIC: [u8; 8] = *b"WALQDLN\0";
const NOTES_VERSION: u16 = 1;
const NOTES_HEADER_BYTES: usize = 32;
const NOTE_HEADER_BYTES: usize = 32;
/// Below this size the file is never rewritten while running.
const NOTES_REWRITE_BYTES: u64 = 64 * 1024;
/// The file is rewritten once it is this many times its size after the last rewrite.
const NOTES_GROWTH: u64 = 4;
/// Largest notes file read: every dead letter of a large state with a long reason fits far below it.
const NOTES_BYTES_LIMIT: u64 = 1 << 30;

const KIND_SET: u8 = 1;
const KIND_CLEARED: u8 = 2;

/// Why and when one message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Note {
    pub(crate) at_ms: u64,
    pub(crate) reason: String,
}

/// What replaying a notes file found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// The notes in force: the last `Set` of each offset not `Cleared` after it.
    pub(crate) notes: BTreeMap<u64, Note>,
    /// Records read (a measure of what a rewrite would save).
    pub(crate) records: usize,
    /// Bytes after the last valid record: a torn tail or damage, cut by the next rewrite.
    pub(crate) invalid_bytes: u64,
}

pub(crate) fn notes_path(queue_dir: &Path, name: &str) -> PathBuf {
    queue_dir.join(super::GROUPS_DIR).join(format!("{name}{NOTES_SUFFIX}"))
}

/// `reason` cut to [`DEAD_LETTER_REASON_BYTES_MAX`] bytes at a character boundary.
pub(crate) fn bounded(mut reason: String) -> String {
    if reason.len() > DEAD_LETTER_REASON_BYTES_MAX {
        let mut end = DEAD_LETTER_REASON_BYTES_MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

fn header_bytes(file_id: u64) -> [u8; NOTES_HEADER_BYTES] {
    let mut out = [0u8; NOTES_HEADER_BYTES];
    out[0..8].copy_from_slice(&NOTES_MAGIC);
    out[8..10].copy_from_slice(&NOTES_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&file_id.to_le_bytes());
    let crc = crc32fast::hash(&out[0..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

fn encode(out: &mut Vec<u8>, crc: &CrcSeed, kind: u8, offset: u64, note: Option<&Note>) {
    let (at_ms, reason) = note.map_or((0, ""), |note| (note.at_ms, note.reason.as_str()));
    debug_assert!(reason.len() <= DEAD_LETTER_REASON_BYTES_MAX, "reasons are bounded before they get here");
    let start = out.len();
    out.extend_from_slice(&[0u8; NOTE_HEADER_BYTES]);
    out[start + 4] = kind;
    out[start + 6..start + 8].copy_from_slice(&(reason.len() as u16).to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&offset.to_le_bytes());
    out[start + 16..start + 24].copy_from_slice(&at_ms.to_le_bytes());
    out.extend_from_slice(reason.as_bytes());
    let checksum = crc.checksum(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&checksum.to_le_bytes());
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("two bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

/// Reads a notes file's bytes. A header that fails its checks is [`Error::Corrupt`] (a newer version,
/// [`Error::UnsupportedVersion`]); records are read up to the first invalid one.
pub(crate) fn replay(bytes: &[u8], path: &Path) -> Result<Replayed> {
    let corrupt = |position: u64, kind| Error::Corrupt { file: path.to_path_buf(), position, kind };
    if bytes.len() < NOTES_HEADER_BYTES {
        return Err(corrupt(0, CorruptionKind::Truncated));
    }
    if bytes[0..8] != NOTES_MAGIC {
        return Err(corrupt(0, CorruptionKind::BadMagic));
    }
    if u32::from_le_bytes(bytes[28..32].try_into().expect("four bytes")) != crc32fast::hash(&bytes[0..28]) {
        return Err(corrupt(28, CorruptionKind::BadChecksum));
    }
    let version = u16_at(bytes, 8);
    if version != NOTES_VERSION {
        return Err(Error::UnsupportedVersion { found: u32::from(version), supported: u32::from(NOTES_VERSION) });
    }
    if u16_at(bytes, 10) != 0 || u64_at(bytes, 20) != 0 {
        return Err(corrupt(10, CorruptionKind::BadLayout));
    }
    let crc = CrcSeed::new(u64_at(bytes, 12));
    let mut replayed = Replayed::default();
    let mut at = NOTES_HEADER_BYTES;
    while let Some((len, kind, offset, note)) = decode_at(bytes, at, &crc) {
        match kind {
            KIND_SET => replayed.notes.insert(offset, note),
            _ => replayed.notes.remove(&offset),
        };
        replayed.records += 1;
        at += len;
    }
    replayed.invalid_bytes = (bytes.len() - at) as u64;
    Ok(replayed)
}

/// The record at `at`: its length, kind, offset and note; `None` if there is no whole, valid one.
fn decode_at(bytes: &[u8], at: usize, crc: &CrcSeed) -> Option<(usize, u8, u64, Note)> {
    let header = bytes.get(at..at.checked_add(NOTE_HEADER_BYTES)?)?;
    let reason_len = usize::from(u16_at(header, 6));
    let kind = header[4];
    let layout_ok = matches!(kind, KIND_SET | KIND_CLEARED)
        && header[5] == 0
        && u64_at(header, 24) == 0
        && reason_len <= DEAD_LETTER_REASON_BYTES_MAX
        && (kind == KIND_SET || (reason_len == 0 && u64_at(header, 16) == 0));
    if !layout_ok {
        return None;
    }
    let len = NOTE_HEADER_BYTES + reason_len;
    let record = bytes.get(at..at + len)?;
    if u32::from_le_bytes(record[0..4].try_into().expect("four bytes")) != crc.checksum(&record[4..]) {
        return None;
    }
    let reason = std::str::from_utf8(&record[NOTE_HEADER_BYTES..]).ok()?.to_string();
    Some((len, kind, u64_at(header, 8), Note { at_ms: u64_at(header, 16), reason }))
}

/// Reads the notes file at `path` without changing it; no file is no notes.
pub(crate) fn read(storage: &dyn Storage, path: &Path) -> Result<Replayed> {
    let file = match storage.open_file(path, OpenMode::ReadOnly) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Replayed::default()),
        Err(e) => return Err(Error::io("open dead-letter notes", path, e)),
    };
    let len = file.len_bytes().map_err(io_err("read dead-letter notes length", path))?;
    if len > NOTES_BYTES_LIMIT {
        return Err(Error::Corrupt { file: path.to_path_buf(), position: 0, kind: CorruptionKind::BadLength });
    }
    let bytes = read_range(file.as_ref(), 0, len as usize).map_err(io_err("read dead-letter notes", path))?;
    replay(&bytes, path)
}

/// Whether a write of a note is fsynced before the dead letter is journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoteSync {
    /// `Sync` and `GroupCommit`: a durable dead letter has a durable note.
    Fsync,
    /// `None` and `Interval`: written, made durable by the next rewrite or not at all.
    Written,
}

/// Whether notes go to their file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persistence {
    Writing,
    /// Kept in memory only, the file left as it is: it could not be read or rewritten at open (an I/O error, a
    /// full disk, a newer version), so that the next open may still find its reasons; or the group was deleted.
    Off,
}

/// The open notes of one group: in memory, and appended to their file.
#[derive(Debug)]
pub(crate) struct Notes {
    path: PathBuf,
    storage: Arc<dyn Storage>,
    sync: NoteSync,
    persistence: Persistence,
    /// The open file and its CRC seed; `None` until the first note (or after a failed rewrite removed it).
    file: Option<(Arc<dyn StorageFile>, CrcSeed)>,
    end_bytes: u64,
    rewritten_bytes: u64,
    notes: BTreeMap<u64, Note>,
}

impl Notes {
    /// Notes of a new group: none, and no file (a leftover of a deleted group of the same name is removed).
    pub(crate) fn create(storage: Arc<dyn Storage>, path: PathBuf, sync: NoteSync) -> Result<Notes> {
        match storage.remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("remove old dead-letter notes", &path, e))
            }
            _ => {}
        }
        Ok(Notes::create_unchecked(storage, path, sync))
    }

    /// Reads the notes of a stored group, keeping those of offsets `is_dead` says are dead letters, and rewrites
    /// the file if it held anything else. Never fails the group's open: notes are advisory. A damaged file
    /// (`Corrupt`) is reported and replaced; one that cannot be read or rewritten now (an I/O error, a full disk)
    /// or is of a newer version is left as it is, and this open keeps its notes in memory only.
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        path: PathBuf,
        sync: NoteSync,
        is_dead: impl Fn(u64) -> bool,
    ) -> Notes {
        let mut notes = Notes::create_unchecked(storage, path, sync);
        let replayed = match read(notes.storage.as_ref(), &notes.path) {
            Ok(replayed) => replayed,
            Err(error @ Error::Corrupt { .. }) => {
                tracing::warn!(path = %notes.path.display(), %error, "dead-letter notes damaged; their reasons are lost");
                Replayed { records: 1, ..Replayed::default() }
            }
            Err(error) => {
                tracing::warn!(path = %notes.path.display(), %error, "dead-letter notes not read; kept in memory only");
                notes.persistence = Persistence::Off;
                return notes;
            }
        };
        if replayed.invalid_bytes > 0 {
            let bytes = replayed.invalid_bytes;
            tracing::warn!(path = %notes.path.display(), bytes, "dead-letter notes end in invalid bytes; cut");
        }
        let records = replayed.records;
        notes.notes = replayed.notes.into_iter().filter(|(offset, _)| is_dead(*offset)).collect();
        let ready = if records > notes.notes.len() || replayed.invalid_bytes > 0 {
            notes.rewrite()
        } else if records > 0 {
            notes.reopen_for_append()
        } else {
            Ok(())
        };
        if let Err(error) = ready {
            tracing::warn!(path = %notes.path.display(), %error, "dead-letter notes not rewritten; kept in memory only");
            notes.persistence = Persistence::Off;
        }
        notes
    }

    fn create_unchecked(storage: Arc<dyn Storage>, path: PathBuf, sync: NoteSync) -> Notes {
        Notes {
            path,
            storage,
            sync,
            persistence: Persistence::Writing,
            file: None,
            end_bytes: 0,
            rewritten_bytes: 0,
            notes: BTreeMap::new(),
        }
    }

    fn reopen_for_append(&mut self) -> Result<()> {
        let file = self.storage.open_file(&self.path, OpenMode::ReadWrite).map_err(io_err("open notes", &self.path))?;
        let header = read_range(file.as_ref(), 0, NOTES_HEADER_BYTES).map_err(io_err("read notes", &self.path))?;
        let len = file.len_bytes().map_err(io_err("read notes length", &self.path))?;
        self.file = Some((file, CrcSeed::new(u64_at(&header, 12))));
        (self.end_bytes, self.rewritten_bytes) = (len, len);
        Ok(())
    }

    /// The note of dead letter `offset`, if there is one.
    pub(crate) fn get(&self, offset: u64) -> Option<&Note> {
        self.notes.get(&offset)
    }

    /// Records why `offset` is dead-lettered; kept in memory whatever happens on disk. Call before the dead
    /// letter is journaled. An error means the note may not survive a restart.
    pub(crate) fn set(&mut self, offset: u64, note: Note) -> Result<()> {
        let note = Note { reason: bounded(note.reason), ..note };
        self.notes.insert(offset, note.clone());
        self.append(KIND_SET, offset, Some(&note), self.sync)
    }

    /// Forgets the note of `offset` (redriven): a later dead letter of it whose own note is lost must not show
    /// this reason. Not fsynced: call after the redrive is committed. Does nothing if there is none.
    pub(crate) fn clear(&mut self, offset: u64) -> Result<()> {
        if self.notes.remove(&offset).is_none() {
            return Ok(());
        }
        self.append(KIND_CLEARED, offset, None, NoteSync::Written)
    }

    /// Forgets, in memory, the notes of offsets no longer dead letters for good (discarded, gone): such offsets
    /// never become dead letters again, and the file's copies are dropped by its next rewrite.
    pub(crate) fn forget(&mut self, range: std::ops::Range<u64>) {
        super::ranges::remove_range(&mut self.notes, range);
    }

    /// Appends one record, fsynced if `sync` says so; the notes in memory already say what it says.
    fn append(&mut self, kind: u8, offset: u64, note: Option<&Note>, sync: NoteSync) -> Result<()> {
        if self.persistence == Persistence::Off {
            return Ok(());
        }
        let Some((file, crc)) = self.file.as_ref() else {
            return self.rewrite(); // no file yet (or it failed): created whole, with what is in memory
        };
        let mut bytes = Vec::with_capacity(NOTE_HEADER_BYTES + note.map_or(0, |n| n.reason.len()));
        encode(&mut bytes, crc, kind, offset, note);
        let mut written =
            file.write_all_at(&bytes, self.end_bytes).map_err(io_err("write dead-letter note", &self.path));
        if written.is_ok() && sync == NoteSync::Fsync {
            written = file.sync_data().map_err(io_err("fsync dead-letter notes", &self.path));
        }
        if written.is_err() {
            // What the file holds is unknown now (a retried fsync can falsely succeed): the next note writes a
            // new file from memory instead of appending to this one.
            self.file = None;
            return written;
        }
        self.end_bytes += bytes.len() as u64;
        // Rewritten at 4x growth, and well before the size open reads at most.
        let rewrite_at = NOTES_REWRITE_BYTES.max(NOTES_GROWTH * self.rewritten_bytes).min(NOTES_BYTES_LIMIT / 2);
        if self.end_bytes > rewrite_at {
            if let Err(error) = self.rewrite() {
                tracing::warn!(path = %self.path.display(), %error, "rewriting dead-letter notes failed");
                self.rewritten_bytes = self.end_bytes; // tried again after as much growth, not at every note
            }
        }
        Ok(())
    }

    /// Writes the notes in memory as a new file: temporary file, fsync, rename, directory fsync. With no notes
    /// the file is removed instead. On failure the old file (or none) stays in use.
    pub(crate) fn rewrite(&mut self) -> Result<()> {
        if self.notes.is_empty() {
            match self.storage.remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("remove dead-letter notes", &self.path, e))
                }
                _ => {}
            }
            self.file = None;
            return Ok(());
        }
        let file_id = new_file_id();
        let crc = CrcSeed::new(file_id);
        let mut bytes = header_bytes(file_id).to_vec();
        for (&offset, note) in &self.notes {
            encode(&mut bytes, &crc, KIND_SET, offset, Some(note));
        }
        let temp = self.path.with_extension("dead_letters.tmp");
        let _ = self.storage.remove_file(&temp);
        let file = self.storage.open_file(&temp, OpenMode::CreateNew).map_err(io_err("create notes", &temp))?;
        let written = file
            .write_all_at(&bytes, 0)
            .and_then(|()| file.sync_all())
            .and_then(|()| self.storage.rename(&temp, &self.path));
        if let Err(e) = written {
            let _ = self.storage.remove_file(&temp);
            return Err(Error::io("write dead-letter notes", &self.path, e));
        }
        // The new file is the one under the name now, whatever the directory fsync says: appends go to it.
        self.file = Some((file, crc));
        (self.end_bytes, self.rewritten_bytes) = (bytes.len() as u64, bytes.len() as u64);
        let dir = self.path.parent().expect("notes live in a directory");
        self.storage.sync_dir(dir).map_err(io_err("fsync directory", dir))
    }

    /// Removes the file (the group is deleted); nothing is written after this, so an answer racing the deletion
    /// cannot create the file again.
    pub(crate) fn remove(&mut self) -> Result<()> {
        self.notes.clear();
        let removed = self.rewrite();
        self.persistence = Persistence::Off;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(reason: &str) -> Note {
        Note { at_ms: 1_700_000_000_000, reason: reason.to_string() }
    }

    fn file(records: &[(u8, u64, Option<Note>)]) -> Vec<u8> {
        let mut bytes = header_bytes(9).to_vec();
        for (kind, offset, note) in records {
            encode(&mut bytes, &CrcSeed::new(9), *kind, *offset, note.as_ref());
        }
        bytes
    }

    #[test]
    fn replay_keeps_the_last_set_not_cleared() {
        let bytes = file(&[
            (KIND_SET, 4, Some(note("first"))),
            (KIND_SET, 7, Some(note("seven"))),
            (KIND_CLEARED, 4, None),
            (KIND_SET, 4, Some(note("second ünïcode"))),
        ]);
        let replayed = replay(&bytes, Path::new("x")).unwrap();
        assert_eq!(replayed.records, 4);
        assert_eq!(replayed.invalid_bytes, 0);
        assert_eq!(replayed.notes.get(&4), Some(&note("second ünïcode")));
        assert_eq!(replayed.notes.get(&7), Some(&note("seven")));
    }

    #[test]
    fn every_cut_and_every_flipped_bit_stops_the_replay_never_panics() {
        let bytes = file(&[(KIND_SET, 4, Some(note("a reason"))), (KIND_SET, 5, Some(note("another")))]);
        let whole = replay(&bytes, Path::new("x")).unwrap();
        for cut in 0..bytes.len() {
            match replay(&bytes[..cut], Path::new("x")) {
                Ok(replayed) => {
                    assert!(replayed.notes.len() < 2);
                    assert!(replayed.notes.iter().all(|(o, n)| whole.notes.get(o) == Some(n)));
                }
                Err(error) => assert!(cut < NOTES_HEADER_BYTES, "{error}"),
            }
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            if let Ok(replayed) = replay(&flipped, Path::new("x")) {
                // Whatever is returned was written: a flip is never read as another note.
                assert!(replayed.notes.iter().all(|(o, n)| whole.notes.get(o) == Some(n)), "bit {bit}");
            }
        }
    }

    #[test]
    fn a_newer_version_is_refused() {
        let mut bytes = file(&[]);
        bytes[8] = 2;
        let crc = crc32fast::hash(&bytes[0..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(replay(&bytes, Path::new("x")), Err(Error::UnsupportedVersion { found: 2, supported: 1 })));
    }

    #[test]
    fn reasons_are_bounded_at_a_character_boundary() {
        let long = "é".repeat(DEAD_LETTER_REASON_BYTES_MAX);
        let cut = bounded(long);
        assert!(cut.len() <= DEAD_LETTER_REASON_BYTES_MAX && cut.len() > DEAD_LETTER_REASON_BYTES_MAX - 2);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
