//! R9 fuzz target: see `harness::frame_decoding`.
#![no_main]

#[path = "../../tests/harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::frame_decoding(data));
