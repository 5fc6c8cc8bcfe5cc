//! `walq info DIR`: segments, offsets, sizes, groups and settings.

use std::path::PathBuf;

use walq::inspect::Inspector;

use crate::output::{print_json, print_problem, time};
use crate::{out, Format, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
}

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
    let summary = Inspector::open(&args.dir)?.summary()?;
    let outcome = if summary.problems.is_empty() { Outcome::Clean } else { Outcome::Corruption };
    if format == Format::Json {
        print_json(&summary);
        return Ok(outcome);
    }
    out!("queue       {}", summary.dir.display());
    out!(
        "id          {} (format version {}, created {})",
        summary.queue_id,
        summary.format_version,
        time(summary.created_ms)
    );
    if summary.next_offset > summary.first_offset {
        out!(
            "offsets     {} ..= {} (next append gets {})",
            summary.first_offset,
            summary.next_offset.0 - 1,
            summary.next_offset
        );
    } else {
        out!("offsets     none stored (next append gets {})", summary.next_offset);
    }
    out!("segments    {} files, {} bytes", summary.segments.len(), summary.segment_bytes);
    for segment in &summary.segments {
        let name = segment.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Whether a process holds the queue is not known here (looking would take its lock): "appended to" is
        // true either way.
        let last = if segment.last { "  (last: the one appends go to)" } else { "" };
        out!("            {name}  base {:>10}  {:>12} bytes{last}", segment.base_offset, segment.size_bytes);
    }
    out!("groups      {}", summary.groups.len());
    for group in &summary.groups {
        out!(
            "            {:<24}  floor {:>10}  lag {:>10}  dead letters {:>6}",
            group.name,
            group.ack_floor.0,
            group.lag,
            group.dead_letters.len()
        );
    }
    out!("settings    {}", summary.settings);
    for problem in &summary.problems {
        print_problem(problem, format);
    }
    if !summary.problems.is_empty() {
        out!("damage      found in the last segment; `walq verify` checks every segment");
    }
    Ok(outcome)
}
