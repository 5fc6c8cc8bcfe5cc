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
    out!(
        "offsets     {} .. {} (next append gets {})",
        summary.first_offset,
        summary.next_offset.0.saturating_sub(1),
        summary.next_offset
    );
    out!("segments    {} files, {} bytes", summary.segments.len(), summary.segment_bytes);
    for segment in &summary.segments {
        let name = segment.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let last = if segment.last { "  (last: being written)" } else { "" };
        out!("            {name}  base {:>10}  {:>12} bytes{last}", segment.base_offset, segment.size_bytes);
    }
    out!("groups      {}", summary.groups.len());
    for group in &summary.groups {
        out!(
            "            {}  floor {}  lag {}  dead letters {}",
            group.name,
            group.ack_floor,
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
