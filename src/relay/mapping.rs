//! How a walq record becomes a NATS message and back: subject, headers, payload and the deduplication id.
//!
//! Pure functions, so that the mapping is tested without a server. The payload is the record's value, byte for
//! byte (empty for a tombstone). Everything else travels in headers:
//!
//! | header                 | value                                                                  |
//! |------------------------|------------------------------------------------------------------------|
//! | `Nats-Msg-Id`          | `<queue id>:id:<base64url of the dedup id>` (`Message::dedup_id`), or  |
//! |                        | else `<queue id>:<offset>:<content crc>`: JetStream's dedup key        |
//! | `Walq-Queue`           | the queue's id (from its manifest)                                     |
//! | `Walq-Offset`          | the record's offset, decimal                                           |
//! | `Walq-Timestamp-Ms`    | the record's timestamp, decimal milliseconds since the Unix epoch      |
//! | `Walq-Key`             | the key, when it is printable ASCII without edge spaces                |
//! | `Walq-Key-Base64`      | any other key, standard base64                                         |
//! | `Walq-Tombstone`       | `1` for a tombstone (a key without a value)                            |
//! | the header's own name  | a user header whose name and value NATS can carry verbatim             |
//! | `Walq-Header-Base64`   | any other user header: `<base64 name>:<base64 value>`, in order        |
//!
//! A user header whose name starts with `Nats-` or `Walq-` always takes the base64 form: it must not steer the
//! server (`Nats-Expected-*`, `Nats-Msg-Id`) nor be confused with walq's own headers.

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64_URL;
use base64::Engine as _;

use crate::message::{Header, Offset, Record};

/// Header carrying the queue's id.
pub const HEADER_QUEUE: &str = "Walq-Queue";
/// Header carrying the record's offset.
pub const HEADER_OFFSET: &str = "Walq-Offset";
/// Header carrying the record's timestamp.
pub const HEADER_TIMESTAMP_MS: &str = "Walq-Timestamp-Ms";
/// Header carrying a printable key.
pub const HEADER_KEY: &str = "Walq-Key";
/// Header carrying any other key, base64.
pub const HEADER_KEY_BASE64: &str = "Walq-Key-Base64";
/// Header marking a tombstone.
pub const HEADER_TOMBSTONE: &str = "Walq-Tombstone";
/// Header carrying a user header that NATS cannot carry verbatim.
pub const HEADER_USER_BASE64: &str = "Walq-Header-Base64";

/// Longest key put verbatim into a subject token by [`SubjectMode::KeyToken`].
pub const KEY_TOKEN_BYTES_MAX: usize = 64;

/// Where a relayed message is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubjectMode {
    /// Every message to the configured subject.
    #[default]
    Fixed,
    /// To `<subject>.<key token>`, so that JetStream consumers can filter by key: the key itself when it is 1 to
    /// [`KEY_TOKEN_BYTES_MAX`] bytes of `[A-Za-z0-9_-]`, else `=` and its lowercase hex (`=` alone for no key).
    /// The stream must then capture `<subject>.>`.
    KeyToken,
}

/// The id JetStream deduplicates on: stable for a message of a queue across relay restarts, distinct across
/// queues (the queue id is random at creation), and distinct for two messages that got the same offset.
///
/// Why the content checksum: in `Durability::None` and `Interval`, a power cut can take the last appends, and the
/// next appends then reuse their offsets. With `<queue id>:<offset>` alone, JetStream would drop such a new message
/// as a duplicate of the lost one it had already received (within its duplicate window) and the relay would ack it:
/// silent loss. The CRC-32 covers everything the record carries (timestamp, key, value, headers), so a new message
/// at a reused offset gets a new id; a redelivery of the same message keeps its id.
///
/// A message with a dedup id ([`Message::dedup_id`](crate::Message::dedup_id)) is published under
/// `<queue id>:id:<the id in unpadded base64url>`: a producer's retry that reached the queue twice (the queue's
/// window did not hold it) is one message to JetStream too, within the stream's duplicate window, and ids of two
/// queues never meet. The middle field `id` is not a number, so the form cannot equal an offset's.
pub fn message_id(queue_id: &str, record: &Record) -> String {
    if let Some(id) = record.dedup_id() {
        return format!("{queue_id}:id:{}", BASE64_URL.encode(id));
    }
    format!("{queue_id}:{}:{:08x}", record.offset, content_crc(record))
}

/// CRC-32 of a record's content, each field length-prefixed so that no two records share an encoding.
fn content_crc(record: &Record) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    let mut field = |bytes: Option<&[u8]>| {
        match bytes {
            Some(bytes) => {
                hasher.update(&[1]);
                hasher.update(&(bytes.len() as u64).to_le_bytes());
                hasher.update(bytes);
            }
            None => hasher.update(&[0]),
        };
    };
    field(Some(&record.timestamp_ms.to_le_bytes()));
    field(record.key.as_deref());
    field(record.value.as_deref());
    for header in &record.headers {
        field(Some(header.name.as_bytes()));
        field(Some(&header.value));
    }
    hasher.finalize()
}

/// The subject a record is published to.
pub fn subject_for(subject: &str, mode: SubjectMode, key: Option<&[u8]>) -> String {
    match mode {
        SubjectMode::Fixed => subject.to_string(),
        SubjectMode::KeyToken => format!("{subject}.{}", key_token(key.unwrap_or_default())),
    }
}

fn key_token(key: &[u8]) -> String {
    let verbatim = !key.is_empty()
        && key.len() <= KEY_TOKEN_BYTES_MAX
        && key.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
    if verbatim {
        // Checked just above: ASCII only.
        String::from_utf8(key.to_vec()).expect("ASCII is UTF-8")
    } else {
        let mut token = String::with_capacity(1 + 2 * key.len());
        token.push('=');
        for b in key {
            token.push_str(&format!("{b:02x}"));
        }
        token
    }
}

/// Whether `subject` is a literal NATS subject a message can be published to: dot-separated non-empty tokens of
/// printable ASCII, without wildcards.
pub fn is_valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty() && token != "*" && token != ">" && token.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// The headers of a relayed record, `Nats-Msg-Id` included.
pub fn headers_for(queue_id: &str, record: &Record) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, message_id(queue_id, record).as_str());
    headers.insert(HEADER_QUEUE, verbatim_value(queue_id.as_bytes()).unwrap_or_default());
    headers.insert(HEADER_OFFSET, record.offset.0.to_string().as_str());
    headers.insert(HEADER_TIMESTAMP_MS, record.timestamp_ms.to_string().as_str());
    if let Some(key) = &record.key {
        match verbatim_value(key) {
            Some(value) => headers.insert(HEADER_KEY, value),
            None => headers.insert(HEADER_KEY_BASE64, BASE64.encode(key).as_str()),
        }
    }
    if record.is_tombstone() {
        headers.insert(HEADER_TOMBSTONE, "1");
    }
    for header in &record.headers {
        match (verbatim_name(&header.name), verbatim_value(&header.value)) {
            (Some(name), Some(value)) => headers.append(name, value),
            _ => {
                let packed = format!("{}:{}", BASE64.encode(&header.name), BASE64.encode(&header.value));
                headers.append(HEADER_USER_BASE64, packed.as_str());
            }
        }
    }
    headers
}

fn verbatim_name(name: &str) -> Option<HeaderName> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("nats-") || lower.starts_with("walq-") {
        return None;
    }
    name.parse::<HeaderName>().ok().filter(|_| !name.is_empty())
}

/// Printable ASCII without leading or trailing spaces (the protocol trims them), else `None`.
fn verbatim_value(bytes: &[u8]) -> Option<HeaderValue> {
    let printable = bytes.iter().all(|b| (0x20..0x7f).contains(b));
    let trimmed = bytes.first() != Some(&b' ') && bytes.last() != Some(&b' ');
    if !(printable && trimmed) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse::<HeaderValue>().ok()
}

/// A relayed message as read from the stream, turned back into the queue's id and the walq record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// The id of the queue the message came from.
    pub queue_id: String,
    /// The record, as it is stored in that queue.
    pub record: Record,
}

/// Why a NATS message could not be read as a relayed walq record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotRelayed {
    /// A header walq always sets is missing or is not a number: the message was not published by the relay.
    #[error("header {name} is missing or malformed: the message was not published by walq's relay")]
    MissingHeader {
        /// The header.
        name: &'static str,
    },
    /// A base64 header does not decode.
    #[error("header {name} is not valid base64")]
    BadBase64 {
        /// The header.
        name: &'static str,
    },
}

/// Reads a message published by the relay back into the record it came from: the inverse of [`headers_for`] and
/// the payload. Consumers of the stream use it to see keys, timestamps and headers as walq stored them.
pub fn record_from_message(headers: &HeaderMap, payload: &[u8]) -> Result<Relayed, NotRelayed> {
    let text = |name: &'static str| headers.get(name).map(HeaderValue::as_str);
    let number =
        |name: &'static str| text(name).and_then(|v| v.parse::<u64>().ok()).ok_or(NotRelayed::MissingHeader { name });
    let queue_id = text(HEADER_QUEUE).ok_or(NotRelayed::MissingHeader { name: HEADER_QUEUE })?.to_string();
    let key = match (text(HEADER_KEY), text(HEADER_KEY_BASE64)) {
        (Some(key), _) => Some(key.as_bytes().to_vec()),
        (None, Some(encoded)) => Some(decode_base64(encoded, HEADER_KEY_BASE64)?),
        (None, None) => None,
    };
    let value = (text(HEADER_TOMBSTONE) != Some("1")).then(|| payload.to_vec());
    Ok(Relayed {
        queue_id,
        record: Record {
            offset: Offset(number(HEADER_OFFSET)?),
            timestamp_ms: number(HEADER_TIMESTAMP_MS)?,
            key,
            value,
            headers: user_headers(headers)?,
        },
    })
}

/// The user headers, in their original order as far as NATS keeps it: NATS groups values by name, so headers
/// come back grouped by name (verbatim ones first, by name), each name's values in order.
fn user_headers(headers: &HeaderMap) -> Result<Vec<Header>, NotRelayed> {
    let mut names: Vec<&HeaderName> = headers.iter().map(|(name, _)| name).collect();
    names.sort_by(|a, b| AsRef::<str>::as_ref(*a).cmp(AsRef::<str>::as_ref(*b)));
    let mut out = Vec::new();
    for name in names {
        let name_str: &str = name.as_ref();
        if verbatim_name(name_str).is_none() {
            continue;
        }
        for value in headers.get_all(name_str) {
            out.push(Header { name: name_str.to_string(), value: value.as_str().as_bytes().to_vec() });
        }
    }
    for packed in headers.get_all(HEADER_USER_BASE64) {
        let (name, value) =
            packed.as_str().split_once(':').ok_or(NotRelayed::BadBase64 { name: HEADER_USER_BASE64 })?;
        let name = String::from_utf8(decode_base64(name, HEADER_USER_BASE64)?)
            .map_err(|_| NotRelayed::BadBase64 { name: HEADER_USER_BASE64 })?;
        out.push(Header { name, value: decode_base64(value, HEADER_USER_BASE64)? });
    }
    Ok(out)
}

fn decode_base64(encoded: &str, name: &'static str) -> Result<Vec<u8>, NotRelayed> {
    BASE64.decode(encoded).map_err(|_| NotRelayed::BadBase64 { name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, &[u8])]) -> Record {
        Record {
            offset: Offset(42),
            timestamp_ms: 1_700_000_000_123,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: headers.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_vec() }).collect(),
        }
    }

    fn round_trip(record: &Record) -> Record {
        let headers = headers_for("q1", record);
        let relayed = record_from_message(&headers, record.value.as_deref().unwrap_or_default()).unwrap();
        assert_eq!(relayed.queue_id, "q1");
        relayed.record
    }

    #[test]
    fn a_dedup_id_is_the_message_id() {
        let printable = record(None, Some(b"v"), &[("walq-dedup-id", b"order-17")]);
        assert_eq!(message_id("q1", &printable), "q1:id:b3JkZXItMTc");
        assert_eq!(headers_for("q1", &printable).get(NATS_MESSAGE_ID).unwrap().as_str(), "q1:id:b3JkZXItMTc");
        assert_eq!(message_id("q2", &printable), "q2:id:b3JkZXItMTc", "ids of two queues never meet");
        let binary = record(None, Some(b"v"), &[("walq-dedup-id", &[0, 159, 146])]);
        assert_eq!(message_id("q1", &binary), "q1:id:AJ-S");
        assert_eq!(round_trip(&printable), printable, "the id header travels as a user header too");
    }

    #[test]
    fn the_message_id_names_queue_offset_and_content() {
        let one = record(None, Some(b"v"), &[]);
        let id = message_id("q1", &one);
        assert!(id.starts_with("q1:42:") && id.len() == "q1:42:".len() + 8, "{id}");
        assert_eq!(headers_for("q1", &one).get(NATS_MESSAGE_ID).unwrap().as_str(), id);
        assert_eq!(message_id("q1", &one.clone()), id, "a redelivery keeps its id");
        // Another message at the same offset (a power cut freed it) gets another id, whatever field differs.
        let others = [
            record(None, Some(b"w"), &[]),
            record(Some(b""), Some(b"v"), &[]),
            record(None, None, &[]),
            record(None, Some(b"v"), &[("h", b"")]),
            Record { timestamp_ms: 1, ..one.clone() },
        ];
        for other in &others {
            assert_ne!(message_id("q1", other), id, "{other:?}");
        }
    }

    #[test]
    fn printable_and_binary_keys_and_headers_round_trip() {
        let cases = [
            record(Some(b"order-17"), Some(b"v"), &[("trace", b"abc")]),
            record(Some(b"\x00\xffkey"), Some(b"\x01\x02"), &[("bin", b"\x00\n\r"), ("with space", b"x")]),
            record(Some(b" edge "), Some(b""), &[("Nats-Msg-Id", b"forged"), ("walq-offset", b"7"), ("", b"e")]),
            record(Some(b"k"), None, &[]),
            record(None, Some(b"no key"), &[]),
        ];
        for case in &cases {
            assert_eq!(&round_trip(case), case);
        }
    }

    #[test]
    fn a_user_header_cannot_forge_the_deduplication_id() {
        let headers = headers_for("q1", &record(None, Some(b"v"), &[("Nats-Msg-Id", b"forged")]));
        assert_eq!(headers.get_all(NATS_MESSAGE_ID).count(), 1);
        assert!(headers.get(NATS_MESSAGE_ID).unwrap().as_str().starts_with("q1:42:"));
    }

    #[test]
    fn key_tokens_are_verbatim_only_when_safe() {
        assert_eq!(subject_for("orders", SubjectMode::Fixed, Some(b"k")), "orders");
        assert_eq!(subject_for("orders", SubjectMode::KeyToken, Some(b"eu-17_a")), "orders.eu-17_a");
        assert_eq!(subject_for("orders", SubjectMode::KeyToken, Some(b"a.b")), "orders.=612e62");
        assert_eq!(subject_for("orders", SubjectMode::KeyToken, Some(b"*")), "orders.=2a");
        assert_eq!(subject_for("orders", SubjectMode::KeyToken, None), "orders.=");
        let long = [b'a'; KEY_TOKEN_BYTES_MAX + 1];
        assert!(subject_for("o", SubjectMode::KeyToken, Some(&long)).starts_with("o.=6161"));
        for key in [&b"x"[..], b"a.b", b"\xff", b"", b"*", b">"] {
            assert!(is_valid_subject(&subject_for("o", SubjectMode::KeyToken, Some(key))), "{key:?}");
        }
    }

    #[test]
    fn subjects_are_checked() {
        for good in ["orders", "orders.eu", "a-b_c.d1"] {
            assert!(is_valid_subject(good), "{good}");
        }
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b", "a\tb", "ä"] {
            assert!(!is_valid_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_foreign_message_is_not_read_as_a_record() {
        let mut headers = HeaderMap::new();
        headers.insert("Walq-Queue", "q1");
        assert_eq!(record_from_message(&headers, b"x"), Err(NotRelayed::MissingHeader { name: HEADER_OFFSET }));
        assert_eq!(record_from_message(&HeaderMap::new(), b"x"), Err(NotRelayed::MissingHeader { name: HEADER_QUEUE }));
    }
}
