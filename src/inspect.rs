//! Read-only inspection of a queue directory, for the `walq` tool and for operators' own code.
//!
//! An [`Inspector`] takes no lock and never writes, so it works while a live process owns the queue. It maps only
//! sealed segments (never the last one, which may be being written), reads the last one with `pread`, and
//! tolerates a segment that grows, is rewritten by compaction or disappears by cleanup while it reads. It decodes
//! with the engine's own decoders, so what it reports is what the engine would see.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{CorruptionKind, Error, Result};
use crate::group::{self, GroupSnapshot};
use crate::index;
use crate::manifest::{self, Manifest, MANIFEST_FILE};
use crate::message::{Header, Offset};
use crate::options::RecoveryMode;
use crate::record::{self, CrcSeed, FrameError};
use crate::recovery::{self, SkippedRange, Truncation};
use crate::segment::{parse_segment_file_name, segment_file_name, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::storage::{read_range, FsStorage, OpenMode, ReadView, Storage, StorageFile};

/// Bytes read at once when following the segment being written.
const FOLLOW_CHUNK_BYTES: usize = 256 * 1024;

/// A read-only view of a queue directory.
#[derive(Debug, Clone)]
pub struct Inspector {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    manifest: Manifest,
}

/// A stored record as the tool shows it: the message and where it lies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InspectedRecord {
    /// The message's offset.
    pub offset: Offset,
    /// The segment file holding it.
    pub segment: PathBuf,
    /// Byte position of its frame in that file.
    pub position: u64,
    /// Size of its frame in bytes.
    pub size_bytes: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The key, if any.
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    /// The value; `None` for a tombstone.
    #[serde(skip)]
    pub value: Option<Vec<u8>>,
    /// The headers.
    #[serde(skip)]
    pub headers: Vec<Header>,
}

/// What a scan met: a record, damage, or the unfinished end of the segment being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    /// A valid record (its checksum verified).
    Record(InspectedRecord),
    /// Bytes that fail a check where a valid frame must be.
    Damage(Problem),
    /// Invalid bytes after the last valid frame of the last segment: a write in progress, or a torn tail that
    /// recovery would cut.
    Tail {
        /// The segment.
        file: PathBuf,
        /// Where the valid frames end.
        position: u64,
        /// How many non-zero bytes follow (zeros, preallocated space, are not reported).
        bytes: u64,
    },
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Stored data fails a check: messages may be lost. `walq verify` exits with 2.
    Corruption,
    /// Something the engine repairs by itself (a stale index, a torn tail, a torn journal tail).
    Warning,
}

/// One finding, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// How bad it is.
    pub severity: Severity,
    /// The file.
    pub file: PathBuf,
    /// The byte position in the file, where there is one.
    pub position: Option<u64>,
    /// The failed check, if it is one of the engine's.
    pub kind: Option<CorruptionKind>,
    /// What is wrong, for people.
    pub what: String,
}

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SegmentSummary {
    /// The file.
    pub file: PathBuf,
    /// Its base offset.
    pub base_offset: u64,
    /// Its size in bytes (for the last segment, preallocated space included).
    pub size_bytes: u64,
    /// Whether it is the last segment (the one a live owner writes to).
    pub last: bool,
}

/// What `walq info` shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// The queue directory.
    pub dir: PathBuf,
    /// The format version of the manifest.
    pub format_version: u32,
    /// The queue's identity.
    pub queue_id: String,
    /// When the queue was created, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The stored settings.
    pub settings: serde_json::Value,
    /// The segments, oldest first.
    pub segments: Vec<SegmentSummary>,
    /// The oldest stored offset (the base of the oldest segment).
    pub first_offset: Offset,
    /// The offset after the last valid record.
    pub next_offset: Offset,
    /// Bytes of all segments.
    pub segment_bytes: u64,
    /// The consumer groups.
    pub groups: Vec<GroupSnapshot>,
}

/// What recovery would do on the next open, found without changing a byte.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryPreview {
    /// The segment whose tail would be examined.
    pub segment: Option<PathBuf>,
    /// The offset the next append would get.
    pub next_offset: Offset,
    /// The tail it would cut.
    pub truncation: Option<Truncation>,
    /// Damage it would skip (only with `RecoveryMode::SkipCorrupt`).
    pub skipped: Vec<SkippedRange>,
    /// A segment whose creation was torn by a crash, which it would remove.
    pub removes_segment: Option<PathBuf>,
    /// Why it would refuse to open, if it would.
    pub refusal: Option<String>,
}

/// What `walq verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Every finding.
    pub problems: Vec<Problem>,
    /// Segments checked.
    pub segments: usize,
    /// Records whose checksum was verified.
    pub records: u64,
    /// Segment bytes read.
    pub bytes: u64,
    /// Group journals checked.
    pub groups: usize,
    /// What the next open would do.
    pub recovery: RecoveryPreview,
}

impl VerifyReport {
    /// Whether nothing is corrupt (warnings allowed).
    pub fn is_clean(&self) -> bool {
        self.problems.iter().all(|p| p.severity != Severity::Corruption)
    }
}

impl Inspector {
    /// Opens a queue directory for reading. Fails with [`Error::NotAQueue`] if it holds no manifest, and with
    /// [`Error::UnsupportedVersion`] if the manifest is newer than this build.
    pub fn open(dir: impl AsRef<Path>) -> Result<Inspector> {
        Inspector::open_with(dir, Arc::new(FsStorage))
    }

    /// Opens with another storage (tests).
    pub fn open_with(dir: impl AsRef<Path>, storage: Arc<dyn Storage>) -> Result<Inspector> {
        let dir = dir.as_ref().to_path_buf();
        let names = storage.list_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => Error::NotAQueue { dir: dir.clone() },
            _ => Error::io("list directory", &dir, e),
        })?;
        if !names.iter().any(|n| n == MANIFEST_FILE) {
            return Err(Error::NotAQueue { dir });
        }
        let manifest = manifest::read(storage.as_ref(), &dir)?.ok_or_else(|| Error::NotAQueue { dir: dir.clone() })?;
        Ok(Inspector { dir, storage, manifest })
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The base offsets of the segments, oldest first.
    fn segment_bases(&self) -> Result<Vec<u64>> {
        let names = self.storage.list_dir(&self.dir).map_err(|e| Error::io("list directory", &self.dir, e))?;
        let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_file_name(n)).collect();
        bases.sort_unstable();
        Ok(bases)
    }

    fn segment_path(&self, base: u64) -> PathBuf {
        self.dir.join(segment_file_name(base))
    }

    /// The bytes of a segment: mapped if sealed, read if last; `None` if it disappeared meanwhile.
    fn segment_bytes(&self, base: u64, last: bool) -> Result<Option<ReadView>> {
        let path = self.segment_path(base);
        let result = if last {
            self.storage.open_file(&path, OpenMode::ReadOnly).and_then(|file| {
                let len = file.len_bytes()?;
                read_range(file.as_ref(), 0, len as usize).map(ReadView::from_vec)
            })
        } else {
            self.storage.map_read_only(&path)
        };
        match result {
            Ok(view) => Ok(Some(view)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read segment", &path, e)),
        }
    }

    /// What `walq info` shows.
    pub fn summary(&self) -> Result<Summary> {
        let bases = self.segment_bases()?;
        let mut segments = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let file = self.segment_path(base);
            let Ok(handle) = self.storage.open_file(&file, OpenMode::ReadOnly) else { continue };
            let size_bytes = handle.len_bytes().map_err(|e| Error::io("read segment length", &file, e))?;
            segments.push(SegmentSummary { file, base_offset: base, size_bytes, last: i + 1 == bases.len() });
        }
        let preview = self.recovery_preview(RecoveryMode::TolerateTornTail)?;
        let next_offset = preview.next_offset;
        Ok(Summary {
            dir: self.dir.clone(),
            format_version: self.manifest.format_version,
            queue_id: self.manifest.queue_id.clone(),
            created_ms: self.manifest.created_ms,
            settings: serde_json::to_value(self.manifest.settings).expect("settings serialize"),
            first_offset: Offset(bases.first().copied().unwrap_or(0)),
            next_offset,
            segment_bytes: segments.iter().map(|s| s.size_bytes).sum(),
            segments,
            groups: self.groups_at(next_offset.0)?,
        })
    }

    /// The consumer groups, from their journals.
    pub fn groups(&self) -> Result<Vec<GroupSnapshot>> {
        let end = self.recovery_preview(RecoveryMode::TolerateTornTail)?.next_offset;
        self.groups_at(end.0)
    }

    fn group_names(&self) -> Result<Vec<String>> {
        let dir = self.dir.join(group::GROUPS_DIR);
        let names = match self.storage.list_dir(&dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list groups", &dir, e)),
        };
        let mut groups: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".journal"))
            .filter(|n| group::validate_name(n).is_ok())
            .map(String::from)
            .collect();
        groups.sort();
        Ok(groups)
    }

    fn groups_at(&self, log_end: u64) -> Result<Vec<GroupSnapshot>> {
        self.group_names()?
            .iter()
            .map(|name| group::snapshot(self.storage.as_ref(), &self.dir, name, log_end))
            .collect()
    }

    /// Every stored record from `from` on, segment by segment, checksums verified.
    pub fn records(&self, from: Offset) -> Result<RecordScan<'_>> {
        let bases = self.segment_bases()?;
        // Skip the segments that end before `from`.
        let skip = bases.windows(2).take_while(|w| w[1] <= from.0).count();
        Ok(RecordScan {
            inspector: self,
            bases: bases[skip..].to_vec(),
            next: 0,
            current: None,
            from: from.0,
            min_offset: 0,
        })
    }

    /// Records appended from `from` on, as they land (for `walq tail --follow`).
    pub fn follow(&self, from: Offset) -> Follower<'_> {
        Follower { inspector: self, base: None, file: None, position: 0, next_offset: from.0 }
    }

    /// What the next open with `mode` would do to the last segment, without changing anything.
    pub fn recovery_preview(&self, mode: RecoveryMode) -> Result<RecoveryPreview> {
        let bases = self.segment_bases()?;
        let mut preview = RecoveryPreview::default();
        for &base in bases.iter().rev() {
            let path = self.segment_path(base);
            let file = match self.storage.open_file(&path, OpenMode::ReadOnly) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("open segment", &path, e)),
            };
            let len = file.len_bytes().map_err(|e| Error::io("read segment length", &path, e))?;
            let head =
                read_range(file.as_ref(), 0, SEGMENT_HEADER_BYTES).map_err(|e| Error::io("read segment", &path, e))?;
            let header = match SegmentHeader::decode(&head) {
                Ok(header) if header.base_offset == base => header,
                Ok(_) => {
                    preview.refusal = Some(format!("{} names another base offset in its header", path.display()));
                    return Ok(preview);
                }
                Err(_)
                    if preview.removes_segment.is_none()
                        && recovery::is_torn_create(file.as_ref(), len, base, &head)? =>
                {
                    preview.removes_segment = Some(path);
                    preview.next_offset = Offset(base);
                    continue;
                }
                Err(_) => {
                    preview.refusal = Some(format!("{} has a damaged header", path.display()));
                    return Ok(preview);
                }
            };
            preview.segment = Some(path);
            match recovery::plan_tail(
                self.storage.as_ref(),
                &self.dir,
                file.as_ref(),
                header,
                len,
                mode,
                self.manifest.durable_end_offset.unwrap_or(0),
            ) {
                Ok(plan) => {
                    preview.next_offset = Offset(plan.next_offset);
                    preview.truncation = plan.cut;
                    preview.skipped = plan.skipped;
                }
                Err(error) => preview.refusal = Some(error.to_string()),
            }
            return Ok(preview);
        }
        Ok(preview)
    }

    /// Checks everything: every frame's checksum, offset order within and across segments, each index against its
    /// segment, the group journals, and what recovery would do. `progress(done, total)` gets segment bytes.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let bases = self.segment_bases()?;
        let total: u64 = bases
            .iter()
            .filter_map(|&b| self.storage.open_file(&self.segment_path(b), OpenMode::ReadOnly).ok())
            .filter_map(|f| f.len_bytes().ok())
            .sum();
        let mut last_offset: Option<(u64, PathBuf)> = None;
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            let Some(bytes) = self.segment_bytes(base, last)? else { continue };
            report.segments += 1;
            report.bytes += bytes.len() as u64;
            let path = self.segment_path(base);
            self.verify_segment(&path, base, &bytes, last, &mut last_offset, &mut report);
            progress(report.bytes, total);
        }
        let recovery = self.recovery_preview(RecoveryMode::TolerateTornTail)?;
        if let Some(refusal) = &recovery.refusal {
            report.problems.push(Problem {
                severity: Severity::Corruption,
                file: recovery.segment.clone().unwrap_or_else(|| self.dir.clone()),
                position: None,
                kind: None,
                what: format!("the next open would fail: {refusal}"),
            });
        }
        if let Some(cut) = &recovery.truncation {
            report.problems.push(Problem {
                severity: Severity::Warning,
                file: cut.file.clone(),
                position: Some(cut.position),
                kind: None,
                what: format!(
                    "torn tail: the next open cuts {} bytes ({} whole frames no later frame proves durable)",
                    cut.bytes, cut.frames_dropped
                ),
            });
        }
        for name in self.group_names()? {
            report.groups += 1;
            match group::snapshot(self.storage.as_ref(), &self.dir, &name, recovery.next_offset.0) {
                Ok(snapshot) if snapshot.torn_tail_bytes > 0 => report.problems.push(Problem {
                    severity: Severity::Warning,
                    file: group::journal_path(&self.dir, &name),
                    position: Some(snapshot.journal_bytes - snapshot.torn_tail_bytes),
                    kind: None,
                    what: format!("torn journal tail: the next open cuts {} bytes", snapshot.torn_tail_bytes),
                }),
                Ok(_) => {}
                Err(Error::Corrupt { file, position, kind }) => report.problems.push(Problem {
                    severity: Severity::Corruption,
                    file,
                    position: Some(position),
                    kind: Some(kind),
                    what: format!("group {name}: {kind}"),
                }),
                Err(error) => return Err(error),
            }
        }
        report.recovery = recovery;
        Ok(report)
    }

    fn verify_segment(
        &self,
        path: &Path,
        base: u64,
        bytes: &[u8],
        last: bool,
        last_offset: &mut Option<(u64, PathBuf)>,
        report: &mut VerifyReport,
    ) {
        let corrupt = |position: u64, kind: CorruptionKind, what: String| Problem {
            severity: Severity::Corruption,
            file: path.to_path_buf(),
            position: Some(position),
            kind: Some(kind),
            what,
        };
        let header = match SegmentHeader::decode(bytes) {
            Ok(header) if header.base_offset == base => header,
            Ok(_) => {
                let what = "the header names another base offset than the file name".to_string();
                report.problems.push(corrupt(16, CorruptionKind::WrongSegment, what));
                return;
            }
            Err(_) if last => return, // a torn creation; the recovery preview says what open would do
            Err(error) => {
                report.problems.push(Problem {
                    what: format!("bad segment header: {}", crate::segment::header_error(path, error)),
                    ..corrupt(0, CorruptionKind::BadLayout, String::new())
                });
                return;
            }
        };
        if let Some((previous, previous_file)) = last_offset {
            if base <= *previous {
                let what = format!("base offset {base} overlaps offset {previous} of {}", previous_file.display());
                report.problems.push(corrupt(16, CorruptionKind::BadOffset, what));
            }
        }
        let mut position = SEGMENT_HEADER_BYTES;
        let mut expected_min = base;
        let mut frames = Vec::new();
        let crc = CrcSeed::new(header.segment_id);
        while position < bytes.len() {
            match record::decode(&bytes[position..], &crc) {
                Ok(frame) if frame.offset >= expected_min => {
                    frames.push((frame.offset, position));
                    expected_min = frame.offset + 1;
                    *last_offset = Some((frame.offset, path.to_path_buf()));
                    report.records += 1;
                    position += frame.len_bytes;
                }
                Ok(frame) => {
                    let what = format!("offset {} after offset {}", frame.offset, expected_min - 1);
                    report.problems.push(corrupt(position as u64, CorruptionKind::BadOffset, what));
                    break;
                }
                Err(_) if last => break, // the tail of the last segment: the recovery preview judges it
                Err(error) => {
                    let kind = match error {
                        FrameError::Truncated { .. } => CorruptionKind::Truncated,
                        FrameError::Invalid(kind) => kind,
                    };
                    report.problems.push(corrupt(
                        position as u64,
                        kind,
                        format!("damaged frame in a sealed segment: {kind}"),
                    ));
                    break;
                }
            }
        }
        self.verify_index(path, &header, &frames, report);
    }

    fn verify_index(&self, path: &Path, header: &SegmentHeader, frames: &[(u64, usize)], report: &mut VerifyReport) {
        let index_path = path.with_extension("idx");
        let warn = |position: Option<u64>, what: String| Problem {
            severity: Severity::Warning,
            file: index_path.clone(),
            position,
            kind: None,
            what,
        };
        let Ok(file) = self.storage.open_file(&index_path, OpenMode::ReadOnly) else {
            report.problems.push(warn(None, "no index file (rebuilt on first use)".to_string()));
            return;
        };
        let index = file.len_bytes().and_then(|len| read_range(file.as_ref(), 0, len as usize)).unwrap_or_default();
        if !index::header_matches(&index, header.base_offset, header.segment_id) {
            report
                .problems
                .push(warn(Some(0), "the index belongs to another segment file (rebuilt on first use)".to_string()));
            return;
        }
        for n in 0..index::entry_count(index.len()) {
            let at = (index::INDEX_HEADER_BYTES + n * index::INDEX_ENTRY_BYTES) as u64;
            let Some(entry) = index::decode_entry(&index, header.segment_id, n) else {
                report.problems.push(warn(Some(at), format!("index entry {n} is damaged (rebuilt on use)")));
                return;
            };
            let offset = header.base_offset + u64::from(entry.rel_offset);
            if frames.binary_search(&(offset, entry.position as usize)).is_err() {
                report.problems.push(warn(
                    Some(at),
                    format!("index entry {n} points at no frame of offset {offset} (rebuilt on use)"),
                ));
                return;
            }
        }
    }
}

/// Iterates over stored records; see [`Inspector::records`].
#[derive(Debug)]
pub struct RecordScan<'a> {
    inspector: &'a Inspector,
    bases: Vec<u64>,
    next: usize,
    current: Option<SegmentCursor>,
    from: u64,
    min_offset: u64,
}

#[derive(Debug)]
struct SegmentCursor {
    path: PathBuf,
    bytes: ReadView,
    /// The segment id as frame checksums use it.
    crc: CrcSeed,
    position: usize,
    last: bool,
}

impl RecordScan<'_> {
    fn open_next(&mut self) -> Option<Result<Scanned>> {
        while self.next < self.bases.len() {
            let base = self.bases[self.next];
            let last = self.next + 1 == self.bases.len();
            self.next += 1;
            let path = self.inspector.segment_path(base);
            let bytes = match self.inspector.segment_bytes(base, last) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue, // deleted by cleanup meanwhile
                Err(error) => return Some(Err(error)),
            };
            match SegmentHeader::decode(&bytes) {
                Ok(header) if header.base_offset == base => {
                    self.min_offset = self.min_offset.max(base);
                    self.current = Some(SegmentCursor {
                        path,
                        bytes,
                        crc: CrcSeed::new(header.segment_id),
                        position: SEGMENT_HEADER_BYTES,
                        last,
                    });
                    return None;
                }
                Ok(_) => {
                    return Some(Ok(Scanned::Damage(Problem {
                        severity: Severity::Corruption,
                        file: path,
                        position: Some(16),
                        kind: Some(CorruptionKind::WrongSegment),
                        what: "the header names another base offset".to_string(),
                    })))
                }
                Err(_) if last && bytes.len() <= 512 => continue,
                Err(error) => {
                    let what = crate::segment::header_error(&path, error).to_string();
                    return Some(Ok(Scanned::Damage(Problem {
                        severity: Severity::Corruption,
                        file: path,
                        position: Some(0),
                        kind: None,
                        what,
                    })));
                }
            }
        }
        None
    }
}

impl Iterator for RecordScan<'_> {
    type Item = Result<Scanned>;

    fn next(&mut self) -> Option<Result<Scanned>> {
        loop {
            let Some(cursor) = &mut self.current else {
                if let Some(item) = self.open_next() {
                    return Some(item);
                }
                self.current.as_ref()?;
                continue;
            };
            if cursor.position >= cursor.bytes.len() {
                self.current = None;
                continue;
            }
            let position = cursor.position;
            match record::decode(&cursor.bytes[position..], &cursor.crc) {
                Ok(frame) if frame.offset >= self.min_offset => {
                    cursor.position += frame.len_bytes;
                    self.min_offset = frame.offset + 1;
                    if frame.offset < self.from {
                        continue;
                    }
                    return Some(Ok(Scanned::Record(InspectedRecord {
                        offset: Offset(frame.offset),
                        segment: cursor.path.clone(),
                        position: position as u64,
                        size_bytes: frame.len_bytes as u64,
                        timestamp_ms: frame.timestamp_ms,
                        key: frame.key.map(<[u8]>::to_vec),
                        value: frame.value.map(<[u8]>::to_vec),
                        headers: frame.headers(),
                    })));
                }
                Ok(_) | Err(_) if cursor.last => {
                    let rest = &cursor.bytes[position..];
                    let bytes = rest.iter().rposition(|&b| b != 0).map_or(0, |last| last as u64 + 1);
                    let file = cursor.path.clone();
                    self.current = None;
                    if bytes > 0 {
                        return Some(Ok(Scanned::Tail { file, position: position as u64, bytes }));
                    }
                }
                result => {
                    let kind = match result {
                        Ok(_) => CorruptionKind::BadOffset,
                        Err(FrameError::Truncated { .. }) => CorruptionKind::Truncated,
                        Err(FrameError::Invalid(kind)) => kind,
                    };
                    let file = cursor.path.clone();
                    self.current = None; // the rest of this segment cannot be trusted to be framed
                    return Some(Ok(Scanned::Damage(Problem {
                        severity: Severity::Corruption,
                        file,
                        position: Some(position as u64),
                        kind: Some(kind),
                        what: format!("damaged frame: {kind}"),
                    })));
                }
            }
        }
    }
}

/// Follows the end of the log; see [`Inspector::follow`].
#[derive(Debug)]
pub struct Follower<'a> {
    inspector: &'a Inspector,
    base: Option<(u64, u64)>,
    file: Option<Arc<dyn StorageFile>>,
    position: u64,
    next_offset: u64,
}

impl Follower<'_> {
    /// The offset the follower looks for next.
    pub fn next_offset(&self) -> Offset {
        Offset(self.next_offset)
    }

    /// Records that landed since the last call (empty when there are none yet).
    pub fn poll(&mut self) -> Result<Vec<InspectedRecord>> {
        let mut records = Vec::new();
        loop {
            if self.file.is_none() && !self.open_segment()? {
                return Ok(records);
            }
            let exhausted = self.read_available(&mut records)?;
            if !exhausted {
                continue;
            }
            // Nothing more in this segment for now: move on only if a newer segment exists (so this one is sealed).
            let (base, _) = self.base.expect("a segment is open");
            let newer = self.inspector.segment_bases()?.into_iter().find(|&b| b > base);
            match newer {
                Some(next) => {
                    self.read_available(&mut records)?; // whatever was written before the roll
                    self.file = None;
                    if !self.open_specific(next)? {
                        return Ok(records); // the new segment's header is not written yet: next time
                    }
                }
                None => return Ok(records),
            }
        }
    }

    fn open_segment(&mut self) -> Result<bool> {
        let bases = self.inspector.segment_bases()?;
        let base = bases.iter().rev().find(|&&b| b <= self.next_offset).or(bases.first()).copied();
        match base {
            Some(base) => self.open_specific(base),
            None => Ok(false),
        }
    }

    fn open_specific(&mut self, base: u64) -> Result<bool> {
        let path = self.inspector.segment_path(base);
        let file = match self.inspector.storage.open_file(&path, OpenMode::ReadOnly) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("open segment", &path, e)),
        };
        let head =
            read_range(file.as_ref(), 0, SEGMENT_HEADER_BYTES).map_err(|e| Error::io("read segment", &path, e))?;
        let Ok(header) = SegmentHeader::decode(&head) else { return Ok(false) }; // being created: try later
        self.base = Some((base, header.segment_id));
        self.file = Some(file);
        self.position = SEGMENT_HEADER_BYTES as u64;
        Ok(true)
    }

    /// Reads frames from the current position; returns whether it reached the end of what is written.
    fn read_available(&mut self, records: &mut Vec<InspectedRecord>) -> Result<bool> {
        let (Some(file), Some((base, segment_id))) = (&self.file, self.base) else { return Ok(true) };
        let path = self.inspector.segment_path(base);
        let mut chunk_bytes = FOLLOW_CHUNK_BYTES;
        let crc = CrcSeed::new(segment_id);
        loop {
            let chunk = read_range(file.as_ref(), self.position, chunk_bytes)
                .map_err(|e| Error::io("read segment", &path, e))?;
            let mut at = 0;
            loop {
                match record::decode(&chunk[at..], &crc) {
                    Ok(frame) => {
                        if frame.offset >= self.next_offset {
                            records.push(InspectedRecord {
                                offset: Offset(frame.offset),
                                segment: path.clone(),
                                position: self.position + at as u64,
                                size_bytes: frame.len_bytes as u64,
                                timestamp_ms: frame.timestamp_ms,
                                key: frame.key.map(<[u8]>::to_vec),
                                value: frame.value.map(<[u8]>::to_vec),
                                headers: frame.headers(),
                            });
                            self.next_offset = frame.offset + 1;
                        }
                        at += frame.len_bytes;
                    }
                    Err(FrameError::Truncated { need_bytes }) if chunk.len() == chunk_bytes && at == 0 => {
                        chunk_bytes = need_bytes.max(chunk_bytes * 2); // a frame larger than the chunk
                        break;
                    }
                    Err(_) => {
                        self.position += at as u64;
                        return Ok(chunk.len() < chunk_bytes || at == 0);
                    }
                }
            }
        }
    }
}
