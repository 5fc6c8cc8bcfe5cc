//! The wire protocol between a queue's owner and the processes it serves: framing, the handshake, every request
//! and reply. PROTOCOL.md at the root of the project specifies the same bytes for writers of other clients.
//!
//! Pure encoding: no I/O here. Decoders take a frame's body as `&[u8]` and trust nothing: every length is checked
//! against the bytes left before anything is allocated, and bad bytes are `Err(Malformed)`, never a panic. The
//! owner closes a connection that sends a malformed frame; a client reports [`Error::Protocol`].

use std::path::{Path, PathBuf};

use crate::error::{CorruptionKind, Error};
use crate::group::{Nacked, StartAt};
use crate::limits::{DEAD_LETTER_REASON_BYTES_MAX, HEADERS_COUNT_MAX, MESSAGE_BYTES_LIMIT};
use crate::message::{Header, Message, Offset, Parts, Record};

/// The newest protocol version this build speaks. Version 2 added the waiting read (for a follow); an owner
/// serves clients of every version from [`PROTOCOL_VERSION_OLDEST`] to this one, and a client of a newer owner
/// speaks its own version.
pub(crate) const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version this build serves and speaks. A hello of another version is refused at the
/// handshake.
pub(crate) const PROTOCOL_VERSION_OLDEST: u16 = 1;

/// The first bytes of a client's hello: a stray connection (another program's) is told apart at once.
pub(crate) const HELLO_MAGIC: [u8; 4] = *b"WALQ";

/// The largest frame body either side sends or accepts, in bytes: one message at the largest message size any
/// queue allows, plus room for its headers and framing. Bounds what one frame can make the owner allocate.
pub(crate) const FRAME_BYTES_MAX: usize = MESSAGE_BYTES_LIMIT + 1024 * 1024;

/// Most messages in one append request, and most deliveries or records in one reply.
pub(crate) const BATCH_COUNT_MAX: usize = 100_000;

/// Longest wait one take request may ask of the owner, in milliseconds: a client that waits longer asks again, so
/// that the owner's thread notices a closed connection within this time.
pub(crate) const TAKE_WAIT_MS_MAX: u32 = 1_000;

/// Longest group name or error text on the wire, in bytes.
const TEXT_BYTES_MAX: usize = 64 * 1024;

/// A frame's header: the body's length (u32, little-endian), then its kind.
pub(crate) const FRAME_HEADER_BYTES: usize = 5;

/// A frame body that breaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

type Decoded<T> = std::result::Result<T, Malformed>;

/// Frame kinds. Requests below 0x80, replies from 0x80.
mod kind {
    pub(super) const HELLO: u8 = 0x01;
    pub(super) const APPEND: u8 = 0x10;
    pub(super) const READ: u8 = 0x11;
    pub(super) const STATS: u8 = 0x12;
    pub(super) const READ_WAIT: u8 = 0x13;
    pub(super) const TAKE: u8 = 0x20;
    pub(super) const ANSWER: u8 = 0x21;
    pub(super) const ACK_ALL: u8 = 0x22;
    pub(super) const GROUP_ADMIN: u8 = 0x30;
    pub(super) const WELCOME: u8 = 0x81;
    pub(super) const APPENDED: u8 = 0x90;
    pub(super) const RECORDS: u8 = 0x91;
    pub(super) const STATS_JSON: u8 = 0x92;
    pub(super) const DELIVERIES: u8 = 0xA0;
    pub(super) const DONE: u8 = 0xA1;
    pub(super) const NACKED: u8 = 0xA2;
    pub(super) const VALUE: u8 = 0xA3;
    pub(super) const REFUSED: u8 = 0xFE;
    pub(super) const FAILED: u8 = 0xFF;
}

/// What a client asks of the owner.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Request {
    /// The first frame of a connection.
    Hello { version: u16 },
    /// `Queue::append_batch` of these messages (one message: `append`).
    Append { messages: Vec<Message> },
    /// Up to `max_count` records from `from` on, stopping before `max_bytes` of values and keys are passed; when
    /// there is none yet, waiting up to `wait_ms` (at most [`TAKE_WAIT_MS_MAX`]) for one to be appended. A read
    /// that waits is its own frame kind, of version 2.
    Read { from: u64, max_count: u32, max_bytes: u32, wait_ms: u32 },
    /// `Queue::stats`.
    Stats,
    /// Up to `max` deliveries of `group`, waiting up to `wait_ms` for the first.
    Take { group: String, max: u32, wait_ms: u32 },
    /// An answer to one delivery this connection holds.
    Answer { group: String, offset: u64, token: u128, answer: Answer },
    /// `Consumer::ack_all` of these deliveries, held by this connection.
    AckAll { group: String, leases: Vec<(u64, u128)> },
    /// A change to a group as a whole.
    GroupAdmin { group: String, op: GroupOp },
}

/// The group changes an administrator makes on a live queue (`walq groups --delete/--reset`, `walq redrive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupOp {
    /// `Queue::delete_group`; the value reply is 1 if it existed.
    Delete,
    /// `Queue::reset_group`; the value reply is the new floor.
    Reset(StartAt),
    /// `Group::redrive`; the value reply is 1 if it was a dead letter.
    Redrive { offset: u64 },
    /// `Group::discard`; the value reply is 1 if it was a dead letter.
    Discard { offset: u64 },
    /// `Queue::group`: creates the group if missing (at the oldest stored message); the value reply is 0.
    Open,
}

/// The answers to a delivery, as `Delivery`'s methods give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Ack,
    Nack {
        delay_ms: u64,
    },
    Retry,
    Fail {
        reason: String,
    },
    DeadLetter {
        reason: Option<String>,
    },
    ExtendLease,
    /// The client dropped the delivery unanswered.
    Release,
}

/// One leased message, as the owner hands it to a client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WireDelivery {
    pub(crate) attempt: u32,
    pub(crate) last_attempt: bool,
    pub(crate) token: u128,
    pub(crate) record: Record,
}

/// Why an owner refused a connection at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalCode {
    NotPermitted = 1,
    TooManyClients = 2,
    Version = 3,
}

/// What the owner answers.
#[derive(Debug)]
pub(crate) enum Reply {
    Welcome {
        version: u16,
        owner_pid: u32,
        queue_id: String,
    },
    Refused {
        code: RefusalCode,
        version: u16,
    },
    Appended {
        first: u64,
    },
    Records {
        next: u64,
        records: Vec<Record>,
    },
    StatsJson {
        json: Vec<u8>,
    },
    /// Deliveries of one take; `more`: another frame of this take follows.
    Deliveries {
        deliveries: Vec<WireDelivery>,
        more: bool,
    },
    Done,
    Nacked(Nacked),
    /// A group change's outcome (see [`GroupOp`]).
    Value(u64),
    /// The request failed with this error, as the owner's own call returned it.
    Failed(Error),
}

// ---------------------------------------------------------------------------------------------------------------
// Framing

/// Starts a frame of `kind` in `out`; [`finish_frame`] fills in its length.
fn start_frame(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind]);
    start
}

fn finish_frame(out: &mut [u8], start: usize) {
    let body_bytes = out.len() - start - FRAME_HEADER_BYTES;
    out[start..start + 4].copy_from_slice(&(body_bytes as u32).to_le_bytes());
}

/// The body length and kind of a frame header; refuses a body over [`FRAME_BYTES_MAX`] before it is read.
pub(crate) fn decode_frame_header(header: [u8; FRAME_HEADER_BYTES]) -> Decoded<(usize, u8)> {
    let body_bytes = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if body_bytes > FRAME_BYTES_MAX {
        return Err(Malformed("frame longer than the protocol allows"));
    }
    Ok((body_bytes, header[4]))
}

// ---------------------------------------------------------------------------------------------------------------
// Primitive encoding: little-endian integers, length-prefixed bytes.

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}
fn put_u128(out: &mut Vec<u8>, value: u128) {
    out.extend_from_slice(&value.to_le_bytes());
}
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}
/// A text cut to `max` bytes at a character boundary (error texts and reasons are for people).
fn put_text(out: &mut Vec<u8>, text: &str, max: usize) {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    put_bytes(out, &text.as_bytes()[..end]);
}
fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
        None => out.push(0),
    }
}

/// Reads a frame body front to back.
struct Wire<'a> {
    bytes: &'a [u8],
}

impl<'a> Wire<'a> {
    fn take(&mut self, len: usize) -> Decoded<&'a [u8]> {
        if len > self.bytes.len() {
            return Err(Malformed("a field runs past the end of the frame"));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Decoded<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Decoded<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Decoded<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Decoded<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Decoded<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn u128(&mut self) -> Decoded<u128> {
        self.array().map(u128::from_le_bytes)
    }
    fn flag(&mut self) -> Decoded<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed("a flag is neither 0 nor 1")),
        }
    }
    fn bytes(&mut self) -> Decoded<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn optional(&mut self) -> Decoded<Option<&'a [u8]>> {
        if self.flag()? {
            self.bytes().map(Some)
        } else {
            Ok(None)
        }
    }
    fn text(&mut self) -> Decoded<String> {
        let bytes = self.bytes()?;
        if bytes.len() > TEXT_BYTES_MAX {
            return Err(Malformed("a text is longer than the protocol allows"));
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| Malformed("a text is not UTF-8"))
    }
    /// A count of items of at least `item_bytes_min` bytes each: refused unless that many could fit in what is
    /// left, so that no count makes the decoder allocate beyond the frame it was given.
    fn count(&mut self, item_bytes_min: usize) -> Decoded<usize> {
        let count = self.u32()? as usize;
        if count > BATCH_COUNT_MAX || count.saturating_mul(item_bytes_min) > self.bytes.len() {
            return Err(Malformed("a count is larger than the frame can hold"));
        }
        Ok(count)
    }
    fn end(&self) -> Decoded<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Malformed("bytes left after the last field"))
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Messages and records

const HAS_TIMESTAMP: u8 = 1;

fn put_headers(out: &mut Vec<u8>, headers: &[Header]) {
    put_u16(out, headers.len() as u16);
    for header in headers {
        put_bytes(out, header.name.as_bytes());
        put_bytes(out, &header.value);
    }
}

fn headers(wire: &mut Wire<'_>) -> Decoded<Vec<Header>> {
    let count = usize::from(wire.u16()?);
    if count > HEADERS_COUNT_MAX || count * 8 > wire.bytes.len() {
        return Err(Malformed("more headers than a message may carry"));
    }
    (0..count)
        .map(|_| {
            let name = std::str::from_utf8(wire.bytes()?).map_err(|_| Malformed("a header name is not UTF-8"))?;
            Ok(Header { name: name.to_owned(), value: wire.bytes()?.to_vec() })
        })
        .collect()
}

fn put_message(out: &mut Vec<u8>, message: &Message) {
    out.push(if message.timestamp_ms.is_some() { HAS_TIMESTAMP } else { 0 });
    put_u64(out, message.timestamp_ms.unwrap_or(0));
    put_optional(out, message.key.as_deref());
    put_optional(out, message.value.as_deref());
    put_headers(out, &message.headers);
}

/// The smallest encoded message: flags, timestamp, two absent options, no headers.
const MESSAGE_BYTES_MIN: usize = 1 + 8 + 1 + 1 + 2;

/// An append request's messages, borrowing their keys and values from the frame: the owner appends them without a
/// copy or an allocation per message (headers, rarer, are owned).
#[derive(Debug)]
pub(crate) struct AppendBody<'a> {
    items: Vec<AppendItem<'a>>,
    headers: Vec<Vec<Header>>,
}

/// One message of an [`AppendBody`].
#[derive(Debug)]
struct AppendItem<'a> {
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    timestamp_ms: Option<u64>,
    /// The index of the message's headers in `AppendBody::headers` (`None`: it has none).
    headers: Option<usize>,
}

impl AppendBody<'_> {
    /// The messages as the log appends them.
    pub(crate) fn parts(&self) -> Vec<Parts<'_>> {
        self.items
            .iter()
            .map(|item| Parts {
                key: item.key,
                value: item.value,
                timestamp_ms: item.timestamp_ms,
                headers: item.headers.map_or(&[][..], |index| &self.headers[index]),
            })
            .collect()
    }
}

/// Decodes an append request's body (kind [`kind::APPEND`]).
pub(crate) fn decode_append(body: &[u8]) -> Decoded<AppendBody<'_>> {
    let mut wire = Wire { bytes: body };
    let count = wire.count(MESSAGE_BYTES_MIN)?;
    let mut decoded = AppendBody { items: Vec::with_capacity(count), headers: Vec::new() };
    for _ in 0..count {
        let flags = wire.u8()?;
        if flags & !HAS_TIMESTAMP != 0 {
            return Err(Malformed("unknown message flags"));
        }
        let timestamp_ms = wire.u64()?;
        let (key, value) = (wire.optional()?, wire.optional()?);
        let headers = headers(&mut wire)?;
        let headers = (!headers.is_empty()).then(|| {
            decoded.headers.push(headers);
            decoded.headers.len() - 1
        });
        let timestamp_ms = (flags & HAS_TIMESTAMP != 0).then_some(timestamp_ms);
        decoded.items.push(AppendItem { key, value, timestamp_ms, headers });
    }
    wire.end()?;
    Ok(decoded)
}

/// Whether a frame of this kind is an append (served from [`decode_append`], without owned messages).
pub(crate) fn is_append(frame_kind: u8) -> bool {
    frame_kind == kind::APPEND
}

fn put_record(out: &mut Vec<u8>, record: &Record) {
    put_u64(out, record.offset.0);
    put_u64(out, record.timestamp_ms);
    put_optional(out, record.key.as_deref());
    put_optional(out, record.value.as_deref());
    put_headers(out, &record.headers);
}

const RECORD_BYTES_MIN: usize = 8 + 8 + 1 + 1 + 2;

fn record(wire: &mut Wire<'_>) -> Decoded<Record> {
    Ok(Record {
        offset: Offset(wire.u64()?),
        timestamp_ms: wire.u64()?,
        key: wire.optional()?.map(<[u8]>::to_vec),
        value: wire.optional()?.map(<[u8]>::to_vec),
        headers: headers(wire)?,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Requests

/// Appends `request` as one frame to `out`.
pub(crate) fn encode_request(out: &mut Vec<u8>, request: &Request) {
    match request {
        Request::Hello { version } => {
            let start = start_frame(out, kind::HELLO);
            out.extend_from_slice(&HELLO_MAGIC);
            put_u16(out, *version);
            finish_frame(out, start);
        }
        Request::Append { messages } => encode_append(out, messages),
        Request::Read { from, max_count, max_bytes, wait_ms } => {
            let start = start_frame(out, if *wait_ms == 0 { kind::READ } else { kind::READ_WAIT });
            put_u64(out, *from);
            put_u32(out, *max_count);
            put_u32(out, *max_bytes);
            if *wait_ms != 0 {
                put_u32(out, *wait_ms);
            }
            finish_frame(out, start);
        }
        Request::Stats => {
            let start = start_frame(out, kind::STATS);
            finish_frame(out, start);
        }
        Request::Take { group, max, wait_ms } => {
            let start = start_frame(out, kind::TAKE);
            put_bytes(out, group.as_bytes());
            put_u32(out, *max);
            put_u32(out, *wait_ms);
            finish_frame(out, start);
        }
        Request::Answer { group, offset, token, answer } => {
            let start = start_frame(out, kind::ANSWER);
            put_bytes(out, group.as_bytes());
            put_u64(out, *offset);
            put_u128(out, *token);
            encode_answer(out, answer);
            finish_frame(out, start);
        }
        Request::AckAll { group, leases } => {
            let start = start_frame(out, kind::ACK_ALL);
            put_bytes(out, group.as_bytes());
            put_u32(out, leases.len() as u32);
            for &(offset, token) in leases {
                put_u64(out, offset);
                put_u128(out, token);
            }
            finish_frame(out, start);
        }
        Request::GroupAdmin { group, op } => {
            let start = start_frame(out, kind::GROUP_ADMIN);
            put_bytes(out, group.as_bytes());
            encode_group_op(out, *op);
            finish_frame(out, start);
        }
    }
}

fn encode_group_op(out: &mut Vec<u8>, op: GroupOp) {
    match op {
        GroupOp::Delete => out.push(0),
        GroupOp::Reset(to) => {
            out.push(1);
            match to {
                StartAt::Earliest => out.push(0),
                StartAt::Latest => out.push(1),
                StartAt::Offset(offset) => {
                    out.push(2);
                    put_u64(out, offset.0);
                }
                StartAt::Time(time_ms) => {
                    out.push(3);
                    put_u64(out, time_ms);
                }
            }
        }
        GroupOp::Redrive { offset } => {
            out.push(2);
            put_u64(out, offset);
        }
        GroupOp::Discard { offset } => {
            out.push(3);
            put_u64(out, offset);
        }
        GroupOp::Open => out.push(4),
    }
}

fn group_op(wire: &mut Wire<'_>) -> Decoded<GroupOp> {
    Ok(match wire.u8()? {
        0 => GroupOp::Delete,
        1 => GroupOp::Reset(match wire.u8()? {
            0 => StartAt::Earliest,
            1 => StartAt::Latest,
            2 => StartAt::Offset(Offset(wire.u64()?)),
            3 => StartAt::Time(wire.u64()?),
            _ => return Err(Malformed("unknown reset position")),
        }),
        2 => GroupOp::Redrive { offset: wire.u64()? },
        3 => GroupOp::Discard { offset: wire.u64()? },
        4 => GroupOp::Open,
        _ => return Err(Malformed("unknown group change")),
    })
}

/// An append request over borrowed messages (the client's `append_batch` sends what it was given).
pub(crate) fn encode_append(out: &mut Vec<u8>, messages: &[Message]) {
    let start = start_frame(out, kind::APPEND);
    put_u32(out, messages.len() as u32);
    for message in messages {
        put_message(out, message);
    }
    finish_frame(out, start);
}

fn encode_answer(out: &mut Vec<u8>, answer: &Answer) {
    match answer {
        Answer::Ack => out.push(0),
        Answer::Nack { delay_ms } => {
            out.push(1);
            put_u64(out, *delay_ms);
        }
        Answer::Retry => out.push(2),
        Answer::Fail { reason } => {
            out.push(3);
            put_text(out, reason, DEAD_LETTER_REASON_BYTES_MAX);
        }
        Answer::DeadLetter { reason } => {
            out.push(4);
            match reason {
                Some(reason) => {
                    out.push(1);
                    put_text(out, reason, DEAD_LETTER_REASON_BYTES_MAX);
                }
                None => out.push(0),
            }
        }
        Answer::ExtendLease => out.push(5),
        Answer::Release => out.push(6),
    }
}

/// A failure or dead-letter reason: at most [`DEAD_LETTER_REASON_BYTES_MAX`] bytes, as the encoder cuts it.
fn reason(wire: &mut Wire<'_>) -> Decoded<String> {
    let text = wire.text()?;
    if text.len() > DEAD_LETTER_REASON_BYTES_MAX {
        return Err(Malformed("a reason longer than the protocol allows"));
    }
    Ok(text)
}

fn answer(wire: &mut Wire<'_>) -> Decoded<Answer> {
    Ok(match wire.u8()? {
        0 => Answer::Ack,
        1 => Answer::Nack { delay_ms: wire.u64()? },
        2 => Answer::Retry,
        3 => Answer::Fail { reason: reason(wire)? },
        4 => Answer::DeadLetter { reason: if wire.flag()? { Some(reason(wire)?) } else { None } },
        5 => Answer::ExtendLease,
        6 => Answer::Release,
        _ => return Err(Malformed("unknown answer")),
    })
}

/// Decodes a request frame's body.
pub(crate) fn decode_request(frame_kind: u8, body: &[u8]) -> Decoded<Request> {
    let mut wire = Wire { bytes: body };
    let request = match frame_kind {
        kind::HELLO => {
            if wire.array::<4>()? != HELLO_MAGIC {
                return Err(Malformed("not a walq client"));
            }
            Request::Hello { version: wire.u16()? }
        }
        kind::APPEND => {
            let messages = decode_append(body)?.parts().iter().map(Message::from_parts).collect();
            return Ok(Request::Append { messages });
        }
        kind::READ => Request::Read { from: wire.u64()?, max_count: wire.u32()?, max_bytes: wire.u32()?, wait_ms: 0 },
        kind::READ_WAIT => {
            let (from, max_count, max_bytes, wait_ms) = (wire.u64()?, wire.u32()?, wire.u32()?, wire.u32()?);
            if wait_ms == 0 {
                // A read that does not wait is sent as READ: one meaning, one encoding.
                return Err(Malformed("a waiting read of no wait"));
            }
            Request::Read { from, max_count, max_bytes, wait_ms }
        }
        kind::STATS => Request::Stats,
        kind::TAKE => Request::Take { group: wire.text()?, max: wire.u32()?, wait_ms: wire.u32()? },
        kind::ANSWER => Request::Answer {
            group: wire.text()?,
            offset: wire.u64()?,
            token: wire.u128()?,
            answer: answer(&mut wire)?,
        },
        kind::ACK_ALL => {
            let group = wire.text()?;
            let count = wire.count(8 + 16)?;
            let leases = (0..count).map(|_| Ok((wire.u64()?, wire.u128()?))).collect::<Decoded<_>>()?;
            Request::AckAll { group, leases }
        }
        kind::GROUP_ADMIN => Request::GroupAdmin { group: wire.text()?, op: group_op(&mut wire)? },
        _ => return Err(Malformed("unknown request kind")),
    };
    wire.end()?;
    Ok(request)
}

// ---------------------------------------------------------------------------------------------------------------
// Replies

/// Appends `reply` as one frame to `out`.
pub(crate) fn encode_reply(out: &mut Vec<u8>, reply: &Reply) {
    match reply {
        Reply::Welcome { version, owner_pid, queue_id } => {
            let start = start_frame(out, kind::WELCOME);
            put_u16(out, *version);
            put_u32(out, *owner_pid);
            put_bytes(out, queue_id.as_bytes());
            finish_frame(out, start);
        }
        Reply::Refused { code, version } => {
            let start = start_frame(out, kind::REFUSED);
            out.push(*code as u8);
            put_u16(out, *version);
            finish_frame(out, start);
        }
        Reply::Appended { first } => {
            let start = start_frame(out, kind::APPENDED);
            put_u64(out, *first);
            finish_frame(out, start);
        }
        Reply::Records { next, records } => {
            let start = start_frame(out, kind::RECORDS);
            put_u64(out, *next);
            put_u32(out, records.len() as u32);
            for record in records {
                put_record(out, record);
            }
            finish_frame(out, start);
        }
        Reply::StatsJson { json } => {
            let start = start_frame(out, kind::STATS_JSON);
            put_bytes(out, json);
            finish_frame(out, start);
        }
        Reply::Deliveries { deliveries, more } => {
            let start = start_frame(out, kind::DELIVERIES);
            out.push(u8::from(*more));
            put_u32(out, deliveries.len() as u32);
            for delivery in deliveries {
                put_u32(out, delivery.attempt);
                out.push(u8::from(delivery.last_attempt));
                put_u128(out, delivery.token);
                put_record(out, &delivery.record);
            }
            finish_frame(out, start);
        }
        Reply::Done => {
            let start = start_frame(out, kind::DONE);
            finish_frame(out, start);
        }
        Reply::Nacked(nacked) => {
            let start = start_frame(out, kind::NACKED);
            out.push(match nacked {
                Nacked::Retry => 0,
                Nacked::DeadLettered => 1,
                Nacked::LeaseEnded => 2,
            });
            finish_frame(out, start);
        }
        Reply::Value(value) => {
            let start = start_frame(out, kind::VALUE);
            put_u64(out, *value);
            finish_frame(out, start);
        }
        Reply::Failed(error) => {
            let start = start_frame(out, kind::FAILED);
            encode_error(out, error, 0);
            finish_frame(out, start);
        }
    }
}

/// Decodes a reply frame's body; errors are rebuilt as the owner's call returned them, their paths as the owner
/// named them, and `dir` names the queue in those that need it.
pub(crate) fn decode_reply(frame_kind: u8, body: &[u8], dir: &Path) -> Decoded<Reply> {
    let mut wire = Wire { bytes: body };
    let reply = match frame_kind {
        kind::WELCOME => Reply::Welcome { version: wire.u16()?, owner_pid: wire.u32()?, queue_id: wire.text()? },
        kind::REFUSED => {
            let code = match wire.u8()? {
                1 => RefusalCode::NotPermitted,
                2 => RefusalCode::TooManyClients,
                3 => RefusalCode::Version,
                _ => return Err(Malformed("unknown refusal")),
            };
            Reply::Refused { code, version: wire.u16()? }
        }
        kind::APPENDED => Reply::Appended { first: wire.u64()? },
        kind::RECORDS => {
            let next = wire.u64()?;
            let count = wire.count(RECORD_BYTES_MIN)?;
            let records = (0..count).map(|_| record(&mut wire)).collect::<Decoded<_>>()?;
            Reply::Records { next, records }
        }
        kind::STATS_JSON => Reply::StatsJson { json: wire.bytes()?.to_vec() },
        kind::DELIVERIES => {
            let more = wire.flag()?;
            let count = wire.count(4 + 1 + 16 + RECORD_BYTES_MIN)?;
            let deliveries = (0..count)
                .map(|_| {
                    Ok(WireDelivery {
                        attempt: wire.u32()?,
                        last_attempt: wire.flag()?,
                        token: wire.u128()?,
                        record: record(&mut wire)?,
                    })
                })
                .collect::<Decoded<_>>()?;
            Reply::Deliveries { deliveries, more }
        }
        kind::DONE => Reply::Done,
        kind::NACKED => Reply::Nacked(match wire.u8()? {
            0 => Nacked::Retry,
            1 => Nacked::DeadLettered,
            2 => Nacked::LeaseEnded,
            _ => return Err(Malformed("unknown nack outcome")),
        }),
        kind::VALUE => Reply::Value(wire.u64()?),
        kind::FAILED => Reply::Failed(decode_error(&mut wire, dir, 0)?),
        _ => return Err(Malformed("unknown reply kind")),
    };
    wire.end()?;
    Ok(reply)
}

// ---------------------------------------------------------------------------------------------------------------
// Errors: each variant a request can fail with has a code and its fields; the client rebuilds the same variant.

/// How deep `BatchIncomplete` causes may nest on the wire (the engine nests one).
const ERROR_DEPTH_MAX: u32 = 4;

/// The text a client puts in an error's `&'static str` field, which the wire cannot carry as such (the owner's
/// own text is in its log).
const OWNER_SAID: &str = "refused by the queue's owner";

mod code {
    pub(super) const CLOSED: u16 = 1;
    pub(super) const POISONED: u16 = 2;
    pub(super) const DISK_FULL: u16 = 3;
    pub(super) const MESSAGE_TOO_LARGE: u16 = 4;
    pub(super) const INVALID_HEADER: u16 = 5;
    pub(super) const INVALID_GROUP_NAME: u16 = 6;
    pub(super) const LEASE_EXPIRED: u16 = 7;
    pub(super) const STALE_LEASE: u16 = 8;
    pub(super) const DUPLICATE_IDS: u16 = 9;
    pub(super) const STALE_LEASES: u16 = 10;
    pub(super) const GROUP_BUSY: u16 = 11;
    pub(super) const GROUP_DELETED: u16 = 12;
    pub(super) const GROUP_NOT_FOUND: u16 = 13;
    pub(super) const CORRUPT: u16 = 14;
    pub(super) const BATCH_INCOMPLETE: u16 = 15;
    pub(super) const IO: u16 = 16;
    pub(super) const INVALID_OPTION: u16 = 17;
    pub(super) const UNSUPPORTED_VERSION: u16 = 18;
    /// Any other error (none a served request returns today): its text only, rebuilt as `Error::Io`.
    pub(super) const OTHER: u16 = 0xFFFF;
}

const CORRUPTION_KINDS: [CorruptionKind; 10] = [
    CorruptionKind::BadMagic,
    CorruptionKind::BadChecksum,
    CorruptionKind::BadLength,
    CorruptionKind::BadLayout,
    CorruptionKind::BadOffset,
    CorruptionKind::WrongSegment,
    CorruptionKind::Truncated,
    CorruptionKind::DamagedDurableFrame,
    CorruptionKind::BadManifest,
    CorruptionKind::MissingSegment,
];

fn put_offsets(out: &mut Vec<u8>, offsets: impl ExactSizeIterator<Item = u64>) {
    put_u32(out, offsets.len() as u32);
    for offset in offsets {
        put_u64(out, offset);
    }
}

fn put_path(out: &mut Vec<u8>, path: &Path) {
    put_text(out, &path.to_string_lossy(), TEXT_BYTES_MAX);
}

fn encode_error(out: &mut Vec<u8>, error: &Error, depth: u32) {
    match error {
        Error::Closed => put_u16(out, code::CLOSED),
        Error::Poisoned => put_u16(out, code::POISONED),
        Error::DiskFull => put_u16(out, code::DISK_FULL),
        Error::MessageTooLarge { size, max } => {
            put_u16(out, code::MESSAGE_TOO_LARGE);
            put_u64(out, *size as u64);
            put_u64(out, *max as u64);
        }
        Error::InvalidHeader { reason } => {
            put_u16(out, code::INVALID_HEADER);
            put_text(out, reason, TEXT_BYTES_MAX);
        }
        Error::InvalidGroupName { name, reason } => {
            put_u16(out, code::INVALID_GROUP_NAME);
            put_text(out, name, TEXT_BYTES_MAX);
            put_text(out, reason, TEXT_BYTES_MAX);
        }
        Error::LeaseExpired { offset } => {
            put_u16(out, code::LEASE_EXPIRED);
            put_u64(out, offset.0);
        }
        Error::StaleLease { offset } => {
            put_u16(out, code::STALE_LEASE);
            put_u64(out, offset.0);
        }
        Error::DuplicateIds { positions } => {
            put_u16(out, code::DUPLICATE_IDS);
            put_offsets(out, positions.iter().map(|&p| p as u64));
        }
        Error::StaleLeases { offsets } => {
            put_u16(out, code::STALE_LEASES);
            put_offsets(out, offsets.iter().map(|o| o.0));
        }
        Error::GroupBusy { name, in_flight } => {
            put_u16(out, code::GROUP_BUSY);
            put_text(out, name, TEXT_BYTES_MAX);
            put_u64(out, *in_flight as u64);
        }
        Error::GroupDeleted { name } => {
            put_u16(out, code::GROUP_DELETED);
            put_text(out, name, TEXT_BYTES_MAX);
        }
        Error::GroupNotFound { name } => {
            put_u16(out, code::GROUP_NOT_FOUND);
            put_text(out, name, TEXT_BYTES_MAX);
        }
        Error::Corrupt { file, position, kind } => {
            put_u16(out, code::CORRUPT);
            put_path(out, file);
            put_u64(out, *position);
            out.push(CORRUPTION_KINDS.iter().position(|k| k == kind).unwrap_or(usize::MAX) as u8);
        }
        Error::BatchIncomplete { first_offset, appended, cause } if depth < ERROR_DEPTH_MAX => {
            put_u16(out, code::BATCH_INCOMPLETE);
            put_u64(out, first_offset.0);
            put_u64(out, *appended as u64);
            encode_error(out, cause, depth + 1);
        }
        Error::Io { operation, path, source } => {
            put_u16(out, code::IO);
            put_text(out, operation, TEXT_BYTES_MAX);
            put_path(out, path);
            put_u32(out, source.raw_os_error().unwrap_or(0) as u32);
            put_text(out, &source.to_string(), TEXT_BYTES_MAX);
        }
        Error::InvalidOption { option, reason } => {
            put_u16(out, code::INVALID_OPTION);
            put_text(out, option, TEXT_BYTES_MAX);
            put_text(out, reason, TEXT_BYTES_MAX);
        }
        Error::UnsupportedVersion { found, supported } => {
            put_u16(out, code::UNSUPPORTED_VERSION);
            put_u32(out, *found);
            put_u32(out, *supported);
        }
        other => {
            put_u16(out, code::OTHER);
            put_text(out, &other.to_string(), TEXT_BYTES_MAX);
        }
    }
}

fn offsets(wire: &mut Wire<'_>) -> Decoded<Vec<u64>> {
    let count = wire.count(8)?;
    (0..count).map(|_| wire.u64()).collect()
}

fn decode_error(wire: &mut Wire<'_>, dir: &Path, depth: u32) -> Decoded<Error> {
    Ok(match wire.u16()? {
        code::CLOSED => Error::Closed,
        code::POISONED => Error::Poisoned,
        code::DISK_FULL => Error::DiskFull,
        code::MESSAGE_TOO_LARGE => Error::MessageTooLarge { size: wire.u64()? as usize, max: wire.u64()? as usize },
        code::INVALID_HEADER => {
            wire.text()?;
            Error::InvalidHeader { reason: OWNER_SAID }
        }
        code::INVALID_GROUP_NAME => {
            let name = wire.text()?;
            wire.text()?;
            Error::InvalidGroupName { name, reason: OWNER_SAID }
        }
        code::LEASE_EXPIRED => Error::LeaseExpired { offset: Offset(wire.u64()?) },
        code::STALE_LEASE => Error::StaleLease { offset: Offset(wire.u64()?) },
        code::DUPLICATE_IDS => {
            Error::DuplicateIds { positions: offsets(wire)?.into_iter().map(|p| p as usize).collect() }
        }
        code::STALE_LEASES => Error::StaleLeases { offsets: offsets(wire)?.into_iter().map(Offset).collect() },
        code::GROUP_BUSY => Error::GroupBusy { name: wire.text()?, in_flight: wire.u64()? as usize },
        code::GROUP_DELETED => Error::GroupDeleted { name: wire.text()? },
        code::GROUP_NOT_FOUND => Error::GroupNotFound { name: wire.text()? },
        code::CORRUPT => {
            let file = PathBuf::from(wire.text()?);
            let position = wire.u64()?;
            let kind = *CORRUPTION_KINDS.get(usize::from(wire.u8()?)).ok_or(Malformed("unknown corruption kind"))?;
            Error::Corrupt { file, position, kind }
        }
        code::BATCH_INCOMPLETE if depth < ERROR_DEPTH_MAX => Error::BatchIncomplete {
            first_offset: Offset(wire.u64()?),
            appended: wire.u64()? as usize,
            cause: Box::new(decode_error(wire, dir, depth + 1)?),
        },
        code::IO => {
            wire.text()?;
            let path = PathBuf::from(wire.text()?);
            let errno = wire.u32()? as i32;
            let text = wire.text()?;
            let source =
                if errno != 0 { std::io::Error::from_raw_os_error(errno) } else { std::io::Error::other(text) };
            Error::Io { operation: "a request served by the queue's owner", path, source }
        }
        code::INVALID_OPTION => {
            wire.text()?;
            Error::InvalidOption { option: OWNER_SAID, reason: wire.text()? }
        }
        code::UNSUPPORTED_VERSION => Error::UnsupportedVersion { found: wire.u32()?, supported: wire.u32()? },
        code::OTHER => Error::Io {
            operation: "a request served by the queue's owner",
            path: dir.to_path_buf(),
            source: std::io::Error::other(wire.text()?),
        },
        _ => return Err(Malformed("unknown error code")),
    })
}

/// Not part of the API: decodes any frame as the owner and a client would, for the protocol fuzz target. Never
/// panics, whatever the bytes.
pub(crate) fn decode_any(bytes: &[u8]) {
    let Some((header, body)) = bytes.split_first_chunk::<FRAME_HEADER_BYTES>() else { return };
    let Ok((body_bytes, frame_kind)) = decode_frame_header(*header) else { return };
    let body = &body[..body_bytes.min(body.len())];
    if let Ok(request) = decode_request(frame_kind, body) {
        // What decodes encodes back to the same bytes: the codec has one meaning for each frame.
        let mut again = Vec::new();
        encode_request(&mut again, &request);
        assert_eq!(decode_request(frame_kind, &again[FRAME_HEADER_BYTES..]), Ok(request));
    }
    let _ = decode_reply(frame_kind, body, Path::new("fuzz"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(request: Request) {
        let mut out = Vec::new();
        encode_request(&mut out, &request);
        let header: [u8; FRAME_HEADER_BYTES] = out[..FRAME_HEADER_BYTES].try_into().unwrap();
        let (body_bytes, frame_kind) = decode_frame_header(header).unwrap();
        assert_eq!(body_bytes, out.len() - FRAME_HEADER_BYTES);
        assert_eq!(decode_request(frame_kind, &out[FRAME_HEADER_BYTES..]), Ok(request));
    }

    /// Found by the `remote_protocol` fuzz target: a waiting read of no wait decoded, then encoded back as a
    /// plain read (0x11), a second encoding of one request.
    #[test]
    fn a_waiting_read_of_no_wait_is_malformed() {
        let mut body = Vec::new();
        body.extend_from_slice(&3u64.to_le_bytes());
        body.extend_from_slice(&10u32.to_le_bytes());
        body.extend_from_slice(&(1u32 << 20).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        assert!(decode_request(kind::READ_WAIT, &body).is_err());
        body[16..].copy_from_slice(&1u32.to_le_bytes());
        let read = Request::Read { from: 3, max_count: 10, max_bytes: 1 << 20, wait_ms: 1 };
        assert_eq!(decode_request(kind::READ_WAIT, &body), Ok(read));
    }

    #[test]
    fn every_request_round_trips() {
        let message = Message::new("v").key("k").timestamp_ms(7).header("h", "x");
        round_trip(Request::Hello { version: PROTOCOL_VERSION });
        round_trip(Request::Append { messages: vec![message, Message::tombstone("k"), Message::default()] });
        round_trip(Request::Read { from: 3, max_count: 10, max_bytes: 1 << 20, wait_ms: 0 });
        round_trip(Request::Read { from: 3, max_count: 10, max_bytes: 1 << 20, wait_ms: 250 });
        round_trip(Request::Stats);
        round_trip(Request::Take { group: "g".into(), max: 5, wait_ms: 100 });
        for answer in [
            Answer::Ack,
            Answer::Nack { delay_ms: 9 },
            Answer::Retry,
            Answer::Fail { reason: "boom".into() },
            Answer::DeadLetter { reason: None },
            Answer::DeadLetter { reason: Some("bad".into()) },
            Answer::ExtendLease,
            Answer::Release,
        ] {
            round_trip(Request::Answer { group: "g".into(), offset: 4, token: u128::MAX - 1, answer });
        }
        round_trip(Request::AckAll { group: "g".into(), leases: vec![(1, 2), (3, 4)] });
        for op in [
            GroupOp::Delete,
            GroupOp::Reset(StartAt::Earliest),
            GroupOp::Reset(StartAt::Latest),
            GroupOp::Reset(StartAt::Offset(Offset(5))),
            GroupOp::Reset(StartAt::Time(6)),
            GroupOp::Redrive { offset: 7 },
            GroupOp::Discard { offset: 8 },
            GroupOp::Open,
        ] {
            round_trip(Request::GroupAdmin { group: "g".into(), op });
        }
    }

    #[test]
    fn errors_keep_their_variant_and_fields() {
        let cases = [
            Error::Closed,
            Error::StaleLeases { offsets: vec![Offset(3), Offset(9)] },
            Error::BatchIncomplete { first_offset: Offset(5), appended: 2, cause: Box::new(Error::DiskFull) },
            Error::Corrupt { file: "q/00.log".into(), position: 77, kind: CorruptionKind::BadChecksum },
            Error::MessageTooLarge { size: 10, max: 5 },
        ];
        for error in cases {
            let mut out = Vec::new();
            encode_reply(&mut out, &Reply::Failed(error));
            let original = {
                let mut again = Vec::new();
                encode_error(&mut again, &decode_error(&mut Wire { bytes: &out[5..] }, Path::new("q"), 0).unwrap(), 0);
                again
            };
            assert_eq!(original, out[5..]);
        }
    }

    #[test]
    fn counts_beyond_the_frame_are_refused_before_allocating() {
        // An append claiming 100,000 messages in a 4-byte body.
        let body = 100_000u32.to_le_bytes();
        assert!(decode_request(kind::APPEND, &body).is_err());
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_frame_header(header).is_err());
    }

    #[test]
    fn truncated_frames_are_malformed_not_panics() {
        let mut out = Vec::new();
        encode_request(&mut out, &Request::Append { messages: vec![Message::new("hello").key("k")] });
        for len in FRAME_HEADER_BYTES..out.len() {
            assert!(decode_request(kind::APPEND, &out[FRAME_HEADER_BYTES..len]).is_err());
        }
    }
}
