//! `MANIFEST.json`: the queue's format version, identity and settings. JSON through serde (it is small, cold and
//! worth reading by eye), checksummed, and replaced atomically: temporary file, fsync, rename, directory fsync.
//!
//! ```json
//! {"format_version":1,"queue_id":"9f1c…","created_ms":1764000000000,"settings":{…},"crc32":123456789}
//! ```
//! `crc32` is the CRC-32 of the same JSON with `crc32` set to 0. `format_version` is read before anything else, so
//! that a newer manifest is reported as [`Error::UnsupportedVersion`] rather than as damage.

use std::path::{Path, PathBuf};

use crate::clock::now_ms;
use crate::error::{CorruptionKind, Error, Result};
use crate::ids::new_file_id;
use crate::options::Settings;
use crate::segment::FORMAT_VERSION;
use crate::storage::{read_range, OpenMode, Storage};

/// The manifest's file name.
pub(crate) const MANIFEST_FILE: &str = "MANIFEST.json";
const MANIFEST_TEMP_FILE: &str = "MANIFEST.json.tmp";
/// The lock file's name.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// Largest manifest read; a larger file is damaged.
const MANIFEST_BYTES_MAX: usize = 64 * 1024;

/// The contents of the manifest.
///
/// Unknown fields are refused (here and in `Settings`): the checksum covers the parsed values, so a key name
/// damaged into one serde would ignore must fail the decode instead of silently falling back to a default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub(crate) format_version: u32,
    pub(crate) queue_id: String,
    pub(crate) created_ms: u64,
    pub(crate) settings: Settings,
    /// Every offset below this was durable when the queue was last closed cleanly (`None`: never). Recovery reads
    /// invalid or missing frames below it as damage, not as a torn tail, and need not scan behind it. It is never
    /// cleared: what was durable stays durable. Left out when `None`, so that a manifest written before the field
    /// existed keeps its checksum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) durable_end_offset: Option<u64>,
    /// Every offset below this was purged (`Queue::purge_until`): no read returns it, whatever segment files still
    /// hold it (their deletion follows this record, and the next open finishes it). `None`: nothing was purged; left
    /// out then, like `durable_end_offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) purged_below_offset: Option<u64>,
    crc32: u32,
}

#[derive(serde::Deserialize)]
struct VersionOnly {
    format_version: u32,
}

impl Manifest {
    pub(crate) fn new(settings: Settings) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            queue_id: format!("{:016x}", new_file_id()),
            created_ms: now_ms(),
            settings,
            durable_end_offset: None,
            purged_below_offset: None,
            crc32: 0,
        }
    }

    /// The same manifest recording a clean close with everything below `durable_end` durable.
    pub(crate) fn with_durable_end(&self, durable_end: u64) -> Manifest {
        Manifest { durable_end_offset: Some(durable_end), ..self.clone() }
    }

    /// The same manifest recording that every offset below `purged_below` is purged.
    pub(crate) fn with_purged_below(&self, purged_below: u64) -> Manifest {
        Manifest { purged_below_offset: Some(purged_below), ..self.clone() }
    }

    /// The offset below which everything is purged (0: nothing).
    pub(crate) fn purged_below(&self) -> u64 {
        self.purged_below_offset.unwrap_or(0)
    }

    fn checksum(&self) -> u32 {
        let unsummed = Manifest { crc32: 0, ..self.clone() };
        crc32fast::hash(&serde_json::to_vec(&unsummed).expect("a manifest always serializes"))
    }

    /// Encodes the manifest with its checksum.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let summed = Manifest { crc32: self.checksum(), ..self.clone() };
        let mut bytes = serde_json::to_vec_pretty(&summed).expect("a manifest always serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Decodes and checks a manifest: version first, then shape, then checksum.
    pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let corrupt = || Error::Corrupt { file: path.to_path_buf(), position: 0, kind: CorruptionKind::BadManifest };
        let version: VersionOnly = serde_json::from_slice(bytes).map_err(|_| corrupt())?;
        if version.format_version > FORMAT_VERSION {
            return Err(Error::UnsupportedVersion { found: version.format_version, supported: FORMAT_VERSION });
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|_| corrupt())?;
        if manifest.crc32 != manifest.checksum() || manifest.format_version != FORMAT_VERSION {
            return Err(Error::Corrupt { file: path.to_path_buf(), position: 0, kind: CorruptionKind::BadChecksum });
        }
        Ok(manifest)
    }
}

/// Reads the manifest of `dir`; `Ok(None)` if there is none.
pub(crate) fn read(storage: &dyn Storage, dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE);
    let file = match storage.open_file(&path, OpenMode::ReadOnly) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open manifest", &path, e)),
    };
    let bytes =
        read_range(file.as_ref(), 0, MANIFEST_BYTES_MAX + 1).map_err(|e| Error::io("read manifest", &path, e))?;
    if bytes.len() > MANIFEST_BYTES_MAX {
        return Err(Error::Corrupt { file: path, position: 0, kind: CorruptionKind::BadLength });
    }
    Manifest::decode(&bytes, &path).map(Some)
}

/// Replaces the manifest of `dir` atomically and durably.
pub(crate) fn write(storage: &dyn Storage, dir: &Path, manifest: &Manifest) -> Result<()> {
    let temp: PathBuf = dir.join(MANIFEST_TEMP_FILE);
    let path = dir.join(MANIFEST_FILE);
    let io = |operation| move |e| Error::io(operation, dir.join(MANIFEST_TEMP_FILE), e);
    match storage.remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove old temporary manifest")(e)),
        _ => {}
    }
    let file = storage.open_file(&temp, OpenMode::CreateNew).map_err(io("create temporary manifest"))?;
    file.write_all_at(&manifest.encode(), 0).map_err(io("write manifest"))?;
    file.sync_all().map_err(io("fsync manifest"))?;
    storage.rename(&temp, &path).map_err(|e| Error::io("rename manifest", &path, e))?;
    storage.sync_dir(dir).map_err(|e| Error::io("fsync directory", dir, e))
}

/// Whether a file name in a queue directory can exist before the queue has a manifest (a creation in progress).
pub(crate) fn is_pre_manifest_file(name: &str) -> bool {
    name == LOCK_FILE || name == MANIFEST_TEMP_FILE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let manifest = Manifest::new(Settings::default());
        let bytes = manifest.encode();
        let path = Path::new("MANIFEST.json");
        assert_eq!(
            Manifest::decode(&bytes, path).unwrap(),
            Manifest { crc32: manifest.checksum(), ..manifest.clone() }
        );
        let text = String::from_utf8(bytes).unwrap();
        let tampered = text.replacen("\"created_ms\": ", "\"created_ms\": 1", 1);
        assert!(matches!(Manifest::decode(tampered.as_bytes(), path), Err(Error::Corrupt { .. })));
        let newer = text.replacen("\"format_version\": 1", "\"format_version\": 7", 1);
        assert!(matches!(
            Manifest::decode(newer.as_bytes(), path),
            Err(Error::UnsupportedVersion { found: 7, supported: 1 })
        ));
        assert!(matches!(Manifest::decode(b"{", path), Err(Error::Corrupt { .. })));
    }
}
