//! Segment files: one module per part of the concept.
//! - `format`: the header every segment starts with, and the file names;
//! - `walk`: the rules by which frames follow each other, the one walker every reading path uses;
//! - `read`: reading a segment file's frames with `pread` into a reused buffer;
//! - `active`: the segment being written;
//! - `sealed`: segments cut to their last frame and never written again.

mod active;
mod format;
mod read;
mod sealed;
pub(crate) mod walk;

pub(crate) use active::{ActiveSegment, RecoveredTail};
pub use format::FORMAT_VERSION;
pub(crate) use format::{
    header_error, index_file_name, parse_segment_file_name, segment_file_name, HeaderError, SegmentHeader,
    SEGMENT_FILE_BYTES_MAX, SEGMENT_HEADER_BYTES,
};
pub(crate) use read::{frame_at_position, nonzero_extent, zeros_between, FrameReader, Next, FIRST_CHUNK_BYTES};
pub(crate) use sealed::{write_index, OpenSealed, SealedFile, SealedSegment};
