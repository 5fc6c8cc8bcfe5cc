//! `walq produce DIR`: append records read from standard input, one per line or length-delimited.

use std::io::{BufRead, Read};
use std::path::PathBuf;

use walq::{Message, Queue};

use crate::output::print_json;
use crate::{Format, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory (created if missing).
    dir: PathBuf,
    /// Read records as a 4-byte big-endian length followed by that many bytes, instead of lines.
    #[arg(long)]
    length_delimited: bool,
    /// Give every record this key (UTF-8).
    #[arg(long)]
    key: Option<String>,
    /// Records appended per batch (one fsync each).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
    let queue = Queue::open(&args.dir)?;
    let mut stdin = std::io::stdin().lock();
    let mut batch = Vec::with_capacity(args.batch.clamp(1, 100_000));
    let (mut first, mut count) = (None, 0u64);
    let io = |e| walq::Error::Io { operation: "read standard input", path: PathBuf::from("-"), source: e };
    let batch_max = args.batch.max(1);
    while let Some(value) = read_record(&mut stdin, args.length_delimited).map_err(io)? {
        let message = Message::new(value);
        batch.push(match &args.key {
            Some(key) => message.key(key.as_bytes()),
            None => message,
        });
        if batch.len() >= batch_max {
            first.get_or_insert(queue.append_batch(&batch)?);
            count += batch.len() as u64;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        first.get_or_insert(queue.append_batch(&batch)?);
        count += batch.len() as u64;
    }
    queue.close()?;
    let first = first.map(|o| o.0);
    match format {
        Format::Json => print_json(&serde_json::json!({ "appended": count, "first_offset": first })),
        Format::Table => match first {
            Some(first) => eprintln!("appended {count} records, offsets {first}..={}", first + count - 1),
            None => eprintln!("appended 0 records"),
        },
    }
    Ok(Outcome::Clean)
}

/// The next record of standard input, `None` at its end.
fn read_record(input: &mut impl BufRead, length_delimited: bool) -> std::io::Result<Option<Vec<u8>>> {
    if length_delimited {
        read_delimited(input)
    } else {
        read_line(input)
    }
}

fn read_line(input: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if input.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(Some(line))
}

fn read_delimited(input: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 4];
    match input.read_exact(&mut length) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(length) as usize;
    if len > walq::MESSAGE_BYTES_LIMIT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("record of {len} bytes is over the limit"),
        ));
    }
    let mut value = vec![0u8; len];
    input.read_exact(&mut value)?;
    Ok(Some(value))
}
