//! R9 in plain `cargo test`: every input of the saved fuzz corpus (`fuzz/corpus/<target>/`) replayed through the
//! same harness the fuzzers run (`tests/harness/mod.rs`), so that whatever a fuzzer once found stays fixed. The corpus
//! grows by `cargo fuzz run --sanitizer none <target> fuzz/corpus/<target>` and is minimised with `cargo fuzz cmin`.

#[path = "harness/mod.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| harness(&data));
        assert!(result.is_ok(), "{target}: {} fails the harness", path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "{target}: the saved corpus is empty");
    println!("{target}: {inputs} corpus inputs replayed");
}

#[test]
fn frame_decoding_corpus() {
    replay("frame_decoding", harness::frame_decoding);
}

#[test]
fn segment_recovery_corpus() {
    replay("segment_recovery", harness::segment_recovery);
}

#[test]
fn group_state_corpus() {
    replay("group_state", harness::group_state);
}

#[test]
fn manifest_corpus() {
    replay("manifest", harness::manifest);
}

#[test]
fn operations_corpus() {
    replay("operations", harness::operations);
}

#[test]
fn remote_protocol_corpus() {
    replay("remote_protocol", walq::__fuzz::decode_remote_frame);
}
