//! Backfills merged into the live stream.
//!
//! A run reads its table in chunks, each in a short transaction of its own,
//! and writes a watermark into the WAL after each chunk; the router decides
//! at that watermark which of the chunk's rows go into the strategy's stream
//! there (see [`window`]).

mod registry;
pub(crate) mod window;

pub(crate) use registry::{
    channel, BackfillHandle, Backfills, ChunkOutcome, ChunkRow, Emission, SegmentId, Watermark,
    PREFIX,
};
pub(crate) use window::{encode_key, RowVersion, SnapshotInfo};
