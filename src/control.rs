//! The commands an operator gives a running walhook (pause, runs, replays,
//! reloads) as the domain sees them: the [`Control`] trait the application
//! implements, its request and reply types and [`ControlError`]. The admin
//! HTTP layer (`crate::admin`) maps them to routes and status codes; `runs/`
//! implements them. Here rather than in `admin/` so the domain never
//! imports the HTTP layer.

use serde_json::Value;

pub use crate::delivery::BoxFuture;
use crate::reload::Outcome as ReloadOutcome;

/// Why a command failed; each maps to an HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// No such strategy, run or dead letter (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is malformed or not allowed for this strategy (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The command conflicts with the current state (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Not possible right now (503), e.g. the endpoint still fails on replay.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Understood but refused (422), e.g. a sync run over `sync_limit`.
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    /// Anything else (500).
    #[error("failed: {0}")]
    Failed(String),
}

/// `?mode=` of `POST /strategies/{name}/runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// Deliver now and answer with the result (bounded by `sync_limit`).
    Sync,
    /// Start in the background and answer 202 with the run id.
    Async,
}

/// An on-demand run request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// `?mode=`; `None` = whichever the strategy's `on_demand` allows
    /// (async when it allows both).
    pub mode: Option<RunMode>,
    /// At most this many rows (`?limit=N`).
    pub limit: Option<u64>,
    /// Which rows (`?filter=EXPR`, `row.<col>`/`new.<col>`); `None` = all.
    pub(crate) filter: Option<String>,
    /// Start at this primary key (`?from=`), its columns as text.
    pub(crate) from: Option<Vec<Option<String>>>,
    /// `POST /strategies/{name}/backfill` (`walhook run-strategy`): an
    /// operator's run, whatever `on_demand` allows API callers.
    pub(crate) operator: bool,
}

/// How an on-demand run was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum RunReply {
    /// A sync run finished: 200 with this JSON.
    Completed(Value),
    /// An async run started: 202 with its id (`GET /runs/{id}`).
    Started { id: i64 },
}

/// The commands the application carries out for the API.
pub trait Control: Send + Sync + 'static {
    /// Stops delivering for `strategy`; changes keep queueing and hold the slot.
    fn pause<'a>(&'a self, strategy: &'a str) -> BoxFuture<'a, Result<(), ControlError>>;
    /// Resumes a paused strategy (paused by the API or by a 410).
    fn resume<'a>(&'a self, strategy: &'a str) -> BoxFuture<'a, Result<(), ControlError>>;
    /// Ends the strategy's backoff waits at once; returns how many batches
    /// were waiting.
    fn retry<'a>(&'a self, strategy: &'a str) -> BoxFuture<'a, Result<usize, ControlError>> {
        Box::pin(async move {
            Err(ControlError::Unavailable(format!(
                "retrying {strategy} is not supported in this process"
            )))
        })
    }
    /// Starts an on-demand run over the table's current rows.
    fn start_run<'a>(
        &'a self,
        strategy: &'a str,
        request: RunRequest,
    ) -> BoxFuture<'a, Result<RunReply, ControlError>>;
    /// A run's record (`walhook.runs`); `NotFound` when unknown.
    fn run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>>;
    /// Cancels a running run (`DELETE /runs/{id}`); `Conflict` when it has
    /// already finished.
    fn cancel_run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move {
            Err(ControlError::Unavailable(format!(
                "cancelling run {id} is not supported in this process"
            )))
        })
    }
    /// Pauses a run after the chunk it is reading (`POST /runs/{id}/pause`).
    fn pause_run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move {
            Err(ControlError::Unavailable(format!(
                "pausing run {id} is not supported in this process"
            )))
        })
    }
    /// Resumes a paused run (`POST /runs/{id}/resume`).
    fn resume_run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move {
            Err(ControlError::Unavailable(format!(
                "resuming run {id} is not supported in this process"
            )))
        })
    }
    /// The latest `limit` runs (of `strategy`, if given), newest first,
    /// each as [`Control::run`] shows it.
    fn runs<'a>(
        &'a self,
        _strategy: Option<&'a str>,
        _limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Value>, ControlError>> {
        Box::pin(async move {
            Err(ControlError::Unavailable(
                "listing runs is not supported in this process".to_string(),
            ))
        })
    }

    /// Delivers dead letter `id` again with its strategy's endpoint and
    /// deletes it on success; the JSON describes the outcome.
    fn replay_dead_letter(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>>;
    /// `strategy`'s schedules as `/status` shows them (name, cron, next
    /// time, last run).
    fn schedules(&self, _strategy: &str) -> Vec<Value> {
        Vec::new()
    }
    /// Re-reads the configuration file and applies it (or only plans, for
    /// `dry_run`); see [`crate::reload`].
    fn reload(&self, _dry_run: bool) -> BoxFuture<'_, Result<ReloadOutcome, ControlError>> {
        Box::pin(async move {
            Err(ControlError::Unavailable(
                "configuration reload is not supported in this process".into(),
            ))
        })
    }
    /// `/status`'s `config` object: the file running and the last reload.
    fn config_status(&self) -> Option<Value> {
        None
    }
}
