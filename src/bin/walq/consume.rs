//! `walq consume DIR --group G`: print messages of a consumer group, and ack each once its line is written.
//!
//! A message is acked only after its output was written and flushed: on a closed pipe (`walq consume | head -1`)
//! consumption stops and the message whose line could not be written is not acked. (Lines a reader left unread
//! in the pipe's buffer when it exited were written, and are acked: a pipe does not say what was read.) On
//! SIGINT or SIGTERM it stops between messages. Either way the queue is closed cleanly, and deliveries held
//! (`--no-ack`, or the one that could not be written) are given back without counting an attempt; through the
//! owner of a live queue, the one not written is given back as a dropped delivery, its attempt counted.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use walq::remote::SharedDelivery as Delivery;

use crate::live::{Consumer, Target};

use crate::output::{encode, headers_json, time, try_write_line, value_cell, value_json, ValueFormat};
use crate::stop::StopSignal;
use crate::{Format, Outcome};

/// How long `--follow` waits for a message before it checks for a stop signal again.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
    /// The consumer group (created on first use). The queue must exist: only `produce` creates one.
    #[arg(long)]
    group: String,
    /// Stop after this many messages (with --no-ack: 10 unless given).
    #[arg(long)]
    count: Option<u64>,
    /// Wait for new messages instead of stopping when none is left.
    #[arg(short, long, conflicts_with = "no_ack")]
    follow: bool,
    /// Peek: print the messages the group would deliver next, and ack none (they are given back, with no
    /// attempt counted).
    #[arg(long)]
    no_ack: bool,
    /// How to show keys and values.
    #[arg(long, value_enum, default_value_t = ValueFormat::Utf8)]
    value: ValueFormat,
}

/// How many messages `--no-ack` shows without `--count`: each is leased until the end, so a peek is kept small.
const PEEK_COUNT_DEFAULT: u64 = 10;

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
    // Only `produce` creates a queue: a mistyped path must not become a new queue with a group that pins it.
    walq::inspect::Inspector::open(&args.dir)?;
    let stop = StopSignal::install()?;
    let queue = Target::open(&args.dir)?;
    if args.no_ack && matches!(queue, Target::Owner(_)) {
        let reason = "the queue is open in another process: a peek there would count an attempt of each message \
                      it shows (and could dead-letter it); consume with acks, or peek while no process has it open"
            .to_owned();
        return Err(walq::Error::InvalidOption { option: "--no-ack", reason });
    }
    let mut held = Vec::new(); // given back by the shutdown below, whatever happens in between
    let consumed = consume(&queue, &args, format, &stop, &mut held);
    // Gives back what is held (peeked, or not written) without counting the attempt, and closes cleanly. Through
    // an owner, the one not written is given back when the connection ends, its attempt counted.
    let closed = match &queue {
        Target::Own(queue) => queue.shutdown(Duration::ZERO).map(drop),
        Target::Owner(_) => Ok(()),
    };
    drop(held);
    let ended = consumed?;
    closed?;
    Ok(ended)
}

fn consume(
    queue: &Target,
    args: &Args,
    format: Format,
    stop: &StopSignal,
    held: &mut Vec<Delivery>,
) -> walq::Result<Outcome> {
    let consumer = Consumer::of(queue, &args.group)?;
    let count = args.count.or(args.no_ack.then_some(PEEK_COUNT_DEFAULT));
    let mut consumed = 0;
    // A table's header only for people: `walq consume ... | head -1` is the first message.
    let mut header_written = format != Format::Table || !std::io::stdout().is_terminal();
    while count.is_none_or(|count| consumed < count) && !stop.raised() {
        let delivery = if args.follow { consumer.recv_timeout(FOLLOW_POLL)? } else { consumer.try_recv()? };
        let Some(delivery) = delivery else {
            if args.follow {
                continue;
            }
            break;
        };
        let written = if header_written {
            Ok(())
        } else {
            header_written = true;
            try_write_line(&format!("{:>10}  {:>7}  {:<24}  KEY  VALUE", "OFFSET", "ATTEMPT", "TIME"))
        };
        if let Err(error) = written.and_then(|()| try_write_line(&line(&delivery, format, args.value))) {
            held.push(delivery); // not written: not acked
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(Outcome::Clean); // the reader has all it wanted
            }
            let path = PathBuf::from("-");
            return Err(walq::Error::Io { operation: "write standard output", path, source: error });
        }
        if args.no_ack {
            held.push(delivery);
        } else {
            // Counts even if the output blocked past the lease (the line is out); if the message went out again
            // meanwhile, that delivery answers for it.
            match delivery.ack() {
                Ok(()) | Err(walq::Error::StaleLease { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        consumed += 1;
    }
    Ok(Outcome::Clean)
}

/// One delivered message as a table row or a JSON line.
fn line(delivery: &Delivery, format: Format, values: ValueFormat) -> String {
    let message = delivery.message();
    let key = encode(message.key.as_deref(), values);
    match format {
        Format::Json => {
            let headers = headers_json(&message.headers, values);
            let value = value_json(message.value.as_deref(), values);
            serde_json::json!({
                "offset": message.offset.0,
                "attempt": delivery.attempt(),
                "timestamp_ms": message.timestamp_ms,
                "time": time(message.timestamp_ms),
                "key": key,
                "value": value,
                "tombstone": message.value.is_none(),
                "headers": headers,
            })
            .to_string()
        }
        Format::Table => {
            let value = value_cell(message.value.as_deref(), values);
            let key = key.unwrap_or_else(|| "-".into());
            format!(
                "{:>10}  {:>7}  {:<24}  {key}  {value}",
                message.offset.0,
                delivery.attempt(),
                time(message.timestamp_ms)
            )
        }
    }
}
