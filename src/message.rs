//! The data types users hand to walq and get back: [`Message`], [`Record`], [`Header`] and [`Offset`].

use std::fmt;

/// A message's place in its queue: a dense, stable message number (not a byte position).
///
/// The first message of a queue has offset 0, the next 1, and so on. Offsets never change, not even when
/// compaction or cleanup removes messages; readers then see gaps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Offset(pub u64);

impl Offset {
    /// The oldest message still stored: reading from here replays everything.
    pub const EARLIEST: Offset = Offset(0);
    /// The offset the next append will get: reading from here sees only new messages.
    pub const LATEST: Offset = Offset(u64::MAX);

    /// The offset as a number.
    pub fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The header that delays a message ([`Message::deliver_at_ms`]): the time before which no group delivers it, in
/// milliseconds since the Unix epoch, as ASCII decimal digits. A value that is not such a number delays nothing.
pub const DELIVER_AT_HEADER: &str = "walq-deliver-at-ms";

/// Longest value of [`DELIVER_AT_HEADER`] read as a time: `u64::MAX` has 20 digits.
const DELIVER_AT_DIGITS_MAX: usize = 20;

/// A small named value carried with a message, such as a trace id or a content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header's name (UTF-8, at most [`HEADER_NAME_BYTES_MAX`](crate::HEADER_NAME_BYTES_MAX) bytes).
    pub name: String,
    /// The header's value.
    pub value: Vec<u8>,
}

/// A message's parts, borrowed: what a frame is encoded from, whether the caller owns a [`Message`] or only lends
/// its bytes ([`Queue::append_bytes`](crate::Queue::append_bytes), which so costs no allocation per message).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Parts<'a> {
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) timestamp_ms: Option<u64>,
    pub(crate) headers: &'a [Header],
}

impl<'a> Parts<'a> {
    /// A message of this value alone, timestamped when appended.
    pub(crate) fn value(value: &'a [u8]) -> Parts<'a> {
        Parts { value: Some(value), ..Parts::default() }
    }
}

/// What the log appends: anything that lends a message's [`Parts`].
pub(crate) trait AsParts {
    fn parts(&self) -> Parts<'_>;
}

impl AsParts for Message {
    fn parts(&self) -> Parts<'_> {
        Parts {
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            timestamp_ms: self.timestamp_ms,
            headers: &self.headers,
        }
    }
}

impl Message {
    /// An owned copy of borrowed parts.
    pub(crate) fn from_parts(parts: &Parts<'_>) -> Message {
        Message {
            key: parts.key.map(<[u8]>::to_vec),
            value: parts.value.map(<[u8]>::to_vec),
            timestamp_ms: parts.timestamp_ms,
            headers: parts.headers.to_vec(),
        }
    }
}

impl AsParts for Parts<'_> {
    fn parts(&self) -> Parts<'_> {
        *self
    }
}

/// A message to append: an optional key, a value (absent for a tombstone), a timestamp and headers.
/// ///
/// ```
/// use walq::Message;
/// let order = Message::new(r#"{"sku":"A-1","qty":2}"#)
///     .key("customer-7") // keyed compaction keeps the latest value per key
///     .timestamp_ms(1_764_000_000_000)
///     .header("content-type", "application/json");
/// assert_eq!(order.key_bytes(), Some(&b"customer-7"[..]));
/// let delete = Message::tombstone("customer-7"); // removes the key's earlier values at compaction
/// assert_eq!(delete.value_bytes(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) timestamp_ms: Option<u64>,
    pub(crate) headers: Vec<Header>,
}

impl Message {
    /// A message with this value, no key and no headers, timestamped when appended.
    pub fn new(value: impl Into<Vec<u8>>) -> Message {
        Message { value: Some(value.into()), ..Message::default() }
    }

    /// A tombstone: a key with no value. Keyed compaction deletes the key's earlier messages.
    pub fn tombstone(key: impl Into<Vec<u8>>) -> Message {
        Message { key: Some(key.into()), ..Message::default() }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Message {
        self.key = Some(key.into());
        self
    }

    /// Sets the timestamp, in milliseconds since the Unix epoch, instead of the time of the append.
    pub fn timestamp_ms(mut self, timestamp_ms: u64) -> Message {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Message {
        self.headers.push(Header { name: name.into(), value: value.into() });
        self
    }

    /// Delays the message: no consumer group delivers it before `deliver_at_ms` (milliseconds since the Unix
    /// epoch, by the wall clock of the process that delivers it). Other messages are not held back behind it
    /// (except, in a group ordered by key, the later messages of its key: `QueueBuilder::order_by_key`), and
    /// the delay survives restarts: it is stored with the message, as the header [`DELIVER_AT_HEADER`] (the time
    /// in ASCII decimal), which a later call replaces. Readers ([`Queue::read_from`](crate::Queue::read_from))
    /// see the message at once, with that header.
    pub fn deliver_at_ms(mut self, deliver_at_ms: u64) -> Message {
        self.headers.retain(|h| h.name != DELIVER_AT_HEADER);
        self.header(DELIVER_AT_HEADER, deliver_at_ms.to_string())
    }

    /// Gives the message an id for producer deduplication ([`QueueBuilder::dedup_window`](crate::QueueBuilder::dedup_window)):
    /// while the id is in the queue's window, appending a message with it again writes nothing and returns the
    /// first append's offset. Stored with the message as the header
    /// [`DEDUP_ID_HEADER`](crate::DEDUP_ID_HEADER) (which a later call replaces), at most
    /// [`DEDUP_ID_BYTES_MAX`](crate::DEDUP_ID_BYTES_MAX) bytes; the relay publishes it as `Nats-Msg-Id`. Without a
    /// window the id is only a header.
    pub fn dedup_id(mut self, id: impl Into<Vec<u8>>) -> Message {
        self.headers.retain(|h| h.name != crate::dedup::DEDUP_ID_HEADER);
        self.header(crate::dedup::DEDUP_ID_HEADER, id)
    }

    /// Delays the message by `delay` from now: [`Message::deliver_at_ms`] of now plus `delay`.
    pub fn deliver_after(self, delay: std::time::Duration) -> Message {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.deliver_at_ms(crate::clock::now_ms().saturating_add(delay_ms))
    }

    /// A message whose value is `value` serialized as JSON (with serde, which the crate already uses), no key and
    /// no headers. Read it back with [`Record::json`] or [`Delivery::json`](crate::Delivery::json).
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> crate::Result<Message> {
        let bytes = serde_json::to_vec(value).map_err(|source| crate::Error::Json { source })?;
        Ok(Message::new(bytes))
    }

    /// The key, if any.
    pub fn key_bytes(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The value; `None` for a tombstone.
    pub fn value_bytes(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
}

/// A stored message, as read back.
/// ///
/// ```
/// use walq::{Message, Offset, Queue};
/// # fn main() -> walq::Result<()> {
/// # let temp = tempfile::tempdir().unwrap();
/// let queue = Queue::open(temp.path())?;
/// queue.append(Message::new("v").key("k").header("trace", "abc"))?;
/// let record = queue.get(Offset(0))?.expect("stored");
/// assert_eq!((record.key.as_deref(), record.value.as_deref()), (Some(&b"k"[..]), Some(&b"v"[..])));
/// assert_eq!(record.headers[0].name, "trace");
/// assert!(!record.is_tombstone());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The message's offset.
    pub offset: Offset,
    /// Milliseconds since the Unix epoch: given by the producer, or the time of the append.
    pub timestamp_ms: u64,
    /// The key, if the message had one.
    pub key: Option<Vec<u8>>,
    /// The value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The headers, in the order they were added.
    pub headers: Vec<Header>,
}

impl Record {
    /// Whether this record is a tombstone (a key without a value).
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The message's dedup id ([`Message::dedup_id`]), if it has one.
    pub fn dedup_id(&self) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.name == crate::dedup::DEDUP_ID_HEADER).map(|h| h.value.as_slice())
    }

    /// The time before which no group delivers this message ([`Message::deliver_at_ms`]), if it has one: its
    /// first [`DELIVER_AT_HEADER`] header, when that holds a number.
    pub fn deliver_at_ms(&self) -> Option<u64> {
        let header = self.headers.iter().find(|h| h.name == DELIVER_AT_HEADER)?;
        parse_decimal_ms(&header.value)
    }

    /// The value, deserialized from JSON (what [`Message::json`] wrote). A tombstone or a value that is not JSON
    /// of type `T` is [`Error::Json`](crate::Error::Json); the record is left as it was.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        let Some(bytes) = self.value.as_deref() else {
            let source = <serde_json::Error as serde::de::Error>::custom("a tombstone (or a taken value) is no JSON");
            return Err(crate::Error::Json { source });
        };
        serde_json::from_slice(bytes).map_err(|source| crate::Error::Json { source })
    }
}

/// `bytes` as a decimal `u64` (digits only, at most 20 of them, no overflow); `None` otherwise.
fn parse_decimal_ms(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > DELIVER_AT_DIGITS_MAX || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &digit| n.checked_mul(10)?.checked_add(u64::from(digit - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deliver_at_header_is_read_only_when_it_is_a_number() {
        let record = |value: &[u8]| Record {
            offset: Offset(0),
            timestamp_ms: 0,
            key: None,
            value: None,
            headers: vec![Header { name: DELIVER_AT_HEADER.to_string(), value: value.to_vec() }],
        };
        assert_eq!(record(b"1700000000000").deliver_at_ms(), Some(1_700_000_000_000));
        assert_eq!(record(b"18446744073709551615").deliver_at_ms(), Some(u64::MAX));
        for bad in [&b""[..], b"18446744073709551616", b"-1", b"12 ", b"1e3", b"000000000000000000001"] {
            assert_eq!(record(bad).deliver_at_ms(), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let message = Message::new("v").deliver_at_ms(5).deliver_at_ms(7);
        assert_eq!(message.headers.len(), 1, "a later call replaces the time");
        assert_eq!(message.headers[0].value, b"7");
    }
}
