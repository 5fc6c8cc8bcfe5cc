//! `walq groups DIR`: each consumer group's progress, from its journal; `--delete NAME` removes a group, and
//! `--reset NAME --to earliest|end|OFFSET|time:MS` moves one.

use std::path::PathBuf;

use walq::inspect::Inspector;
use walq::{Offset, StartAt};

use crate::live::Target;
use crate::output::print_json;
use crate::{out, Format, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
    /// Delete this group and its stored progress (a mistyped group that holds every segment, or one whose
    /// journal is damaged). Opens the queue, or works through the process that has it open if that one serves
    /// others (`Sharing::Serve`); otherwise stop its owner first.
    #[arg(long, value_name = "NAME")]
    delete: Option<String>,
    /// Move this group (Kafka's --reset-offsets): messages below the new position count as done, the rest are
    /// delivered again; needs `--to`. Opens the queue, or works through its owner as `--delete` does; refused
    /// while deliveries are in flight.
    #[arg(long, value_name = "NAME", requires = "to", conflicts_with = "delete")]
    reset: Option<String>,
    /// Where `--reset` moves the group: `earliest` (the oldest stored message), `end` (only what is appended
    /// later), an offset (clamped to what is stored), or `time:MS` (the first message whose timestamp is at or
    /// after MS milliseconds since the Unix epoch, found by the time index; the end if none is).
    #[arg(long, value_name = "WHERE", value_parser = parse_start, requires = "reset")]
    to: Option<StartAt>,
}

fn parse_start(text: &str) -> Result<StartAt, String> {
    let not_a_place = || format!("{text:?} is not earliest, end, an offset or time:MS");
    match text {
        "earliest" => Ok(StartAt::Earliest),
        "end" | "latest" => Ok(StartAt::Latest),
        _ => match text.strip_prefix("time:") {
            Some(ms) => ms.parse().map(StartAt::Time).map_err(|_| not_a_place()),
            None => text.parse().map(|o| StartAt::Offset(Offset(o))).map_err(|_| not_a_place()),
        },
    }
}

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
    if let (Some(name), Some(to)) = (&args.reset, args.to) {
        Inspector::open(&args.dir)?; // only `produce` creates a queue
        let queue = Target::open(&args.dir)?;
        let result = queue.reset_group(name, to);
        let closed = queue.close();
        let floor = result?;
        closed?;
        eprintln!("reset group {name:?}: next delivery from offset {}", floor.0);
        return Ok(Outcome::Clean);
    }
    if let Some(name) = &args.delete {
        // Inspect first: only `produce` creates a queue.
        Inspector::open(&args.dir)?;
        let queue = Target::open(&args.dir)?;
        let deleted = queue.delete_group(name)?;
        queue.close()?;
        if !deleted {
            eprintln!("no group {name:?} in {}", args.dir.display());
            return Ok(Outcome::Failed);
        }
        eprintln!("deleted group {name:?}");
        return Ok(Outcome::Clean);
    }
    let groups = Inspector::open(&args.dir)?.groups()?;
    match format {
        Format::Json => groups.iter().for_each(print_json),
        Format::Table => {
            out!(
                "{:<24} {:>12} {:>10} {:>22} {:>12} {:>14}",
                "GROUP",
                "ACK FLOOR",
                "LAG",
                "DELIVERED, NOT ACKED",
                "DEAD LETTERS",
                "JOURNAL BYTES"
            );
            for group in &groups {
                if let Some(damage) = &group.damage {
                    out!("{:<24} DAMAGED: {damage} (delete it: walq groups DIR --delete NAME)", group.name);
                    continue;
                }
                out!(
                    "{:<24} {:>12} {:>10} {:>22} {:>12} {:>14}",
                    group.name,
                    group.ack_floor.0,
                    group.lag,
                    group.delivered_not_acked,
                    group.dead_letters.len(),
                    group.journal_bytes
                );
            }
        }
    }
    Ok(if groups.iter().any(|g| g.damage.is_some()) { Outcome::Corruption } else { Outcome::Clean })
}
