//! `walq tail DIR [--follow]`: the last records, then (with `--follow`) new ones as they land, read from the files
//! without the lock.

use std::path::PathBuf;
use std::time::Duration;

use walq::inspect::{Inspector, Scanned};
use walq::{Offset, RecoveryMode};

use crate::output::{print_problem, print_record, print_record_header, ValueFormat};
use crate::{Format, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
    /// How many of the last records to show first.
    #[arg(short = 'n', long, default_value_t = 10)]
    lines: u64,
    /// Start at this offset instead of the last records (for a follower that must not miss what lands while it
    /// starts).
    #[arg(long, conflicts_with = "lines")]
    from: Option<u64>,
    /// Keep printing new records as they land.
    #[arg(short, long)]
    follow: bool,
    /// How often to look for new records with --follow, in milliseconds.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// How to show keys and values.
    #[arg(long, value_enum, default_value_t = ValueFormat::Utf8)]
    value: ValueFormat,
}

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
    let inspector = Inspector::open(&args.dir)?;
    let start = match args.from {
        Some(from) => Offset(from),
        None => {
            let end = inspector.recovery_preview(RecoveryMode::TolerateTornTail)?.next_offset.0;
            Offset(end.saturating_sub(args.lines))
        }
    };
    print_record_header(format);
    let mut outcome = Outcome::Clean;
    let mut next = start;
    for scanned in inspector.records(start)? {
        match scanned? {
            Scanned::Record(record) => {
                next = Offset(record.offset.0 + 1);
                print_record(&record, format, args.value);
            }
            Scanned::Damage(problem) => {
                print_problem(&problem, format);
                outcome = Outcome::Corruption;
            }
            Scanned::Tail { .. } => {}
        }
    }
    if !args.follow {
        return Ok(outcome);
    }
    let mut follower = inspector.follow(next);
    loop {
        for record in follower.poll()? {
            print_record(&record, format, args.value);
        }
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
}
