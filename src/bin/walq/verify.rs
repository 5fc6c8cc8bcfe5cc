//! `walq verify DIR`: every check, read-only. `--dry-run` shows only what recovery would do on the next open;
//! `--repair` opens the queue (taking its lock) so that recovery does it.

use std::path::PathBuf;

use walq::inspect::{Inspector, RecoveryPreview, Severity};
use walq::{Queue, RecoveryMode};

use crate::output::{print_json, print_problem};
use crate::progress::Progress;
use crate::{out, Format, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
    /// Only report what recovery would cut or refuse, changing nothing.
    #[arg(long, conflicts_with = "repair")]
    dry_run: bool,
    /// Open the queue so that recovery repairs what it can (takes the lock; fails if a process owns the queue).
    #[arg(long)]
    repair: bool,
}

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
    let inspector = Inspector::open(&args.dir)?;
    if args.dry_run {
        let preview = inspector.recovery_preview(RecoveryMode::TolerateTornTail)?;
        print_preview(&preview, format);
        return Ok(if preview.refusal.is_some() { Outcome::Corruption } else { Outcome::Clean });
    }
    if args.repair {
        let queue = Queue::open(&args.dir)?;
        let report = queue.recovery_report().clone();
        queue.close()?;
        match format {
            Format::Json => print_json(&report),
            Format::Table => out!("recovered: {report:?}"),
        }
        return Ok(Outcome::Clean);
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
