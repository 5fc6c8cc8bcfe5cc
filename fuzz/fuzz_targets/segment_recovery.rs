//! R9 fuzz target: see `harness::segment_recovery`.
#![no_main]

#[path = "../../tests/harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::segment_recovery(data));
