//! Regression: a manifest whose key name was damaged opened as if nothing had happened. The manifest's CRC is
//! computed over the parsed values, and serde skipped the unknown (damaged) key and put the field's default in
//! its place; when the stored value was the default, the checksum matched. Found by R5 (`tests/bit_flips.rs`):
//! 888 of 4136 single-bit flips of the manifest were accepted. `Manifest` and `Settings` now refuse unknown
//! fields, so a damaged key fails the decode (`Corrupt`, `BadManifest`) whatever its value.

mod common;

use common::small;
use walq::{CorruptionKind, Error};

#[test]
fn a_damaged_key_name_in_the_manifest_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    small(temp.path()).open().unwrap().close().unwrap();
    let path = temp.path().join("MANIFEST.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"retention_max_age_ms\": null"), "{text}");
    // One flipped bit: 'e' (0x65) -> 'a' (0x61); the value is the default, so the checksum still matches.
    std::fs::write(&path, text.replace("retention_max_age_ms", "retention_max_aga_ms")).unwrap();
    let refused = small(temp.path()).open();
    assert!(
        matches!(refused, Err(Error::Corrupt { kind: CorruptionKind::BadManifest, .. })),
        "a damaged key must be refused: {refused:?}"
    );
}
