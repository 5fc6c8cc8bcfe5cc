//! Shared output: value encodings, times, JSON lines and tables.

/// `println!` to standard output, except that a closed pipe (`walq dump DIR | head`) ends the program quietly
/// with exit code 0 instead of a panic: the reader has all it wanted.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// Writes one line to standard output; see [`out!`].
pub fn write_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(line).and_then(|()| stdout.write_all(b"\n")) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("walq: error: writing standard output: {error}");
        std::process::exit(1);
    }
}

/// Writes one line to standard output and flushes it, returning the error (a closed pipe included) to the caller:
/// for `consume`, which acks a message only once its line is out.
pub fn try_write_line(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(line.as_bytes())?;
    stdout.write_all(b"\n")?;
    stdout.flush()
}

use base64::Engine;
use clap::ValueEnum;
use walq::inspect::{InspectedRecord, Problem};

use crate::Format;

/// How keys and values are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValueFormat {
    /// As text (bytes that are not UTF-8 are replaced by U+FFFD).
    Utf8,
    /// Lowercase hexadecimal.
    Hex,
    /// Standard base64.
    Base64,
    /// Not shown.
    None,
}

/// Encodes bytes for display; `None` stays `None` (no key, or a tombstone's value).
pub fn encode(bytes: Option<&[u8]>, format: ValueFormat) -> Option<String> {
    let bytes = bytes?;
    Some(match format {
        ValueFormat::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        ValueFormat::Hex => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ValueFormat::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        ValueFormat::None => String::new(),
    })
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2026-11-24T21:15:37.123Z`.
pub fn time(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Headers as a JSON object of encoded values.
pub fn headers_json(headers: &[walq::Header], values: ValueFormat) -> serde_json::Map<String, serde_json::Value> {
    headers
        .iter()
        .map(|h| (h.name.clone(), encode(Some(&h.value), values).map_or(serde_json::Value::Null, Into::into)))
        .collect()
}

/// A value as a JSON field: absent for a tombstone or with `--value none`.
pub fn value_json(value: Option<&[u8]>, values: ValueFormat) -> Option<String> {
    if values == ValueFormat::None {
        None
    } else {
        encode(value, values)
    }
}

/// A value as a table cell: `(tombstone)` for none, empty with `--value none`.
pub fn value_cell(value: Option<&[u8]>, values: ValueFormat) -> String {
    match (value, values) {
        (_, ValueFormat::None) => String::new(),
        (None, _) => "(tombstone)".into(),
        (Some(v), _) => encode(Some(v), values).unwrap_or_default(),
    }
}

/// Prints an error on standard error: `walq: error: ...` lines, or with `--format json` one JSON object
/// (`{"error": ...}`, and `"hint"` when there is advice).
pub fn print_error(format: Format, error: &str, hint: Option<&str>) {
    match format {
        Format::Json => {
            let mut object = serde_json::json!({ "error": error });
            if let Some(hint) = hint {
                object["hint"] = hint.into();
            }
            eprintln!("{object}");
        }
        Format::Table => {
            eprintln!("walq: error: {error}");
            if let Some(hint) = hint {
                eprintln!("{hint}");
            }
        }
    }
}

/// Prints one record as a table row or a JSON line.
pub fn print_record(record: &InspectedRecord, format: Format, values: ValueFormat) {
    match format {
        Format::Json => {
            let headers = headers_json(&record.headers, values);
            let line = serde_json::json!({
                "offset": record.offset.0,
                "segment": record.segment.file_name().map(|n| n.to_string_lossy()),
                "position": record.position,
                "size_bytes": record.size_bytes,
                "checksum": "ok",
                "timestamp_ms": record.timestamp_ms,
                "time": time(record.timestamp_ms),
                "key": encode(record.key.as_deref(), values),
                "value": value_json(record.value.as_deref(), values),
                "tombstone": record.value.is_none(),
                "headers": headers,
            });
            out!("{line}");
        }
        Format::Table => {
            let segment = record.segment.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let key = encode(record.key.as_deref(), values).unwrap_or_else(|| "-".into());
            let value = value_cell(record.value.as_deref(), values);
            out!(
                "{:>10}  {segment:<24}  {:>10}  {:>7}  ok  {}  {key}  {value}",
                record.offset.0,
                record.position,
                record.size_bytes,
                time(record.timestamp_ms)
            );
        }
    }
}

/// The header line of record tables.
pub fn print_record_header(format: Format) {
    if format == Format::Table {
        out!("{:>10}  {:<24}  {:>10}  {:>7}  CRC {:<24}  KEY  VALUE", "OFFSET", "SEGMENT", "POSITION", "SIZE", "TIME");
    }
}

/// Prints a problem: to standard output as JSON, or to standard error as text.
pub fn print_problem(problem: &Problem, format: Format) {
    match format {
        Format::Json => out!("{}", serde_json::json!({ "problem": problem })),
        Format::Table => {
            let at = problem.position.map(|p| format!(" at byte {p}")).unwrap_or_default();
            eprintln!("{:?}: {}{at}: {}", problem.severity, problem.file.display(), problem.what);
        }
    }
}

/// Prints any serializable value as one JSON line.
pub fn print_json(value: &impl serde::Serialize) {
    out!("{}", serde_json::to_string(value).expect("reports serialize"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_encodings() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_764_018_937_123), "2025-11-24T21:15:37.123Z");
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(encode(Some(b"\x00\xff"), ValueFormat::Hex).unwrap(), "00ff");
        assert_eq!(encode(Some(b"hi"), ValueFormat::Base64).unwrap(), "aGk=");
        assert_eq!(encode(None, ValueFormat::Utf8), None);
    }
}
