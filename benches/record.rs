//! The frame codec against copying the same bytes, in the same run:
//!
//! - `encode 100 B` / `encode 1 KiB`: encoding a message's frame (header, payload, CRC-32 seeded with the segment
//!   id) into a buffer, against `extend_from_slice` of the payload alone (a memcpy) and against memcpy + crc32fast
//!   of the payload (the least any checksummed format does);
//! - `decode 100 B` / `decode 1 KiB`: decoding a frame (length, checksum, layout) and copying its message out,
//!   against a memcpy of the frame and memcpy + crc32fast of it.
//!
//! Run with `cargo bench --bench record`. The codec is not public API; `walq::__bench` exposes it for this.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walq::__bench::Codec;
use walq::Message;

const SEGMENT_ID: u64 = 0x5EED_0F5E_6A11_D00D;

fn encode(c: &mut Criterion) {
    for (name, size) in [("encode 100 B", 100usize), ("encode 1 KiB", 1024)] {
        let payload = vec![0x5Au8; size];
        let message = Message::new(payload.clone());
        let codec = Codec::new(SEGMENT_ID);
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(size as u64));
        let mut out = Vec::with_capacity(64 * 1024);
        group.bench_function("memcpy of the payload (baseline)", |b| {
            b.iter(|| {
                out.clear();
                out.extend_from_slice(std::hint::black_box(&payload));
                std::hint::black_box(&out);
            })
        });
        group.bench_function("memcpy + crc32 of the payload (baseline)", |b| {
            b.iter(|| {
                out.clear();
                out.extend_from_slice(std::hint::black_box(&payload));
                std::hint::black_box(crc32fast::hash(&out));
            })
        });
        group.bench_function("walq frame encode", |b| {
            b.iter(|| {
                out.clear();
                codec.encode_frame(&mut out, 42, std::hint::black_box(&message));
                std::hint::black_box(&out);
            })
        });
        group.finish();
    }
}

fn decode(c: &mut Criterion) {
    for (name, size) in [("decode 100 B", 100usize), ("decode 1 KiB", 1024)] {
        let codec = Codec::new(SEGMENT_ID);
        let mut frame = Vec::new();
        codec.encode_frame(&mut frame, 42, &Message::new(vec![0x5Au8; size]));
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        let mut out = Vec::with_capacity(64 * 1024);
        group.bench_function("memcpy of the frame (baseline)", |b| {
            b.iter(|| {
                out.clear();
                out.extend_from_slice(std::hint::black_box(&frame));
                std::hint::black_box(&out);
            })
        });
        group.bench_function("memcpy + crc32 of the frame (baseline)", |b| {
            b.iter(|| {
                out.clear();
                out.extend_from_slice(std::hint::black_box(&frame));
                std::hint::black_box(crc32fast::hash(&out));
            })
        });
        group.bench_function("walq frame decode", |b| {
            b.iter(|| std::hint::black_box(codec.decode_frame(std::hint::black_box(&frame)).expect("valid")))
        });
        group.finish();
    }
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
