//! `walq groups DIR`: each consumer group's progress, from its journal.

use std::path::PathBuf;

use walq::inspect::Inspector;

use crate::output::print_json;
use crate::{out, Format, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
}

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
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
    Ok(Outcome::Clean)
}
