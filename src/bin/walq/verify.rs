//! `walq verify DIR`: every check, read-only. `--dry-run` shows only what recovery would do on the next open;
//! `--repair` opens the queue (taking its lock) so that recovery does it.

use std::path::PathBuf;

use walq::inspect::{Inspector, RecoveryPreview, Severity};
use walq::{Queue, RecoveryMode};

use crate::output::{print_error, print_json, print_problem};
use crate::progress::Progress;
use crate::{out, Format, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
    /// Only report what recovery would cut or refuse, changing nothing.
    #[arg(long, conflicts_with = "repair")]
    dry_run: bool,
    /// Open the queue so that recovery repairs what it can (takes the lock; fails if a process owns the queue),
    /// then say what was done and what remains.
    #[arg(long)]
    repair: bool,
    /// With --repair: open with `RecoveryMode::SkipCorrupt`, keeping every valid frame around damage (the damaged
    /// messages are lost) where the default refuses to open.
    #[arg(long, requires = "repair")]
    skip_corrupt: bool,
}

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
    let inspector = Inspector::open(&args.dir)?;
    if args.dry_run {
        let preview = inspector.recovery_preview(RecoveryMode::TolerateTornTail)?;
        print_preview(&preview, format);
        return Ok(if preview.refusal.is_some() { Outcome::Corruption } else { Outcome::Clean });
    }
    if args.repair {
        return repair(&args, format);
    }
    let progress = Progress::bytes("verify");
    let report = inspector.verify(&mut |done, total| progress.update(done, total))?;
    progress.finish();
    for problem in &report.problems {
        print_problem(problem, format);
    }
    match format {
        Format::Json => print_json(&serde_json::json!({
            "summary": {
                "clean": report.is_clean(),
                "segments": report.segments,
                "records": report.records,
                "bytes": report.bytes,
                "groups": report.groups,
                "corruptions": report.problems.iter().filter(|p| p.severity == Severity::Corruption).count(),
                "warnings": report.problems.iter().filter(|p| p.severity == Severity::Warning).count(),
                "recovery": report.recovery,
            }
        })),
        Format::Table => {
            let verdict = if report.is_clean() { "clean" } else { "CORRUPTION FOUND" };
            out!(
                "{verdict}: {} segments, {} records, {} bytes, {} group journals checked; {} problems",
                report.segments,
                report.records,
                report.bytes,
                report.groups,
                report.problems.len()
            );
        }
    }
    Ok(if report.is_clean() { Outcome::Clean } else { Outcome::Corruption })
}

/// `--repair`: opens the queue so that recovery does what it does, says it in words, then verifies again and says
/// what remains and what to do about it.
fn repair(args: &Args, format: Format) -> walq::Result<Outcome> {
    let mode = if args.skip_corrupt { RecoveryMode::SkipCorrupt } else { RecoveryMode::TolerateTornTail };
    let queue = match Queue::builder(&args.dir).recovery_mode(mode).open() {
        Ok(queue) => queue,
        Err(error @ walq::Error::Corrupt { .. }) if mode != RecoveryMode::SkipCorrupt => {
            let hint =
                "`walq verify --repair --skip-corrupt` opens it keeping every valid frame around the damage (the \
                        damaged messages are lost, and said)";
            print_error(format, &format!("the queue cannot be opened as it is: {error}"), Some(hint));
            return Ok(Outcome::Corruption);
        }
        Err(error) => return Err(error),
    };
    let report = queue.recovery_report().clone();
    queue.close()?;
    // A fresh look: what the open changed (a cut, a new manifest) is read again.
    let after = Inspector::open(&args.dir)?.verify(&mut |_, _| {})?;
    let remaining = after.problems.iter().filter(|p| p.severity == Severity::Corruption).count();
    if format == Format::Json {
        print_json(&serde_json::json!({ "repair": report, "corruptions_remaining": remaining }));
        return Ok(if remaining > 0 { Outcome::Corruption } else { Outcome::Clean });
    }
    for removed in &report.removed_files {
        out!("removed {} (a leftover, or a segment whose creation a crash tore)", removed.display());
    }
    for cut in &report.truncations {
        let how = if args.skip_corrupt {
            "a torn or damaged end: the messages in it are lost"
        } else {
            "a torn tail: written, never acknowledged"
        };
        out!(
            "cut {} bytes from {} at byte {}, the end of its last valid frame ({how}; {} whole frames among them)",
            cut.bytes,
            cut.file.display(),
            cut.position,
            cut.frames_dropped
        );
    }
    for skipped in &report.skipped {
        out!(
            "skipped {} damaged bytes of {} at byte {}: offsets {}..{} are lost",
            skipped.bytes,
            skipped.file.display(),
            skipped.position,
            skipped.first_missing_offset,
            skipped.resumes_at_offset
        );
    }
    if report.removed_files.is_empty() && report.truncations.is_empty() && report.skipped.is_empty() {
        out!("nothing to repair at open: the last segment ends cleanly");
    }
    if remaining == 0 {
        out!("clean now; the next append gets offset {}", report.next_offset);
        return Ok(Outcome::Clean);
    }
    for problem in after.problems.iter().filter(|p| p.severity == Severity::Corruption) {
        print_problem(problem, format);
    }
    out!(
        "damage remains: {remaining} problems (above); recovery never rewrites sealed segments: the queue opens, and \
         readers get Error::Corrupt at the damage (a program that prefers to lose those messages opens with \
         RecoveryMode::SkipCorrupt: readers then skip them)"
    );
    Ok(Outcome::Corruption)
}

fn print_preview(preview: &RecoveryPreview, format: Format) {
    if format == Format::Json {
        print_json(&preview);
        return;
    }
    if let Some(segment) = &preview.removes_segment {
        out!("would remove {} (its creation was torn by a crash)", segment.display());
    }
    match (&preview.refusal, &preview.truncation) {
        (Some(refusal), _) => out!("would refuse to open: {refusal}"),
        (None, Some(cut)) => out!(
            "would cut {} bytes from {} at byte {} ({} whole frames no later frame proves durable); the next append gets offset {}",
            cut.bytes,
            cut.file.display(),
            cut.position,
            cut.frames_dropped,
            preview.next_offset
        ),
        (None, None) => out!("nothing to cut; the next append gets offset {}", preview.next_offset),
    }
}
