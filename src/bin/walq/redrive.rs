//! `walq redrive DIR GROUP OFFSET`: puts a dead letter of a group back, to be delivered again (before new
//! messages), its attempt count reset. Works on a live queue through its owner.

use std::path::PathBuf;

use walq::Offset;

use crate::live::Target;
use crate::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
    /// The consumer group whose dead letter it is.
    group: String,
    /// The dead letter's offset (`walq groups DIR` lists a group's dead letters).
    offset: u64,
}

pub fn run(args: Args) -> walq::Result<Outcome> {
    walq::inspect::Inspector::open(&args.dir)?; // only `produce` creates a queue
    let queue = Target::open(&args.dir)?;
    let redriven = queue.redrive(&args.group, Offset(args.offset));
    let closed = queue.close();
    let redriven = redriven?;
    closed?;
    if !redriven {
        eprintln!("offset {} is not a dead letter of group {:?}", args.offset, args.group);
        return Ok(Outcome::Failed);
    }
    eprintln!("redrove offset {} of group {:?}: it is delivered again next", args.offset, args.group);
    Ok(Outcome::Clean)
}
