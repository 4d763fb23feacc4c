//! Starting, tracking and cancelling runs.
//!
//! Every run gets its own [`StrategyWorker`] (same endpoint, signing,
//! batching and retry policy as the strategy's live worker) fed from the
//! snapshot, and its own [`Checkpoint`] that acknowledges nothing: a run
//! never moves the slot, and live changes never wait behind it.
//!
//! A run is recorded in `walhook.runs` before its snapshot is taken; its
//! counts (`read`, `sent`, `delivered`, `failed`, `batches`, and the
//! `estimate` of rows once the snapshot began) are written
//! after every page and when it ends, with the state `running`,
//! `succeeded`, `failed`, `cancelled` or `refused` (a sync run over
//! `sync_limit`). Delivery that exhausts `max_attempts` with
//! `on_exhausted = "block"` fails the run (a one-off run has no slot to
//! hold); dead-lettered batches count as `failed` records.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::snapshot::{Snapshot, SnapshotError, COUNT_UP_TO_BYTES, DEFAULT_PAGE};
use crate::admin::{ControlError, RunMode, RunReply};
use crate::batch::{BatchMeta, Decorate, Decoration, QueuedRecord, Reply, ReplyLog, WorkItem};
use crate::checkpoint::Checkpoint;
use crate::config::{Config, ExprRole, FilterOp, OnExhausted, RecordShape, TableName};
use crate::delivery::{
    DeliveryError, DeliveryState, Endpoint, StatusHandle, StrategyWorker, WorkerOptions,
};
use crate::lsn::Lsn;
use crate::pg;
use crate::state::{StateError, StateStore};
use crate::strategy::expr::Expr;
use crate::strategy::{referenced_columns, CompiledStrategy};
use crate::telemetry::names;

/// How long a cancelled or failed run waits for its batch in flight.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a running run checks its delivery and writes its counts.
const TICK: Duration = Duration::from_millis(200);

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
}

impl Trigger {
    /// The lower-case name.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Trigger::Sync => "sync",
            Trigger::Async => "async",
            Trigger::Schedule(_) => "schedule",
            Trigger::Cli => "cli",
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
    #[error("cancelled")]
    Cancelled,
}

impl RunError {
    /// The HTTP-facing error of the admin API.
    fn to_control(&self) -> ControlError {
        let text = self.to_string();
        match self {
            RunError::NoStrategy(_) => ControlError::NotFound(text),
            RunError::NotAllowed { .. } | RunError::Filter(_) => ControlError::BadRequest(text),
            RunError::OverLimit { .. } => ControlError::Unprocessable(text),
            RunError::Cancelled => ControlError::Conflict(text),
            RunError::Snapshot(_)
            | RunError::State(_)
            | RunError::NoEndpoint(_)
            | RunError::Delivery(_)
            | RunError::Exhausted { .. }
            | RunError::WorkerStopped
            | RunError::WorkerTask(_) => ControlError::Unavailable(text),
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            RunError::OverLimit { .. } => "refused",
            RunError::Cancelled => "cancelled",
            _ => "failed",
        }
    }
}

/// A run's counts so far (stored in `walhook.runs.counts`; rows of older
/// versions lack `estimate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Counts {
    /// Rows read from the table.
    pub(crate) read: u64,
    /// Records that passed the filter and were queued for delivery.
    pub(crate) sent: u64,
    /// Records delivered (2xx).
    pub(crate) delivered: u64,
    /// Records in batches that failed (dead-lettered).
    pub(crate) failed: u64,
    /// Batches delivered or dead-lettered.
    pub(crate) batches: u64,
    /// About how many rows the run will read (capped by its limit), once
    /// its snapshot began; `None` when unknown.
    pub(crate) estimate: Option<u64>,
}

/// How a run that finished went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) id: i64,
    pub(crate) counts: Counts,
    duration: Duration,
    /// Sync runs: the endpoint's last answer to each batch.
    replies: Vec<Reply>,
}

impl Summary {
    /// The sync API's answer.
    fn to_json(&self) -> Value {
        json!({
            "run_id": self.id,
            "state": if self.counts.failed == 0 { "succeeded" } else { "failed" },
            "records": self.counts.delivered,
            "read": self.counts.read,
            "batches": self.counts.batches,
            "failures": self.counts.failed,
            "duration_ms": u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            "responses": self.replies,
        })
    }
}

/// A sync run's strategy: its templates, and a log of the endpoint's answers.
struct Answered {
    strategy: Arc<CompiledStrategy>,
    replies: Arc<ReplyLog>,
}

impl Decorate for Answered {
    fn decorate(&self, meta: &BatchMeta<'_>) -> Result<Decoration, String> {
        self.strategy.decorate(meta)
    }

    fn record_shape(&self) -> RecordShape {
        self.strategy.record_shape()
    }

    fn replies(&self) -> Option<Arc<ReplyLog>> {
        Some(self.replies.clone())
    }
}

/// Progress of an active run, shared with its task.
#[derive(Debug, Default)]
struct Live {
    counts: Mutex<Counts>,
}

impl Live {
    fn get(&self) -> Counts {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn update(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

struct Active {
    cancel: CancellationToken,
    live: Arc<Live>,
    started: Instant,
}

/// One run, ready to execute.
struct Plan {
    id: i64,
    /// The configuration the run started with (a reload does not change it).
    catalog: Arc<Catalog>,
    index: usize,
    trigger: Trigger,
    compiled: Arc<CompiledStrategy>,
    filter: Option<(String, Expr)>,
    limit: Option<u64>,
    /// Sync runs: read everything first, refuse past this many records.
    buffer_limit: Option<u64>,
    cancel: CancellationToken,
    live: Arc<Live>,
    started: Instant,
    /// Sync runs keep the endpoint's answers.
    replies: Option<Arc<ReplyLog>>,
    /// Told where the run is, after every page and while delivery goes on.
    progress: Option<OnProgress>,
}

/// The strategies runs are started from.
struct Catalog {
    config: Arc<Config>,
    strategies: Vec<Arc<CompiledStrategy>>,
    endpoints: BTreeMap<String, Arc<Endpoint>>,
}

impl Plan {
    /// Tells the watcher (the CLI) where the run is.
    fn report(&self, ended: Option<&'static str>) {
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

/// Called with the run's progress while it runs and once when it ends.
pub(crate) type OnProgress = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Starts and tracks runs. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RunManager {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced by a reload; each run keeps the one it started with.
    catalog: Mutex<Arc<Catalog>>,
    state: StateStore,
    url: String,
    active: Mutex<HashMap<i64, Active>>,
}

impl RunManager {
    /// `strategies` in config order; `endpoints` by name; `state` stores
    /// runs and their dead letters; `url` is the source database (each run
    /// reads its snapshot on a connection of its own).
    pub(crate) fn new(
        config: Arc<Config>,
        strategies: Vec<Arc<CompiledStrategy>>,
        endpoints: BTreeMap<String, Arc<Endpoint>>,
        state: StateStore,
        url: String,
    ) -> Self {
        RunManager {
            inner: Arc::new(Inner {
                catalog: Mutex::new(Arc::new(Catalog {
                    config,
                    strategies,
                    endpoints,
                })),
                state,
                url,
                active: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts a run of `strategy`. Sync: answers after delivery (or refuses
    /// with 422 before sending anything when more than `sync_limit` records
    /// would be sent). Async: answers at once with the run id. The API
    /// triggers (`Sync`, `Async`) need the strategy's `on_demand` to allow
    /// them; a schedule or the CLI does not.
    pub(crate) async fn start(
        &self,
        strategy: &str,
        mode: RunMode,
        filter: Option<String>,
        limit: Option<u64>,
        trigger: Trigger,
    ) -> Result<RunReply, ControlError> {
        let plan = self
            .prepare(strategy, mode, filter, limit, trigger)
            .await
            .map_err(|e| e.to_control())?;
        match mode {
            RunMode::Sync => {
                let summary = self
                    .clone()
                    .execute(plan)
                    .await
                    .map_err(|e| e.to_control())?;
                Ok(RunReply::Completed(summary.to_json()))
            }
            RunMode::Async => {
                let id = plan.id;
                let me = self.clone();
                tokio::spawn(async move {
                    let _ = me.execute(plan).await;
                });
                Ok(RunReply::Started { id })
            }
        }
    }

    /// Runs `strategy` to the end in this task (the CLI), reporting progress.
    pub(crate) async fn run_to_end(
        &self,
        strategy: &str,
        filter: Option<String>,
        limit: Option<u64>,
        progress: OnProgress,
    ) -> Result<Summary, RunError> {
        let mut plan = self
            .prepare(strategy, RunMode::Async, filter, limit, Trigger::Cli)
            .await?;
        plan.progress = Some(progress);
        self.clone().execute(plan).await
    }

    /// A reload applied `config`: runs started from now on use it; runs
    /// going on keep the configuration they started with.
    pub(crate) fn reconfigure(
        &self,
        config: Arc<Config>,
        strategies: Vec<Arc<CompiledStrategy>>,
        endpoints: BTreeMap<String, Arc<Endpoint>>,
    ) {
        *self.inner.catalog.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(Catalog {
            config,
            strategies,
            endpoints,
        });
    }

    /// True while run `id` is going on in this process.
    pub(crate) fn is_active(&self, id: i64) -> bool {
        self.lock_active().contains_key(&id)
    }

    /// Cancels an active run of this process's (`Started` runs only).
    fn cancel_active(&self, id: i64) -> bool {
        match self.lock_active().get(&id) {
            Some(active) => {
                active.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels every active run and waits (up to `timeout`) until they have
    /// recorded their outcome; for shutdown.
    pub(crate) async fn shutdown(&self, timeout: Duration) {
        for active in self.lock_active().values() {
            active.cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.lock_active().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A run's record, with live counts while it runs here, and its
    /// `progress` (see [`Progress::to_json`]).
    pub(crate) async fn get(&self, id: i64) -> Result<Value, ControlError> {
        let row = self
            .inner
            .state
            .get_run(id)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let Some(row) = row else {
            return Err(ControlError::NotFound(format!("no run {id}")));
        };
        Ok(self.with_progress(row))
    }

    /// The latest `limit` runs (of `strategy`, if given), newest first, each
    /// as [`RunManager::get`] shows it.
    pub(crate) async fn list(
        &self,
        strategy: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Value>, ControlError> {
        let rows = self
            .inner
            .state
            .list_runs(strategy, limit)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        Ok(rows
            .into_iter()
            .map(|row| self.with_progress(row))
            .collect())
    }

    /// A stored run with live counts while it runs here, and `progress`.
    fn with_progress(&self, mut row: Value) -> Value {
        let id = row["id"].as_i64().unwrap_or_default();
        let live = self
            .lock_active()
            .get(&id)
            .map(|a| (a.live.get(), a.started.elapsed()));
        let (counts, elapsed) = match live {
            Some((counts, elapsed)) => {
                row["counts"] = json!(counts);
                (counts, elapsed)
            }
            None => (
                serde_json::from_value(row["counts"].clone()).unwrap_or_default(),
                stored_elapsed(&row),
            ),
        };
        let ended = match row["state"].as_str() {
            Some("running") | None => None,
            Some("succeeded") => Some("succeeded"),
            Some(_) => Some("ended"),
        };
        row["progress"] = Progress::new(id, counts, elapsed, ended).to_json();
        row
    }

    /// Cancels run `id` (`DELETE /runs/{id}`).
    pub(crate) async fn cancel(&self, id: i64) -> Result<Value, ControlError> {
        if self.cancel_active(id) {
            return Ok(json!({ "id": id, "state": "cancelling" }));
        }
        let row = self
            .inner
            .state
            .get_run(id)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        match row {
            None => Err(ControlError::NotFound(format!("no run {id}"))),
            Some(row) => {
                let state = row["state"].as_str().unwrap_or("unknown").to_string();
                Err(ControlError::Conflict(format!(
                    "run {id} is not running here (state {state})"
                )))
            }
        }
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Active>> {
        self.inner.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn prepare(
        &self,
        strategy: &str,
        mode: RunMode,
        filter: Option<String>,
        limit: Option<u64>,
        trigger: Trigger,
    ) -> Result<Plan, RunError> {
        let catalog = self
            .inner
            .catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let index = catalog
            .config
            .strategies
            .iter()
            .position(|s| s.name == strategy)
            .ok_or_else(|| RunError::NoStrategy(strategy.to_string()))?;
        let cfg = &catalog.config.strategies[index];
        let compiled = catalog
            .strategies
            .get(index)
            .cloned()
            .ok_or_else(|| RunError::NoStrategy(strategy.to_string()))?;
        match trigger {
            Trigger::Sync if !cfg.on_demand.sync => {
                return Err(RunError::NotAllowed {
                    strategy: strategy.to_string(),
                    mode: "sync",
                })
            }
            Trigger::Async if !cfg.on_demand.r#async => {
                return Err(RunError::NotAllowed {
                    strategy: strategy.to_string(),
                    mode: "async",
                })
            }
            _ => {}
        }
        let filter = match filter {
            Some(text) if !text.trim().is_empty() => {
                // Runs read current rows: row.<col> and new.<col>, as for inserts.
                let expr = Expr::compile(&text, ExprRole::Filter(FilterOp::Insert))
                    .map_err(RunError::Filter)?;
                Some((text, expr))
            }
            _ => None,
        };
        let buffer_limit = match mode {
            RunMode::Sync => {
                let cap = cfg.on_demand.sync_limit;
                // A limit within sync_limit can never go over it.
                if limit.is_some_and(|l| l <= cap) {
                    None
                } else {
                    Some(cap)
                }
            }
            RunMode::Async => None,
        };
        // Refused before it is recorded: a filter on a column the table lacks.
        if let (Some((text, _)), Some(table)) = (&filter, &cfg.table) {
            self.check_filter_columns(table, text).await?;
        }
        let id = self
            .inner
            .state
            .insert_run(
                strategy,
                &trigger.record(),
                filter.as_ref().map(|(t, _)| t.as_str()),
                &json!(Counts::default()),
            )
            .await?;
        let cancel = CancellationToken::new();
        let live = Arc::new(Live::default());
        let started = Instant::now();
        self.lock_active().insert(
            id,
            Active {
                cancel: cancel.clone(),
                live: live.clone(),
                started,
            },
        );
        tracing::info!(
            run = id,
            strategy,
            trigger = trigger.as_str(),
            schedule = trigger.schedule(),
            "run started"
        );
        Ok(Plan {
            id,
            catalog,
            index,
            trigger,
            compiled,
            filter,
            limit,
            buffer_limit,
            cancel,
            live,
            started,
            replies: matches!(mode, RunMode::Sync).then(Arc::default),
            progress: None,
        })
    }

    /// Runs `plan` to its end and records the outcome.
    async fn execute(self, plan: Plan) -> Result<Summary, RunError> {
        let result = self.deliver(&plan).await;
        let counts = plan.live.get();
        let (state, error) = match &result {
            Ok(()) if counts.failed == 0 => ("succeeded", None),
            Ok(()) => (
                "failed",
                Some(format!("{} records failed (dead-lettered)", counts.failed)),
            ),
            Err(e) => (e.outcome(), Some(e.to_string())),
        };
        if let Err(e) = self
            .inner
            .state
            .finish_run(plan.id, state, &json!(counts), error.as_deref())
            .await
        {
            tracing::warn!(run = plan.id, error = %e, "cannot record the run's outcome in walhook.runs");
        }
        // Only now: a schedule's next run starts after this one is recorded as done.
        self.lock_active().remove(&plan.id);
        let strategy = plan.compiled.name().to_string();
        metrics::counter!(names::RUNS_TOTAL, "strategy" => strategy.clone(), "trigger" => plan.trigger.as_str(), "schedule" => plan.trigger.schedule().to_string(), "outcome" => state)
            .increment(1);
        metrics::counter!(names::RUN_RECORDS_TOTAL, "strategy" => strategy.clone())
            .increment(counts.delivered);
        plan.report(Some(state));
        let duration = plan.started.elapsed();
        match &error {
            None => {
                tracing::info!(run = plan.id, strategy = %strategy, read = counts.read, delivered = counts.delivered, duration_ms = duration.as_millis() as u64, "run succeeded")
            }
            Some(e) => {
                tracing::warn!(run = plan.id, strategy = %strategy, state, error = %e, "run ended")
            }
        }
        result?;
        Ok(Summary {
            id: plan.id,
            counts,
            duration,
            replies: plan
                .replies
                .as_ref()
                .map(|log| log.replies())
                .unwrap_or_default(),
        })
    }

    /// Every column `filter` reads exists in `table` (a table walhook
    /// cannot see is left to the snapshot, which names the problem).
    async fn check_filter_columns(&self, table: &TableName, filter: &str) -> Result<(), RunError> {
        let client = pg::connect(&self.inner.url, "walhook-run")
            .await
            .map_err(SnapshotError::Connect)?;
        let catalog =
            pg::table_catalog(&client, table)
                .await
                .map_err(|source| SnapshotError::Query {
                    table: table.clone(),
                    source,
                })?;
        let Some(catalog) = catalog else {
            return Ok(());
        };
        for column in referenced_columns(filter).map_err(RunError::Filter)? {
            if !catalog.columns.iter().any(|c| c.name == column.column) {
                return Err(RunError::Filter(format!(
                    "`{column}`: {table} has no column {:?}",
                    column.column
                )));
            }
        }
        Ok(())
    }

    async fn deliver(&self, plan: &Plan) -> Result<(), RunError> {
        let cfg = &plan.catalog.config.strategies[plan.index];
        // Config validation refuses runs on a `messages` strategy.
        let Some(table) = &cfg.table else {
            return Err(RunError::NotAllowed {
                strategy: cfg.name.clone(),
                mode: "table",
            });
        };
        let client = pg::connect(&self.inner.url, "walhook-run")
            .await
            .map_err(SnapshotError::Connect)?;
        let mut snapshot =
            Snapshot::open(client, table, cfg.run_as.as_deref(), DEFAULT_PAGE).await?;
        if let Some((text, _)) = &plan.filter {
            for column in referenced_columns(text).map_err(RunError::Filter)? {
                if snapshot.relation().column_index(&column.column).is_none() {
                    return Err(RunError::Filter(format!(
                        "`{column}`: {} has no column {:?}",
                        table, column.column
                    )));
                }
            }
        }
        let estimate = snapshot.estimate(COUNT_UP_TO_BYTES).await;
        plan.live.update(|c| {
            c.estimate = match (estimate, plan.limit) {
                (Some(rows), Some(limit)) => Some(rows.min(limit)),
                (rows, _) => rows,
            };
        });
        self.write_counts(plan).await;
        plan.report(None);
        let mut reader = Reader {
            plan,
            warned: false,
        };
        if let Some(cap) = plan.buffer_limit {
            // Sync: everything that would be sent is known before anything is.
            let mut buffered = Vec::new();
            while let Some(page) = self.next_page(plan, &mut snapshot).await? {
                if reader.take(page, &mut buffered) {
                    break;
                }
                if buffered.len() as u64 > cap {
                    let _ = snapshot.finish().await;
                    return Err(RunError::OverLimit { limit: cap });
                }
            }
            let _ = snapshot.finish().await;
            let mut run = self.start_worker(plan)?;
            for record in buffered {
                run.send(record, plan).await?;
            }
            return run.finish(plan, self).await;
        }
        let mut run = self.start_worker(plan)?;
        let mut page_records = Vec::new();
        let mut last_write = Instant::now();
        loop {
            let Some(page) = self.next_page(plan, &mut snapshot).await? else {
                break;
            };
            let done = reader.take(page, &mut page_records);
            for record in page_records.drain(..) {
                run.send(record, plan).await?;
            }
            run.refresh(plan)?;
            plan.report(None);
            if last_write.elapsed() >= Duration::from_secs(1) {
                last_write = Instant::now();
                self.write_counts(plan).await;
            }
            if done {
                break;
            }
        }
        let _ = snapshot.finish().await;
        run.finish(plan, self).await
    }

    async fn next_page(
        &self,
        plan: &Plan,
        snapshot: &mut Snapshot,
    ) -> Result<Option<Vec<crate::decode::RecordEvent>>, RunError> {
        tokio::select! {
            biased;
            _ = plan.cancel.cancelled() => Err(RunError::Cancelled),
            page = snapshot.next_page() => Ok(page?),
        }
    }

    fn start_worker(&self, plan: &Plan) -> Result<RunWorker, RunError> {
        let inner = &self.inner;
        let catalog = &plan.catalog;
        let cfg = &catalog.config.strategies[plan.index];
        let endpoint = catalog
            .endpoints
            .get(&cfg.endpoint)
            .cloned()
            .ok_or_else(|| RunError::NoEndpoint(cfg.endpoint.clone()))?;
        let retry = catalog
            .config
            .endpoint_of(cfg)
            .map(|e| e.retry.clone())
            .unwrap_or_default();
        // A run only needs the state store for dead letters.
        let dead_letters = retry.on_exhausted == OnExhausted::DeadLetter
            || endpoint.on_client_error() == crate::config::OnClientError::DeadLetter;
        let state = dead_letters.then(|| inner.state.clone());
        let decorate: Arc<dyn Decorate> = match &plan.replies {
            Some(replies) => Arc::new(Answered {
                strategy: plan.compiled.clone(),
                replies: replies.clone(),
            }),
            None => plan.compiled.clone(),
        };
        let (worker, tx) = StrategyWorker::new(WorkerOptions {
            index: 0,
            name: cfg.name.clone(),
            batch_size: cfg.batch_size,
            max_batch_bytes: cfg.max_batch_bytes,
            linger: cfg.linger,
            retry,
            endpoint,
            decorate,
            max_in_flight: 1,
            ordering: crate::config::Ordering::Commit,
            // Runs never acknowledge WAL.
            checkpoint: Arc::new(Checkpoint::new(1, Lsn::ZERO, |_| {})),
            state,
            // Stored batches belong to live delivery.
            boundaries: None,
            shutdown_timeout: STOP_TIMEOUT,
            queue_capacity: DEFAULT_PAGE * 2,
        })
        .map_err(RunError::Delivery)?;
        let status = worker.status();
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        Ok(RunWorker {
            tx: Some(tx),
            opened: false,
            status,
            stop,
            task,
        })
    }

    /// Writes a running run's counts; best effort, as the outcome written
    /// when it ends has the final counts.
    async fn write_counts(&self, plan: &Plan) {
        let counts = json!(plan.live.get());
        if let Err(e) = self.inner.state.update_run_counts(plan.id, &counts).await {
            tracing::debug!(run = plan.id, error = %e, "cannot write the run's counts to walhook.runs");
        }
    }
}

/// Filters and maps pages, counting rows read and records taken.
struct Reader<'a> {
    plan: &'a Plan,
    warned: bool,
}

impl Reader<'_> {
    /// Appends the page's matching records to `out`; true once the limit
    /// is reached (read no further).
    fn take(&mut self, page: Vec<crate::decode::RecordEvent>, out: &mut Vec<QueuedRecord>) -> bool {
        let plan = self.plan;
        let mut read = 0;
        let mut taken = 0;
        let already = plan.live.get().sent;
        let mut reached = false;
        for event in &page {
            if plan.limit.is_some_and(|l| already + taken >= l) {
                reached = true;
                break;
            }
            read += 1;
            let matched = match &plan.filter {
                None => true,
                Some((_, expr)) => match expr.matches(event) {
                    Ok(b) => b,
                    Err(reason) => {
                        if !self.warned {
                            self.warned = true;
                            tracing::warn!(run = plan.id, strategy = %plan.compiled.name(), record = %event.id(), error = %reason, "run filter failed; such rows count as not matched");
                        }
                        false
                    }
                },
            };
            if matched {
                out.push(plan.compiled.queued_record(event));
                taken += 1;
            }
        }
        if plan.limit.is_some_and(|l| already + taken >= l) {
            reached = true;
        }
        plan.live.update(|c| {
            c.read += read;
            c.sent += taken;
        });
        reached
    }
}

/// A run's own delivery worker.
struct RunWorker {
    tx: Option<mpsc::Sender<WorkItem>>,
    /// The first record (and the transaction end after it) was queued.
    opened: bool,
    status: StatusHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DeliveryError>>,
}

impl RunWorker {
    /// Queues one record, giving up when the run is cancelled or delivery
    /// is blocked.
    async fn send(&mut self, record: QueuedRecord, plan: &Plan) -> Result<(), RunError> {
        let Some(tx) = &self.tx else {
            return Err(RunError::WorkerStopped);
        };
        let mut item = Some(WorkItem::Record(record));
        loop {
            let Some(next) = item.take() else {
                return Ok(());
            };
            tokio::select! {
                biased;
                _ = plan.cancel.cancelled() => return Err(self.abort(RunError::Cancelled).await),
                sent = tx.send_timeout(next, TICK) => match sent {
                    Ok(()) if !self.opened => {
                        // A batch boundary stored by live delivery that spans
                        // the snapshot LSN would otherwise hold every run
                        // record in one batch: this transaction end closes it.
                        self.opened = true;
                        item = Some(WorkItem::TxEnd { end_lsn: Lsn(u64::MAX) });
                    }
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::SendTimeoutError::Timeout(back)) => {
                        item = Some(back);
                        if let Err(e) = self.refresh(plan) {
                            return Err(self.abort(e).await);
                        }
                        plan.report(None);
                    }
                    Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                        return Err(RunError::WorkerStopped)
                    }
                },
            }
        }
    }

    /// Copies delivery counts into the run; an error when delivery is blocked.
    fn refresh(&self, plan: &Plan) -> Result<(), RunError> {
        let s = self.status.snapshot();
        plan.live.update(|c| {
            c.delivered = s.delivered_records;
            c.failed = s.dead_lettered_records;
            c.batches = s.delivered_batches + s.dead_lettered_batches;
        });
        if s.state == DeliveryState::Blocked {
            let last_error = s.last_error.unwrap_or_else(|| "delivery failing".into());
            return Err(RunError::Exhausted { last_error });
        }
        Ok(())
    }

    async fn abort(&mut self, error: RunError) -> RunError {
        self.tx = None;
        self.stop.cancel();
        let _ = (&mut self.task).await;
        error
    }

    /// Closes the queue and waits until everything queued was delivered.
    async fn finish(mut self, plan: &Plan, manager: &RunManager) -> Result<(), RunError> {
        self.tx = None;
        let mut tick = tokio::time::interval(TICK);
        let mut last_write = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = plan.cancel.cancelled() => return Err(self.abort(RunError::Cancelled).await),
                joined = &mut self.task => {
                    let _ = self.refresh(plan);
                    return match joined {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(RunError::Delivery(e)),
                        Err(e) => Err(RunError::WorkerTask(e)),
                    };
                }
                _ = tick.tick() => {
                    if let Err(e) = self.refresh(plan) {
                        return Err(self.abort(e).await);
                    }
                    plan.report(None);
                    if last_write.elapsed() >= Duration::from_secs(1) {
                        last_write = Instant::now();
                        manager.write_counts(plan).await;
                    }
                }
            }
        }
    }
}

/// How long a run not going on in this process ran: until it ended, or
/// until now (by this host's clock) while another process runs it.
fn stored_elapsed(row: &Value) -> Duration {
    let time = |key: &str| {
        row[key]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let Some(started) = time("started_at") else {
        return Duration::ZERO;
    };
    let end = time("finished_at").unwrap_or_else(chrono::Utc::now);
    (end - started).to_std().unwrap_or_default()
}
