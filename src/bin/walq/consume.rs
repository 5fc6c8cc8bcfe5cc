//! `walq consume DIR --group G`: print and ack messages of a consumer group.

use std::path::PathBuf;
use std::time::Duration;

use walq::inspect::InspectedRecord;
use walq::Queue;

use crate::output::{print_record, print_record_header, ValueFormat};
use crate::{Format, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
    /// The consumer group (created on first use). The queue must exist: only `produce` creates one.
    #[arg(long)]
    group: String,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Wait for new messages instead of stopping when none is left.
    #[arg(short, long)]
    follow: bool,
    /// How to show keys and values.
    #[arg(long, value_enum, default_value_t = ValueFormat::Utf8)]
    value: ValueFormat,
}

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
    // Only `produce` creates a queue: a mistyped path must not become a new queue with a group that pins it.
    walq::inspect::Inspector::open(&args.dir)?;
    let queue = Queue::open(&args.dir)?;
    let consumer = queue.group(&args.group)?.consumer();
    print_record_header(format);
    let mut consumed = 0;
    while args.count.is_none_or(|count| consumed < count) {
        let delivery =
            if args.follow { consumer.recv_timeout(Duration::from_secs(1))? } else { consumer.try_recv()? };
        let Some(delivery) = delivery else {
            if args.follow {
                continue;
            }
            break;
        };
        let message = delivery.message();
        let record = InspectedRecord {
            offset: message.offset,
            segment: PathBuf::from("-"), // delivered through the group: where it lies is not the point here
            position: 0,
            size_bytes: 0,
            timestamp_ms: message.timestamp_ms,
            key: message.key.clone(),
            value: message.value.clone(),
            headers: message.headers.clone(),
        };
        print_record(&record, format, args.value);
        delivery.ack()?;
        consumed += 1;
    }
    queue.close()?;
    Ok(Outcome::Clean)
}
