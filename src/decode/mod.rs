//! pgoutput bytes → typed record events.
//!
//! Everything here is pure: no sockets, no clocks. The source stage hands each
//! XLogData payload (one pgoutput message, a zero-copy `Bytes` slice of the
//! received frame) to [`Decoder::decode`], which keeps the relation and type
//! caches and turns row messages into [`RecordEvent`]s. Column values stay as
//! the server's text (`Cell::Text`, still a slice of the received buffer) and
//! are converted to JSON only when a batch is serialised, or to filter values
//! only when a filter reads them; so an event that no strategy wants costs
//! almost nothing.
//!
//! Wire input never panics: every read is checked and malformed input is a
//! [`DecodeError`] (a property test feeds it random and mutated real messages).
//!
//! - `pgoutput`: one message's bytes → `pgoutput::LogicalMessage` (stateless).
//! - `relcache`: Relation/Type messages → [`Relation`]s with a [`TypeKind`] per column.
//! - [`Decoder`] (assemble.rs): messages → [`SourceEvent`]s: transactions and
//!   record ids, key-only and full old images, unchanged TOAST, v2 streams.
//! - `convert`: server text → JSON values (the record objects around them
//!   are written by `batch/payload.rs`).
//!

pub(crate) mod convert;
mod model;
pub(crate) mod pgoutput;
pub(crate) mod relcache;

mod assemble;

pub use assemble::Decoder;
pub use model::{
    Cell, Column, Op, RecordEvent, Relation, ReplicaIdentity, SourceEvent, Tuple, TypeKind,
};
pub use pgoutput::DecodeError;

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod proptests;
