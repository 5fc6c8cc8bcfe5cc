//! Read-only inspection of a queue directory, for the `walq` tool and for operators' own code.
//!
//! An [`Inspector`] takes no lock and never writes, so it works while a live process owns the queue. It reads with
//! `pread` (never a map: a file that shrinks under a map kills the process, and this tool exists to look at damaged
//! queues), and tolerates a segment that grows, is rewritten by compaction or disappears by cleanup while it reads.
//! It walks frames with the engine's own walker (`segment::FrameReader`), so what it reports is what the engine
//! would see.
//!
//! Every subcommand judges where a segment's valid frames end in one place (`Inspector::judge_ending`), as
//! recovery and readers do: in a sealed segment anything but the end is damage; in the last one, bytes after the
//! last valid frame are a torn tail (or a write in progress) only if no acknowledged record lies behind them: not
//! below the durable end the last clean close recorded, and not below where recovery finds the log's end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{not_a_queue, CorruptionKind, Error, Result};
use crate::group::{self, GroupSnapshot};
use crate::index;
use crate::manifest::{self, Manifest, MANIFEST_FILE};
use crate::message::{Header, Offset};
use crate::options::RecoveryMode;
use crate::record::Frame;
use crate::recovery::{self, SkippedRange, Truncation};
use crate::segment::walk::{Order, Stop};
use crate::segment::{
    frame_at_position, nonzero_extent, parse_segment_file_name, segment_file_name, FrameReader, HeaderError, Next,
    SealedSegment, SegmentHeader, SEGMENT_FILE_BYTES_MAX, SEGMENT_HEADER_BYTES,
};
use crate::storage::{read_range, FsStorage, OpenMode, Storage, StorageFile};

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
    /// Damage found in the last segment (every frame of it is read; `walq verify` reads all segments).
    pub problems: Vec<Problem>,
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
        let not_a_queue = |found| Error::NotAQueue { dir: dir.clone(), found };
        let names = storage.list_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_a_queue(not_a_queue::MISSING),
            std::io::ErrorKind::NotADirectory => not_a_queue(not_a_queue::FILE),
            _ => Error::io("list directory", &dir, e),
        })?;
        if names.is_empty() {
            return Err(not_a_queue(not_a_queue::EMPTY));
        }
        if !names.iter().any(|n| n == MANIFEST_FILE) {
            return Err(not_a_queue(not_a_queue::FOREIGN));
        }
        let manifest = manifest::read(storage.as_ref(), &dir)?.ok_or_else(|| not_a_queue(not_a_queue::FOREIGN))?;
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

    /// Opens segment `base` and reads its header bytes; `None` if it disappeared meanwhile (cleanup).
    fn open_segment(&self, base: u64) -> Result<Option<SegmentFile>> {
        let path = self.segment_path(base);
        let opened = self.storage.open_file(&path, OpenMode::ReadOnly).and_then(|file| {
            let len_bytes = file.len_bytes()?;
            let head = read_range(file.as_ref(), 0, SEGMENT_HEADER_BYTES)?;
            Ok((file, len_bytes, head))
        });
        match opened {
            Ok((file, len_bytes, head)) => {
                let header = SegmentHeader::decode(&head);
                Ok(Some(SegmentFile { base, path, file, len_bytes, header }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read segment", &path, e)),
        }
    }

    /// How the valid frames of `segment` end, when a walk over them stopped at byte `at` (with `stop`) and the
    /// next offset `next_offset`. `preview` is what the next open would do, found before the walk (so that frames
    /// a live owner appends meanwhile only make the walk go further). The one diagnosis every subcommand uses.
    fn judge_ending(
        &self,
        segment: &SegmentFile,
        last: bool,
        (at, stop, next_offset): (u64, Stop, u64),
        preview: &RecoveryPreview,
    ) -> Result<Ending> {
        if at >= segment.len_bytes {
            return Ok(Ending::Clean);
        }
        let kind = stop.kind();
        let damage = |what: String| {
            let problem = Problem::corruption(&segment.path, at, kind, what);
            Ok(Ending::Damage(problem))
        };
        if !last {
            return damage(format!("damaged frame in a sealed segment: {kind}"));
        }
        if let Some(refusal) = preview.refusal.as_ref().filter(|_| preview.segment.as_ref() == Some(&segment.path)) {
            return damage(format!("damaged frame ({kind}); the next open would fail: {refusal}"));
        }
        let durable_end = self.manifest.durable_end_offset.unwrap_or(0);
        let acknowledged_end = preview.next_offset.0.max(durable_end);
        if next_offset < acknowledged_end {
            return damage(format!(
                "damaged frame ({kind}): offsets {next_offset} to {} lie behind it, acknowledged, and cannot be read",
                acknowledged_end - 1
            ));
        }
        let bytes = nonzero_extent(segment.file.as_ref(), at, segment.len_bytes)
            .map_err(|e| Error::io("read segment", &segment.path, e))?;
        Ok(if bytes == 0 { Ending::Clean } else { Ending::Tail { position: at, bytes } })
    }

    /// The segment files with their sizes, oldest first (no frame is read: cheap, for progress totals).
    pub fn segments(&self) -> Result<Vec<SegmentSummary>> {
        let bases = self.segment_bases()?;
        let mut segments = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let file = self.segment_path(base);
            let Ok(handle) = self.storage.open_file(&file, OpenMode::ReadOnly) else { continue };
            let size_bytes = handle.len_bytes().map_err(|e| Error::io("read segment length", &file, e))?;
            segments.push(SegmentSummary { file, base_offset: base, size_bytes, last: i + 1 == bases.len() });
        }
        Ok(segments)
    }

    /// What `walq info` shows.
    pub fn summary(&self) -> Result<Summary> {
        let segments = self.segments()?;
        let preview = self.recovery_preview(RecoveryMode::TolerateTornTail)?;
        let (problems, walked_end) = match segments.last() {
            Some(last) => self.check_last_segment(last.base_offset, &preview)?,
            None => (Vec::new(), preview.next_offset.0),
        };
        // When the next open would refuse, recovery names no end: the end of the valid frames is the truth.
        let next_offset = if preview.refusal.is_some() { Offset(walked_end) } else { preview.next_offset };
        Ok(Summary {
            dir: self.dir.clone(),
            format_version: self.manifest.format_version,
            queue_id: self.manifest.queue_id.clone(),
            created_ms: self.manifest.created_ms,
            settings: serde_json::to_value(self.manifest.settings).expect("settings serialize"),
            // A purge point past a tail the next open cuts is lowered to the end then (`Queue::purge_until`).
            first_offset: Offset(
                segments.first().map_or(0, |s| s.base_offset).max(self.manifest.purged_below()).min(next_offset.0),
            ),
            next_offset,
            segment_bytes: segments.iter().map(|s| s.size_bytes).sum(),
            segments,
            groups: self.groups_at(next_offset.0)?,
            problems,
        })
    }

    /// Walks every frame of the last segment and judges its end: the damage `info` reports.
    /// Returns the damage found, and the offset after the last valid frame.
    fn check_last_segment(&self, base: u64, preview: &RecoveryPreview) -> Result<(Vec<Problem>, u64)> {
        let mut scan = RecordScan {
            inspector: self,
            bases: vec![base],
            next: 0,
            current: None,
            from: u64::MAX,
            min_offset: 0,
            preview: Some(preview.clone()),
            last_base: base,
            previous_scanned: None,
        };
        let mut problems = Vec::new();
        for scanned in scan.by_ref() {
            if let Scanned::Damage(problem) = scanned? {
                problems.push(problem);
            }
        }
        Ok((problems, scan.min_offset.max(base)))
    }

    /// The consumer groups, from their journals (lag counted to the end of the valid frames when the next open
    /// would refuse, as `summary` does).
    pub fn groups(&self) -> Result<Vec<GroupSnapshot>> {
        let preview = self.recovery_preview(RecoveryMode::TolerateTornTail)?;
        let end = match (&preview.refusal, self.segment_bases()?.last()) {
            (Some(_), Some(&last)) => self.check_last_segment(last, &preview)?.1,
            _ => preview.next_offset.0,
        };
        self.groups_at(end)
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

    /// The groups' snapshots; a group whose journal is damaged is listed with its damage, not an error for all.
    fn groups_at(&self, log_end: u64) -> Result<Vec<GroupSnapshot>> {
        self.group_names()?
            .iter()
            .map(|name| match group::snapshot(self.storage.as_ref(), &self.dir, name, log_end) {
                Err(error @ Error::Corrupt { .. }) => {
                    let path = group::journal_path(&self.dir, name);
                    let len =
                        self.storage.open_file(&path, OpenMode::ReadOnly).and_then(|f| f.len_bytes()).unwrap_or(0);
                    Ok(GroupSnapshot::damaged(name, len, &error))
                }
                other => other,
            })
            .collect()
    }

    /// Every stored record from `from` on, segment by segment, checksums verified; purged records
    /// ([`Queue::purge_until`](crate::Queue::purge_until)) are not returned.
    pub fn records(&self, from: Offset) -> Result<RecordScan<'_>> {
        let from = Offset(from.0.max(self.manifest.purged_below()));
        let bases = self.segment_bases()?;
        // Skip the segments that end before `from`.
        let skip = bases.windows(2).take_while(|w| w[1] <= from.0).count();
        Ok(RecordScan {
            inspector: self,
            last_base: bases.last().copied().unwrap_or(0),
            bases: bases[skip..].to_vec(),
            next: 0,
            current: None,
            from: from.0,
            min_offset: 0,
            preview: None,
            previous_scanned: None,
        })
    }

    /// Where to read from for the records whose timestamp is at or after `time_ms`: every record before it is
    /// earlier (`walq dump --since-ms`), found by the segments' time index (see
    /// [`Queue::offset_for_time`](crate::Queue::offset_for_time)) instead of reading from the start. A segment that
    /// cannot be judged (damaged) is read.
    pub fn time_start(&self, time_ms: u64) -> Result<Offset> {
        let purged_below = self.manifest.purged_below();
        let bases = self.segment_bases()?;
        let ends = bases.iter().skip(1).map(|&b| Some(b)).chain([None]);
        for (&base, end) in bases.iter().zip(ends) {
            if end.is_some_and(|end| end <= purged_below) {
                continue; // purged whole
            }
            let segment = SealedSegment::new(self.storage.clone(), &self.dir, base);
            match segment.max_timestamp_ms() {
                Ok(bound) if bound.max_ms.is_none_or(|max| max < time_ms) => continue, // no frame, or all earlier
                Err(error) if error.is_not_found() => continue,                        // deleted meanwhile (cleanup)
                Ok(_) | Err(_) => {} // a damaged segment is read: the dump reports its damage
            }
            let start = segment.open_indexed().map_or(base, |open| open.offset_for_time_start(time_ms));
            return Ok(Offset(start.max(purged_below)));
        }
        Ok(Offset::LATEST)
    }

    /// Records appended from `from` on, as they land (for `walq tail --follow`).
    pub fn follow(&self, from: Offset) -> Follower<'_> {
        Follower { inspector: self, current: None, next_offset: from.0.max(self.manifest.purged_below()) }
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
                &file,
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

    /// Checks everything: every frame's checksum, offset order within and across segments, how the last segment
    /// ends (judged as every subcommand judges it), each index against its segment, the group journals, and what
    /// recovery would do. `progress(done, total)` gets segment bytes.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let bases = self.segment_bases()?;
        let mut lengths = Vec::new();
        for &base in &bases {
            let Some(segment) = self.open_segment(base)? else { continue };
            lengths.push((segment.path.clone(), segment.len_bytes));
            if let Ok(header) = segment.header {
                self.verify_index(&segment, &header, &mut report);
            }
        }
        let total: u64 = lengths.iter().map(|(_, len)| len).sum();
        report.segments = lengths.len();
        let recovery = self.recovery_preview(RecoveryMode::TolerateTornTail)?;
        let mut scan = self.records(Offset::EARLIEST)?;
        scan.preview = Some(recovery.clone());
        let mut done_before = 0; // bytes of the segments before the current one
        let mut current: Option<&PathBuf> = None;
        for scanned in scan {
            match scanned? {
                Scanned::Record(record) => {
                    report.records += 1;
                    if current != Some(&record.segment) {
                        if let Some(previous) = current {
                            done_before += lengths.iter().find(|(p, _)| p == previous).map_or(0, |(_, len)| *len);
                        }
                        current = lengths.iter().map(|(p, _)| p).find(|p| **p == record.segment);
                    }
                    progress(done_before + record.position + record.size_bytes, total);
                }
                Scanned::Damage(problem) => report.problems.push(problem),
                Scanned::Tail { .. } => {} // the preview's truncation says it, below
            }
        }
        report.bytes = total;
        progress(total, total);
        let damage_reported =
            |file: &Path| report.problems.iter().any(|p| p.severity == Severity::Corruption && p.file == file);
        if let Some(refusal) = &recovery.refusal {
            let file = recovery.segment.clone().unwrap_or_else(|| self.dir.clone());
            if !damage_reported(&file) {
                report.problems.push(Problem {
                    severity: Severity::Corruption,
                    file,
                    position: None,
                    kind: None,
                    what: format!("the next open would fail: {refusal}"),
                });
            }
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
            self.verify_notes(&name, &mut report);
        }
        report.recovery = recovery;
        Ok(report)
    }

    /// Checks a group's dead-letter notes. Damage there loses reasons, never messages or progress (the next open
    /// cuts it), so it is a warning.
    fn verify_notes(&self, name: &str, report: &mut VerifyReport) {
        let path = group::dead_letter_notes_path(&self.dir, name);
        let what = match group::read_dead_letter_notes(self.storage.as_ref(), &path) {
            Ok(invalid_bytes) if invalid_bytes > 0 => {
                format!("dead-letter notes end in {invalid_bytes} invalid bytes (a torn write or damage): the next open cuts them")
            }
            Ok(_) => return,
            Err(error) => format!("dead-letter notes unreadable ({error}): the next open drops their reasons"),
        };
        report.problems.push(Problem { severity: Severity::Warning, file: path, position: None, kind: None, what });
    }

    /// Checks each entry of a segment's index against the frame it points at (a warning each: the index is a
    /// cache, rebuilt by the owner). Reads the entries one at a time, and no more than the segment's length allows.
    fn verify_index(&self, segment: &SegmentFile, header: &SegmentHeader, report: &mut VerifyReport) {
        let index_path = segment.path.with_extension("idx");
        let warn = |position: Option<u64>, what: String| Problem {
            severity: Severity::Warning,
            file: index_path.clone(),
            position,
            kind: None,
            what,
        };
        let Ok(file) = self.storage.open_file(&index_path, OpenMode::ReadOnly) else {
            report.problems.push(warn(None, "no index file (lookups scan until the owner rebuilds it)".to_string()));
            return;
        };
        let head = read_range(file.as_ref(), 0, index::INDEX_HEADER_BYTES).unwrap_or_default();
        if !index::header_matches(&head, header.base_offset, header.segment_id) {
            let what =
                "the index belongs to another segment file or format version (the owner rebuilds it)".to_string();
            report.problems.push(warn(Some(0), what));
            return;
        }
        let count = file.len_bytes().map_or(0, |len| index::entry_count(len as usize));
        let count_max = (segment.len_bytes / crate::limits::INDEX_INTERVAL_BYTES + 1) as usize;
        if count > count_max {
            let what = format!("the index holds {count} entries, more than its segment's length allows");
            report.problems.push(warn(None, what));
            return;
        }
        for n in 0..count {
            let at = index::entry_position(n).expect("within count_max") as u64;
            let entry = read_range(file.as_ref(), at, index::INDEX_ENTRY_BYTES)
                .ok()
                .and_then(|bytes| index::decode_entry_bytes(&bytes, header.segment_id));
            let Some(entry) = entry else {
                report.problems.push(warn(Some(at), format!("index entry {n} is damaged (the owner rebuilds it)")));
                return;
            };
            let offset = header.base_offset + u64::from(entry.rel_offset);
            let found = frame_at_position(segment.file.as_ref(), u64::from(entry.position), header.segment_id);
            if !matches!(found, Ok(Some((o, _))) if o == offset) {
                report.problems.push(warn(
                    Some(at),
                    format!("index entry {n} points at no frame of offset {offset} (the owner rebuilds it)"),
                ));
                return;
            }
        }
    }
}

/// One segment file opened for inspection.
#[derive(Debug)]
struct SegmentFile {
    base: u64,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    len_bytes: u64,
    header: std::result::Result<SegmentHeader, HeaderError>,
}

/// How a segment's valid frames end; see [`Inspector::judge_ending`].
#[derive(Debug)]
enum Ending {
    /// At the end of the file, or followed only by zeros.
    Clean,
    /// Followed by non-zero bytes no acknowledged record lies behind: a write in progress or a torn tail.
    Tail { position: u64, bytes: u64 },
    /// At damage.
    Damage(Problem),
}

impl Problem {
    fn corruption(file: &Path, position: u64, kind: CorruptionKind, what: String) -> Problem {
        Problem {
            severity: Severity::Corruption,
            file: file.to_path_buf(),
            position: Some(position),
            kind: Some(kind),
            what,
        }
    }
}

impl InspectedRecord {
    fn new(segment: &Path, position: u64, frame: &Frame<'_>) -> InspectedRecord {
        InspectedRecord {
            offset: Offset(frame.offset),
            segment: segment.to_path_buf(),
            position,
            size_bytes: frame.len_bytes as u64,
            timestamp_ms: frame.timestamp_ms,
            key: frame.key.map(<[u8]>::to_vec),
            value: frame.value.map(<[u8]>::to_vec),
            headers: frame.headers(),
        }
    }
}

/// Iterates over stored records; see [`Inspector::records`].
#[derive(Debug)]
pub struct RecordScan<'a> {
    inspector: &'a Inspector,
    bases: Vec<u64>,
    next: usize,
    current: Option<SegmentScan>,
    from: u64,
    /// Offsets must increase across segments too: the next frame's offset is at least this.
    min_offset: u64,
    /// What the next open would do, found before the last segment is walked.
    preview: Option<RecoveryPreview>,
    /// The base of the last segment when the scan began.
    last_base: u64,
    /// The base of the segment scanned before the current one, if one was.
    previous_scanned: Option<u64>,
}

/// The segment a scan is in.
#[derive(Debug)]
struct SegmentScan {
    segment: SegmentFile,
    frames: FrameReader,
    last: bool,
    /// The next segment's base offset: no frame of this one may reach it.
    offsets_end: u64,
}

impl RecordScan<'_> {
    /// What the next open would do, found once.
    fn preview(&mut self) -> Result<&RecoveryPreview> {
        if self.preview.is_none() {
            self.preview = Some(self.inspector.recovery_preview(RecoveryMode::TolerateTornTail)?);
        }
        Ok(self.preview.as_ref().expect("set above"))
    }

    /// Opens the next segment; returns what to report instead of walking it, if anything.
    fn open_next(&mut self) -> Result<Option<Scanned>> {
        while self.next < self.bases.len() {
            let base = self.bases[self.next];
            self.next += 1;
            let last = base >= self.last_base;
            if last {
                self.preview()?; // before the walk: see `judge_ending`
            }
            let Some(segment) = self.inspector.open_segment(base)? else {
                self.previous_scanned = None; // deleted by cleanup meanwhile: the chain restarts at the next one
                continue;
            };
            // Every segment that exists counts as the next one's predecessor, damaged or not: a damaged segment is
            // reported as damaged, never as missing.
            let scanned_before = self.previous_scanned.replace(base);
            if segment.len_bytes > SEGMENT_FILE_BYTES_MAX {
                let what = format!("{} bytes: longer than any segment walq writes", segment.len_bytes);
                let problem = Problem::corruption(&segment.path, 0, CorruptionKind::BadLength, what);
                return Ok(Some(Scanned::Damage(problem)));
            }
            let header = match segment.header {
                Ok(header) if header.base_offset == base => header,
                Ok(_) => {
                    let what = "the header names another base offset".to_string();
                    return Ok(Some(Scanned::Damage(Problem::corruption(
                        &segment.path,
                        16,
                        CorruptionKind::WrongSegment,
                        what,
                    ))));
                }
                Err(_) if last && self.preview()?.removes_segment.as_ref() == Some(&segment.path) => continue,
                Err(error) => {
                    let what = crate::segment::header_error(&segment.path, error).to_string();
                    return Ok(Some(Scanned::Damage(Problem {
                        kind: None,
                        ..Problem::corruption(&segment.path, 0, CorruptionKind::BadLayout, what)
                    })));
                }
            };
            if base < self.min_offset {
                let what = format!("base offset {base} overlaps offset {} of the segment before", self.min_offset - 1);
                self.min_offset = base; // walk it anyway: its frames are checked against their own base
                return Ok(Some(Scanned::Damage(Problem::corruption(
                    &segment.path,
                    16,
                    CorruptionKind::BadOffset,
                    what,
                ))));
            }
            // The segment names its predecessor: another one than the segment scanned before means one is lost.
            let missing = match (header.previous_base, scanned_before) {
                (Some(named), Some(scanned)) if named != scanned => {
                    let what = format!("the segment before this one (base offset {named}) is missing");
                    Some(Scanned::Damage(Problem::corruption(&segment.path, 40, CorruptionKind::MissingSegment, what)))
                }
                _ => None,
            };
            let order = if last { Order::Contiguous } else { Order::Increasing };
            let frames = FrameReader::new(
                segment.file.clone(),
                header.segment_id,
                order,
                SEGMENT_HEADER_BYTES as u64,
                segment.len_bytes,
                base,
            );
            let offsets_end = self.bases.get(self.next).copied().unwrap_or(u64::MAX);
            self.current = Some(SegmentScan { segment, frames, last, offsets_end });
            return Ok(missing); // reported, and the segment is walked all the same
        }
        Ok(None)
    }
}

impl Iterator for RecordScan<'_> {
    type Item = Result<Scanned>;

    fn next(&mut self) -> Option<Result<Scanned>> {
        loop {
            let Some(scan) = &mut self.current else {
                match self.open_next() {
                    Ok(Some(scanned)) => return Some(Ok(scanned)),
                    Ok(None) => {
                        self.current.as_ref()?;
                        continue;
                    }
                    Err(error) => return Some(Err(error)),
                }
            };
            let stopped = match scan.frames.next() {
                Err(e) => return Some(Err(Error::io("read segment", &scan.segment.path, e))),
                Ok(Next::Frame { position, frame }) if frame.offset >= scan.offsets_end => {
                    let what = format!("offset {} is at or past the next segment's base offset", frame.offset);
                    let path = scan.segment.path.clone();
                    self.current = None; // the rest of this segment cannot be trusted to be in place
                    return Some(Ok(Scanned::Damage(Problem::corruption(
                        &path,
                        position,
                        CorruptionKind::BadOffset,
                        what,
                    ))));
                }
                Ok(Next::Frame { position, frame }) => {
                    self.min_offset = frame.offset + 1;
                    if frame.offset < self.from {
                        continue;
                    }
                    return Some(Ok(Scanned::Record(InspectedRecord::new(&scan.segment.path, position, &frame))));
                }
                Ok(Next::Stop { position, stop }) => (position, stop),
            };
            let scan = self.current.take().expect("matched above");
            let stop = (stopped.0, stopped.1, scan.frames.next_offset());
            let preview = if scan.last {
                match self.preview() {
                    Ok(preview) => preview.clone(),
                    Err(error) => return Some(Err(error)),
                }
            } else {
                RecoveryPreview::default()
            };
            match self.inspector.judge_ending(&scan.segment, scan.last, stop, &preview) {
                Ok(Ending::Clean) => {}
                Ok(Ending::Tail { position, bytes }) => {
                    return Some(Ok(Scanned::Tail { file: scan.segment.path, position, bytes }))
                }
                Ok(Ending::Damage(problem)) => return Some(Ok(Scanned::Damage(problem))),
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

/// Follows the end of the log; see [`Inspector::follow`].
#[derive(Debug)]
pub struct Follower<'a> {
    inspector: &'a Inspector,
    current: Option<(SegmentFile, FrameReader)>,
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
            if self.current.is_none() && !self.open_segment()? {
                return Ok(records);
            }
            self.read_available(&mut records)?;
            // Nothing more in this segment for now: move on only if a newer segment exists (so this one is sealed).
            let (segment, _) = self.current.as_ref().expect("a segment is open");
            let base = segment.base;
            let newer = self.inspector.segment_bases()?.into_iter().find(|&b| b > base);
            match newer {
                Some(next) => {
                    self.read_available(&mut records)?; // whatever was written before the roll
                    self.current = None;
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
        let Some(segment) = self.inspector.open_segment(base)? else { return Ok(false) };
        let Ok(header) = segment.header else { return Ok(false) }; // being created: try later
        let start = SEGMENT_HEADER_BYTES as u64;
        let frames = FrameReader::new(segment.file.clone(), header.segment_id, Order::Increasing, start, start, base);
        self.current = Some((segment, frames));
        Ok(true)
    }

    /// Reads the frames written since the last call, up to the first position that holds no valid frame yet.
    fn read_available(&mut self, records: &mut Vec<InspectedRecord>) -> Result<()> {
        let Some((segment, frames)) = &mut self.current else { return Ok(()) };
        let io = |e| Error::io("read segment", &segment.path, e);
        let len = segment.file.len_bytes().map_err(io)?;
        frames.set_end(len.max(frames.position()));
        frames.forget_read_bytes(); // what was read past the last frame may have been written since
        while let Next::Frame { position, frame } = frames.next().map_err(io)? {
            if frame.offset >= self.next_offset {
                records.push(InspectedRecord::new(&segment.path, position, &frame));
                self.next_offset = frame.offset + 1;
            }
        }
        Ok(())
    }
}
