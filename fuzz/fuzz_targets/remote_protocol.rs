//! The owner's protocol decoder (src/remote/protocol.rs) on arbitrary frames: a hostile or broken client's bytes
//! are `Malformed`, never a panic, a hang or an allocation beyond the frame; a request that decodes encodes back
//! to the same request.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walq::__fuzz::decode_remote_frame(data));
