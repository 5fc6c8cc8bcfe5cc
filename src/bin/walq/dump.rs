//! `walq dump DIR`: records with where they lie, selected by offset, time or key.

use std::path::PathBuf;

use walq::inspect::{Inspector, Scanned};
use walq::Offset;

use crate::output::{print_problem, print_record, print_record_header, ValueFormat};
use crate::progress::Progress;
use crate::{Format, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
    /// First offset to show.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Last offset to show (inclusive).
    #[arg(long)]
    to: Option<u64>,
    /// Only records with a timestamp at or after this (milliseconds since the Unix epoch): the reading starts where
    /// the segments' time index says every record before is earlier.
    #[arg(long)]
    since_ms: Option<u64>,
    /// Only records with a timestamp before this (milliseconds since the Unix epoch).
    #[arg(long)]
    until_ms: Option<u64>,
    /// Only records with this key (UTF-8).
    #[arg(long)]
    key: Option<String>,
    /// How to show keys and values.
    #[arg(long, value_enum, default_value_t = ValueFormat::Utf8)]
    value: ValueFormat,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<u64>,
}

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
    let inspector = Inspector::open(&args.dir)?;
    // Only the sizes: the summary would walk the last segment and replay every journal before the dump does.
    let total: u64 = inspector.segments()?.iter().map(|s| s.size_bytes).sum();
    let progress = Progress::bytes("dump");
    let mut outcome = Outcome::Clean;
    let mut shown = 0;
    print_record_header(format);
    let from = match args.since_ms {
        Some(time_ms) => args.from.max(inspector.time_start(time_ms)?.0),
        None => args.from,
    };
    if from == Offset::LATEST.0 {
        return Ok(outcome); // no stored record is that late
    }
    for scanned in inspector.records(Offset(from))? {
        match scanned? {
            Scanned::Record(record) => {
                progress.update(record.position, total);
                if args.to.is_some_and(|to| record.offset.0 > to) {
                    break;
                }
                let in_time = args.since_ms.is_none_or(|t| record.timestamp_ms >= t)
                    && args.until_ms.is_none_or(|t| record.timestamp_ms < t);
                let key_matches = args.key.as_ref().is_none_or(|k| record.key.as_deref() == Some(k.as_bytes()));
                if in_time && key_matches {
                    if args.limit.is_some_and(|limit| shown >= limit) {
                        break; // checked before printing: `--limit 0` prints nothing
                    }
                    print_record(&record, format, args.value);
                    shown += 1;
                }
            }
            Scanned::Damage(problem) => {
                print_problem(&problem, format);
                outcome = Outcome::Corruption;
            }
            Scanned::Tail { file, position, bytes } => eprintln!(
                "note: {}: {bytes} bytes after the last valid frame at byte {position} (a write in progress, or a torn tail the next open cuts)",
                file.display()
            ),
        }
    }
    progress.finish();
    Ok(outcome)
}
