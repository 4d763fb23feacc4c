//! On-demand and scheduled runs of a strategy over its table's current rows
//! (seeding, re-syncing and repairing receivers).
//!
//! A run reads the table in one snapshot (`snapshot`), filters and maps the
//! rows with the strategy's own expressions, and delivers them through the
//! strategy's batching, signing and delivery, on a queue of its own so live
//! changes are not held behind it. Records carry `op = "read"` and ids
//! `<snapshot LSN>:<row number>`; each run is recorded in `walhook.runs`
//! before its snapshot is taken, so two runs never share a snapshot LSN.

pub(crate) mod cli;
mod control;
mod manager;
mod progress;
pub(crate) mod schedule;
mod snapshot;

pub use cli::{run_strategy, CliError, LogWriter, ProgressDisplay, RunStrategyOptions};
pub(crate) use control::{spawn_pause_sync, AppControl};
pub use manager::RunError;
pub(crate) use manager::RunManager;
pub(crate) use schedule::ScheduleBoard;
pub use snapshot::{Snapshot, SnapshotError, COUNT_UP_TO_BYTES};
