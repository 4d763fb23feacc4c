//! Runs: a strategy over its table's current rows (seeding, re-syncing and
//! repairing receivers), on demand, on a schedule, as a new strategy's
//! first backfill, or after a lost slot was replaced.
//!
//! A run is a consistent backfill merged into the strategy's live stream:
//! chunks in primary-key order, each read in a short transaction of its own
//! (`reader`), bracketed by watermarks the replication stream carries, so
//! that at each chunk's watermark the router sends what the stream did not
//! bring newer (`crate::backfill`). A receiver that applies records in
//! arrival order therefore ends with a copy equal to the table. Records
//! carry `op = "read"` and ids `<watermark LSN>:<row number in the chunk>`.
//!
//! - `plan`: what a run is (trigger, counts, params, progress, errors).
//! - `manager`: starting, tracking, pausing, resuming, cancelling; resuming
//!   stored runs after a restart; the first backfills and re-syncs.
//! - `execute`: the chunk loop (merged, or through a worker of its own).
//! - `reader`: one chunk per transaction, its snapshot and watermark.
//! - `schedule`, `control`, `cli`, `progress`: cron, the admin API's
//!   commands, `walhook run-strategy`, and how far a run is.

pub(crate) mod cli;
mod control;
mod execute;
mod manager;
mod plan;
mod progress;
mod pushdown;
mod reader;
pub(crate) mod schedule;

pub use cli::{
    run_strategy, runs_command, CliError, LogWriter, ProgressDisplay, RunStrategyOptions,
    RunsAction,
};
pub(crate) use control::{spawn_pause_sync, AppControl};
pub(crate) use execute::Merge;
pub(crate) use manager::RunManager;
pub use plan::RunError;
pub use reader::{
    parse_key, Chunk, ChunkRow, KeyText, SnapshotError, Start, TableReader, COUNT_UP_TO_BYTES,
};
pub(crate) use schedule::ScheduleBoard;
