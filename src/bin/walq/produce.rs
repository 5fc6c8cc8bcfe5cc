//! `walq produce DIR`: append records read from standard input, one per line or length-delimited.
//!
//! Input is read on a thread of its own and appended in batches: a batch is appended when it is full, or as soon
//! as the input pauses for [`LINGER`] (so `tail -f log | walq produce Q` appends as lines come). Each record is
//! stamped with the time it was read. Nothing read is dropped silently: on SIGINT or SIGTERM everything read is
//! appended and the queue closed cleanly; when an append or the input fails, the records before the failing one
//! are appended and the summary says which input records were appended, where it stopped and what was not.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use walq::{Message, Offset};

use crate::live::Target;

use crate::output::{print_error, print_json};
use crate::stop::StopSignal;
use crate::{out, Format, Outcome};

/// How long the first record of a partial batch waits for more before the batch is appended.
const LINGER: Duration = Duration::from_millis(5);
/// On a stop signal: records still arriving from the input thread (whole lines it had buffered) are taken until
/// this long passes without one, or `STOP_DRAIN_MAX` in all.
const STOP_DRAIN_QUIET: Duration = Duration::from_millis(200);
const STOP_DRAIN_MAX: Duration = Duration::from_secs(2);
/// Records in flight between the input thread and the appender.
const CHANNEL_RECORDS: usize = 1024;
/// How often an idle producer checks for a stop signal.
const IDLE_POLL: Duration = Duration::from_millis(100);

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
    /// Most records appended per batch (one fsync each); a partial batch is appended within 5 ms of its first
    /// record.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch: u64,
}

/// What the input thread hands over.
enum Input {
    /// One record, with the time it was read.
    Record { value: Vec<u8>, read_at_ms: u64 },
    /// The input cannot be read on (cut inside a record, a read error): what came before is whole.
    Broken(String),
}

/// What was appended, and why it stopped if it did not reach the end of the input.
#[derive(Debug, Default)]
struct Summary {
    /// Input records appended, from the first (input record numbers `1..=appended`).
    appended: u64,
    first_offset: Option<Offset>,
    last_offset: Option<Offset>,
    /// Why appending stopped before the input's end, at which input record (1-based).
    stopped: Option<(u64, String)>,
    /// Records read but not appended because of the stop.
    not_appended: u64,
    interrupted: bool,
}

pub fn run(args: Args, format: Format) -> walq::Result<Outcome> {
    let stop = StopSignal::install()?;
    let queue = Target::open(&args.dir)?;
    let input = spawn_reader(args.length_delimited);
    let summary = append_all(&queue, &input, &args, &stop);
    // What is stored is said first: a close that fails (a poisoned queue) must not hide it.
    report(&summary, format);
    queue.close()?;
    Ok(if summary.stopped.is_some() { Outcome::Failed } else { Outcome::Clean })
}

/// Reads standard input on a thread of its own, so that the appender can linger and watch for signals.
fn spawn_reader(length_delimited: bool) -> Receiver<Input> {
    let (sender, receiver) = mpsc::sync_channel(CHANNEL_RECORDS);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut number = 0u64;
        loop {
            number += 1;
            let input = match read_record(&mut stdin, length_delimited, number) {
                Ok(Some(value)) => Input::Record { value, read_at_ms: now_ms() },
                Ok(None) => return,
                Err(reason) => Input::Broken(reason),
            };
            let broken = matches!(input, Input::Broken(_));
            if sender.send(input).is_err() || broken {
                return;
            }
        }
    });
    receiver
}

fn append_all(queue: &Target, input: &Receiver<Input>, args: &Args, stop: &StopSignal) -> Summary {
    let mut summary = Summary::default();
    let mut pending: Vec<Message> = Vec::new();
    let batch_max = args.batch as usize;
    // When the partial batch must go: `LINGER` after its first record, however fast the others follow.
    let mut due: Option<Instant> = None;
    loop {
        if stop.raised() {
            summary.interrupted = true;
            drain_after_stop(input, args, &mut pending, &mut summary);
            append_pending(queue, &mut pending, &mut summary);
            return summary;
        }
        let wait = due.map_or(IDLE_POLL, |due| due.saturating_duration_since(Instant::now()));
        match input.recv_timeout(wait) {
            Ok(Input::Record { value, read_at_ms }) => {
                pending.push(message(value, read_at_ms, args));
                due.get_or_insert_with(|| Instant::now() + LINGER);
                let due_now = due.is_some_and(|due| Instant::now() >= due);
                if pending.len() >= batch_max || due_now {
                    due = None;
                    if !append_pending(queue, &mut pending, &mut summary) {
                        break;
                    }
                }
            }
            Ok(Input::Broken(reason)) => {
                if append_pending(queue, &mut pending, &mut summary) {
                    summary.stopped = Some((summary.appended + 1, reason));
                }
                return summary;
            }
            Err(RecvTimeoutError::Timeout) => {
                due = None;
                if !append_pending(queue, &mut pending, &mut summary) {
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                append_pending(queue, &mut pending, &mut summary);
                return summary;
            }
        }
    }
    // Stopped by a failed append: count what was read and will not be appended.
    while let Ok(Input::Record { .. }) = input.try_recv() {
        summary.not_appended += 1;
    }
    summary
}

/// After a stop signal: takes the whole records the input thread still delivers (lines it had read into its buffer
/// before the signal), until it is quiet for `STOP_DRAIN_QUIET`; a half-read record is not a record yet.
fn drain_after_stop(input: &Receiver<Input>, args: &Args, pending: &mut Vec<Message>, summary: &mut Summary) {
    let until = Instant::now() + STOP_DRAIN_MAX;
    while let Some(wait) = until.checked_duration_since(Instant::now()) {
        match input.recv_timeout(wait.min(STOP_DRAIN_QUIET)) {
            Ok(Input::Record { value, read_at_ms }) => pending.push(message(value, read_at_ms, args)),
            Ok(Input::Broken(reason)) => {
                let at = summary.appended + pending.len() as u64 + 1;
                summary.stopped = Some((at, reason));
                return;
            }
            Err(_) => return,
        }
    }
}

fn message(value: Vec<u8>, read_at_ms: u64, args: &Args) -> Message {
    let message = Message::new(value).timestamp_ms(read_at_ms);
    match &args.key {
        Some(key) => message.key(key.as_bytes()),
        None => message,
    }
}

/// Appends `pending` (emptying it); on failure appends what comes before the failing record, records why in
/// `summary`, and returns `false`.
fn append_pending(queue: &Target, pending: &mut Vec<Message>, summary: &mut Summary) -> bool {
    if pending.is_empty() {
        return true;
    }
    let batch = std::mem::take(pending);
    let (appended, failure) = match queue.append_batch(&batch) {
        Ok(first) => ((first, batch.len()), None),
        Err(walq::Error::BatchIncomplete { first_offset, appended, cause }) => ((first_offset, appended), Some(*cause)),
        // Refused whole before anything was written (one record too large, say): the ones before it go alone.
        Err(walq::Error::MessageTooLarge { .. } | walq::Error::InvalidHeader { .. }) => {
            append_one_by_one(queue, &batch)
        }
        Err(error) => ((Offset(0), 0), Some(error)),
    };
    let (first, count) = appended;
    if count > 0 {
        summary.first_offset.get_or_insert(first);
        summary.last_offset = Some(Offset(first.0 + count as u64 - 1));
        summary.appended += count as u64;
    }
    match failure {
        None => true,
        Some(error) => {
            summary.stopped = Some((summary.appended + 1, describe(&error)));
            summary.not_appended += (batch.len() - count) as u64;
            false
        }
    }
}

/// Appends `batch` record by record up to the first that fails; returns (first offset, count) and the error.
fn append_one_by_one(queue: &Target, batch: &[Message]) -> ((Offset, usize), Option<walq::Error>) {
    let mut first = None;
    for (count, message) in batch.iter().enumerate() {
        match queue.append(message.clone()) {
            Ok(offset) => {
                first.get_or_insert(offset);
            }
            Err(error) => return ((first.unwrap_or_default(), count), Some(error)),
        }
    }
    ((first.unwrap_or_default(), batch.len()), None)
}

/// Why an append failed, in the tool's terms (the library's advice names builder options the tool has not).
fn describe(error: &walq::Error) -> String {
    match error {
        walq::Error::MessageTooLarge { size, max } => format!(
            "a record of {size} bytes is over this queue's message_bytes_max of {max} bytes (a setting stored with \
             the queue, chosen by the program that created it); split the record"
        ),
        other => other.to_string(),
    }
}

/// The summary on standard output (in either format); why it stopped on standard error.
fn report(summary: &Summary, format: Format) {
    let (first, last) = (summary.first_offset.map(|o| o.0), summary.last_offset.map(|o| o.0));
    match format {
        Format::Json => print_json(&serde_json::json!({
            "appended": summary.appended,
            "first_offset": first,
            "last_offset": last,
            "interrupted": summary.interrupted,
            "stopped_at_input_record": summary.stopped.as_ref().map(|(at, _)| at),
            "error": summary.stopped.as_ref().map(|(_, why)| why),
            "read_not_appended": summary.not_appended,
        })),
        Format::Table => {
            let records = if summary.appended == 1 { "record" } else { "records" };
            match (first, last) {
                (Some(first), Some(last)) => out!(
                    "appended {} {records} (input records 1..={}), offsets {first}..={last}",
                    summary.appended,
                    summary.appended
                ),
                _ => out!("appended 0 records"),
            }
            if summary.interrupted && summary.stopped.is_none() {
                out!("interrupted: every whole record read before the signal was appended");
            }
        }
    }
    if let Some((at, why)) = &summary.stopped {
        let unread = match summary.not_appended {
            0 => String::new(),
            n => format!("; {n} records read from there on were not appended"),
        };
        let hint = format!("to retry, feed the input again from record {at} (the ones before it are stored)");
        print_error(format, &format!("stopped at input record {at}: {why}{unread}"), Some(&hint));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The next record of standard input, `None` at its end; `Err` says why the input cannot be read on.
fn read_record(input: &mut impl BufRead, length_delimited: bool, number: u64) -> Result<Option<Vec<u8>>, String> {
    if length_delimited {
        read_delimited(input, number)
    } else {
        read_line(input, number)
    }
}

/// A line; one longer than any message can be (`MESSAGE_BYTES_LIMIT`) is an error, not a reason to grow a buffer
/// without end (`walq produce < /dev/zero`).
fn read_line(input: &mut impl BufRead, number: u64) -> Result<Option<Vec<u8>>, String> {
    let limit = walq::MESSAGE_BYTES_LIMIT as u64 + 2; // the longest line, its "\r\n" included
    let mut line = Vec::new();
    let read = input.take(limit + 1).read_until(b'\n', &mut line);
    if read.map_err(|e| format!("reading standard input: {e}"))? == 0 {
        return Ok(None);
    }
    if line.len() as u64 > limit {
        return Err(format!("line {number} is longer than the largest message ({} bytes)", walq::MESSAGE_BYTES_LIMIT));
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(Some(line))
}

/// A 4-byte big-endian length and that many bytes. Input that ends inside either is an error saying where.
fn read_delimited(input: &mut impl Read, number: u64) -> Result<Option<Vec<u8>>, String> {
    let mut length = [0u8; 4];
    let got = read_full(input, &mut length).map_err(|e| format!("reading standard input: {e}"))?;
    match got {
        0 => return Ok(None),
        4 => {}
        got => return Err(format!("input ends {got} bytes into the 4-byte length of record {number}")),
    }
    let len = u32::from_be_bytes(length) as usize;
    if len > walq::MESSAGE_BYTES_LIMIT {
        return Err(format!("record {number} claims {len} bytes, over the limit of {}", walq::MESSAGE_BYTES_LIMIT));
    }
    let mut value = vec![0u8; len];
    let got = read_full(input, &mut value).map_err(|e| format!("reading standard input: {e}"))?;
    if got < len {
        return Err(format!("input ends {got} bytes into record {number}, which claims {len}"));
    }
    Ok(Some(value))
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
