//! What a run is: what started it, what it reads, how far it got, and why
//! it stopped — the values the manager records in `walhook.runs` and the
//! executor works from.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::reader::{KeyText, SnapshotError};
use crate::batch::{Reply, ReplyLog};
use crate::config::Config;
use crate::control::ControlError;
use crate::delivery::{DeliveryError, Endpoint};
use crate::state::StateError;
use crate::strategy::expr::Expr;
use crate::strategy::CompiledStrategy;

/// What started a run (the `trigger` column and metric label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// `POST /strategies/{name}/runs?mode=sync`.
    Sync,
    /// `POST /strategies/{name}/runs?mode=async`.
    Async,
    /// A `schedules` entry, by name.
    Schedule(Arc<str>),
    /// `walhook run-strategy`.
    Cli,
    /// `backfill.initial`: the strategy's first backfill.
    Initial,
    /// `[source] on_slot_lost = "resync"`: a new slot, every strategy again.
    Resync,
}

impl Trigger {
    /// The lower-case name.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Trigger::Sync => "sync",
            Trigger::Async => "async",
            Trigger::Schedule(_) => "schedule",
            Trigger::Cli => "cli",
            Trigger::Initial => "initial",
            Trigger::Resync => "resync",
        }
    }

    /// The `walhook.runs.trigger` text: `schedule:<name>` for a schedule,
    /// else [`Trigger::as_str`].
    pub(crate) fn record(&self) -> String {
        match self {
            Trigger::Schedule(name) => format!("schedule:{name}"),
            other => other.as_str().to_string(),
        }
    }

    /// The trigger a stored run was started with.
    pub(crate) fn parse(text: &str) -> Trigger {
        match text {
            "sync" => Trigger::Sync,
            "cli" => Trigger::Cli,
            "initial" => Trigger::Initial,
            "resync" => Trigger::Resync,
            other => match other.strip_prefix("schedule:") {
                Some(name) => Trigger::Schedule(Arc::from(name)),
                None => Trigger::Async,
            },
        }
    }

    /// The schedule's name (the `schedule` metric label), empty for other
    /// triggers.
    pub(crate) fn schedule(&self) -> &str {
        match self {
            Trigger::Schedule(name) => name,
            _ => "",
        }
    }
}

/// Why a run could not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no strategy named {0:?}")]
    NoStrategy(String),
    #[error("strategy {strategy}: {mode} runs are not enabled (set on_demand.{mode} = true)")]
    NotAllowed {
        strategy: String,
        mode: &'static str,
    },
    #[error("strategy {0} follows logical messages, not a table: it has no rows to run over")]
    NoTable(String),
    #[error("filter: {0}")]
    Filter(String),
    #[error("the run would send more than on_demand.sync_limit = {limit} records; use mode=async, a narrower filter or a limit")]
    OverLimit { limit: u64 },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("delivery failed: no endpoint named {0:?}")]
    NoEndpoint(String),
    #[error("delivery failed: {0}")]
    Delivery(#[source] DeliveryError),
    #[error("delivery failed: attempts exhausted (max_attempts reached): {last_error}")]
    Exhausted { last_error: String },
    #[error("delivery failed: the run's worker stopped")]
    WorkerStopped,
    #[error("delivery failed: the run's worker task failed: {0}")]
    WorkerTask(#[source] tokio::task::JoinError),
    #[error(
        "walhook is stopping; the run continues from its last delivered chunk at the next start"
    )]
    Stopping,
    #[error("strategy {0} is no longer in the configuration")]
    Removed(String),
    #[error("cancelled")]
    Cancelled,
}

impl RunError {
    /// The HTTP-facing error of the admin API.
    pub(crate) fn to_control(&self) -> ControlError {
        let text = self.to_string();
        match self {
            RunError::NoStrategy(_) => ControlError::NotFound(text),
            RunError::NotAllowed { .. } | RunError::Filter(_) | RunError::NoTable(_) => {
                ControlError::BadRequest(text)
            }
            RunError::Snapshot(SnapshotError::From(_)) => ControlError::BadRequest(text),
            RunError::OverLimit { .. } => ControlError::Unprocessable(text),
            RunError::Cancelled => ControlError::Conflict(text),
            RunError::Snapshot(_)
            | RunError::State(_)
            | RunError::NoEndpoint(_)
            | RunError::Delivery(_)
            | RunError::Exhausted { .. }
            | RunError::WorkerStopped
            | RunError::WorkerTask(_)
            | RunError::Stopping
            | RunError::Removed(_) => ControlError::Unavailable(text),
        }
    }

    /// The state it leaves the run in.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            RunError::OverLimit { .. } => "refused",
            RunError::Cancelled => "cancelled",
            // Still `running` in walhook.runs: the next start resumes it.
            RunError::Stopping => "running",
            _ => "failed",
        }
    }
}

/// A run's counts so far (stored in `walhook.runs.counts`; rows of older
/// versions lack the newer fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Counts {
    /// Rows read from the table (a chunk read again counts again).
    pub(crate) read: u64,
    /// Records that passed the filter and went into the stream.
    pub(crate) sent: u64,
    /// Rows left out because the stream brought a newer change of their
    /// key while their chunk was read (the change wins).
    pub(crate) superseded: u64,
    /// Records delivered (2xx).
    pub(crate) delivered: u64,
    /// Records in batches that failed (dead-lettered).
    pub(crate) failed: u64,
    /// Records parked (their strategy's endpoint kept failing): the slot
    /// moved past them, and they are delivered from `walhook.parked`.
    pub(crate) parked: u64,
    /// Batches delivered or dead-lettered (runs with their own worker).
    pub(crate) batches: u64,
    /// Chunks read (each in a transaction of its own).
    pub(crate) chunks: u64,
    /// Rows read again after a restart: read after the last chunk whose
    /// records were all delivered, before walhook stopped.
    pub(crate) reread: u64,
    /// About how many rows the run will read (capped by its limit), once
    /// it began; `None` when unknown.
    pub(crate) estimate: Option<u64>,
}

/// How a run was asked for, stored so that it can resume after a restart
/// (`walhook.runs.params`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Params {
    /// At most this many records.
    pub(crate) limit: Option<u64>,
    /// The key the run starts at (inclusive).
    pub(crate) from: Option<KeyText>,
    /// Sync runs answer after delivery.
    pub(crate) sync: bool,
}

/// How far a run got, stored after each delivered chunk
/// (`walhook.runs.progress`): it resumes after `after`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Stored {
    /// The last key of the last chunk whose records were all delivered.
    pub(crate) after: Option<KeyText>,
    /// Records delivered before the restart (counted on).
    pub(crate) counts: Counts,
}

/// How a run that finished went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) id: i64,
    pub(crate) counts: Counts,
    pub(crate) duration: Duration,
    /// Sync runs: the endpoint's last answer to each batch.
    pub(crate) replies: Vec<Reply>,
}

impl Summary {
    /// The sync API's answer.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "run_id": self.id,
            "state": if self.counts.failed == 0 { "succeeded" } else { "failed" },
            "records": self.counts.delivered,
            "read": self.counts.read,
            "superseded": self.counts.superseded,
            "batches": self.replies.len().max(self.counts.batches as usize),
            "failures": self.counts.failed,
            "parked": self.counts.parked,
            "duration_ms": u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            "responses": self.replies,
        })
    }
}

/// Progress of an active run, shared with its task.
#[derive(Debug, Default)]
pub(crate) struct Live {
    counts: Mutex<Counts>,
}

impl Live {
    pub(crate) fn get(&self) -> Counts {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn update(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The operator's hands on a run going on: cancel, pause and resume.
#[derive(Debug, Clone)]
pub(crate) struct Controls {
    pub(crate) cancel: CancellationToken,
    pub(crate) paused: watch::Sender<bool>,
}

impl Controls {
    pub(crate) fn new(paused: bool) -> Controls {
        Controls {
            cancel: CancellationToken::new(),
            paused: watch::Sender::new(paused),
        }
    }
}

/// The strategies runs are started from (a reload replaces it; a run keeps
/// the one it started with).
pub(crate) struct Catalog {
    pub(crate) config: Arc<Config>,
    pub(crate) strategies: Vec<Arc<CompiledStrategy>>,
    pub(crate) endpoints: std::collections::BTreeMap<String, Arc<Endpoint>>,
}

/// Called with the run's progress while it runs and once when it ends.
pub(crate) type OnProgress = Arc<dyn Fn(&Progress) + Send + Sync>;

/// One run, ready to execute.
pub(crate) struct Plan {
    pub(crate) id: i64,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) index: usize,
    pub(crate) trigger: Trigger,
    pub(crate) compiled: Arc<CompiledStrategy>,
    /// The filter's text and compiled form, evaluated on every row read.
    pub(crate) filter: Option<(String, Expr)>,
    pub(crate) params: Params,
    /// Sync runs: count first, refuse past this many records.
    pub(crate) sync_cap: Option<u64>,
    pub(crate) chunk_size: usize,
    /// Rows read per second at most; 0 = no limit.
    pub(crate) rate: u64,
    pub(crate) controls: Controls,
    pub(crate) live: Arc<Live>,
    pub(crate) started: Instant,
    /// Where a resumed run continues.
    pub(crate) resume: Stored,
    /// Sync runs keep the endpoint's answers.
    pub(crate) replies: Option<Arc<ReplyLog>>,
    /// Told where the run is, after every chunk and while delivery goes on.
    pub(crate) progress: Option<OnProgress>,
}

impl Plan {
    /// The strategy's configuration.
    pub(crate) fn config(&self) -> &crate::config::StrategyConfig {
        &self.catalog.config.strategies[self.index]
    }

    /// Tells the watcher (the CLI) where the run is.
    pub(crate) fn report(&self, ended: Option<&'static str>) {
        if let Some(progress) = &self.progress {
            progress(&Progress::new(
                self.id,
                self.live.get(),
                self.started.elapsed(),
                ended,
            ));
        }
    }
}
