//! `walq`: inspect, verify and drive a walq queue directory. Reading subcommands take no lock and work while a
//! live process owns the queue; `produce` and `consume` open the queue like any writer.
//!
//! Exit codes: 0 fine, 1 error, 2 corruption found.

mod consume;
mod dump;
mod groups;
mod info;
mod live;
mod output;
mod produce;
mod progress;
mod redrive;
#[cfg(feature = "nats")]
mod relay;
mod stop;
mod tail;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Inspect, verify and drive walq queue directories.
#[derive(Debug, Parser)]
#[command(name = "walq", version, about, propagate_version = true)]
struct Cli {
    /// Output: a readable table, or JSON lines.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line, for programs.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Segments, offsets, sizes, groups and settings.
    Info(info::Args),
    /// Records with offset, segment, position, size, time, key and value.
    Dump(dump::Args),
    /// Check every checksum, offset order, the indexes, the group journals, and what recovery would do.
    Verify(verify::Args),
    /// Consumer groups: ack floor, lag, messages delivered and not acked, dead letters.
    Groups(groups::Args),
    /// The last records, and with --follow the new ones as they land.
    Tail(tail::Args),
    /// Append records read from standard input (takes the queue's lock, or works through the process that
    /// holds it if that one serves others).
    Produce(produce::Args),
    /// Print and ack messages of a consumer group (takes the queue's lock, or works through its owner).
    Consume(consume::Args),
    /// Put a dead letter back to be delivered again (takes the queue's lock, or works through its owner).
    Redrive(redrive::Args),
    /// Drain a consumer group into a NATS JetStream subject (takes the queue's lock; feature `nats`).
    #[cfg(feature = "nats")]
    Relay(relay::Args),
    /// Drain a consumer group into NATS JetStream: not in this build (build walq with `--features nats`).
    #[cfg(not(feature = "nats"))]
    Relay(NoRelay),
}

/// Whatever `walq relay` is given in a build without the relay.
#[cfg(not(feature = "nats"))]
#[derive(Debug, clap::Args)]
struct NoRelay {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<String>,
}

/// How a subcommand ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fine.
    Clean,
    /// Corruption was found (exit code 2).
    Corruption,
    /// What was asked for is not there (exit code 1); the message is printed already.
    Failed,
}

fn main() -> ExitCode {
    // Usage errors exit with 1, not clap's 2: 2 means corruption found.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Info(args) => info::run(args, cli.format),
        Command::Dump(args) => dump::run(args, cli.format),
        Command::Verify(args) => verify::run(args, cli.format),
        Command::Groups(args) => groups::run(args, cli.format),
        Command::Tail(args) => tail::run(args, cli.format),
        Command::Produce(args) => produce::run(args, cli.format),
        Command::Consume(args) => consume::run(args, cli.format),
        Command::Redrive(args) => redrive::run(args),
        #[cfg(feature = "nats")]
        Command::Relay(args) => return relay::run(args, cli.format),
        #[cfg(not(feature = "nats"))]
        Command::Relay(_) => {
            let hint = "build it with `--features nats` (cargo install walq --features nats)";
            output::print_error(cli.format, "this walq was built without the relay", Some(hint));
            return ExitCode::from(1);
        }
    };
    match result {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Corruption) => ExitCode::from(2),
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(error) => {
            output::print_error(cli.format, &error.to_string(), None);
            match error {
                walq::Error::Corrupt { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
